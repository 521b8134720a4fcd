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
//! the unfused sequence, so the CPU backend computes exactly what it did unfused.

pub mod decode;
pub mod layout;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::backend::{Backend, Span, TokenSpan};
use crate::config::ModelConfig;
use crate::head::HeadKind;
pub use decode::KvCache;
pub use layout::{Init, LayerParams, ParamLayout, ParamTensors, idx};

/// Activations of one forward pass at a given (B, T) shape, llm.c's
/// `ActivationTensors`: N = B*T positions, C = n_embd, L = n_layer.
struct Activations {
    b: usize,
    t: usize,
    /// The one allocation every float span below is carved from.
    all: Span,
    inputs: TokenSpan,  // (B, T)
    targets: TokenSpan, // (B, T)
    encoded: Span,      // (N, C) wte + wpe
    layers: Vec<LayerActs>,
    /// Per layer, what `attention_backward` needs (`Backend::attention_state_len`).
    att_states: Vec<Span>,
    lnf: Span,      // (N, C)
    lnf_mean: Span, // (N)
    lnf_rstd: Span, // (N)
    losses: Span,   // (N)
    dacts: ActGrads,
}

/// One block's activations (N rows; the decoder's one position has N = 1).
struct LayerActs {
    ln1: Span,       // (N, C)
    ln1_mean: Span,  // (N)
    ln1_rstd: Span,  // (N)
    qkv: Span,       // (N, 3C)
    atty: Span,      // (N, C) attention output, heads side by side
    attproj: Span,   // (N, C)
    residual2: Span, // (N, C) residual + attproj
    ln2: Span,       // (N, C)
    ln2_mean: Span,  // (N)
    ln2_rstd: Span,  // (N)
    fch: Span,       // (N, 4C)
    fch_gelu: Span,  // (N, 4C)
    fcproj: Span,    // (N, C)
    residual3: Span, // (N, C) residual2 + fcproj: the block's output
}

/// Gradients of activations: scratch for the backward pass, reused by every layer
/// in turn (the parameters' gradients are `Gpt::grads`).
struct ActGrads {
    residual: Span, // (N, C) the residual stream's, accumulated through the blocks
    lnf: Span,      // (N, C) of ln_f's output, written by the head
    ln: Span,       // (N, C) of ln_1's or ln_2's output
    qkv: Span,      // (N, 3C)
    atty: Span,     // (N, C)
    fch: Span,      // (N, 4C)
    fch_gelu: Span, // (N, 4C) scratch of `gelu_matmul_backward`
}

/// The LayerNorm that reads a block's output, with its weights: the next block's
/// ln_1, or ln_f after the last block.
struct NextLn {
    w: Span,    // (C)
    b: Span,    // (C)
    out: Span,  // (N, C)
    mean: Span, // (N)
    rstd: Span, // (N)
}

/// How a block's attention sees the sequence.
#[derive(Clone, Copy)]
enum Attend {
    /// Causal self-attention within each of B sequences of T positions, keeping
    /// `state` for the backward pass (training, prefill).
    Full { state: Span, b: usize, t: usize },
    /// One new position `pos` over the KV cache (maxT, C): its key and value go to
    /// row `pos` of `keys` and `values`, then its query attends over rows 0..=pos.
    Cached {
        keys: Span,
        values: Span,
        pos: usize,
    },
}

impl Attend {
    /// Positions the block processes (its N).
    fn rows(self) -> usize {
        match self {
            Attend::Full { b, t, .. } => b * t,
            Attend::Cached { .. } => 1,
        }
    }
}

/// Weight and bias of the LayerNorm that reads the residual stream after `l`
/// blocks: block l's ln_1, or ln_f after the last block.
fn ln_weights_after(p: &ParamTensors, l: usize) -> (Span, Span) {
    match p.layers.get(l) {
        Some(lp) => (lp.ln1w, lp.ln1b),
        None => (p.lnfw, p.lnfb),
    }
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
}

impl Activations {
    /// Allocates and carves the activations of a (b, t) forward and backward pass.
    fn new<B: Backend>(backend: &B, m: &ModelConfig, b: usize, t: usize) -> Activations {
        let state_len = backend.attention_state_len(b, t, m.n_head);
        let total = ActivationFloats::new(m, b, t, state_len).total;
        let all = backend.alloc(total);
        let mut acts = Self::carve(m, b, t, state_len, all);
        acts.inputs = backend.alloc_tokens(b * t);
        acts.targets = backend.alloc_tokens(b * t);
        acts
    }

