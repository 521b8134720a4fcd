//! GPT-2, written once against the Backend trait.
//!
//! Pre-LayerNorm blocks: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); then ln_f and
//! the output head (harmonic or softmax). Forward keeps every activation the
//! backward pass needs; backward runs the blocks in reverse, keeping the gradient of
//! the residual stream in one buffer that each LayerNorm backward adds into (so the
//! skip connection's gradient costs no pass of its own).
//!
//! The model calls the trait's fused ops where two steps meet: each residual add
//! with the LayerNorm after it, the MLP's first matmul with its GELU, and GELU's
//! backward with the backward of the matmul that reads it. Their default bodies are
//! the unfused sequence, so the CPU is the reference.
//!
//! Read it as llm.c's gpt2_forward/gpt2_backward: parameters come as named views
//! (`ParamTensors`, `LayerParams`), activations as shaped spans with their shapes in
//! comments, and one `block_forward` serves training and KV-cached decoding
//! (decode.rs), which differ only in how attention sees the sequence (`Attend`).

pub mod decode;
pub mod layout;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::backend::{AttnShape, Backend, Gelu, HeadGrads, Mat, Norm, Normed, Span, TokenSpan};
use crate::config::ModelConfig;
use crate::head::HeadKind;
pub use decode::KvCache;
use decode::qkv_parts;
pub use layout::{Init, LayerParams, ParamLayout, ParamTensors, idx};

/// Activations of one forward pass at a given (B, T) shape, llm.c's
/// `ActivationTensors`: N = B*T positions, C = n_embd, L = n_layer.
struct Activations {
    b: usize,
    t: usize,
    /// The allocation every float span below is carved from, but for...
    all: Span,
    /// ...the activations only GEMMs read (each layer's ln1.out, ln2.out and
    /// fch.out), carved from one `Backend::alloc_gemm_operands` allocation.
    gemm_operands: Span,
    inputs: TokenSpan,  // (B, T)
    targets: TokenSpan, // (B, T)
    encoded: Mat,       // (N, C) wte + wpe
    layers: Vec<LayerActs>,
    /// Per layer, what `attention_backward` needs (`Backend::attention_state_len`).
    att_states: Vec<Span>,
    lnf: Normed,  // (N, C), mean and rstd (N)
    losses: Span, // (N)
    dacts: ActGrads,
}

/// One block's activations (N rows; the decoder's one position has N = 1).
struct LayerActs {
    ln1: Normed,    // (N, C), mean and rstd (N)
    qkv: Mat,       // (N, 3C)
    atty: Mat,      // (N, C) attention output, heads side by side
    attproj: Mat,   // (N, C)
    residual2: Mat, // (N, C) residual + attproj
    ln2: Normed,    // (N, C), mean and rstd (N)
    fch: Gelu,      // (N, 4C) pre = fc(ln2), out = gelu(pre)
    fcproj: Mat,    // (N, C)
    residual3: Mat, // (N, C) residual2 + fcproj: the block's output
}

/// Gradients of activations: scratch for the backward pass, reused by every layer
/// in turn (the parameters' gradients are `Gpt::grads`).
struct ActGrads {
    residual: Mat, // (N, C) the residual stream's, accumulated through the blocks
    lnf: Mat,      // (N, C) of ln_f's output, written by the head
    ln: Mat,       // (N, C) of ln_1's or ln_2's output
    qkv: Mat,      // (N, 3C)
    atty: Mat,     // (N, C)
    fch: Gelu,     // (N, 4C) of fch's pre; `out` is `gelu_matmul_backward`'s scratch
}

/// How a block's attention sees the sequence.
#[derive(Clone, Copy)]
enum Attend {
    /// Causal self-attention within each of B sequences of T positions, keeping
    /// `state` for the backward pass (training, prefill).
    Full { state: Span, shape: AttnShape },
    /// One new position `pos` over the KV cache: its key and value go to row `pos`
    /// of `keys` and `values` (maxT, C), then its query attends over rows 0..=pos.
    Cached { keys: Mat, values: Mat, pos: usize },
}

