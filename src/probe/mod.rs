//! The geometry of the output head: class centres (the head's weight rows, tied to
//! the token embedding) and the final hidden states that the head compares with
//! them.
//!
//! Each head has its own metric, the one its logits are made of:
//!
//! ```text
//! harmonic  z_i = -(n/2) ln |h - w_i|^2   closeness = Euclidean distance |x - w_i| (smaller is closer)
//! softmax   z_i = h.w_i                   closeness = cosine x.w_i / (|x| |w_i|)   (larger is closer)
//! ```
//!
//! `neighbours` ranks centres around a centre, `analogy` ranks candidates d for
//! a : b :: c : d around the point b - a + c (a, b and c excluded), both by the
//! head's metric. An analogy set is scored by top-1 / top-5 accuracy and by two
//! head-independent measures of how close a, b, c, d are to a parallelogram:
//!
//! - the paper's *parallelogram loss* (Baek, Liu, Tyagi, Tegmark, "Harmonic Loss
//!   Trains Interpretable AI Models", arXiv 2502.01628, TMLR 2025; the GPT-2
//!   section, Figure 6, computed in the authors' `GPT2/function_vectors.ipynb`):
//!   centre the embedding matrix over the vocabulary, project every token onto
//!   the top k principal components of all tokens (k = 2 in the paper's headline
//!   figure), and for a quadruple take
//!   `|p_a + p_d - p_b - p_c|^2 / scale`, `scale = mean over tokens of |p_t|^2`;
//! - the *relative offset error* `|b - a + c - d| / D` in the full space, D the
//!   root-mean-square distance between two centres,
//!   `D^2 = 2 V/(V-1) mean_t |w_t - mean w|^2`.
//!
//! Both are invariant to scaling all centres, so they compare heads directly.
//! [`text`] measures where hidden states sit relative to the centres, [`pca`] is
//! the principal-component analysis, [`plot`] draws the pictures.

pub mod pca;
pub mod plot;
pub mod text;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::config::ModelConfig;
use crate::data::Tokenizer;
use crate::head::HeadKind;
use crate::model::ParamLayout;
use pca::Pca;

/// The closeness a head's logits are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Euclidean distance, smaller is closer (the harmonic head).
    Euclidean,
    /// Cosine similarity, larger is closer (the softmax head's dot products,
    /// without the norms that only set each logit's scale).
    Cosine,
}

impl Metric {
    pub fn of(kind: HeadKind) -> Metric {
        match kind {
            HeadKind::Harmonic { .. } => Metric::Euclidean,
            HeadKind::Softmax => Metric::Cosine,
        }
    }

    /// Whether `a` is closer than `b`.
    fn closer(self, a: f64, b: f64) -> bool {
        match self {
            Metric::Euclidean => a < b,
            Metric::Cosine => a > b,
        }
    }
}

/// The class centres of a head: `v` rows of `c` floats.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub kind: HeadKind,
    pub centres: Vec<f32>,
    pub v: usize,
    pub c: usize,
}

/// A centre ranked by closeness to a query.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Neighbour {
    pub token: u32,
    /// Euclidean distance (harmonic) or cosine similarity (softmax).
    pub value: f64,
}

/// One analogy a : b :: c : d, as tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quad {
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub d: u32,
}

/// How one quadruple fares.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QuadScore {
    /// 1-based rank of d among all tokens but a, b, c around b - a + c.
    pub rank: usize,
    /// The paper's parallelogram loss.
    pub parallelogram_loss: f64,
    /// |b - a + c - d| / D.
    pub offset_error: f64,
}

/// Mean and median of a set of values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
}

impl Summary {
    /// None for an empty set.
    pub fn of(values: impl Iterator<Item = f64>) -> Option<Summary> {
        let mut v: Vec<f64> = values.collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            mean: v.iter().sum::<f64>() / n as f64,
            median,
        })
    }
}

/// An analogy set's score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnalogyReport {
    pub metric: Metric,
    pub quads: usize,
    pub top1: f64,
    pub top5: f64,
    /// Principal components the parallelogram loss is measured in.
    pub components: usize,
    pub parallelogram_loss: Summary,
    pub offset_error: Summary,
    pub scores: Vec<QuadScore>,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

impl Geometry {
    /// Centres given as `v` rows of `c` floats.
    pub fn new(kind: HeadKind, centres: Vec<f32>, c: usize) -> Geometry {
        assert!(
            c > 0 && centres.len().is_multiple_of(c),
            "centres must be v rows of c"
        );
        Geometry {
            kind,
            v: centres.len() / c,
            centres,
            c,
        }
    }

