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
pub mod cost;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod noise;
pub mod operands;
mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::head::HeadKind;
pub use device::{DeviceChoice, GpuPrecision, Target, gpu_precision, open, open_cpu, open_gpu};
pub use operands::{AttnShape, Gelu, HeadGrads, Linear, Mat, Norm, Normed};
pub use plan::{ScratchItem, ScratchKind, StepShape};

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

/// Time and floor (FLOPs, fewest bytes: see [`cost`]) of one op, summed over a
/// profile's calls.
#[derive(Clone, Debug, Default)]
pub struct OpStats {
    pub calls: u64,
    pub time: Duration,
    pub flops: f64,
    pub bytes: f64,
}

impl OpStats {
    /// Counts one more call of `time` with floor `cost`.
    pub fn add(&mut self, time: Duration, cost: cost::Cost) {
        self.calls += 1;
        self.time += time;
        self.flops += cost.flops;
        self.bytes += cost.bytes;
    }
}

/// Shapes: N rows (B*T positions), C channels, OC output channels, V vocabulary, NH
/// attention heads, read from the operands (see [`operands`]). Matrices are row-major;
/// weights are (out, in).
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
    /// Bytes of device memory free for new buffers; None for a backend whose
    /// buffers live in host memory (the CPU).
    fn free_memory_bytes(&self) -> Option<usize> {
        None
    }
    /// How many GEMMs with a fused epilogue found no kernel for it and ran as
    /// separate kernels instead (0 on a backend that fuses nothing).
    fn epilogue_fallbacks(&self) -> usize {
        0
    }
    /// The most cached positions `attention_decode` takes, where the backend has a
    /// limit (so a generation whose context passes it is refused before it starts).
    fn max_decode_positions(&self) -> Option<usize> {
        None
    }
    /// Starts timing every op (for `hgpt bench`), where the backend can without
    /// waiting on each op (the CPU's ops return finished; the GPU records events
    /// around each); the default cannot.
    fn start_profile(&self) {}
    /// The per-op times and FLOPs since `start_profile`, by op name (empty when the
    /// backend does not profile).
    fn take_profile(&self) -> BTreeMap<&'static str, OpStats> {
        BTreeMap::new()
    }

    // ---- memory ----
    /// A new zero-filled buffer of `len` floats.
    fn alloc(&self, len: usize) -> Span;
    /// A new zero-filled buffer of `len` activations that only GEMMs read (as an
    /// operand), which a backend may store at its GEMMs' operand precision: the GEMMs
    /// see the same values, in fewer bytes. `read`, `write`, `fill` and `copy` still
    /// take and give floats; other ops may refuse such spans.
    fn alloc_gemm_operands(&self, len: usize) -> Span {
        self.alloc(len)
    }
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
    /// The device address of `span`'s first float, for a collective library that
    /// reads and writes device memory itself (NCCL, on the backend's stream); None
    /// for a backend whose buffers are host memory. `written`: the caller will write
    /// there (a backend keeping derived copies of the buffer marks them stale).
    /// Work the backend has queued but not launched is launched first, so what the
    /// caller enqueues next on the stream sees every earlier op's result.
    fn device_ptr(&self, _span: Span, _written: bool) -> Option<u64> {
        None
    }

    // ---- reductions (results come back to the host) ----
    /// Mean of the span's values, summed in f64 in a fixed order.
    fn mean(&self, src: Span) -> f64;
    /// Sum of squares (for the global gradient norm), in f64.
    fn sum_squares(&self, src: Span) -> f64;

    // ---- GPT ops ----
    /// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]; out (B*T, C), tokens (B*T).
    fn encoder_forward(&self, out: Mat, tokens: TokenSpan, wte: Mat, wpe: Mat, t: usize);
    /// dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:]
    fn encoder_backward(&self, dwte: Mat, dwpe: Mat, dout: Mat, tokens: TokenSpan, t: usize);

    /// out = (inp - mean) * rstd * w + b, per row of inp (N, C); saves mean and rstd.
    fn layernorm_forward(&self, out: Normed, inp: Mat, p: Norm, eps: f32);
    /// dinp += ..., dp.w += ..., dp.b += ..., from the weight `w` (C) and the forward's
    /// saved mean and rstd (`saved.out` is not read).
    fn layernorm_backward(&self, dinp: Mat, dp: Norm, dout: Mat, inp: Mat, w: Span, saved: Normed);

    /// out[n,oc] = inp[n,c] @ layer.w[oc,c]^T + layer.b[oc]
    fn matmul_forward(&self, out: Mat, inp: Mat, layer: Linear);
    /// dinp = dout @ w; dlayer.w += dout^T @ inp; dlayer.b += column sums of dout
    fn matmul_backward(&self, dinp: Mat, dlayer: Linear, dout: Mat, inp: Mat, w: Mat);

    /// Floats of saved state `attention_forward` needs per call (the backend's choice:
    /// full probabilities on the CPU, row log-sum-exps for flash attention).
    fn attention_state_len(&self, shape: AttnShape) -> usize;
    /// Causal multi-head self-attention. qkv (B*T, 3C) holds q, k, v (heads of size
    /// C/NH side by side); out (B*T, C) = concat over heads of softmax(q k^T/sqrt(hs)) v.
    fn attention_forward(&self, out: Mat, state: Span, qkv: Mat, shape: AttnShape);
    /// dqkv = gradient of the loss with respect to qkv, given the forward's output
    /// and state (flash attention's backward reads `out`).
    fn attention_backward(
        &self,
        dqkv: Mat,
        dout: Mat,
        qkv: Mat,
        out: Mat,
        state: Span,
        shape: AttnShape,
    );

    /// Attention of one new position over cached keys and values (KV-cached
    /// decoding). q[c] is the new position's query, k (t, c) and v (t, c) the keys and
    /// values of positions 0..t (the new position's last), heads of size
    /// hs = c/nh side by side. For each head h:
    /// out[h] = sum_{j<t} softmax_j(q[h].k[j,h] / sqrt(hs)) v[j,h],
    /// i.e. row t-1 of `attention_forward` on the same q, k, v.
    fn attention_decode(&self, out: Span, q: Span, k: Mat, v: Mat, nh: usize);

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
        residual: Mat,
        out: Normed,
        a: Mat,
        b: Mat,
        p: Norm,
        eps: f32,
    ) {
        self.add(residual.span, a.span, b.span);
        self.layernorm_forward(out, residual, p, eps);
    }

    /// A dense layer followed by GELU: out.pre = inp @ w^T + b (kept for the
    /// backward pass), out.out = gelu(out.pre).
    fn matmul_gelu_forward(&self, out: Gelu, inp: Mat, layer: Linear) {
        self.matmul_forward(out.pre, inp, layer);
        self.gelu_forward(out.out.span, out.pre.span);
    }

    /// The backward pass of a dense layer `w` whose input is act.out = gelu(act.pre):
    /// d.pre = gelu'(act.pre) * (dout @ w), dlayer.w += dout^T @ act.out, dlayer.b +=
    /// column sums of dout. `d.out` is scratch for dout @ w, which a fused backend
    /// need not write.
    fn gelu_matmul_backward(&self, d: Gelu, dlayer: Linear, dout: Mat, act: Gelu, w: Mat) {
        self.matmul_backward(d.out, dlayer, dout, act.out, w);
        self.gelu_backward(d.pre.span, act.pre.span, d.out.span);
    }

    /// The output head. h (N, C) final hidden states, w (V, C) class centres
    /// (harmonic) or unembedding rows (softmax), targets (N). Writes the per-position
    /// loss -log p(target) into `losses` (N); with `grads`, the gradients of `scale`
    /// times their sum.
    fn head_loss(
        &self,
        losses: Span,
        grads: Option<HeadGrads>,
        h: Mat,
        w: Mat,
        targets: TokenSpan,
        kind: HeadKind,
    );
    /// The head's logits into out (N, V): dot products for softmax, z = -(n/2) ln s
    /// for the harmonic head, so that p = softmax(logits) either way.
    fn head_logits(&self, out: Mat, h: Mat, w: Mat, kind: HeadKind);

    /// One AdamW update of `params` from `grads`, with moments `m` and `v`.
    /// Weight decay is decoupled: params -= lr * weight_decay * params.
    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW);

    /// One SGLD step of `params` from `grads`, pulled toward `anchor` (w*); see
    /// [`SgldStep`]. The three spans have the same length.
    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep);
}