/// The LayerNorm that reads the residual stream after `l` blocks: block l's ln_1,
/// or ln_f after the last block.
fn ln_after(p: &ParamTensors, l: usize) -> Norm {
    p.layers.get(l).map_or(p.lnf, |lp| lp.ln1)
}

/// Hands out consecutive pieces of one allocation.
struct Carver {
    base: Span,
    off: usize,
}

impl Carver {
    fn take(&mut self, len: usize) -> Span {
        let s = self.base.slice(self.off, len);
        self.off += len;
        s
    }

    fn mat(&mut self, rows: usize, cols: usize) -> Mat {
        Mat::new(self.take(rows * cols), rows, cols)
    }

    fn normed(&mut self, rows: usize, cols: usize) -> Normed {
        let out = self.mat(rows, cols);
        self.stats(out)
    }

    /// `out` with its mean and rstd (N each) taken here.
    fn stats(&mut self, out: Mat) -> Normed {
        Normed {
            out,
            mean: self.take(out.rows),
            rstd: self.take(out.rows),
        }
    }

    fn gelu(&mut self, rows: usize, cols: usize) -> Gelu {
        Gelu {
            pre: self.mat(rows, cols),
            out: self.mat(rows, cols),
        }
    }
}

impl Activations {
    /// Allocates and carves the activations of a (b, t) forward and backward pass.
    fn new<B: Backend>(backend: &B, m: &ModelConfig, b: usize, t: usize) -> Activations {
        let state_len = backend.attention_state_len(AttnShape { b, t, nh: m.n_head });
        let floats = ActivationFloats::new(m, b, t, state_len);
        let all = backend.alloc(floats.total);
        let gemm_operands = backend.alloc_gemm_operands(floats.gemm_operands);
        let mut acts = Self::carve(m, b, t, state_len, all, gemm_operands);
        acts.inputs = backend.alloc_tokens(b * t);
        acts.targets = backend.alloc_tokens(b * t);
        acts
    }

    /// Lays the activations out in `base`, in order, the GEMM-only ones in `gemm`;
    /// token spans are left empty.
    fn carve(
        m: &ModelConfig,
        b: usize,
        t: usize,
        state_len: usize,
        base: Span,
        gemm: Span,
    ) -> Activations {
        let (n, c) = (b * t, m.n_embd);
        let mut k = Carver { base, off: 0 };
        let mut g = Carver { base: gemm, off: 0 };
        let encoded = k.mat(n, c);
        let (layers, att_states) = (0..m.n_layer)
            .map(|_| {
                let ln1 = k.stats(g.mat(n, c));
                let (qkv, atty) = (k.mat(n, 3 * c), k.mat(n, c));
                let att_state = k.take(state_len);
                let la = LayerActs {
                    ln1,
                    qkv,
                    atty,
                    attproj: k.mat(n, c),
                    residual2: k.mat(n, c),
                    ln2: k.stats(g.mat(n, c)),
                    fch: Gelu {
                        pre: k.mat(n, 4 * c),
                        out: g.mat(n, 4 * c),
                    },
                    fcproj: k.mat(n, c),
                    residual3: k.mat(n, c),
                };
                (la, att_state)
            })
            .unzip();
        let lnf = k.normed(n, c);
        let losses = k.take(n);
        let dacts = ActGrads {
            residual: k.mat(n, c),
            lnf: k.mat(n, c),
            ln: k.mat(n, c),
            qkv: k.mat(n, 3 * c),
            atty: k.mat(n, c),
            fch: k.gelu(n, 4 * c),
        };
        let no_tokens = TokenSpan {
            buf: usize::MAX,
            off: 0,
            len: 0,
        };
        Activations {
            b,
            t,
            all: base.slice(0, k.off),
            gemm_operands: gemm.slice(0, g.off),
            inputs: no_tokens,
            targets: no_tokens,
            encoded,
            layers,
            att_states,
            lnf,
            losses,
            dacts,
        }
    }

    /// The residual stream entering block `l`: the embeddings, or block l-1's output.
    fn residual_before(&self, l: usize) -> Mat {
        match l {
            0 => self.encoded,
            _ => self.layers[l - 1].residual3,
        }
    }

