//! Incremental decoding with a key/value cache, for generation.
//!
//! `prefill` runs a prompt through the ordinary forward pass and keeps every
//! layer's keys and values; each `decode_step` then pushes one token through the
//! blocks at n = 1, attending over the cache with `attention_decode`, so a new
//! token costs one position's worth of work instead of a forward pass over the
//! whole context.

use super::{Attend, Gpt, LayerActs, NextLn, ln_weights_after};
use crate::backend::{Backend, Span};

/// Per-layer key and value caches and one position's activations. C = n_embd,
/// maxT = block_size, V = vocab_size.
pub struct KvCache {
    /// Positions cached so far.
    len: usize,
    keys: Vec<Span>,   // L x (maxT, C)
    values: Vec<Span>, // L x (maxT, C)
    embed: Span,       // (C) the new token's wte row
    /// The block's activations at N = 1, reused by every layer: the LayerNorm
    /// outputs share one span (ln1 = ln2 = the next block's ln_1), so do the two
    /// projections (attproj = fcproj), and `residual3` is also the block's input.
    step: LayerActs,
    logits: Span, // (V)
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The LayerNorm after `l` blocks, into the step's shared LayerNorm output.
    fn ln_after(&self, (w, b): (Span, Span)) -> NextLn {
        let s = &self.step;
        NextLn {
            w,
            b,
            out: s.ln1,
            mean: s.ln1_mean,
            rstd: s.ln1_rstd,
        }
    }
}

impl<B: Backend> Gpt<B> {
    /// An empty cache for this model (room for block_size positions).
    pub fn kv_cache(&self) -> KvCache {
        let m = &self.config;
        let (c, t) = (m.n_embd, m.block_size);
        let alloc = |len| self.backend.alloc(len);
        let (ln, mean, rstd, proj) = (alloc(c), alloc(1), alloc(1), alloc(c));
        KvCache {
            len: 0,
            keys: (0..m.n_layer).map(|_| alloc(t * c)).collect(),
            values: (0..m.n_layer).map(|_| alloc(t * c)).collect(),
            embed: alloc(c),
            step: LayerActs {
                ln1: ln,
                ln1_mean: mean,
                ln1_rstd: rstd,
                qkv: alloc(3 * c),
                atty: alloc(c),
                attproj: proj,
                residual2: alloc(c),
                ln2: ln,
                ln2_mean: mean,
                ln2_rstd: rstd,
                fch: alloc(4 * c),
                fch_gelu: alloc(4 * c),
                fcproj: proj,
                residual3: alloc(c),
            },
            logits: alloc(m.vocab_size),
        }
    }

    /// Fills `cache` afresh with `tokens` (1 to block_size of them) and returns the
    /// logits [vocab] that predict the token after them.
    pub fn prefill(&mut self, cache: &mut KvCache, tokens: &[u32]) -> Vec<f32> {
        assert!(!tokens.is_empty(), "prefill needs at least one token");
        let t = tokens.len();
        self.trunk_forward(tokens, 1, t);
        let a = self.acts.as_ref().expect("trunk_forward sets activations");
        let c = self.config.n_embd;
        for (l, la) in a.layers.iter().enumerate() {
            for p in 0..t {
                let row = la.qkv.slice(p * 3 * c, 3 * c);
                self.backend
                    .copy(cache.keys[l].slice(p * c, c), row.slice(c, c));
                self.backend
                    .copy(cache.values[l].slice(p * c, c), row.slice(2 * c, c));
            }
        }
        cache.len = t;
        self.head_row(cache, a.lnf.slice((t - 1) * c, c))
    }

    /// Appends `token` at the next position (which must be < block_size) and
    /// returns the logits that predict the token after it: the blocks of
    /// `trunk_forward` at N = 1, attending over the cache.
    pub fn decode_step(&self, cache: &mut KvCache, token: u32) -> Vec<f32> {
        let m = &self.config;
        let (c, pos) = (m.n_embd, cache.len);
        assert!(pos < m.block_size, "KV cache full ({pos} positions)");
        let eps = m.ln_eps as f32;
        let p = self.layout.tensors(self.params);
        let (be, kc) = (&self.backend, &*cache);
        let residual = kc.step.residual3;
        // residual = wte[token] + wpe[pos], fused with block 0's ln_1.
        be.copy(kc.embed, p.wte.slice(token as usize * c, c));
        let ln1 = kc.ln_after(ln_weights_after(&p, 0));
        be.residual_layernorm_forward(
            residual,
            ln1.out,
            ln1.mean,
            ln1.rstd,
            kc.embed,
            p.wpe.slice(pos * c, c),
            ln1.w,
            ln1.b,
            1,
            c,
            eps,
        );
        for (l, lp) in p.layers.iter().enumerate() {
            let attend = Attend::Cached {
                keys: kc.keys[l],
                values: kc.values[l],
                pos,
            };
            let next = kc.ln_after(ln_weights_after(&p, l + 1));
            self.block_forward(lp, &kc.step, residual, &next, attend);
        }
        cache.len += 1;
        self.head_row(cache, cache.step.ln1)
    }

    /// Logits of one final hidden state h[c].
    fn head_row(&self, cache: &KvCache, h: Span) -> Vec<f32> {
        let m = &self.config;
        let w = self.layout.tensors(self.params).head;
        self.backend.head_logits(
            cache.logits,
            h,
            w,
            1,
            m.n_embd,
            m.vocab_size,
            self.head_kind(),
        );
        self.backend.read(cache.logits)
    }
}
