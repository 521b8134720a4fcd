//! `hgpt probe`: the head's geometry from the command line (neighbours, analogies,
//! a 2-D map, hidden states over a text), printed for a person or as JSON, with
//! pictures where they help. The measures are `hgpt::probe`'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;

use hgpt::backend::{self, DeviceChoice};
use hgpt::checkpoint::{self, Checkpoint};
use hgpt::data::Tokenizer;
use hgpt::model::Gpt;
use hgpt::probe::pca::Pca;
use hgpt::probe::{Geometry, Metric, Neighbour, Pieces, Quad, WordRule, plot, text};

use super::whole;

#[derive(Args)]
pub struct ProbeArgs {
    /// A checkpoint directory (RUN/checkpoints/step_N), or a run directory for its
    /// latest checkpoint
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// Print one JSON object instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Which token stands for a word the tokenizer splits: none (an error), the
    /// first piece, or the last (the paper's rule); the same for either head
    #[arg(long, default_value = "reject", global = true,
          value_parser = PossibleValuesParser::new(Pieces::NAMES).try_map(|s| s.parse::<Pieces>()))]
    pieces: Pieces,
    /// Encode words exactly as given (default: after a space, as they appear inside
    /// running text). `#N` always names token id N
    #[arg(long, global = true)]
    exact: bool,
    #[command(subcommand)]
    what: Probe,
}

#[derive(Subcommand)]
enum Probe {
    /// The nearest class centres to each word's, by the head's own metric
    /// (Euclidean distance for harmonic, cosine for softmax)
    Neighbours {
        #[arg(required = true, value_name = "WORD")]
        words: Vec<String>,
        /// Neighbours per word
        #[arg(short, default_value_t = 10, allow_negative_numbers = true, value_parser = whole::<usize>)]
        k: usize,
    },
    /// `a b c`: candidates d for a : b :: c : d around b - a + c; `--file F`: score
    /// a set of quadruples (one `a b c d` per line; blank and `:` lines skipped)
    Analogy {
        #[arg(value_name = "WORD", num_args = 3, conflicts_with = "file")]
        words: Vec<String>,
        #[arg(long, value_name = "FILE", required_unless_present = "words")]
        file: Option<PathBuf>,
        /// Candidates shown
        #[arg(short, default_value_t = 5, allow_negative_numbers = true, value_parser = whole::<usize>)]
        k: usize,
        /// Principal components of the parallelogram loss (2 in the paper's figure)
        #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = whole::<usize>)]
        components: usize,
    },
    /// A labelled 2-D PCA picture of the chosen centres
    Map {
        #[arg(value_name = "WORD", conflicts_with = "file")]
        words: Vec<String>,
        /// Words to map, whitespace-separated
        #[arg(long, value_name = "FILE", required_unless_present = "words")]
        file: Option<PathBuf>,
        /// The picture
        #[arg(long, value_name = "PNG", default_value = "map.png")]
        png: PathBuf,
    },
    /// Per position of a text: distance from the final hidden state to the predicted
    /// and the true token's centre, the true token's probability; their histogram
    Text {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Positions read
        #[arg(long, value_name = "N", default_value_t = 4096, allow_negative_numbers = true, value_parser = whole::<usize>)]
        max_tokens: usize,
        /// Histogram bins
        #[arg(long, default_value_t = 12, allow_negative_numbers = true, value_parser = whole::<usize>)]
        bins: usize,
        /// Draw the histogram here
        #[arg(long, value_name = "PNG")]
        png: Option<PathBuf>,
        /// Also print every position (JSON: under `per_position`)
        #[arg(long)]
        positions: bool,
        #[command(flatten)]
        device: super::DeviceArgs,
    },
}

/// A checkpoint's head geometry with what turns words into its tokens.
struct Probed {
    ckpt: Checkpoint,
    params: Vec<f32>,
    geom: Geometry,
    tokenizer: Option<Tokenizer>,
    rule: WordRule,
}