    /// The head weights of a model with parameters `params` (laid out as
    /// `ParamLayout::new(model)`).
    pub fn from_params(model: &ModelConfig, params: &[f32]) -> Geometry {
        let layout = ParamLayout::new(model);
        let head = &layout.tensors[layout.head_index()];
        let rows = params[head.offset..head.offset + head.len()].to_vec();
        Geometry::new(model.head_kind(), rows, model.n_embd)
    }

    pub fn metric(&self) -> Metric {
        Metric::of(self.kind)
    }

    pub fn centre(&self, token: u32) -> &[f32] {
        let i = token as usize;
        &self.centres[i * self.c..(i + 1) * self.c]
    }

    /// The head's closeness of point `x` to centre `token`.
    pub fn closeness(&self, x: &[f32], token: u32) -> f64 {
        let w = self.centre(token);
        match self.metric() {
            Metric::Euclidean => distance(x, w),
            Metric::Cosine => {
                let norms = (dot(x, x) * dot(w, w)).sqrt();
                if norms > 0.0 { dot(x, w) / norms } else { 0.0 }
            }
        }
    }

    /// The `k` centres closest to `x` by the head's metric, closest first, leaving
    /// out `exclude`. Ties go to the smaller token id.
    pub fn rank(&self, x: &[f32], exclude: &[u32], k: usize) -> Vec<Neighbour> {
        let metric = self.metric();
        let mut all: Vec<Neighbour> = (0..self.v as u32)
            .filter(|t| !exclude.contains(t))
            .map(|token| Neighbour {
                token,
                value: self.closeness(x, token),
            })
            .collect();
        all.sort_by(|p, q| {
            if metric.closer(p.value, q.value) {
                std::cmp::Ordering::Less
            } else if metric.closer(q.value, p.value) {
                std::cmp::Ordering::Greater
            } else {
                p.token.cmp(&q.token)
            }
        });
        all.truncate(k);
        all
    }

    /// The `k` centres closest to centre `token` (itself left out).
    pub fn neighbours(&self, token: u32, k: usize) -> Vec<Neighbour> {
        self.rank(self.centre(token), &[token], k)
    }

    /// b - a + c: where d of a : b :: c : d would sit in a perfect parallelogram.
    pub fn analogy_point(&self, a: u32, b: u32, c: u32) -> Vec<f32> {
        let (wa, wb, wc) = (self.centre(a), self.centre(b), self.centre(c));
        (0..self.c).map(|i| wb[i] - wa[i] + wc[i]).collect()
    }

    /// Candidates d for a : b :: c : d, best first (a, b, c left out).
    pub fn analogy(&self, a: u32, b: u32, c: u32, k: usize) -> Vec<Neighbour> {
        self.rank(&self.analogy_point(a, b, c), &[a, b, c], k)
    }

