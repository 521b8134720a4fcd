//! The Backend trait: every operation the GPT model needs, forward and backward.
//!
//! The model (src/model) is written once against this trait and never knows which
//! backend runs it; a backend knows nothing of the model beyond the shapes of the op
//! it is asked for. Buffers live inside the backend and are named by [`Span`]s
//! (float data) and [`TokenSpan`]s (u32 token ids): cheap handles that the model
//! slices into named views, much as llm.c carves one allocation into pointers.
//!
//! Gradient conventions, uniform across ops so the model can chain them:
//! - parameter gradients (dweight, dbias, dwte, ...) are always accumulated (`+=`);
//! - activation gradients are overwritten (`=`), except `layernorm_backward`, which
//!   adds into `dinp`: that buffer is the residual stream's gradient, which also
//!   receives the skip connection's share.
//!
//! Spans passed as outputs must not overlap any other span of the same call.

mod boxed;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod noise;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::head::HeadKind;
pub use device::{DeviceChoice, Target, gpu_precision, open, open_cpu};

/// A contiguous range of floats inside one backend buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub buf: usize,
    pub off: usize,
    pub len: usize,
}

impl Span {
    /// The sub-range `[off, off + len)` of this span.
    pub fn slice(self, off: usize, len: usize) -> Span {
        assert!(
            off + len <= self.len,
            "span slice {off}+{len} exceeds {}",
            self.len
        );
        Span {
            buf: self.buf,
            off: self.off + off,
            len,
        }
    }

    /// The i-th of `self.len / size` equal consecutive pieces.
    pub fn piece(self, i: usize, size: usize) -> Span {
        self.slice(i * size, size)
    }
}

/// A contiguous range of u32 token ids inside one backend token buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenSpan {
    pub buf: usize,
    pub off: usize,
    pub len: usize,
}

impl TokenSpan {
    pub fn slice(self, off: usize, len: usize) -> TokenSpan {
        assert!(off + len <= self.len);
        TokenSpan {
            buf: self.buf,
            off: self.off + off,
            len,
        }
    }
}

/// Hyper-parameters of one AdamW update.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
    /// Multiplies every gradient before use (gradient clipping).
    pub grad_scale: f32,
}

/// One SGLD step localised at w* (src/llc/sampler.rs):
/// w <- w - (eps/2) (nbeta g + gamma (w - w*)) + sqrt(eps) xi, where xi_i is the
/// standard normal number i of the stream `noise_key` (noise::gaussian), drawn
/// the same way by every backend.
#[derive(Clone, Copy, Debug)]
pub struct SgldStep {
    pub epsilon: f32,
    pub nbeta: f32,
    pub gamma: f32,
    pub noise_key: u64,
}

impl SgldStep {
    /// Step `step` of chain `chain` in a sampler seeded with `seed`: the noise stream
    /// is a function of the three alone.
    pub fn new(epsilon: f64, nbeta: f64, gamma: f64, seed: u64, chain: u64, step: u64) -> SgldStep {
        SgldStep {
            epsilon: epsilon as f32,
            nbeta: nbeta as f32,
            gamma: gamma as f32,
            noise_key: noise::noise_key(seed, chain, step),
        }
    }

    /// eps/2, the drift's factor (in f32, as every backend uses it).
    pub fn half_eps(&self) -> f32 {
        self.epsilon / 2.0
    }

    /// sqrt(eps), the noise's standard deviation.
    pub fn noise_std(&self) -> f32 {
        self.epsilon.sqrt()
    }
}

/// Wall time and floating-point work of one op, summed over a profile's calls.
#[derive(Clone, Debug, Default)]
pub struct OpStats {
    pub calls: u64,
    pub time: Duration,
    pub flops: f64,
}

