//! Evaluation on a token stream: mean loss per token with a sliding window.
//!
//! Every token after the first is scored exactly once. Windows are as long as the
//! model's context and start `stride` apart; each scores only the targets that no
//! earlier window did, so every target but those of the first window sees at least
//! context - stride tokens before it. The last window is moved back to end at the
//! stream's end, keeping all windows one length (so they batch).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::backend::{self, Backend, DeviceChoice};
use crate::checkpoint::{self, Checkpoint};
use crate::data;
use crate::data::tokenizer::TOKENIZER_FILE;
use crate::model::Gpt;
use crate::observe::Observer;

/// One window: inputs `tokens[start..start + len]`, targets one further; only the
/// last `scored` targets count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
    pub scored: usize,
}

/// The windows over a stream of `n` tokens (n >= 2) for a context of `context`
/// tokens and a stride of 1..=context.
pub fn windows(n: usize, context: usize, stride: usize) -> Vec<Window> {
    assert!(n >= 2 && (1..=context).contains(&stride));
    let last = n - 1; // index of the last target
    let len = context.min(last);
    let mut out = Vec::new();
    let (mut start, mut scored_to) = (0, 0);
    loop {
        let end = start + len;
        out.push(Window {
            start,
            len,
            scored: end - scored_to,
        });
        scored_to = end;
        if end == last {
            return out;
        }
        start = (start + stride).min(last - len);
    }
}

/// Total loss over the scored tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    /// Sum of -ln p(token) over the scored tokens.
    pub nats: f64,
    pub tokens: usize,
}

/// Scores `tokens` (at least 2) with windows of the model's context; windows are
/// batched so that a forward pass sees about `batch_tokens` positions.
pub fn score<B: Backend>(
    model: &mut Gpt<B>,
    tokens: &[u32],
    stride: usize,
    batch_tokens: usize,
) -> Score {
    let ws = windows(tokens.len(), model.config.block_size, stride);
    let t = ws[0].len;
    let per_batch = (batch_tokens / t).max(1);
    let mut total = Score::default();
    for batch in ws.chunks(per_batch) {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for w in batch {
            inputs.extend_from_slice(&tokens[w.start..w.start + t]);
            targets.extend_from_slice(&tokens[w.start + 1..w.start + t + 1]);
        }
        model.loss(&inputs, &targets, batch.len(), t);
        let losses = model.position_losses();
        for (w, row) in batch.iter().zip(losses.chunks(t)) {
            total.nats += row[t - w.scored..].iter().map(|&x| x as f64).sum::<f64>();
            total.tokens += w.scored;
        }
    }
    total
}

/// What `hgpt eval` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Mean loss, nats per token.
    pub loss: f64,
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Bits per byte of the scored text (text input only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_byte: Option<f64>,
}

impl Report {
    /// From a score, and for text input the UTF-8 bytes the scored tokens spell.
    pub fn new(score: Score, bytes: Option<usize>) -> Report {
        let loss = score.nats / score.tokens as f64;
        Report {
            loss,
            perplexity: loss.exp(),
            tokens: score.tokens,
            bits_per_byte: bytes.map(|b| score.nats / std::f64::consts::LN_2 / b as f64),
        }
    }
}

/// Which split of a prepared data directory to score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Val,
    Train,
}

/// What `hgpt eval` scores, and how.
pub struct EvalRequest<'a> {
    /// A step directory, or a run directory (its latest checkpoint).
    pub checkpoint: &'a Path,
    /// A prepared data directory, or a UTF-8 text file.
    pub data: &'a Path,
    pub split: Split,
    /// Score at most this many tokens.
    pub max_tokens: Option<usize>,
    /// Window stride; None for the context (windows side by side).
    pub stride: Option<usize>,
    pub device: DeviceChoice,
}

/// Tokens to score.
struct Stream {
    tokens: Vec<u32>,
    /// For text: the UTF-8 bytes the scored tokens (all but the first) spell.
    bytes: Option<usize>,
}

