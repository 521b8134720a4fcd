//! Incremental decoding with a key/value cache, for generation.
//!
//! `prefill` runs a prompt through the ordinary forward pass and keeps every
//! layer's keys and values; each `decode_step` then pushes one token through the
//! blocks at n = 1, attending over the cache with `attention_decode`, so a new
//! token costs one position's worth of work instead of a forward pass over the
//! whole context.

use super::{Gpt, idx};
use crate::backend::{Backend, Span};

/// Per-layer key and value caches [block_size, c] and one position's scratch.
pub struct KvCache {
    /// Positions cached so far.
    len: usize,
    keys: Vec<Span>,
    values: Vec<Span>,
    embed: Span,
    residual: Span,
    residual2: Span,
    ln: Span,
    mean: Span,
    rstd: Span,
    qkv: Span,
    atty: Span,
    proj: Span,
    fch: Span,
    fch_gelu: Span,
    logits: Span,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<B: Backend> Gpt<B> {
    /// An empty cache for this model (room for block_size positions).
    pub fn kv_cache(&self) -> KvCache {
        let m = &self.config;
        let (c, t) = (m.n_embd, m.block_size);
        let alloc = |len| self.backend.alloc(len);
        KvCache {
            len: 0,
            keys: (0..m.n_layer).map(|_| alloc(t * c)).collect(),
            values: (0..m.n_layer).map(|_| alloc(t * c)).collect(),
            embed: alloc(c),
            residual: alloc(c),
            residual2: alloc(c),
            ln: alloc(c),
            mean: alloc(1),
            rstd: alloc(1),
            qkv: alloc(3 * c),
            atty: alloc(c),
            proj: alloc(c),
            fch: alloc(4 * c),
            fch_gelu: alloc(4 * c),
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
    /// returns the logits that predict the token after it.
    pub fn decode_step(&self, cache: &mut KvCache, token: u32) -> Vec<f32> {
        let m = &self.config;
        let (c, nh, pos) = (m.n_embd, m.n_head, cache.len);
        assert!(pos < m.block_size, "KV cache full ({pos} positions)");
        let eps = m.ln_eps as f32;
        let be = &self.backend;
        let kc = &*cache;
        be.copy(kc.embed, self.p(idx::WTE).slice(token as usize * c, c));
        // residual = the embedding, then ln = the LayerNorm that reads it; each later
        // residual add is fused with the LayerNorm after it, as in `trunk_forward`.
        let residual_ln = |residual: Span, a: Span, b: Span, after: usize| {
            let (w, bias) = self.ln_params_after(after);
            be.residual_layernorm_forward(
                residual, kc.ln, kc.mean, kc.rstd, a, b, w, bias, 1, c, eps,
            )
        };
        residual_ln(kc.residual, kc.embed, self.p(idx::WPE).slice(pos * c, c), 0);
        for l in 0..m.n_layer {
            let linear = |out: Span, inp: Span, w: usize, b: usize, ic: usize, oc: usize| {
                be.matmul_forward(out, inp, self.pl(w, l), Some(self.pl(b, l)), 1, ic, oc)
            };
            linear(kc.qkv, kc.ln, idx::QKVW, idx::QKVB, c, 3 * c);
            be.copy(kc.keys[l].slice(pos * c, c), kc.qkv.slice(c, c));
            be.copy(kc.values[l].slice(pos * c, c), kc.qkv.slice(2 * c, c));
            be.attention_decode(
                kc.atty,
                kc.qkv.slice(0, c),
                kc.keys[l].slice(0, (pos + 1) * c),
                kc.values[l].slice(0, (pos + 1) * c),
                pos + 1,
                c,
                nh,
            );
            linear(kc.proj, kc.atty, idx::ATTPROJW, idx::ATTPROJB, c, c);
            be.residual_layernorm_forward(
                kc.residual2,
                kc.ln,
                kc.mean,
                kc.rstd,
                kc.residual,
                kc.proj,
                self.pl(idx::LN2W, l),
                self.pl(idx::LN2B, l),
                1,
                c,
                eps,
            );
            be.matmul_gelu_forward(
                kc.fch,
                kc.fch_gelu,
                kc.ln,
                self.pl(idx::FCW, l),
                Some(self.pl(idx::FCB, l)),
                1,
                c,
                4 * c,
            );
            linear(kc.proj, kc.fch_gelu, idx::FCPROJW, idx::FCPROJB, 4 * c, c);
            residual_ln(kc.residual, kc.residual2, kc.proj, l + 1);
        }
        cache.len += 1;
        self.head_row(cache, cache.ln)
    }

    /// Logits of one final hidden state h[c].
    fn head_row(&self, cache: &KvCache, h: Span) -> Vec<f32> {
        let m = &self.config;
        self.backend.head_logits(
            cache.logits,
            h,
            self.p(self.layout.head_index()),
            1,
            m.n_embd,
            m.vocab_size,
            self.head_kind(),
        );
        self.backend.read(cache.logits)
    }
}
