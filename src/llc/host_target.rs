//! Models that keep their parameters in host memory (the deep linear network, the
//! LayerNorm example) as SGLD targets: w* and the gradient are kept on the host
//! beside them, and the update is the CPU backend's `sgld_update`, the reference
//! every backend's SGLD step is checked against.

use anyhow::Result;

use super::sampler::SgldTarget;
use crate::backend::SgldStep;
use crate::backend::cpu::sgld::sgld_update;

/// A small model with flat f32 parameters on the host.
pub trait HostModel {
    /// One minibatch of training data.
    type Batch;
    /// Examples per minibatch.
    fn batch_size(&self) -> usize;
    fn params(&self) -> &[f32];
    fn params_mut(&mut self) -> &mut Vec<f32>;
    /// A fresh minibatch (the model owns its data order, seeded).
    fn next_batch(&mut self) -> Self::Batch;
    /// Mean loss on `batch`.
    fn loss(&self, batch: &Self::Batch) -> f64;
    /// Mean loss on `batch` and its gradient, written into `grad`.
    fn loss_and_grad(&self, batch: &Self::Batch, grad: &mut [f32]) -> f64;
}

/// `model` sampled around the parameters it has when this is made.
pub struct HostTarget<'a, M: HostModel> {
    model: &'a mut M,
    anchor: Vec<f32>,
    grad: Vec<f32>,
}

impl<'a, M: HostModel> HostTarget<'a, M> {
    pub fn new(model: &'a mut M) -> HostTarget<'a, M> {
        let anchor = model.params().to_vec();
        let grad = vec![0f32; anchor.len()];
        HostTarget {
            model,
            anchor,
            grad,
        }
    }
}

impl<M: HostModel> SgldTarget for HostTarget<'_, M> {
    type Batch = M::Batch;

    fn num_params(&self) -> usize {
        self.anchor.len()
    }

    fn batch_size(&self) -> usize {
        self.model.batch_size()
    }

    fn next_batch(&mut self) -> Result<M::Batch> {
        Ok(self.model.next_batch())
    }

    fn reset(&mut self) {
        self.model.params_mut().copy_from_slice(&self.anchor);
    }

    fn loss_and_grad(&mut self, batch: &M::Batch) -> (f64, f64) {
        let loss = self.model.loss_and_grad(batch, &mut self.grad);
        let grad_sq = self.grad.iter().map(|&g| (g as f64) * (g as f64)).sum();
        (loss, grad_sq)
    }

    fn anchor_loss(&mut self, batch: &M::Batch) -> f64 {
        // Swap w* in (no copy), evaluate, swap back.
        std::mem::swap(self.model.params_mut(), &mut self.anchor);
        let loss = self.model.loss(batch);
        std::mem::swap(self.model.params_mut(), &mut self.anchor);
        loss
    }

    fn step(&mut self, step: SgldStep) {
        sgld_update(self.model.params_mut(), &self.grad, &self.anchor, step);
    }

    fn params(&self) -> Vec<f32> {
        self.model.params().to_vec()
    }
}
