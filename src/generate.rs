//! Text generation: sampling the next token from the model's logits, one token at
//! a time through the KV cache.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{self, Backend, DeviceChoice};
use crate::checkpoint::{self, Checkpoint};
use crate::config::ModelConfig;
use crate::data::Tokenizer;
use crate::memory;
use crate::model::{Gpt, ParamLayout};
use crate::observe::Observer;

/// How the next token is picked from the logits.
pub struct Sampler {
    /// 0 picks the most likely token (greedy).
    temperature: f32,
    /// Sample only among the k most likely tokens; 0 for all.
    top_k: usize,
    /// Only ids below this are drawn (see [`Sampler::within`]).
    vocab: usize,
    rng: ChaCha8Rng,
}

/// The index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(temperature: f32, top_k: usize, seed: u64) -> Sampler {
        Sampler {
            temperature,
            top_k,
            vocab: usize::MAX,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Draws only ids below `n`, the tokenizer's vocabulary: a model's vocabulary
    /// may be padded beyond it (config::padded_vocab), and a padding id is no text.
    pub fn within(mut self, n: usize) -> Sampler {
        self.vocab = n;
        self
    }

    /// The next token: the argmax when the temperature is 0, else a draw from
    /// softmax(logits / temperature) over the top_k largest logits, among the ids
    /// below the vocabulary given to [`Sampler::within`].
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        let logits = &logits[..self.vocab.min(logits.len())];
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        // Largest first; ties by id so the draw depends only on the seed.
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let top = logits[order[0] as usize];
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| (((logits[i as usize] - top) / self.temperature) as f64).exp())
            .collect();
        let mut r = self.rng.random::<f64>() * weights.iter().sum::<f64>();
        for (&id, w) in order.iter().zip(&weights) {
            if r < *w {
                return id;
            }
            r -= w;
        }
        *order.last().expect("at least one token")
    }
}

/// Generates up to `max_new` tokens after `prompt` (1 to block_size tokens),
/// handing each to `on_token` as soon as it is picked, and stopping early after
/// `stop`; an error if the logits are not finite. Each token costs one cached decoding step; when the context reaches
/// block_size, the cache is rebuilt from the newest half of it, so rebuilds stay
/// rare.
pub fn generate<B: Backend>(
    model: &mut Gpt<B>,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    stop: Option<u32>,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let block = model.config.block_size;
    assert!(
        !prompt.is_empty() && prompt.len() <= block,
        "prompt must hold 1 to block_size tokens"
    );
    let mut context = prompt.to_vec();
    let mut cache = model.kv_cache();
    let mut logits = model.prefill(&mut cache, &context);
    // Not max_new: it can be any number (the reader stops when it has enough).
    let mut out = Vec::with_capacity(max_new.min(block));
    while out.len() < max_new {
        // NaN would sort as the likeliest token (or poison every weight): refuse.
        if let Some(bad) = logits.iter().find(|x| !x.is_finite()) {
            bail!(
                "the model's logits are not finite ({bad}) after {} tokens: its weights or activations hold NaN or infinity",
                prompt.len() + out.len()
            );
        }
        let token = sampler.next(&logits);
        out.push(token);
        on_token(token)?;
        if Some(token) == stop || out.len() == max_new {
            break;
        }
        context.push(token);
        logits = if cache.len() < block {
            model.decode_step(&mut cache, token)
        } else {
            let keep = (block / 2).max(1);
            // Only the newest tokens are ever read again: the context stays bounded.
            context.drain(..context.len() - keep);
            model.prefill(&mut cache, &context)
        };
    }
    Ok(out)
}

/// What `hgpt generate` does.
pub struct GenerateRequest<'a> {
    /// A step directory, or a run directory (its latest checkpoint).
    pub checkpoint: &'a Path,
    pub prompt: &'a str,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    /// None: a random seed, noted to the observer so the text can be had again.
    pub seed: Option<u64>,
    pub device: DeviceChoice,
}

