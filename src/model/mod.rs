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
pub use layout::{Init, ParamLayout, idx};

/// Activations of one forward pass at a given (batch, time) shape.
struct Activations {
    b: usize,
    t: usize,
    all: Span,
    inputs: TokenSpan,
    targets: TokenSpan,
    encoded: Span,
    layers: Vec<LayerActs>,
    lnf: Span,
    lnf_mean: Span,
    lnf_rstd: Span,
    losses: Span,
    grads: GradActs,
}

struct LayerActs {
    ln1: Span,
    ln1_mean: Span,
    ln1_rstd: Span,
    qkv: Span,
    atty: Span,
    att_state: Span,
    attproj: Span,
    residual2: Span,
    ln2: Span,
    ln2_mean: Span,
    ln2_rstd: Span,
    fch: Span,
    fch_gelu: Span,
    fcproj: Span,
    residual3: Span,
}

/// Gradient scratch for the backward pass, reused by every layer in turn.
struct GradActs {
    residual: Span,
    lnf: Span,
    ln: Span,
    qkv: Span,
    atty: Span,
    fch: Span,
    fch_gelu: Span,
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
        let layers = (0..m.n_layer)
            .map(|_| LayerActs {
                ln1: k.take(n * c),
                ln1_mean: k.take(n),
                ln1_rstd: k.take(n),
                qkv: k.take(n * 3 * c),
                atty: k.take(n * c),
                att_state: k.take(state_len),
                attproj: k.take(n * c),
                residual2: k.take(n * c),
                ln2: k.take(n * c),
                ln2_mean: k.take(n),
                ln2_rstd: k.take(n),
                fch: k.take(n * 4 * c),
                fch_gelu: k.take(n * 4 * c),
                fcproj: k.take(n * c),
                residual3: k.take(n * c),
            })
            .collect();
        let lnf = k.take(n * c);
        let lnf_mean = k.take(n);
        let lnf_rstd = k.take(n);
        let losses = k.take(n);
        let grads = GradActs {
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
            lnf,
            lnf_mean,
            lnf_rstd,
            losses,
            grads,
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
        let layers_end = a.layers.last().map_or(end(a.encoded), |l| end(l.residual3));
        let layers = layers_end - end(a.encoded);
        let backward = a.all.len - a.grads.residual.off;
        ActivationFloats {
            layers,
            attention_state: a.layers.iter().map(|l| l.att_state.len).sum(),
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

    fn p(&self, i: usize) -> Span {
        self.layout.span(self.params, i)
    }

    fn pl(&self, i: usize, l: usize) -> Span {
        self.layout.layer(self.params, i, l)
    }

    fn gl(&self, i: usize, l: usize) -> Span {
        self.layout.layer(self.grads, i, l)
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

    /// Runs the trunk (embeddings, blocks, ln_f) on `inputs` [b, t].
    fn trunk_forward(&mut self, inputs: &[u32], b: usize, t: usize) {
        assert_eq!(inputs.len(), b * t, "inputs must be b*t tokens");
        assert!(
            t <= self.config.block_size,
            "sequence longer than block_size"
        );
        self.ensure_acts(b, t);
        let a = self.acts.as_ref().unwrap();
        let (n, c, nh) = (b * t, self.config.n_embd, self.config.n_head);
        let eps = self.config.ln_eps as f32;
        let be = &self.backend;
        be.write_tokens(a.inputs, inputs);
        be.encoder_forward(
            a.encoded,
            a.inputs,
            self.p(idx::WTE),
            self.p(idx::WPE),
            b,
            t,
            c,
        );
        // Each residual add is fused with the LayerNorm that reads its result: x + attn
        // with ln_2, x + mlp with the next block's ln_1 (ln_f after the last block).
        let ln_acts = |l: usize| match a.layers.get(l) {
            Some(la) => (la.ln1, la.ln1_mean, la.ln1_rstd),
            None => (a.lnf, a.lnf_mean, a.lnf_rstd),
        };
        let (ln, ln_mean, ln_rstd) = ln_acts(0);
        let (ln_w, ln_b) = self.ln_params_after(0);
        be.layernorm_forward(ln, ln_mean, ln_rstd, a.encoded, ln_w, ln_b, n, c, eps);
        for (l, la) in a.layers.iter().enumerate() {
            let residual = if l == 0 {
                a.encoded
            } else {
                a.layers[l - 1].residual3
            };
            be.matmul_forward(
                la.qkv,
                la.ln1,
                self.pl(idx::QKVW, l),
                Some(self.pl(idx::QKVB, l)),
                n,
                c,
                3 * c,
            );
            be.attention_forward(la.atty, la.att_state, la.qkv, b, t, c, nh);
            be.matmul_forward(
                la.attproj,
                la.atty,
                self.pl(idx::ATTPROJW, l),
                Some(self.pl(idx::ATTPROJB, l)),
                n,
                c,
                c,
            );
            be.residual_layernorm_forward(
                la.residual2,
                la.ln2,
                la.ln2_mean,
                la.ln2_rstd,
                residual,
                la.attproj,
                self.pl(idx::LN2W, l),
                self.pl(idx::LN2B, l),
                n,
                c,
                eps,
            );
            be.matmul_gelu_forward(
                la.fch,
                la.fch_gelu,
                la.ln2,
                self.pl(idx::FCW, l),
                Some(self.pl(idx::FCB, l)),
                n,
                c,
                4 * c,
            );
            be.matmul_forward(
                la.fcproj,
                la.fch_gelu,
                self.pl(idx::FCPROJW, l),
                Some(self.pl(idx::FCPROJB, l)),
                n,
                4 * c,
                c,
            );
            let (ln, ln_mean, ln_rstd) = ln_acts(l + 1);
            let (ln_w, ln_b) = self.ln_params_after(l + 1);
            be.residual_layernorm_forward(
                la.residual3,
                ln,
                ln_mean,
                ln_rstd,
                la.residual2,
                la.fcproj,
                ln_w,
                ln_b,
                n,
                c,
                eps,
            );
        }
    }

    /// Weight and bias of the LayerNorm that reads the residual stream after `l`
    /// blocks: block l's ln_1, or ln_f after the last block.
    fn ln_params_after(&self, l: usize) -> (Span, Span) {
        if l < self.config.n_layer {
            (self.pl(idx::LN1W, l), self.pl(idx::LN1B, l))
        } else {
            (self.p(idx::LNFW), self.p(idx::LNFB))
        }
    }

    /// Forward pass with targets; returns the mean loss over the b*t positions. With
    /// `grad_scale = Some(k)` the head's gradients (of k times the mean loss) are
    /// computed too, ready for `backward`: k = 1/grad_accum sums micro-batches into
    /// the gradient of the mean over the whole step.
    pub fn forward(
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
        self.backend.write_tokens(a.targets, targets);
        let head_w = self.p(self.layout.head_index());
        let head_dw = self.layout.span(self.grads, self.layout.head_index());
        let grads = grad_scale.map(|k| (a.grads.lnf, head_dw, k / n as f32));
        self.backend.head_loss(
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
        self.backend.mean(a.losses)
    }

    /// Per-position losses of the last `forward` (for evaluation tools).
    pub fn position_losses(&self) -> Vec<f32> {
        let a = self.acts.as_ref().expect("forward first");
        self.backend.read(a.losses)
    }

    /// Logits [b, t, vocab] of `inputs`: p = softmax(logits) for either head.
    pub fn logits(&mut self, inputs: &[u32], b: usize, t: usize) -> Vec<f32> {
        self.trunk_forward(inputs, b, t);
        let a = self.acts.as_ref().unwrap();
        let (n, c, v) = (b * t, self.config.n_embd, self.config.vocab_size);
        let out = self.backend.alloc(n * v);
        self.backend.head_logits(
            out,
            a.lnf,
            self.p(self.layout.head_index()),
            n,
            c,
            v,
            self.head_kind(),
        );
        let logits = self.backend.read(out);
        self.backend.free(out);
        logits
    }

    /// Final hidden states [b, t, C] of `inputs` (after ln_f): the points the head
    /// compares with its class centres.
    pub fn hidden(&mut self, inputs: &[u32], b: usize, t: usize) -> Vec<f32> {
        self.trunk_forward(inputs, b, t);
        self.backend.read(self.acts.as_ref().unwrap().lnf)
    }

    /// Adds the gradient of the last `forward` (which must have had a grad_scale)
    /// into `grads`.
    pub fn backward(&mut self) {
        let a = self.acts.as_ref().expect("forward before backward");
        let (b, t) = (a.b, a.t);
        let (n, c, nh) = (b * t, self.config.n_embd, self.config.n_head);
        let be = &self.backend;
        let g = &a.grads;
        be.fill(g.residual, 0.0);
        let last = a.layers.last().map_or(a.encoded, |la| la.residual3);
        let (lnfw, lnfb) = (
            self.layout.span(self.grads, idx::LNFW),
            self.layout.span(self.grads, idx::LNFB),
        );
        be.layernorm_backward(
            g.residual,
            lnfw,
            lnfb,
            g.lnf,
            last,
            self.p(idx::LNFW),
            a.lnf_mean,
            a.lnf_rstd,
            n,
            c,
        );
        for (l, la) in a.layers.iter().enumerate().rev() {
            let residual = if l == 0 {
                a.encoded
            } else {
                a.layers[l - 1].residual3
            };
            // MLP: residual3 = residual2 + fcproj(gelu(fc(ln_2(residual2))))
            be.gelu_matmul_backward(
                g.fch,
                g.fch_gelu,
                self.gl(idx::FCPROJW, l),
                Some(self.gl(idx::FCPROJB, l)),
                g.residual,
                la.fch_gelu,
                la.fch,
                self.pl(idx::FCPROJW, l),
                n,
                4 * c,
                c,
            );
            be.matmul_backward(
                g.ln,
                self.gl(idx::FCW, l),
                Some(self.gl(idx::FCB, l)),
                g.fch,
                la.ln2,
                self.pl(idx::FCW, l),
                n,
                c,
                4 * c,
            );
            be.layernorm_backward(
                g.residual,
                self.gl(idx::LN2W, l),
                self.gl(idx::LN2B, l),
                g.ln,
                la.residual2,
                self.pl(idx::LN2W, l),
                la.ln2_mean,
                la.ln2_rstd,
                n,
                c,
            );
            // attention: residual2 = residual + attproj(attn(qkv(ln_1(residual))))
            be.matmul_backward(
                g.atty,
                self.gl(idx::ATTPROJW, l),
                Some(self.gl(idx::ATTPROJB, l)),
                g.residual,
                la.atty,
                self.pl(idx::ATTPROJW, l),
                n,
                c,
                c,
            );
            be.attention_backward(g.qkv, g.atty, la.qkv, la.atty, la.att_state, b, t, c, nh);
            be.matmul_backward(
                g.ln,
                self.gl(idx::QKVW, l),
                Some(self.gl(idx::QKVB, l)),
                g.qkv,
                la.ln1,
                self.pl(idx::QKVW, l),
                n,
                c,
                3 * c,
            );
            be.layernorm_backward(
                g.residual,
                self.gl(idx::LN1W, l),
                self.gl(idx::LN1B, l),
                g.ln,
                residual,
                self.pl(idx::LN1W, l),
                la.ln1_mean,
                la.ln1_rstd,
                n,
                c,
            );
        }
        let (dwte, dwpe) = (
            self.layout.span(self.grads, idx::WTE),
            self.layout.span(self.grads, idx::WPE),
        );
        be.encoder_backward(dwte, dwpe, g.residual, a.inputs, b, t, c);
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