    /// Lays the activations out in `base`, in order; token spans are left empty.
    fn carve(m: &ModelConfig, b: usize, t: usize, state_len: usize, base: Span) -> Activations {
        let (n, c) = (b * t, m.n_embd);
        let mut k = Carver { base, off: 0 };
        let encoded = k.take(n * c);
        let (layers, att_states) = (0..m.n_layer)
            .map(|_| {
                let (ln1, ln1_mean, ln1_rstd) = (k.take(n * c), k.take(n), k.take(n));
                let (qkv, atty) = (k.take(n * 3 * c), k.take(n * c));
                let att_state = k.take(state_len);
                let la = LayerActs {
                    ln1,
                    ln1_mean,
                    ln1_rstd,
                    qkv,
                    atty,
                    attproj: k.take(n * c),
                    residual2: k.take(n * c),
                    ln2: k.take(n * c),
                    ln2_mean: k.take(n),
                    ln2_rstd: k.take(n),
                    fch: k.take(n * 4 * c),
                    fch_gelu: k.take(n * 4 * c),
                    fcproj: k.take(n * c),
                    residual3: k.take(n * c),
                };
                (la, att_state)
            })
            .unzip();
        let lnf = k.take(n * c);
        let lnf_mean = k.take(n);
        let lnf_rstd = k.take(n);
        let losses = k.take(n);
        let dacts = ActGrads {
            residual: k.take(n * c),
            lnf: k.take(n * c),
            ln: k.take(n * c),
            qkv: k.take(n * 3 * c),
            atty: k.take(n * c),
            fch: k.take(n * 4 * c),
            fch_gelu: k.take(n * 4 * c),
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
            inputs: no_tokens,
            targets: no_tokens,
            encoded,
            layers,
            att_states,
            lnf,
            lnf_mean,
            lnf_rstd,
            losses,
            dacts,
        }
    }

    /// The residual stream entering block `l`: the embeddings, or block l-1's output.
    fn residual_before(&self, l: usize) -> Span {
        match l {
            0 => self.encoded,
            _ => self.layers[l - 1].residual3,
        }
    }

