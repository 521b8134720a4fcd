//! AdamW over the model's parameter layout: one backend update per stacked tensor,
//! with weight decay on matrices only (not biases or LayerNorm gains).
//!
//! Under ZeRO-1 a rank holds the moments of its shard only (a contiguous range of
//! the flat parameter vector, see `dist::shards`) and updates that range: a tensor
//! the shard cuts is updated piecewise, each piece with its tensor's weight decay.
//! AdamW is elementwise, so the pieces together make the whole update.

use std::ops::Range;

use crate::backend::{AdamW, Backend, Span};
use crate::config::TrainConfig;
use crate::model::Gpt;

pub struct Optimizer {
    /// First and second moments of the shard, laid out like its parameters.
    pub m: Span,
    pub v: Span,
    /// The parameters this optimizer updates (all of them for a single rank).
    pub shard: Range<usize>,
    /// Updates applied so far (for bias correction).
    pub step: u64,
}

impl Optimizer {
    /// An optimizer of the parameters in `shard`, with zero moments.
    pub fn new<B: Backend>(model: &Gpt<B>, shard: Range<usize>) -> Optimizer {
        assert!(
            shard.end <= model.num_params(),
            "shard outside the parameters"
        );
        Optimizer {
            m: model.backend.alloc(shard.len()),
            v: model.backend.alloc(shard.len()),
            shard,
            step: 0,
        }
    }

    /// Applies the accumulated gradients, multiplied by `grad_scale` (clipping), to
    /// the shard's parameters.
    pub fn update<B: Backend>(
        &mut self,
        model: &Gpt<B>,
        t: &TrainConfig,
        lr: f64,
        grad_scale: f32,
    ) {
        self.step += 1;
        let shard = &self.shard;
        for tensor in &model.layout.tensors {
            let start = tensor.offset.max(shard.start);
            let end = (tensor.offset + tensor.len()).min(shard.end);
            if start >= end {
                continue;
            }
            let (n, local) = (end - start, start - shard.start);
            let hp = AdamW {
                lr: lr as f32,
                beta1: t.beta1 as f32,
                beta2: t.beta2 as f32,
                eps: t.adam_eps as f32,
                weight_decay: if tensor.decay {
                    t.weight_decay as f32
                } else {
                    0.0
                },
                step: self.step,
                grad_scale,
            };
            model.backend.adamw_update(
                model.params.slice(start, n),
                model.grads.slice(start, n),
                self.m.slice(local, n),
                self.v.slice(local, n),
                hp,
            );
        }
    }
}

/// The factor that brings the gradient norm down to `clip` (1 when under it or
/// when clipping is off).
pub fn clip_scale(norm: f64, clip: f64) -> f32 {
    if clip > 0.0 && norm > clip {
        (clip / norm) as f32
    } else {
        1.0
    }
}
