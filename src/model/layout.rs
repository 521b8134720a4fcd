//! Where each parameter lives in the one flat parameter buffer.
//!
//! Parameters are stored as in llm.c: sixteen tensors (seventeen with an untied
//! lm_head), each stacked over layers, so the optimizer touches a handful of
//! contiguous ranges. `tensors()` carves a buffer (parameters or gradients) into
//! llm.c's named views; `named()` gives the per-layer GPT-2 names and shapes that
//! checkpoints and exports use.

use crate::backend::{Linear, Mat, Norm, Span};
use crate::config::ModelConfig;

/// One stacked parameter tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// GPT-2 style name of one layer's slice, with `{}` for the layer index.
    pub name: &'static str,
    /// Shape of one layer's slice.
    pub shape: Vec<usize>,
    /// Layers stacked (1 for tensors outside the blocks).
    pub layers: usize,
    /// Offset in floats from the start of the parameter buffer.
    pub offset: usize,
    /// Whether AdamW applies weight decay (matrices yes; biases and gains no).
    pub decay: bool,
    /// Init: standard deviation of the normal draw, or a constant.
    pub init: Init,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal(f32),
    Const(f32),
}

impl Tensor {
    pub fn layer_len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn len(&self) -> usize {
        self.layers * self.layer_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One block's slice of the parameters (or of their gradients): llm.c's `l_*`
/// pointers, grouped by layer. C = n_embd.
#[derive(Clone, Copy, Debug)]
pub struct LayerParams {
    pub ln1: Norm,       // ln1w, ln1b (C)
    pub qkv: Linear,     // qkvw (3C, C), qkvb (3C)
    pub attproj: Linear, // attprojw (C, C), attprojb (C)
    pub ln2: Norm,       // ln2w, ln2b (C)
    pub fc: Linear,      // fcw (4C, C), fcb (4C)
    pub fcproj: Linear,  // fcprojw (C, 4C), fcprojb (C)
}

/// A whole parameter (or gradient) buffer as named views, llm.c's
/// `ParameterTensors`. V = vocab_size, maxT = block_size.
#[derive(Clone, Debug)]
pub struct ParamTensors {
    pub wte: Mat, // (V, C)
    pub wpe: Mat, // (maxT, C)
    pub layers: Vec<LayerParams>,
    pub lnf: Norm, // lnfw, lnfb (C)
    /// The class centres / unembedding (V, C): wte when tied, else lm_head.
    pub head: Mat,
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub tensors: Vec<Tensor>,
    pub total: usize,
}

/// Indices into `ParamLayout::tensors`, named for the model code.
pub mod idx {
    pub const WTE: usize = 0;
    pub const WPE: usize = 1;
    pub const LN1W: usize = 2;
    pub const LN1B: usize = 3;
    pub const QKVW: usize = 4;
    pub const QKVB: usize = 5;
    pub const ATTPROJW: usize = 6;
    pub const ATTPROJB: usize = 7;
    pub const LN2W: usize = 8;
    pub const LN2B: usize = 9;
    pub const FCW: usize = 10;
    pub const FCB: usize = 11;
    pub const FCPROJW: usize = 12;
    pub const FCPROJB: usize = 13;
    pub const LNFW: usize = 14;
    pub const LNFB: usize = 15;
    pub const LM_HEAD: usize = 16;
}

impl ParamLayout {
    pub fn new(m: &ModelConfig) -> ParamLayout {
        let (v, c, l, t) = (m.vocab_size, m.n_embd, m.n_layer, m.block_size);
        let std = 0.02;
        // GPT-2 scales the init of projections into the residual stream by
        // 1/sqrt(2 n_layer): each block adds two of them.
        let resid_std = std / (2.0 * l as f32).sqrt();
        let mut spec: Vec<(&'static str, Vec<usize>, usize, bool, Init)> = vec![
            ("wte.weight", vec![v, c], 1, true, Init::Normal(std)),
            ("wpe.weight", vec![t, c], 1, true, Init::Normal(std)),
            ("h.{}.ln_1.weight", vec![c], l, false, Init::Const(1.0)),
            ("h.{}.ln_1.bias", vec![c], l, false, Init::Const(0.0)),
            (
                "h.{}.attn.c_attn.weight",
                vec![3 * c, c],
                l,
                true,
                Init::Normal(std),
            ),
            (
                "h.{}.attn.c_attn.bias",
                vec![3 * c],
                l,
                false,
                Init::Const(0.0),
            ),
            (
                "h.{}.attn.c_proj.weight",
                vec![c, c],
                l,
                true,
                Init::Normal(resid_std),
            ),
            ("h.{}.attn.c_proj.bias", vec![c], l, false, Init::Const(0.0)),
            ("h.{}.ln_2.weight", vec![c], l, false, Init::Const(1.0)),
            ("h.{}.ln_2.bias", vec![c], l, false, Init::Const(0.0)),
            (
                "h.{}.mlp.c_fc.weight",
                vec![4 * c, c],
                l,
                true,
                Init::Normal(std),
            ),
            (
                "h.{}.mlp.c_fc.bias",
                vec![4 * c],
                l,
                false,
                Init::Const(0.0),
            ),
            (
                "h.{}.mlp.c_proj.weight",
                vec![c, 4 * c],
                l,
                true,
                Init::Normal(resid_std),
            ),
            ("h.{}.mlp.c_proj.bias", vec![c], l, false, Init::Const(0.0)),
            ("ln_f.weight", vec![c], 1, false, Init::Const(1.0)),
            ("ln_f.bias", vec![c], 1, false, Init::Const(0.0)),
        ];
        if !m.tie_embeddings {
            spec.push(("lm_head.weight", vec![v, c], 1, true, Init::Normal(std)));
        }
        let mut offset = 0;
        let tensors = spec
            .into_iter()
            .map(|(name, shape, layers, decay, init)| {
                let t = Tensor {
                    name,
                    shape,
                    layers,
                    offset,
                    decay,
                    init,
                };
                offset += t.len();
                t
            })
            .collect();
        ParamLayout {
            tensors,
            total: offset,
        }
    }

    /// The span of stacked tensor `i` inside `buf` (parameters, gradients or moments).
    pub fn span(&self, buf: Span, i: usize) -> Span {
        let t = &self.tensors[i];
        buf.slice(t.offset, t.len())
    }

    /// The span of layer `layer`'s slice of stacked tensor `i`.
    pub fn layer(&self, buf: Span, i: usize, layer: usize) -> Span {
        let t = &self.tensors[i];
        buf.slice(t.offset + layer * t.layer_len(), t.layer_len())
    }

    /// `buf` (laid out as this layout: parameters, gradients or moments) as named views.
    pub fn tensors(&self, buf: Span) -> ParamTensors {
        let mat = |i: usize, l: usize| {
            let shape = &self.tensors[i].shape;
            Mat::new(self.layer(buf, i, l), shape[0], shape[1])
        };
        let norm = |w, b, l| Norm {
            w: self.layer(buf, w, l),
            b: self.layer(buf, b, l),
        };
        let linear = |w, b, l| Linear {
            w: mat(w, l),
            b: Some(self.layer(buf, b, l)),
        };
        ParamTensors {
            wte: mat(idx::WTE, 0),
            wpe: mat(idx::WPE, 0),
            layers: (0..self.tensors[idx::LN1W].layers)
                .map(|l| LayerParams {
                    ln1: norm(idx::LN1W, idx::LN1B, l),
                    qkv: linear(idx::QKVW, idx::QKVB, l),
                    attproj: linear(idx::ATTPROJW, idx::ATTPROJB, l),
                    ln2: norm(idx::LN2W, idx::LN2B, l),
                    fc: linear(idx::FCW, idx::FCB, l),
                    fcproj: linear(idx::FCPROJW, idx::FCPROJB, l),
                })
                .collect(),
            lnf: norm(idx::LNFW, idx::LNFB, 0),
            head: mat(self.head_index(), 0),
        }
    }

    /// The class centres / unembedding: wte when tied, else lm_head.
    pub fn head_index(&self) -> usize {
        if self.tensors.len() > idx::LM_HEAD {
            idx::LM_HEAD
        } else {
            idx::WTE
        }
    }

    /// Every per-layer tensor with its GPT-2 style name, shape and offset, in order.
    pub fn named(&self) -> Vec<(String, Vec<usize>, usize)> {
        let mut out = Vec::new();
        for t in &self.tensors {
            for l in 0..t.layers {
                out.push((
                    t.name.replace("{}", &l.to_string()),
                    t.shape.clone(),
                    t.offset + l * t.layer_len(),
                ));
            }
        }
        out
    }
}