/// Loads the checkpoint and the data, and scores it on the chosen device (which
/// `observer` hears of).
pub fn run(req: &EvalRequest, observer: &mut dyn Observer) -> Result<Report> {
    let ckpt = Checkpoint::open(req.checkpoint)?;
    let context = ckpt.state.config.model.block_size;
    let stride = req.stride.unwrap_or(context);
    if !(1..=context).contains(&stride) {
        bail!("--stride {stride}: must be between 1 and the model's context ({context} tokens)");
    }
    if req.max_tokens == Some(0) {
        bail!("--max-tokens 0: must be at least 1");
    }
    // The first token is context only: N scored tokens need N + 1.
    let limit = req.max_tokens.map_or(usize::MAX, |n| n.saturating_add(1));
    let stream = if req.data.is_dir() {
        split_stream(req.data, req.split, &ckpt, limit)?
    } else {
        text_stream(req.data, &ckpt, limit)?
    };
    if stream.tokens.len() < 2 {
        bail!(
            "{}: too little data to score ({} tokens; at least 2 are needed)",
            req.data.display(),
            stream.tokens.len()
        );
    }
    let params = ckpt.read_params()?;
    let config = &ckpt.state.config;
    let (tokens, batch) = (&stream.tokens, 4096);
    let (backend, device_line) =
        backend::open(req.device, config.train.precision, config.model.head_size())?;
    observer.note(&device_line);
    let mut model = Gpt::with_params(backend, &config.model, &params);
    let score = score(&mut model, tokens, stride, batch);
    Ok(Report::new(score, stream.bytes))
}

/// A text file, tokenized with the checkpoint's tokenizer after an end-of-text
/// token (as documents are in prepared shards), so its first token is scored too.
fn text_stream(path: &Path, ckpt: &Checkpoint, limit: usize) -> Result<Stream> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
    let tokenizer = checkpoint::tokenizer::load(ckpt)?;
    let mut tokens = vec![tokenizer.eot()];
    tokens.extend(tokenizer.encode(&text));
    tokens.truncate(limit);
    let bytes = tokenizer.decode(&tokens[1..]).len();
    Ok(Stream {
        tokens,
        bytes: Some(bytes),
    })
}

/// One split of a prepared directory, which must be tokenized as the model's
/// training data was.
fn split_stream(dir: &Path, split: Split, ckpt: &Checkpoint, limit: usize) -> Result<Stream> {
    let name = match split {
        Split::Val => "val",
        Split::Train => "train",
    };
    let (shards, tokenizer) = data::prepared_split(dir, name)?;
    if let (Some(tok), Some(expected)) = (&tokenizer, &ckpt.state.tokenizer_hash)
        && tok.hash() != expected
    {
        bail!(
            "{}: sha256 {}, but the checkpoint's tokenizer is {expected} ({}): the data is not tokenized as the model's training data was",
            dir.join(TOKENIZER_FILE).display(),
            tok.hash(),
            ckpt.dir.display()
        );
    }
    let mut tokens = Vec::new();
    for shard in &shards {
        let n = shard.len().min(limit - tokens.len());
        shard.read(0, n, &mut tokens)?;
    }
    let vocab = ckpt.state.config.model.vocab_size;
    if let Some(&max) = tokens.iter().max()
        && max as usize >= vocab
    {
        bail!(
            "{}: holds token {max}, outside the vocabulary of the model in {} ({vocab} tokens)",
            dir.display(),
            ckpt.dir.display()
        );
    }
    Ok(Stream {
        tokens,
        bytes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target 1..n scored once, each (past the first window) with at least
    /// context - stride tokens of context, all windows one length.
    #[test]
    fn windows_score_each_target_once() {
        for n in 2..60 {
            for context in 1..12 {
                for stride in 1..=context {
                    let ws = windows(n, context, stride);
                    let mut seen = vec![0; n];
                    for w in &ws {
                        assert_eq!(w.len, ws[0].len);
                        assert!(w.start + w.len < n);
                        let first = w.start + w.len - w.scored + 1;
                        let targets = seen.iter_mut().enumerate().take(w.start + w.len + 1);
                        for (target, s) in targets.skip(first) {
                            *s += 1;
                            if w.start > 0 {
                                assert!(target - w.start > context - stride);
                            }
                        }
                    }
                    assert_eq!(seen[0], 0);
                    assert!(
                        seen[1..].iter().all(|&s| s == 1),
                        "n {n} context {context} stride {stride}"
                    );
                }
            }
        }
    }
}
