//! A deep linear network f(x) = W_L ... W_1 x on the CPU, the model whose learning
//! coefficient is known exactly (see [`super::aoyagi`]), for validating the sampler.
//!
//! The true parameter is random with product rank r and well conditioned: W_l =
//! U_l U_{l-1}^T for random orthonormal r-frames U_0..U_L, so every factor has rank r
//! and the product U_L U_0^T has r unit singular values. Inputs are standard normal,
//! labels are the true network's outputs (no noise), and the loss is the mean over
//! examples of the squared error summed over outputs. The network is placed at the
//! true parameter, which is then the exact minimum (loss 0).

use anyhow::{Result, bail};
use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::host_target::HostModel;
use crate::backend::cpu::matmul::{matmul_backward, matmul_forward};

pub struct DeepLinearNetwork {
    /// H_0 (input), H_1, ..., H_L (output).
    widths: Vec<usize>,
    /// W_1..W_L in order, W_l of shape [H_l, H_{l-1}] row-major.
    params: Vec<f32>,
    inputs: Vec<f32>,
    labels: Vec<f32>,
    batch_size: usize,
    /// Draws minibatches.
    rng: ChaCha8Rng,
}

/// Inputs [B, H_0] and labels [B, H_L] of one minibatch.
pub struct DlnBatch {
    inputs: Vec<f32>,
    labels: Vec<f32>,
}