impl Probed {
    fn open(args: &ProbeArgs) -> Result<Probed> {
        let ckpt = Checkpoint::open(&args.checkpoint)?;
        let params = ckpt.read_params()?;
        let geom = Geometry::from_params(&ckpt.state.config.model, &params);
        let tokenizer = match ckpt.state.tokenizer_hash {
            Some(_) => Some(checkpoint::tokenizer::load(&ckpt)?),
            None => None,
        };
        let rule = WordRule {
            pieces: args.pieces,
            exact: args.exact,
        };
        Ok(Probed {
            ckpt,
            params,
            geom,
            tokenizer,
            rule,
        })
    }

    fn token(&self, word: &str) -> Result<u32> {
        self.rule.token(word, self.tokenizer.as_ref(), self.geom.v)
    }

    /// How a token reads: its text, or #id without a tokenizer.
    fn spell(&self, token: u32) -> String {
        match &self.tokenizer {
            Some(t) => t.decode(&[token]),
            None => format!("#{token}"),
        }
    }

    fn metric_line(&self) -> String {
        match self.geom.metric() {
            Metric::Euclidean => "Euclidean distance between centres (harmonic head)".into(),
            Metric::Cosine => "cosine similarity of centres (softmax head)".into(),
        }
    }

    fn ranked(&self, ns: &[Neighbour]) -> Vec<serde_json::Value> {
        ns.iter()
            .map(|n| json!({"token": n.token, "text": self.spell(n.token), "value": n.value}))
            .collect()
    }

    fn print_ranked(&self, ns: &[Neighbour]) -> Result<()> {
        for (i, n) in ns.iter().enumerate() {
            let text = format!("{:?}", self.spell(n.token));
            outln!("  {:>3}  {text:<20} #{:<6} {:.4}", i + 1, n.token, n.value);
        }
        Ok(())
    }
}

/// Words of a file: whitespace-separated, at least one.
fn file_words(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    if words.is_empty() {
        bail!("{}: empty (no words in it)", path.display());
    }
    Ok(words)
}

/// Quadruples of an analogy file, with the words of each; those with a word the
/// rule rejects are skipped and counted.
fn read_quads(probed: &Probed, path: &Path) -> Result<(Vec<Quad>, Vec<[String; 4]>, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut quads, mut words, mut skipped) = (Vec::new(), Vec::new(), 0);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [a, b, c, d] = fields[..] else {
            bail!(
                "{}:{}: `{line}` is not four words `a b c d`",
                path.display(),
                n + 1
            );
        };
        let tokens: Result<Vec<u32>> = [a, b, c, d].iter().map(|w| probed.token(w)).collect();
        match tokens {
            Ok(t) => {
                quads.push(Quad {
                    a: t[0],
                    b: t[1],
                    c: t[2],
                    d: t[3],
                });
                words.push([a, b, c, d].map(str::to_string));
            }
            Err(_) if probed.rule.pieces == Pieces::Reject => skipped += 1,
            Err(e) => return Err(e.context(format!("{}:{}", path.display(), n + 1))),
        }
    }
    if quads.is_empty() {
        bail!(
            "{}: no analogy quadruples to score ({skipped} skipped for a word the tokenizer splits; one `a b c d` per line)",
            path.display()
        );
    }
    Ok((quads, words, skipped))
}

pub fn run(args: &ProbeArgs) -> Result<()> {
    let probed = Probed::open(args)?;
    match &args.what {
        Probe::Neighbours { words, k } => neighbours(&probed, words, *k, args.json),
        Probe::Analogy {
            words,
            file: None,
            k,
            ..
        } => analogy(&probed, words, *k, args.json),
        Probe::Analogy {
            file: Some(file),
            components,
            ..
        } => analogy_file(&probed, file, *components, args.json),
        Probe::Map { words, file, png } => {
            let words = match file {
                Some(f) => file_words(f)?,
                None => words.clone(),
            };
            map(&probed, &words, png, args.json)
        }
        Probe::Text {
            file,
            max_tokens,
            bins,
            png,
            positions,
            device,
        } => {
            let show = TextShow {
                png: png.as_deref(),
                positions: *positions,
                json: args.json,
            };
            text_probe(&probed, device.device, file, *max_tokens, *bins, &show)
        }
    }
}