/// Shapes: `n` rows (B*T positions), `c` channels, `oc` output channels, `v` vocabulary,
/// `nh` attention heads. Matrices are row-major; weights are `[out, in]`.
pub trait Backend {
    /// A short human-readable description ("cpu (2 threads, f32)").
    fn describe(&self) -> String;
    /// What this backend runs on (for the memory plan and the benchmark).
    fn target(&self) -> Target;
    /// Waits until all queued work is done (for timing); a backend whose ops return
    /// finished need not.
    fn synchronize(&self) {}
    /// The most bytes of buffers this backend has held at once.
    fn peak_memory_bytes(&self) -> usize;
    /// Starts timing every op (for `hgpt bench`), where the backend can without
    /// waiting on each op; the default cannot.
    fn start_profile(&self) {}
    /// The per-op times and FLOPs since `start_profile`, by op name (empty when the
    /// backend does not profile).
    fn take_profile(&self) -> BTreeMap<&'static str, OpStats> {
        BTreeMap::new()
    }

    // ---- memory ----
    /// A new zero-filled buffer of `len` floats.
    fn alloc(&self, len: usize) -> Span;
    /// A new zero-filled buffer of `len` token ids.
    fn alloc_tokens(&self, len: usize) -> TokenSpan;
    /// Releases the whole buffers behind these spans (which must start at offset 0).
    fn free(&self, span: Span);
    fn free_tokens(&self, span: TokenSpan);
    fn write(&self, dst: Span, src: &[f32]);
    fn read(&self, src: Span) -> Vec<f32>;
    fn write_tokens(&self, dst: TokenSpan, src: &[u32]);
    fn fill(&self, dst: Span, value: f32);
    fn copy(&self, dst: Span, src: Span);

    // ---- reductions (results come back to the host) ----
    /// Mean of the span's values, summed in f64 in a fixed order.
    fn mean(&self, src: Span) -> f64;
    /// Sum of squares (for the global gradient norm), in f64.
    fn sum_squares(&self, src: Span) -> f64;

    // ---- GPT ops ----
    /// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
    fn encoder_forward(
        &self,
        out: Span,
        tokens: TokenSpan,
        wte: Span,
        wpe: Span,
        b: usize,
        t: usize,
        c: usize,
    );
    /// dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:]
    fn encoder_backward(
        &self,
        dwte: Span,
        dwpe: Span,
        dout: Span,
        tokens: TokenSpan,
        b: usize,
        t: usize,
        c: usize,
    );

    /// out = (inp - mean) * rstd * weight + bias, per row; saves mean and rstd.
    fn layernorm_forward(
        &self,
        out: Span,
        mean: Span,
        rstd: Span,
        inp: Span,
        weight: Span,
        bias: Span,
        n: usize,
        c: usize,
        eps: f32,
    );
    /// dinp += ..., dweight += ..., dbias += ...
    fn layernorm_backward(
        &self,
        dinp: Span,
        dweight: Span,
        dbias: Span,
        dout: Span,
        inp: Span,
        weight: Span,
        mean: Span,
        rstd: Span,
        n: usize,
        c: usize,
    );

    /// out[n,oc] = inp[n,c] @ weight[oc,c]^T + bias[oc]
    fn matmul_forward(
        &self,
        out: Span,
        inp: Span,
        weight: Span,
        bias: Option<Span>,
        n: usize,
        c: usize,
        oc: usize,
    );
    /// dinp = dout @ weight; dweight += dout^T @ inp; dbias += column sums of dout
    fn matmul_backward(
        &self,
        dinp: Span,
        dweight: Span,
        dbias: Option<Span>,
        dout: Span,
        inp: Span,
        weight: Span,
        n: usize,
        c: usize,
        oc: usize,
    );

    /// Floats of saved state `attention_forward` needs per call (the backend's choice:
    /// full probabilities on the CPU, row log-sum-exps for flash attention).
    fn attention_state_len(&self, b: usize, t: usize, nh: usize) -> usize;
    /// Causal multi-head self-attention. qkv[b,t,0..3c] holds q, k, v (heads of size
    /// c/nh side by side); out[b,t,c] = concat over heads of softmax(q k^T/sqrt(hs)) v.
    fn attention_forward(
        &self,
        out: Span,
        state: Span,
        qkv: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    );
    /// dqkv = gradient of the loss with respect to qkv.
    fn attention_backward(
        &self,
        dqkv: Span,
        dout: Span,
        qkv: Span,
        out: Span,
        state: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    );

    /// Attention of one new position over cached keys and values (KV-cached
    /// decoding). q[c] is the new position's query, k[t,c] and v[t,c] the keys and
    /// values of positions 0..t (the new position's last), heads of size
    /// hs = c/nh side by side. For each head h:
    /// out[h] = sum_{j<t} softmax_j(q[h].k[j,h] / sqrt(hs)) v[j,h],
    /// i.e. row t-1 of `attention_forward` on the same q, k, v.
    fn attention_decode(&self, out: Span, q: Span, k: Span, v: Span, t: usize, c: usize, nh: usize);

    /// GELU, tanh approximation.
    fn gelu_forward(&self, out: Span, inp: Span);
    /// dinp = gelu'(inp) * dout
    fn gelu_backward(&self, dinp: Span, inp: Span, dout: Span);

    /// out = a + b
    fn add(&self, out: Span, a: Span, b: Span);

    // ---- fused ops: each has a default that chains the ops above, so the CPU
    // backend runs exactly the unfused sequence; a backend may override it with
    // fewer passes over memory. ----

    /// The residual connection and the LayerNorm after it:
    /// residual = a + b, then out = layernorm(residual) (saving mean and rstd).
    fn residual_layernorm_forward(
        &self,
        residual: Span,
        out: Span,
        mean: Span,
        rstd: Span,
        a: Span,
        b: Span,
        weight: Span,
        bias: Span,
        n: usize,
        c: usize,
        eps: f32,
    ) {
        self.add(residual, a, b);
        self.layernorm_forward(out, mean, rstd, residual, weight, bias, n, c, eps);
    }

    /// A dense layer followed by GELU: pre = inp @ weight^T + bias (kept for the
    /// backward pass), out = gelu(pre).
    fn matmul_gelu_forward(
        &self,
        pre: Span,
        out: Span,
        inp: Span,
        weight: Span,
        bias: Option<Span>,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        self.matmul_forward(pre, inp, weight, bias, n, c, oc);
        self.gelu_forward(out, pre);
    }

    /// The backward pass of a dense layer whose input is act = gelu(pre)
    /// (out[n,oc] = act[n,c] @ weight^T + bias): dpre = gelu'(pre) * (dout @ weight),
    /// dweight += dout^T @ act, dbias += column sums of dout. `dact` [n, c] is
    /// scratch for dout @ weight, which a fused backend need not write.
    fn gelu_matmul_backward(
        &self,
        dpre: Span,
        dact: Span,
        dweight: Span,
        dbias: Option<Span>,
        dout: Span,
        act: Span,
        pre: Span,
        weight: Span,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        self.matmul_backward(dact, dweight, dbias, dout, act, weight, n, c, oc);
        self.gelu_backward(dpre, pre, dact);
    }

    /// The output head. h[n,c] final hidden states, w[v,c] class centres (harmonic)
    /// or unembedding rows (softmax), targets[n]. Writes the per-position loss
    /// -log p(target) into `losses[n]`. With `grads = Some((dh, dw, scale))`:
    /// dh = scale * dL/dh (overwritten), dw += scale * dL/dw.
    fn head_loss(
        &self,
        losses: Span,
        grads: Option<(Span, Span, f32)>,
        h: Span,
        w: Span,
        targets: TokenSpan,
        n: usize,
        c: usize,
        v: usize,
        kind: HeadKind,
    );
    /// The head's logits into out[n,v]: dot products for softmax, z = -(n/2) ln s for
    /// the harmonic head, so that p = softmax(logits) either way.
    fn head_logits(
        &self,
        out: Span,
        h: Span,
        w: Span,
        n: usize,
        c: usize,
        v: usize,
        kind: HeadKind,
    );

    /// One AdamW update of `params` from `grads`, with moments `m` and `v`.
    /// Weight decay is decoupled: params -= lr * weight_decay * params.
    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW);

    /// One SGLD step of `params` from `grads`, pulled toward `anchor` (w*); see
    /// [`SgldStep`]. The three spans have the same length.
    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep);
}
