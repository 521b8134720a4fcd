//! Incremental decoding with a key/value cache, for generation.
//!
//! `prefill` runs a prompt through the ordinary forward pass and keeps every
//! layer's keys and values; each `decode_step` then pushes one token through the
//! blocks at n = 1, attending over the cache with `attention_decode`, so a new
//! token costs one position's worth of work instead of a forward pass over the
//! whole context.

use super::{Attend, Gpt, LayerActs, ln_after};
use crate::backend::{Backend, Gelu, Mat, Normed, Span};

/// Per-layer key and value caches and one position's activations. C = n_embd,
/// maxT = block_size, V = vocab_size.
pub struct KvCache {
    /// Positions cached so far.
    len: usize,
    keys: Vec<Mat>,   // L x (maxT, C)
    values: Vec<Mat>, // L x (maxT, C)
    embed: Mat,       // (1, C) the new token's wte row
    /// The block's activations at N = 1, reused by every layer: the LayerNorm
    /// outputs share one span (ln1 = ln2 = the next block's ln_1), so do the two
    /// projections (attproj = fcproj), and `residual3` is also the block's input.
    step: LayerActs,
    logits: Mat, // (1, V)
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

/// The query, key and value of one position's qkv row (3C).
pub(super) fn qkv_parts(row: Span) -> (Span, Span, Span) {
    let c = row.len / 3;
    (row.piece(0, c), row.piece(1, c), row.piece(2, c))
}

impl<B: Backend> Gpt<B> {
    /// An empty cache for this model (room for block_size positions).
    pub fn kv_cache(&self) -> KvCache {
        let m = &self.config;
        let (c, t) = (m.n_embd, m.block_size);
        let mat = |rows, cols| Mat::new(self.backend.alloc(rows * cols), rows, cols);
        let ln = Normed {
            out: mat(1, c),
            mean: self.backend.alloc(1),
            rstd: self.backend.alloc(1),
        };
        let proj = mat(1, c);
        KvCache {
            len: 0,
            keys: (0..m.n_layer).map(|_| mat(t, c)).collect(),
            values: (0..m.n_layer).map(|_| mat(t, c)).collect(),
            embed: mat(1, c),
            step: LayerActs {
                ln1: ln,
                qkv: mat(1, 3 * c),
                atty: mat(1, c),
                attproj: proj,
                residual2: mat(1, c),
                ln2: ln,
                fch: Gelu {
                    pre: mat(1, 4 * c),
                    out: mat(1, 4 * c),
                },
                fcproj: proj,
                residual3: mat(1, c),
            },
            logits: mat(1, m.vocab_size),
        }
    }

    /// Fills `cache` afresh with `tokens` (1 to block_size of them) and returns the
    /// logits [vocab] that predict the token after them.
    pub fn prefill(&mut self, cache: &mut KvCache, tokens: &[u32]) -> Vec<f32> {
        assert!(!tokens.is_empty(), "prefill needs at least one token");
        let t = tokens.len();
        self.trunk_forward(tokens, 1, t);
        let a = self.acts.as_ref().expect("trunk_forward sets activations");
        for (l, la) in a.layers.iter().enumerate() {
            for p in 0..t {
                let (_, k, v) = qkv_parts(la.qkv.row(p));
                self.backend.copy(cache.keys[l].row(p), k);
                self.backend.copy(cache.values[l].row(p), v);
            }
        }
        cache.len = t;
        self.head_row(cache, a.lnf.out.rows(t - 1, 1))
    }

    /// Appends `token` at the next position (which must be < block_size) and
    /// returns the logits that predict the token after it: the blocks of
    /// `trunk_forward` at N = 1, attending over the cache.
    pub fn decode_step(&self, cache: &mut KvCache, token: u32) -> Vec<f32> {
        let m = &self.config;
        let pos = cache.len;
        assert!(pos < m.block_size, "KV cache full ({pos} positions)");
        let eps = m.ln_eps as f32;
        let p = self.layout.tensors(self.params);
        let (be, kc) = (&self.backend, &*cache);
        let (residual, ln) = (kc.step.residual3, kc.step.ln1);
        // residual = wte[token] + wpe[pos], fused with block 0's ln_1.
        be.copy(kc.embed.span, p.wte.row(token as usize));
        let wpe = p.wpe.rows(pos, 1);
        be.residual_layernorm_forward(residual, ln, kc.embed, wpe, ln_after(&p, 0), eps);
        for (l, lp) in p.layers.iter().enumerate() {
            let attend = Attend::Cached {
                keys: kc.keys[l],
                values: kc.values[l],
                pos,
            };
            let next = (ln, ln_after(&p, l + 1));
            self.block_forward(lp, &kc.step, residual, next, attend);
        }
        cache.len += 1;
        self.head_row(cache, ln.out)
    }

    /// Logits of one final hidden state h (1, C).
    fn head_row(&self, cache: &KvCache, h: Mat) -> Vec<f32> {
        let w = self.layout.tensors(self.params).head;
        let be = &self.backend;
        be.head_logits(cache.logits, h, w, self.head_kind());
        be.read(cache.logits.span)
    }
}