fn neighbours(probed: &Probed, words: &[String], k: usize, as_json: bool) -> Result<()> {
    let tokens: Vec<u32> = words
        .iter()
        .map(|w| probed.token(w))
        .collect::<Result<_>>()?;
    let found: Vec<Vec<Neighbour>> = tokens
        .iter()
        .map(|&t| probed.geom.neighbours(t, k))
        .collect();
    if as_json {
        let rows: Vec<_> = words
            .iter()
            .zip(&tokens)
            .zip(&found)
            .map(|((w, &t), ns)| json!({"word": w, "token": t, "neighbours": probed.ranked(ns)}))
            .collect();
        outln!("{}", json!({"metric": probed.geom.metric(), "words": rows}));
        return Ok(());
    }
    outln!("{}", probed.metric_line());
    for ((w, &t), ns) in words.iter().zip(&tokens).zip(&found) {
        outln!("{w} ({:?} #{t})", probed.spell(t));
        probed.print_ranked(ns)?;
    }
    Ok(())
}

fn analogy(probed: &Probed, words: &[String], k: usize, as_json: bool) -> Result<()> {
    let t: Vec<u32> = words
        .iter()
        .map(|w| probed.token(w))
        .collect::<Result<_>>()?;
    let found = probed.geom.analogy(t[0], t[1], t[2], k);
    if as_json {
        let v = json!({"metric": probed.geom.metric(), "a": t[0], "b": t[1], "c": t[2],
            "candidates": probed.ranked(&found)});
        outln!("{v}");
        return Ok(());
    }
    outln!("{}", probed.metric_line());
    outln!("{} : {} :: {} : ?", words[0], words[1], words[2]);
    probed.print_ranked(&found)?;
    Ok(())
}

#[derive(Serialize)]
struct FileReport<'a> {
    #[serde(flatten)]
    report: &'a hgpt::probe::AnalogyReport,
    skipped: usize,
    words: &'a [[String; 4]],
}

fn analogy_file(probed: &Probed, file: &Path, components: usize, as_json: bool) -> Result<()> {
    let (quads, words, skipped) = read_quads(probed, file)?;
    let report = probed.geom.score_analogies(&quads, components)?;
    if as_json {
        let out = FileReport {
            report: &report,
            skipped,
            words: &words,
        };
        outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    outln!("{}", probed.metric_line());
    outln!(
        "quadruples: {} scored, {skipped} skipped (a word the tokenizer splits)",
        report.quads
    );
    outln!(
        "top-1 {:.3}  top-5 {:.3}  (d ranked among all tokens but a, b, c around b - a + c)",
        report.top1,
        report.top5
    );
    let (p, o) = (report.parallelogram_loss, report.offset_error);
    outln!(
        "parallelogram loss ({components} PCs, Baek et al.): mean {:.4}  median {:.4}",
        p.mean,
        p.median
    );
    outln!(
        "offset error |b - a + c - d| / rms centre distance: mean {:.4}  median {:.4}",
        o.mean,
        o.median
    );
    Ok(())
}

fn map(probed: &Probed, words: &[String], png: &Path, as_json: bool) -> Result<()> {
    if words.len() < 2 {
        bail!("map needs at least 2 words, got {}", words.len());
    }
    let tokens: Vec<u32> = words
        .iter()
        .map(|w| probed.token(w))
        .collect::<Result<_>>()?;
    let c = probed.geom.c;
    let points: Vec<f32> = tokens
        .iter()
        .flat_map(|&t| probed.geom.centre(t).to_vec())
        .collect();
    let pca = Pca::fit(&points, c, 2.min(c));
    let coords: Vec<(String, f64, f64)> = words
        .iter()
        .zip(points.chunks(c))
        .map(|(w, p)| {
            let xy = pca.project(p);
            (w.clone(), xy[0], xy.get(1).copied().unwrap_or(0.0))
        })
        .collect();
    let title = format!(
        "{} centres ({}), PC 1-2 explain {:.0}%",
        words.len(),
        probed.metric_line(),
        100.0 * pca.explained()
    );
    plot::plot_map(png, &title, &coords)?;
    if as_json {
        let rows: Vec<_> = coords
            .iter()
            .zip(&tokens)
            .map(|((w, x, y), t)| json!({"word": w, "token": t, "x": x, "y": y}))
            .collect();
        let v = json!({"explained": pca.explained(), "points": rows, "png": png});
        outln!("{v}");
        return Ok(());
    }
    outln!(
        "PC 1-2 explain {:.1}% of the chosen centres' variance",
        100.0 * pca.explained()
    );
    for (w, x, y) in &coords {
        outln!("  {w:<20} {x:>9.4} {y:>9.4}");
    }
    eprintln!("wrote {}", png.display());
    Ok(())
}

/// What `probe text` shows besides the summary.
struct TextShow<'a> {
    png: Option<&'a Path>,
    positions: bool,
    json: bool,
}