    /// Where the LayerNorm after `l` blocks writes: block l's ln1, or lnf.
    fn ln_out_after(&self, l: usize) -> Normed {
        self.layers.get(l).map_or(self.lnf, |la| la.ln1)
    }
}

/// Floats of the activation buffer `Gpt` allocates for a (b, t) training step,
/// measured on the very layout the model carves (for the memory planner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationFloats {
    /// Everything the blocks keep for the backward pass, all layers together...
    pub layers: usize,
    /// ...of which the attention state (`Backend::attention_state_len` per layer).
    pub attention_state: usize,
    /// Embeddings' output, ln_f with its statistics, per-position losses.
    pub trunk: usize,
    /// Gradient scratch of the backward pass, shared by all layers.
    pub backward: usize,
    /// The allocation all of the above are carved from.
    pub total: usize,
    /// The second allocation (`Backend::alloc_gemm_operands`): the activations only
    /// GEMMs read, each layer's ln1.out, ln2.out and fch.out (6 N C), not counted above.
    pub gemm_operands: usize,
}

impl ActivationFloats {
    /// `state_len`: the backend's `attention_state_len(b, t, n_head)`.
    pub fn new(m: &ModelConfig, b: usize, t: usize, state_len: usize) -> ActivationFloats {
        // Carve a span that is never allocated; only the offsets matter.
        let unbounded = Span {
            buf: usize::MAX,
            off: 0,
            len: usize::MAX,
        };
        let a = Activations::carve(m, b, t, state_len, unbounded, unbounded);
        let end = |m: Mat| m.span.off + m.span.len;
        let layers = end(a.residual_before(m.n_layer)) - end(a.encoded);
        let backward = a.all.len - a.dacts.residual.span.off;
        ActivationFloats {
            layers,
            attention_state: a.att_states.iter().map(|s| s.len).sum(),
            trunk: a.all.len - layers - backward,
            backward,
            total: a.all.len,
            gemm_operands: a.gemm_operands.len,
        }
    }
}

pub struct Gpt<B: Backend> {
    pub config: ModelConfig,
    pub backend: B,
    pub layout: ParamLayout,
    /// All parameters, one flat buffer laid out by `layout`.
    pub params: Span,
    /// Gradients, same layout; accumulated by `backward` until zeroed.
    pub grads: Span,
    acts: Option<Activations>,
}

impl<B: Backend> Gpt<B> {
    /// A model with zeroed parameters; call `init` or load weights next.
    pub fn new(backend: B, config: &ModelConfig) -> Gpt<B> {
        let layout = ParamLayout::new(config);
        let params = backend.alloc(layout.total);
        let grads = backend.alloc(layout.total);
        Gpt {
            config: config.clone(),
            backend,
            layout,
            params,
            grads,
            acts: None,
        }
    }

    /// A model with the given parameters (laid out as `ParamLayout::new(config)`).
    pub fn with_params(backend: B, config: &ModelConfig, params: &[f32]) -> Gpt<B> {
        let model = Gpt::new(backend, config);
        model.write_params(params);
        model
    }

    /// GPT-2 initialisation, drawn on the host from a seeded ChaCha stream in layout
    /// order, so a seed gives the same weights on every backend.
    pub fn init(&self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut host = vec![0f32; self.layout.total];
        for t in &self.layout.tensors {
            let dst = &mut host[t.offset..t.offset + t.len()];
            match t.init {
                Init::Const(c) => dst.fill(c),
                Init::Normal(std) => {
                    let normal = Normal::new(0.0, std).expect("valid std");
                    dst.iter_mut().for_each(|x| *x = normal.sample(&mut rng));
                }
            }
        }
        self.backend.write(self.params, &host);
    }

    pub fn num_params(&self) -> usize {
        self.layout.total
    }

    pub fn head_kind(&self) -> HeadKind {
        self.config.head_kind()
    }

