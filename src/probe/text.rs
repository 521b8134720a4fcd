//! Where the final hidden states sit among the class centres as a model reads text.
//!
//! For each position with final hidden state h (after ln_f), true next token y and
//! predicted token y* = argmax_i z_i (the head's logits, [`crate::head`]):
//!
//! ```text
//! dist_predicted = |h - w_y*|     dist_target = |h - w_y|     p_target = softmax(z)_y
//! ```
//!
//! Euclidean distances for both heads, so the two can be compared: a harmonic
//! head's finite convergence point shows as hidden states close to the centre of
//! the token they predict, and confident positions (high p) at small distances.
//! The histogram bins positions by dist_target and gives each bin's mean p_target.

use serde::Serialize;

use super::{Geometry, Summary, distance};
use crate::backend::Backend;
use crate::eval::windows;
use crate::head;
use crate::model::Gpt;

/// One scored position.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Position {
    pub target: u32,
    pub predicted: u32,
    pub dist_target: f64,
    pub dist_predicted: f64,
    pub p_target: f64,
    pub p_predicted: f64,
}

/// Final hidden states [n, C] of every position of `tokens` but the last, with
/// the targets (the next tokens): windows of the model's context side by side, each
/// position once, as `hgpt eval` scores them.
pub fn hidden_states<B: Backend>(model: &mut Gpt<B>, tokens: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let c = model.config.n_embd;
    let (mut hidden, mut targets) = (Vec::new(), Vec::new());
    let context = model.config.block_size;
    for w in windows(tokens.len(), context, context) {
        let h = model.hidden(&tokens[w.start..w.start + w.len], 1, w.len);
        let first = w.len - w.scored;
        hidden.extend_from_slice(&h[first * c..]);
        targets.extend_from_slice(&tokens[w.start + first + 1..w.start + w.len + 1]);
    }
    (hidden, targets)
}

/// The head's view of each hidden state (rows of `hidden`) against its target.
pub fn positions(geom: &Geometry, hidden: &[f32], targets: &[u32]) -> Vec<Position> {
    let c = geom.c;
    assert_eq!(
        hidden.len(),
        targets.len() * c,
        "one hidden state per target"
    );
    let w_sq: Vec<f32> = geom
        .centres
        .chunks(c)
        .map(|w| w.iter().map(|x| x * x).sum())
        .collect();
    hidden
        .chunks(c)
        .zip(targets)
        .map(|(h, &y)| {
            let mut z: Vec<f32> = geom.centres.chunks(c).map(|w| dot32(h, w)).collect();
            let h_sq = dot32(h, h);
            head::logits_from_dots(geom.kind, &mut z, h_sq, &w_sq);
            let lse = head::logsumexp(&z) as f64;
            let predicted = z
                .iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > z[best] { i } else { best });
            let p = |i: usize| (z[i] as f64 - lse).exp();
            Position {
                target: y,
                predicted: predicted as u32,
                dist_target: distance(h, geom.centre(y)),
                dist_predicted: distance(h, geom.centre(predicted as u32)),
                p_target: p(y as usize),
                p_predicted: p(predicted),
            }
        })
        .collect()
}

fn dot32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One bin of the histogram over dist_target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Bin {
    /// [lo, hi), the last bin closed.
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean p_target of the positions in the bin (0 when empty).
    pub mean_p_target: f64,
}

/// The aggregate of a text's positions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextReport {
    pub positions: usize,
    /// Share of positions whose predicted token is the target.
    pub accuracy: f64,
    pub mean_p_target: f64,
    pub dist_target: Summary,
    pub dist_predicted: Summary,
    /// Root-mean-square distance between two centres, for scale.
    pub rms_centre_distance: f64,
    pub histogram: Vec<Bin>,
}

/// Aggregates `positions` (at least one) into `bins` equal bins of dist_target
/// from the smallest to the largest.
pub fn report(geom: &Geometry, positions: &[Position], bins: usize) -> TextReport {
    assert!(!positions.is_empty() && bins > 0);
    let n = positions.len() as f64;
    let (min, max) = positions.iter().fold((f64::INFINITY, 0f64), |(lo, hi), p| {
        (lo.min(p.dist_target), hi.max(p.dist_target))
    });
    let width = if max > min {
        (max - min) / bins as f64
    } else {
        1.0
    };
    let mut histogram: Vec<Bin> = (0..bins)
        .map(|i| Bin {
            lo: min + i as f64 * width,
            hi: min + (i + 1) as f64 * width,
            count: 0,
            mean_p_target: 0.0,
        })
        .collect();
    for p in positions {
        let i = (((p.dist_target - min) / width) as usize).min(bins - 1);
        histogram[i].count += 1;
        histogram[i].mean_p_target += p.p_target;
    }
    for b in &mut histogram {
        if b.count > 0 {
            b.mean_p_target /= b.count as f64;
        }
    }
    TextReport {
        positions: positions.len(),
        accuracy: positions.iter().filter(|p| p.predicted == p.target).count() as f64 / n,
        mean_p_target: positions.iter().map(|p| p.p_target).sum::<f64>() / n,
        dist_target: Summary::of(positions.iter().map(|p| p.dist_target)).expect("non-empty"),
        dist_predicted: Summary::of(positions.iter().map(|p| p.dist_predicted)).expect("non-empty"),
        rms_centre_distance: geom.rms_centre_distance(),
        histogram,
    }
}