    /// The LayerNorm that reads the residual stream after `l` blocks.
    fn ln_after(&self, p: &ParamTensors, l: usize) -> NextLn {
        let (w, b) = ln_weights_after(p, l);
        let (out, mean, rstd) = match self.layers.get(l) {
            Some(la) => (la.ln1, la.ln1_mean, la.ln1_rstd),
            None => (self.lnf, self.lnf_mean, self.lnf_rstd),
        };
        NextLn {
            w,
            b,
            out,
            mean,
            rstd,
        }
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
    pub total: usize,
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
        let a = Activations::carve(m, b, t, state_len, unbounded);
        let end = |s: Span| s.off + s.len;
        let layers = end(a.residual_before(m.n_layer)) - end(a.encoded);
        let backward = a.all.len - a.dacts.residual.off;
        ActivationFloats {
            layers,
            attention_state: a.att_states.iter().map(|s| s.len).sum(),
            trunk: a.all.len - layers - backward,
            backward,
            total: a.all.len,
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
        let (n, c) = (b * t, self.config.n_embd);
        let eps = self.config.ln_eps as f32;
        let p = self.layout.tensors(self.params);
        let be = &self.backend;
        be.write_tokens(a.inputs, inputs);
        be.encoder_forward(a.encoded, a.inputs, p.wte, p.wpe, b, t, c);
        let ln1 = a.ln_after(&p, 0);
        be.layernorm_forward(
            ln1.out, ln1.mean, ln1.rstd, a.encoded, ln1.w, ln1.b, n, c, eps,
        );
        for (l, la) in a.layers.iter().enumerate() {
            let attend = Attend::Full {
                state: a.att_states[l],
                b,
                t,
            };
            let next = a.ln_after(&p, l + 1);
            self.block_forward(&p.layers[l], la, a.residual_before(l), &next, attend);
        }
    }

    /// One transformer block. `residual` (N, C) is the block's input and `la.ln1`
    /// its ln_1, already computed; writes the rest of `la` and `next`. Each residual
    /// add is fused with the LayerNorm that reads its result.
    fn block_forward(
        &self,
        lp: &LayerParams,
        la: &LayerActs,
        residual: Span,
        next: &NextLn,
        attend: Attend,
    ) {
        let (n, c, nh) = (attend.rows(), self.config.n_embd, self.config.n_head);
        let eps = self.config.ln_eps as f32;
        let be = &self.backend;
        be.matmul_forward(la.qkv, la.ln1, lp.qkvw, Some(lp.qkvb), n, c, 3 * c);
        match attend {
            Attend::Full { state, b, t } => {
                be.attention_forward(la.atty, state, la.qkv, b, t, c, nh)
            }
            Attend::Cached { keys, values, pos } => {
                be.copy(keys.slice(pos * c, c), la.qkv.slice(c, c));
                be.copy(values.slice(pos * c, c), la.qkv.slice(2 * c, c));
                let (seen_k, seen_v) =
                    (keys.slice(0, (pos + 1) * c), values.slice(0, (pos + 1) * c));
                be.attention_decode(la.atty, la.qkv.slice(0, c), seen_k, seen_v, pos + 1, c, nh);
            }
        }
        be.matmul_forward(la.attproj, la.atty, lp.attprojw, Some(lp.attprojb), n, c, c);
        be.residual_layernorm_forward(
            la.residual2,
            la.ln2,
            la.ln2_mean,
            la.ln2_rstd,
            residual,
            la.attproj,
            lp.ln2w,
            lp.ln2b,
            n,
            c,
            eps,
        );
        be.matmul_gelu_forward(
            la.fch,
            la.fch_gelu,
            la.ln2,
            lp.fcw,
            Some(lp.fcb),
            n,
            c,
            4 * c,
        );
        be.matmul_forward(
            la.fcproj,
            la.fch_gelu,
            lp.fcprojw,
            Some(lp.fcprojb),
            n,
            4 * c,
            c,
        );
        be.residual_layernorm_forward(
            la.residual3,
            next.out,
            next.mean,
            next.rstd,
            la.residual2,
            la.fcproj,
            next.w,
            next.b,
            n,
            c,
            eps,
        );
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
        let (n, c, v) = (b * t, self.config.n_embd, self.config.vocab_size);
        let head_w = self.layout.tensors(self.params).head;
        let head_dw = self.layout.tensors(self.grads).head;
        let grads = grad_scale.map(|k| (a.dacts.lnf, head_dw, k / n as f32));
        let be = &self.backend;
        be.write_tokens(a.targets, targets);
        be.head_loss(
            a.losses,
            grads,
            a.lnf,
            head_w,
            a.targets,
            n,
            c,
            v,
            self.head_kind(),
        );
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
        let (n, c, v) = (b * t, self.config.n_embd, self.config.vocab_size);
        let head_w = self.layout.tensors(self.params).head;
        let out = self.backend.alloc(n * v);
        self.backend
            .head_logits(out, a.lnf, head_w, n, c, v, self.head_kind());
        let logits = self.backend.read(out);
        self.backend.free(out);
        logits
    }

    /// Adds the gradient of the last `loss_and_head_grad` into `grads`, llm.c's
    /// gpt2_backward after the head: ln_f, the blocks in reverse, the embeddings.
    pub fn backward(&mut self) {
        let a = self.acts.as_ref().expect("forward before backward");
        let (b, t) = (a.b, a.t);
        let (n, c, nh) = (b * t, self.config.n_embd, self.config.n_head);
        let (p, g) = (
            self.layout.tensors(self.params),
            self.layout.tensors(self.grads),
        );
        let (be, d) = (&self.backend, &a.dacts);
        be.fill(d.residual, 0.0);
        let last = a.residual_before(a.layers.len());
        be.layernorm_backward(
            d.residual, g.lnfw, g.lnfb, d.lnf, last, p.lnfw, a.lnf_mean, a.lnf_rstd, n, c,
        );
        for (l, la) in a.layers.iter().enumerate().rev() {
            let (lp, lg) = (&p.layers[l], &g.layers[l]);
            // MLP: residual3 = residual2 + fcproj(gelu(fc(ln_2(residual2))))
            be.gelu_matmul_backward(
                d.fch,
                d.fch_gelu,
                lg.fcprojw,
                Some(lg.fcprojb),
                d.residual,
                la.fch_gelu,
                la.fch,
                lp.fcprojw,
                n,
                4 * c,
                c,
            );
            be.matmul_backward(
                d.ln,
                lg.fcw,
                Some(lg.fcb),
                d.fch,
                la.ln2,
                lp.fcw,
                n,
                c,
                4 * c,
            );
            be.layernorm_backward(
                d.residual,
                lg.ln2w,
                lg.ln2b,
                d.ln,
                la.residual2,
                lp.ln2w,
                la.ln2_mean,
                la.ln2_rstd,
                n,
                c,
            );
            // attention: residual2 = residual + attproj(attn(qkv(ln_1(residual))))
            be.matmul_backward(
                d.atty,
                lg.attprojw,
                Some(lg.attprojb),
                d.residual,
                la.atty,
                lp.attprojw,
                n,
                c,
                c,
            );
            be.attention_backward(d.qkv, d.atty, la.qkv, la.atty, a.att_states[l], b, t, c, nh);
            be.matmul_backward(
                d.ln,
                lg.qkvw,
                Some(lg.qkvb),
                d.qkv,
                la.ln1,
                lp.qkvw,
                n,
                c,
                3 * c,
            );
            be.layernorm_backward(
                d.residual,
                lg.ln1w,
                lg.ln1b,
                d.ln,
                a.residual_before(l),
                lp.ln1w,
                la.ln1_mean,
                la.ln1_rstd,
                n,
                c,
            );
        }
        be.encoder_backward(g.wte, g.wpe, d.residual, a.inputs, b, t, c);
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