    fn ensure_acts(&mut self, b: usize, t: usize) {
        if let Some(a) = &self.acts {
            if (a.b, a.t) == (b, t) {
                return;
            }
            self.backend.free(a.all);
            self.backend.free(a.gemm_operands);
            self.backend.free_tokens(a.inputs);
            self.backend.free_tokens(a.targets);
        }
        self.acts = Some(Activations::new(&self.backend, &self.config, b, t));
    }

    /// Runs the trunk (embeddings, blocks, ln_f) on `inputs` (B, T), llm.c's
    /// gpt2_forward up to the head.
    fn trunk_forward(&mut self, inputs: &[u32], b: usize, t: usize) {
        assert_eq!(inputs.len(), b * t, "inputs must be b*t tokens");
        assert!(
            t <= self.config.block_size,
            "sequence longer than block_size"
        );
        self.ensure_acts(b, t);
        let a = self.acts.as_ref().unwrap();
        let eps = self.config.ln_eps as f32;
        let shape = AttnShape {
            b,
            t,
            nh: self.config.n_head,
        };
        let p = self.layout.tensors(self.params);
        let be = &self.backend;
        be.write_tokens(a.inputs, inputs);
        be.encoder_forward(a.encoded, a.inputs, p.wte, p.wpe, t);
        be.layernorm_forward(a.ln_out_after(0), a.encoded, ln_after(&p, 0), eps);
        for (l, la) in a.layers.iter().enumerate() {
            let next = (a.ln_out_after(l + 1), ln_after(&p, l + 1));
            let attend = Attend::Full {
                state: a.att_states[l],
                shape,
            };
            self.block_forward(&p.layers[l], la, a.residual_before(l), next, attend);
        }
    }

    /// One transformer block. `residual` (N, C) is the block's input and `la.ln1`
    /// its ln_1, already computed; writes the rest of `la` and `next`, the LayerNorm
    /// that reads the block's output. Each residual add is fused with that LayerNorm.
    fn block_forward(
        &self,
        lp: &LayerParams,
        la: &LayerActs,
        residual: Mat,
        (next, next_ln): (Normed, Norm),
        attend: Attend,
    ) {
        let eps = self.config.ln_eps as f32;
        let be = &self.backend;
        be.matmul_forward(la.qkv, la.ln1.out, lp.qkv);
        match attend {
            Attend::Full { state, shape } => be.attention_forward(la.atty, state, la.qkv, shape),
            Attend::Cached { keys, values, pos } => {
                let (q, k, v) = qkv_parts(la.qkv.row(0));
                be.copy(keys.row(pos), k);
                be.copy(values.row(pos), v);
                let (k, v) = (keys.rows(0, pos + 1), values.rows(0, pos + 1));
                be.attention_decode(la.atty.row(0), q, k, v, self.config.n_head);
            }
        }
        be.matmul_forward(la.attproj, la.atty, lp.attproj);
        be.residual_layernorm_forward(la.residual2, la.ln2, residual, la.attproj, lp.ln2, eps);
        be.matmul_gelu_forward(la.fch, la.ln2.out, lp.fc);
        be.matmul_forward(la.fcproj, la.fch.out, lp.fcproj);
        be.residual_layernorm_forward(la.residual3, next, la.residual2, la.fcproj, next_ln, eps);
    }