/// Generates on the chosen device, writing the prompt and then each piece of text
/// to `out` as soon as it is complete (a token can end inside a UTF-8 character;
/// such a tail waits for the token that completes it). `observer` hears of the
/// device, a random seed, and a prompt cut to the context.
pub fn run(req: &GenerateRequest, out: &mut impl Write, observer: &mut dyn Observer) -> Result<()> {
    if !(req.temperature >= 0.0 && req.temperature.is_finite()) {
        bail!(
            "--temperature {}: must be a number >= 0 (0 is greedy)",
            req.temperature
        );
    }
    let ckpt = Checkpoint::open(req.checkpoint)?;
    let tokenizer = checkpoint::tokenizer::load(&ckpt)?;
    let block = ckpt.state.config.model.block_size;
    let mut prompt = tokenizer.encode(req.prompt);
    if prompt.is_empty() {
        prompt.push(tokenizer.eot()); // an empty prompt starts a new document
    }
    if prompt.len() > block {
        observer.note(&format!(
            "note: the prompt is {} tokens, longer than the model's context; keeping its last {block}",
            prompt.len()
        ));
        prompt.drain(..prompt.len() - block);
    }
    let seed = req.seed.unwrap_or_else(|| {
        let seed = rand::random::<u64>() >> 12; // short enough to retype
        observer.note(&format!("seed {seed}"));
        seed
    });
    let mut sampler = Sampler::new(req.temperature, req.top_k, seed).within(tokenizer.vocab_size());
    let stream = Stream {
        tokenizer: &tokenizer,
        prompt: &prompt,
        max_new_tokens: req.max_new_tokens,
        sampler: &mut sampler,
    };
    let config = &ckpt.state.config;
    let (backend, device_line) =
        backend::open(req.device, config.train.precision, config.model.head_size())?;
    ensure_model_fits(&config.model, &backend, &ckpt.dir)?;
    ensure_context_decodes(&config.model, backend.max_decode_positions(), &ckpt.dir)?;
    // On stderr before any text, so the stream on stdout stays whole.
    observer.note(&device_line);
    let params = ckpt.read_params()?;
    write!(out, "{}", req.prompt)?;
    out.flush()?;
    stream.run(&mut Gpt::with_params(backend, &config.model, &params), out)
}

/// Refuses a model that cannot fit before anything is allocated: the weights read
/// on the host, and on the backend the weights, their gradient buffer and the KV
/// cache of a full context (f64: no size overflows).
fn ensure_model_fits(m: &ModelConfig, backend: &impl Backend, dir: &Path) -> Result<()> {
    let params = ParamLayout::new(m).total as f64;
    let kv_cache = 2.0 * m.n_layer as f64 * m.block_size as f64 * m.n_embd as f64;
    let model_bytes = 4.0 * (2.0 * params + kv_cache + m.vocab_size as f64);
    let what = format!("generating with {}", dir.display());
    if backend.free_memory_bytes().is_some() {
        memory::ensure_fits(model_bytes, &what, memory::available(backend)?.as_ref())?;
        memory::ensure_fits(4.0 * params, &what, memory::host_available()?.as_ref())
    } else {
        let host = memory::host_available()?;
        memory::ensure_fits(model_bytes + 4.0 * params, &what, host.as_ref())
    }
}

/// Refuses a model whose context is longer than the backend's KV-cached attention
/// takes (`limit`: `Backend::max_decode_positions`).
fn ensure_context_decodes(m: &ModelConfig, limit: Option<usize>, dir: &Path) -> Result<()> {
    match limit {
        Some(max) if m.block_size > max => bail!(
            "{}: model.block_size = {} is longer than this device's cached attention takes \
             ({max} positions); generate with --device cpu",
            dir.display(),
            m.block_size
        ),
        _ => Ok(()),
    }
}

/// A generation whose text goes to a writer as it comes.
struct Stream<'a> {
    tokenizer: &'a Tokenizer,
    prompt: &'a [u32],
    max_new_tokens: usize,
    sampler: &'a mut Sampler,
}

impl Stream<'_> {
    fn run<B: Backend>(self, model: &mut Gpt<B>, out: &mut impl Write) -> Result<()> {
        let (tokenizer, eot) = (self.tokenizer, self.tokenizer.eot());
        let mut tokens = Vec::new();
        let mut printed = 0;
        generate(
            model,
            self.prompt,
            self.max_new_tokens,
            self.sampler,
            Some(eot),
            |token| {
                if token == eot {
                    return Ok(());
                }
                tokens.push(token);
                let text = tokenizer.decode(&tokens);
                let complete = text.trim_end_matches(char::REPLACEMENT_CHARACTER);
                if complete.len() > printed {
                    write!(out, "{}", &complete[printed..])?;
                    out.flush()?;
                    printed = complete.len();
                }
                Ok(())
            },
        )?;
        let text = tokenizer.decode(&tokens);
        writeln!(out, "{}", &text[printed.min(text.len())..])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::ensure_context_decodes;
    use crate::config::Config;

    #[test]
    fn a_context_longer_than_the_devices_cached_attention_is_refused_naming_block_size() {
        let mut m = Config::tiny().model;
        let dir = Path::new("runs/x");
        m.block_size = 12256;
        assert!(ensure_context_decodes(&m, Some(12256), dir).is_ok());
        assert!(ensure_context_decodes(&m, None, dir).is_ok());
        m.block_size = 12257;
        let e = ensure_context_decodes(&m, Some(12256), dir)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runs/x") && e.contains("model.block_size = 12257") && e.contains("12256"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