impl DeepLinearNetwork {
    /// A network at a random true parameter of product rank `rank`, with `samples`
    /// examples drawn from it.
    pub fn at_true_parameter(
        widths: &[usize],
        rank: usize,
        samples: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<DeepLinearNetwork> {
        if widths.len() < 2 || widths.contains(&0) {
            bail!("--widths must be at least two positive widths, got {widths:?}");
        }
        let narrowest = *widths.iter().min().unwrap();
        if rank > narrowest {
            bail!("--rank {rank} exceeds the narrowest width {narrowest}");
        }
        if batch_size == 0 || batch_size > samples {
            bail!("--batch-size {batch_size} must be between 1 and --samples {samples}");
        }
        crate::memory::ensure_fits(
            host_bytes(widths, rank, samples, batch_size),
            &format!("a deep linear network of widths {widths:?} with {samples} samples"),
            crate::memory::host_available()?.as_ref(),
        )?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let frames: Vec<Vec<f64>> = widths
            .iter()
            .map(|&h| orthonormal_columns(h, rank, &mut rng))
            .collect();
        let mut params = Vec::new();
        for l in 1..widths.len() {
            let (rows, cols) = (widths[l], widths[l - 1]);
            let (u, v) = (&frames[l], &frames[l - 1]);
            for i in 0..rows {
                for j in 0..cols {
                    let dot: f64 = (0..rank).map(|k| u[i * rank + k] * v[j * rank + k]).sum();
                    params.push(dot as f32);
                }
            }
        }
        let inputs: Vec<f32> = (0..samples * widths[0])
            .map(|_| rng.sample(StandardNormal))
            .collect();
        let mut net = DeepLinearNetwork {
            widths: widths.to_vec(),
            params,
            inputs: Vec::new(),
            labels: Vec::new(),
            batch_size,
            rng,
        };
        // Labels from the network's own forward pass, so the loss at w* is exactly 0.
        net.labels = net.activations(&inputs).pop().unwrap();
        net.inputs = inputs;
        Ok(net)
    }

    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Offsets of W_1..W_L in the flat parameters.
    fn layer_offsets(&self) -> Vec<usize> {
        let mut offsets = vec![0];
        for l in 1..self.widths.len() {
            offsets.push(offsets[l - 1] + self.widths[l] * self.widths[l - 1]);
        }
        offsets
    }

    /// h_0 = x, h_l = h_{l-1} W_l^T for every layer.
    fn activations(&self, inputs: &[f32]) -> Vec<Vec<f32>> {
        let n = inputs.len() / self.widths[0];
        let offsets = self.layer_offsets();
        let mut acts = vec![inputs.to_vec()];
        for l in 1..self.widths.len() {
            let (c, oc) = (self.widths[l - 1], self.widths[l]);
            let mut out = vec![0f32; n * oc];
            let w = &self.params[offsets[l - 1]..offsets[l]];
            matmul_forward(&mut out, &acts[l - 1], w, None, c);
            acts.push(out);
        }
        acts
    }

    /// Mean over rows of the summed squared error, and the residual f(x) - y.
    fn loss_of(&self, out: &[f32], labels: &[f32]) -> (f64, Vec<f32>) {
        let residual: Vec<f32> = out.iter().zip(labels).map(|(o, y)| o - y).collect();
        let sq: f64 = residual.iter().map(|&r| (r as f64) * (r as f64)).sum();
        let rows = labels.len() / self.widths.last().unwrap();
        (sq / rows as f64, residual)
    }
}

/// The host bytes (f64, so no size overflows) a network and its sampling hold:
/// the weights four times over (themselves, the gradient, the SGLD anchor and the
/// copy an estimate reads), the true parameter's frames, the examples, and the
/// activations and their gradients of a minibatch and of the labelling pass.
pub fn host_bytes(widths: &[usize], rank: usize, samples: usize, batch_size: usize) -> f64 {
    let w: Vec<f64> = widths.iter().map(|&h| h as f64).collect();
    let params: f64 = w.windows(2).map(|p| p[0] * p[1]).sum();
    let widths_sum: f64 = w.iter().sum();
    let (first, last) = (w[0], w[w.len() - 1]);
    let examples = samples as f64 * (first + last);
    let activations = (samples as f64 + 2.0 * batch_size as f64) * widths_sum;
    4.0 * (4.0 * params + examples + activations) + 8.0 * widths_sum * rank as f64
}

/// A uniformly random h x r matrix with orthonormal columns (row-major), by
/// Gram-Schmidt on Gaussian columns.
pub(crate) fn orthonormal_columns(h: usize, r: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = Vec::with_capacity(r);
    while cols.len() < r {
        let mut v: Vec<f64> = (0..h).map(|_| rng.sample(StandardNormal)).collect();
        for u in &cols {
            let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        // A near-dependent draw (probability ~0) is simply drawn again.
        if norm > 1e-6 {
            cols.push(v.iter().map(|a| a / norm).collect());
        }
    }
    (0..h * r).map(|i| cols[i % r][i / r]).collect()
}

impl HostModel for DeepLinearNetwork {
    type Batch = DlnBatch;

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn params(&self) -> &[f32] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut Vec<f32> {
        &mut self.params
    }

    fn next_batch(&mut self) -> DlnBatch {
        let (h0, hl) = (self.widths[0], *self.widths.last().unwrap());
        let n = self.inputs.len() / h0;
        let mut batch = DlnBatch {
            inputs: Vec::with_capacity(self.batch_size * h0),
            labels: Vec::with_capacity(self.batch_size * hl),
        };
        for i in index::sample(&mut self.rng, n, self.batch_size) {
            batch
                .inputs
                .extend_from_slice(&self.inputs[i * h0..(i + 1) * h0]);
            batch
                .labels
                .extend_from_slice(&self.labels[i * hl..(i + 1) * hl]);
        }
        batch
    }

    fn loss(&self, batch: &DlnBatch) -> f64 {
        let acts = self.activations(&batch.inputs);
        self.loss_of(acts.last().unwrap(), &batch.labels).0
    }

    fn loss_and_grad(&self, batch: &DlnBatch, grad: &mut [f32]) -> f64 {
        let acts = self.activations(&batch.inputs);
        let (loss, residual) = self.loss_of(acts.last().unwrap(), &batch.labels);
        // d loss / d output = 2 (f(x) - y) / B, then back through each layer.
        let scale = 2.0 / self.batch_size as f32;
        let mut dout: Vec<f32> = residual.iter().map(|r| r * scale).collect();
        let offsets = self.layer_offsets();
        grad.fill(0.0);
        let n = self.batch_size;
        for l in (1..self.widths.len()).rev() {
            let c = self.widths[l - 1];
            let (lo, hi) = (offsets[l - 1], offsets[l]);
            let mut dinp = vec![0f32; n * c];
            matmul_backward(
                &mut dinp,
                &mut grad[lo..hi],
                None,
                &dout,
                &acts[l - 1],
                &self.params[lo..hi],
                c,
            );
            dout = dinp;
        }
        loss
    }
}