fn text_probe(
    probed: &Probed,
    device: DeviceChoice,
    file: &Path,
    max_tokens: usize,
    bins: usize,
    show: &TextShow,
) -> Result<()> {
    let (png, as_json) = (show.png, show.json);
    if max_tokens == 0 || bins == 0 {
        bail!("--max-tokens and --bins must be at least 1");
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let body = String::from_utf8(bytes)
        .map_err(|e| anyhow!("{}: not UTF-8 text ({e})", file.display()))?;
    if body.trim().is_empty() {
        bail!("{}: empty (no text to read)", file.display());
    }
    let tokenizer = probed.tokenizer.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: no tokenizer, so text cannot be tokenized for it",
            probed.ckpt.dir.display()
        )
    })?;
    let mut tokens = vec![tokenizer.eot()];
    tokens.extend(tokenizer.encode(&body));
    tokens.truncate(max_tokens.saturating_add(1));
    let config = &probed.ckpt.state.config;
    let (be, device_line) =
        backend::open(device, config.train.precision, config.model.head_size())?;
    eprintln!("{device_line}");
    let (hidden, targets) = text::hidden_states(
        &mut Gpt::with_params(be, &config.model, &probed.params),
        &tokens,
    );
    let positions = text::positions(&probed.geom, &hidden, &targets);
    let report = text::report(&probed.geom, &positions, bins);
    if let Some(png) = png {
        let title = format!(
            "{} positions, accuracy {:.3}, mean p(true) {:.3}",
            report.positions, report.accuracy, report.mean_p_target
        );
        plot::plot_histogram(png, &title, &report)?;
    }
    if as_json {
        let mut v = serde_json::to_value(&report)?;
        if show.positions {
            v["per_position"] = serde_json::to_value(&positions)?;
        }
        outln!("{v}");
        return Ok(());
    }
    if show.positions {
        outln!("  pos  true                 predicted            |h-w_true| |h-w_pred|  p(true)");
        for (i, p) in positions.iter().enumerate() {
            let (t, q) = (
                format!("{:?}", probed.spell(p.target)),
                format!("{:?}", probed.spell(p.predicted)),
            );
            outln!(
                "{i:>5}  {t:<20} {q:<20} {:>10.3} {:>10.3} {:>8.4}",
                p.dist_target,
                p.dist_predicted,
                p.p_target
            );
        }
    }
    let (t, p) = (report.dist_target, report.dist_predicted);
    outln!(
        "{} positions | accuracy {:.3} | mean p(true) {:.3}",
        report.positions,
        report.accuracy,
        report.mean_p_target
    );
    outln!(
        "|h - w_true|: mean {:.3} median {:.3} | |h - w_predicted|: mean {:.3} median {:.3} | rms distance between centres {:.3}",
        t.mean,
        t.median,
        p.mean,
        p.median,
        report.rms_centre_distance
    );
    outln!("  |h - w_true| bin      positions  mean p(true)");
    for b in &report.histogram {
        outln!(
            "  [{:>7.3}, {:>7.3})  {:>9}  {:>12.3}",
            b.lo,
            b.hi,
            b.count,
            b.mean_p_target
        );
    }
    if let Some(png) = png {
        eprintln!("wrote {}", png.display());
    }
    Ok(())
}