    /// Mean loss over the b*t positions of `inputs` (B, T) predicting `targets` (B, T).
    pub fn loss(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f64 {
        self.forward(inputs, targets, b, t, None)
    }

    /// Mean loss, as `loss`, and the head's share of the backward pass: the gradient
    /// of `scale` times the mean loss is added to the head's weights in `grads` and
    /// left at ln_f's output for `backward` (llm.c's fused classifier). scale =
    /// 1/grad_accum sums micro-batches into the gradient of the mean over the step.
    pub fn loss_and_head_grad(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> f64 {
        self.forward(inputs, targets, b, t, Some(scale))
    }

    fn forward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        grad_scale: Option<f32>,
    ) -> f64 {
        assert_eq!(targets.len(), b * t, "targets must be b*t tokens");
        self.trunk_forward(inputs, b, t);
        let a = self.acts.as_ref().unwrap();
        let grads = grad_scale.map(|k| HeadGrads {
            dh: a.dacts.lnf,
            dw: self.layout.tensors(self.grads).head,
            scale: k / (b * t) as f32,
        });
        let (w, kind, be) = (
            self.layout.tensors(self.params).head,
            self.head_kind(),
            &self.backend,
        );
        be.write_tokens(a.targets, targets);
        be.head_loss(a.losses, grads, a.lnf.out, w, a.targets, kind);
        be.mean(a.losses)
    }

    /// Per-position losses of the last `loss` (for evaluation tools).
    pub fn position_losses(&self) -> Vec<f32> {
        let a = self.acts.as_ref().expect("forward first");
        self.backend.read(a.losses)
    }

    /// Logits [b, t, vocab] of `inputs`: p = softmax(logits) for either head.
    pub fn logits(&mut self, inputs: &[u32], b: usize, t: usize) -> Vec<f32> {
        self.trunk_forward(inputs, b, t);
        let a = self.acts.as_ref().unwrap();
        let head_w = self.layout.tensors(self.params).head;
        let out = Mat::new(self.backend.alloc(b * t * head_w.rows), b * t, head_w.rows);
        let be = &self.backend;
        be.head_logits(out, a.lnf.out, head_w, self.head_kind());
        let logits = be.read(out.span);
        be.free(out.span);
        logits
    }

    /// Final hidden states [b, t, C] of `inputs` (after ln_f): the points the head
    /// compares with its class centres.
    pub fn hidden(&mut self, inputs: &[u32], b: usize, t: usize) -> Vec<f32> {
        self.trunk_forward(inputs, b, t);
        self.backend.read(self.acts.as_ref().unwrap().lnf.out.span)
    }

    /// Adds the gradient of the last `loss_and_head_grad` into `grads`, llm.c's
    /// gpt2_backward after the head: ln_f, the blocks in reverse, the embeddings.
    pub fn backward(&mut self) {
        let a = self.acts.as_ref().expect("forward before backward");
        let shape = AttnShape {
            b: a.b,
            t: a.t,
            nh: self.config.n_head,
        };
        let (p, g) = (
            self.layout.tensors(self.params),
            self.layout.tensors(self.grads),
        );
        let (be, d) = (&self.backend, &a.dacts);
        be.fill(d.residual.span, 0.0);
        let last = a.residual_before(a.layers.len());
        be.layernorm_backward(d.residual, g.lnf, d.lnf, last, p.lnf.w, a.lnf);
        for (l, la) in a.layers.iter().enumerate().rev() {
            let (lp, lg) = (&p.layers[l], &g.layers[l]);
            // MLP: residual3 = residual2 + fcproj(gelu(fc(ln_2(residual2))))
            be.gelu_matmul_backward(d.fch, lg.fcproj, d.residual, la.fch, lp.fcproj.w);
            be.matmul_backward(d.ln, lg.fc, d.fch.pre, la.ln2.out, lp.fc.w);
            be.layernorm_backward(d.residual, lg.ln2, d.ln, la.residual2, lp.ln2.w, la.ln2);
            // attention: residual2 = residual + attproj(attn(qkv(ln_1(residual))))
            be.matmul_backward(d.atty, lg.attproj, d.residual, la.atty, lp.attproj.w);
            be.attention_backward(d.qkv, d.atty, la.qkv, la.atty, a.att_states[l], shape);
            be.matmul_backward(d.ln, lg.qkv, d.qkv, la.ln1.out, lp.qkv.w);
            let residual = a.residual_before(l);
            be.layernorm_backward(d.residual, lg.ln1, d.ln, residual, lp.ln1.w, la.ln1);
        }
        be.encoder_backward(g.wte, g.wpe, d.residual, a.inputs, a.t);
    }

    pub fn zero_grads(&self) {
        self.backend.fill(self.grads, 0.0);
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        self.backend.sum_squares(self.grads).sqrt()
    }

    pub fn read_params(&self) -> Vec<f32> {
        self.backend.read(self.params)
    }

    pub fn write_params(&self, host: &[f32]) {
        self.backend.write(self.params, host);
    }

    pub fn read_grads(&self) -> Vec<f32> {
        self.backend.read(self.grads)
    }
}