    /// Root-mean-square distance between two distinct centres.
    pub fn rms_centre_distance(&self) -> f64 {
        let mean = self.mean_centre();
        let spread: f64 = (0..self.v as u32)
            .map(|t| {
                self.centre(t)
                    .iter()
                    .zip(&mean)
                    .map(|(&x, &m)| (x as f64 - m).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / self.v as f64;
        let v = self.v as f64;
        (2.0 * v / (v - 1.0).max(1.0) * spread).sqrt()
    }

    fn mean_centre(&self) -> Vec<f64> {
        let mut mean = vec![0f64; self.c];
        for row in self.centres.chunks(self.c) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= self.v as f64);
        mean
    }

    /// The paper's parallelogram measure in `components` principal components of
    /// all centres.
    pub fn parallelogram(&self, components: usize) -> Parallelogram {
        let pca = Pca::fit(&self.centres, self.c, components);
        let projected: Vec<Vec<f64>> = self
            .centres
            .chunks(self.c)
            .map(|w| pca.project(w))
            .collect();
        let scale = projected
            .iter()
            .map(|p| p.iter().map(|x| x * x).sum::<f64>())
            .sum::<f64>()
            / self.v as f64;
        Parallelogram { projected, scale }
    }

    /// Scores an analogy set (at least one quadruple).
    pub fn score_analogies(&self, quads: &[Quad], components: usize) -> Result<AnalogyReport> {
        if quads.is_empty() {
            bail!("no analogy quadruples to score");
        }
        if components == 0 || components > self.c {
            bail!(
                "--components {components}: must be between 1 and the model's width ({})",
                self.c
            );
        }
        let para = self.parallelogram(components);
        let d_rms = self.rms_centre_distance();
        let scores: Vec<QuadScore> = quads
            .iter()
            .map(|q| {
                let x = self.analogy_point(q.a, q.b, q.c);
                let target = self.closeness(&x, q.d);
                let metric = self.metric();
                let better = (0..self.v as u32)
                    .filter(|t| ![q.a, q.b, q.c, q.d].contains(t))
                    .filter(|&t| {
                        let v = self.closeness(&x, t);
                        metric.closer(v, target) || (v == target && t < q.d)
                    })
                    .count();
                QuadScore {
                    rank: better + 1,
                    parallelogram_loss: para.loss(q),
                    offset_error: distance(&x, self.centre(q.d)) / d_rms,
                }
            })
            .collect();
        let n = scores.len() as f64;
        let within = |k: usize| scores.iter().filter(|s| s.rank <= k).count() as f64 / n;
        Ok(AnalogyReport {
            metric: self.metric(),
            quads: scores.len(),
            top1: within(1),
            top5: within(5),
            components,
            parallelogram_loss: Summary::of(scores.iter().map(|s| s.parallelogram_loss))
                .expect("non-empty"),
            offset_error: Summary::of(scores.iter().map(|s| s.offset_error)).expect("non-empty"),
            scores,
        })
    }
}

/// Every centre projected onto the top principal components, with the paper's
/// scale.
pub struct Parallelogram {
    projected: Vec<Vec<f64>>,
    /// Mean squared norm of a projected centre.
    scale: f64,
}

impl Parallelogram {
    /// |p_a + p_d - p_b - p_c|^2 / scale.
    pub fn loss(&self, q: &Quad) -> f64 {
        let p = |t: u32| &self.projected[t as usize];
        let (pa, pb, pc, pd) = (p(q.a), p(q.b), p(q.c), p(q.d));
        let sq: f64 = (0..pa.len())
            .map(|i| (pa[i] + pd[i] - pb[i] - pc[i]).powi(2))
            .sum();
        sq / self.scale
    }
}

/// Euclidean distance.
pub fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Which token stands for a word the tokenizer splits into several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pieces {
    /// A split word is an error.
    #[default]
    Reject,
    /// The first piece.
    First,
    /// The last piece (the paper's rule for GPT-2).
    Last,
}

impl Pieces {
    /// Every rule, as `--pieces` spells it.
    pub const NAMES: [&'static str; 3] = ["reject", "first", "last"];
}

impl std::str::FromStr for Pieces {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Pieces> {
        Ok(match s {
            "reject" => Pieces::Reject,
            "first" => Pieces::First,
            "last" => Pieces::Last,
            _ => anyhow::bail!("--pieces {s}: expected one of reject, first, last"),
        })
    }
}

/// How words on the command line and in files become tokens: the same rule for
/// either head.
///
/// A word is encoded as it appears inside running text, after a space (" king"),
/// unless `exact` (then as given); `#N` is token id N itself. A word of several
/// tokens follows `pieces`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WordRule {
    pub pieces: Pieces,
    pub exact: bool,
}

impl WordRule {
    /// The tokens of `word` under this rule, before `pieces` picks one.
    pub fn encode(&self, word: &str, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>> {
        if let Some(id) = word.strip_prefix('#').and_then(|n| n.parse::<u32>().ok()) {
            return Ok(vec![id]);
        }
        if word.is_empty() {
            bail!("an empty word has no token");
        }
        let tokenizer = tokenizer.ok_or_else(|| {
            anyhow!("`{word}`: this checkpoint has no tokenizer; name tokens by id as #N")
        })?;
        let text = if self.exact {
            word.to_string()
        } else {
            format!(" {word}")
        };
        Ok(tokenizer.encode(&text))
    }

    /// The one token that stands for `word` in a model of `vocab` tokens.
    pub fn token(&self, word: &str, tokenizer: Option<&Tokenizer>, vocab: usize) -> Result<u32> {
        let tokens = self.encode(word, tokenizer)?;
        let token = match (tokens.as_slice(), self.pieces) {
            ([], _) => bail!("`{word}` encodes to no tokens"),
            ([t], _) => *t,
            (_, Pieces::First) => tokens[0],
            (_, Pieces::Last) => tokens[tokens.len() - 1],
            (_, Pieces::Reject) => {
                let spelled: Vec<String> = tokens
                    .iter()
                    .map(|&t| match tokenizer {
                        Some(tok) => format!("{:?}", tok.decode(&[t])),
                        None => format!("#{t}"),
                    })
                    .collect();
                bail!(
                    "`{word}` is {} tokens here ({}); pass --pieces first or --pieces last to let one stand for it",
                    tokens.len(),
                    spelled.join(" ")
                )
            }
        };
        if token as usize >= vocab {
            bail!("`{word}`: token #{token} is outside the model's vocabulary ({vocab} tokens)");
        }
        Ok(token)
    }
}
