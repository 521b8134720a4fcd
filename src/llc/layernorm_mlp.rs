//! A small LayerNorm model with a sharp loss drop, for watching the LLC across a
//! transition: Linear(4 -> 64) -> LayerNorm -> Linear(64 -> 4), softmax
//! cross-entropy on 4 classes given by a random linear teacher (class = argmax A x).
//!
//! Both linear layers start tiny. The first layer's output is then far below the
//! LayerNorm's sqrt(eps), where LayerNorm is just a gain of 1/sqrt(eps): the network
//! is a two-layer linear map with a small initialisation, sitting on the saddle at the
//! origin with loss ln 4. SGD escapes it after a plateau, and once the hidden layer
//! outgrows sqrt(eps) the LayerNorm starts normalising, so the loss falls off a cliff.
//! The LLC is about zero on the plateau and spikes during the drop: while the hidden
//! layer crosses sqrt(eps) the loss is most sensitive to the weights (LayerNorm's
//! gain there is 1/sqrt(var + eps), largest where var is smallest relative to the
//! grown output layer), and it settles lower once the LayerNorm normalises.

use anyhow::{Result, bail};
use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::dln::orthonormal_columns;
use super::host_target::{HostModel, HostTarget};
use super::over_training::StepLlc;
use super::sampler::SgldSettings;
use crate::backend::cpu::layernorm::{layernorm_backward, layernorm_forward};
use crate::backend::cpu::matmul::{matmul_backward, matmul_forward};

const INPUTS: usize = 4;
const HIDDEN: usize = 64;
const CLASSES: usize = 4;
const LN_EPS: f32 = 1e-5;

/// Offsets of the tensors in the flat parameters: W1 [64, 4], b1, LayerNorm weight
/// and bias, W2 [4, 64], b2.
const W1: usize = 0;
const B1: usize = W1 + HIDDEN * INPUTS;
const LN_W: usize = B1 + HIDDEN;
const LN_B: usize = LN_W + HIDDEN;
const W2: usize = LN_B + HIDDEN;
const B2: usize = W2 + CLASSES * HIDDEN;
const NUM_PARAMS: usize = B2 + CLASSES;

/// How the model starts: standard deviations of the two weight matrices and the
/// LayerNorm gain.
#[derive(Clone, Copy, Debug)]
pub struct Init {
    pub w1_std: f32,
    pub ln_gain: f32,
    pub w2_std: f32,
}

/// How the example is trained, and how often the LLC is measured.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub steps: usize,
    /// Steps between LLC estimates (step 0 included).
    pub every: usize,
    pub lr: f32,
}

impl Schedule {
    /// Plateau until about step 600, the drop by step 750.
    pub const DEFAULT: Schedule = Schedule {
        steps: 1000,
        every: 20,
        lr: 0.1,
    };
}

#[derive(Clone)]
pub struct LayerNormMlp {
    params: Vec<f32>,
    inputs: Vec<f32>,
    labels: Vec<u32>,
    batch_size: usize,
    /// Draws minibatches, for training and for SGLD alike.
    rng: ChaCha8Rng,
}

/// Inputs [B, 4] and class labels [B] of one minibatch.
pub struct MlpBatch {
    inputs: Vec<f32>,
    labels: Vec<u32>,
}

/// What the forward pass keeps for the backward pass.
struct Forward {
    hidden: Vec<f32>,
    normed: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    /// Softmax probabilities [B, 4].
    probs: Vec<f32>,
    loss: f64,
}

impl LayerNormMlp {
    /// `samples` examples from a random teacher, the model at `init`.
    pub fn new(samples: usize, batch_size: usize, init: Init, seed: u64) -> LayerNormMlp {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = |rng: &mut ChaCha8Rng, n: usize, std: f32| -> Vec<f32> {
            (0..n)
                .map(|_| std * rng.sample::<f32, _>(StandardNormal))
                .collect()
        };
        let inputs = normal(&mut rng, samples * INPUTS, 1.0);
        // An orthogonal teacher: every class direction equally strong, so they are
        // all learnt at the same moment (one drop, not a staircase).
        let teacher = orthonormal_columns(CLASSES, INPUTS, &mut rng);
        let mut params = vec![0f32; NUM_PARAMS];
        params[W1..B1].copy_from_slice(&normal(&mut rng, HIDDEN * INPUTS, init.w1_std));
        params[LN_W..LN_B].fill(init.ln_gain);
        params[W2..B2].copy_from_slice(&normal(&mut rng, CLASSES * HIDDEN, init.w2_std));
        let labels = inputs
            .chunks(INPUTS)
            .map(|x| {
                let score = |k: usize| -> f32 {
                    teacher[k * INPUTS..(k + 1) * INPUTS]
                        .iter()
                        .zip(x)
                        .map(|(&a, &b)| a as f32 * b)
                        .sum()
                };
                (0..CLASSES)
                    .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                    .unwrap() as u32
            })
            .collect();
        LayerNormMlp {
            params,
            inputs,
            labels,
            batch_size,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xba7c4),
        }
    }

    /// The example as `hgpt llc layernorm` runs it: 4096 examples, batches of 64,
    /// every weight matrix and the LayerNorm gain starting at scale 1e-4.
    pub fn example(seed: u64) -> LayerNormMlp {
        let init = Init {
            w1_std: 1e-4,
            ln_gain: 1e-4,
            w2_std: 1e-4,
        };
        LayerNormMlp::new(4096, 64, init, seed)
    }

    /// One SGD step on a fresh minibatch; returns the minibatch loss before it.
    pub fn sgd_step(&mut self, lr: f32, grad: &mut [f32]) -> f64 {
        let batch = self.next_batch();
        let loss = self.loss_and_grad(&batch, grad);
        self.params
            .iter_mut()
            .zip(grad.iter())
            .for_each(|(w, g)| *w -= lr * g);
        loss
    }

    /// Mean loss over the whole training set.
    pub fn full_loss(&self) -> f64 {
        self.forward(&self.inputs, &self.labels).loss
    }

    fn forward(&self, inputs: &[f32], labels: &[u32]) -> Forward {
        let n = labels.len();
        let p = &self.params;
        let mut hidden = vec![0f32; n * HIDDEN];
        matmul_forward(&mut hidden, inputs, &p[W1..B1], Some(&p[B1..LN_W]), INPUTS);
        let (mut normed, mut mean, mut rstd) =
            (vec![0f32; n * HIDDEN], vec![0f32; n], vec![0f32; n]);
        layernorm_forward(
            &mut normed,
            &mut mean,
            &mut rstd,
            &hidden,
            &p[LN_W..LN_B],
            &p[LN_B..W2],
            LN_EPS,
        );
        let mut probs = vec![0f32; n * CLASSES];
        matmul_forward(&mut probs, &normed, &p[W2..B2], Some(&p[B2..]), HIDDEN);
        let mut loss = 0.0;
        for (row, &y) in probs.chunks_mut(CLASSES).zip(labels) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|z| *z = (*z - max).exp());
            let sum: f32 = row.iter().sum();
            row.iter_mut().for_each(|z| *z /= sum);
            loss -= (row[y as usize] as f64).ln();
        }
        Forward {
            hidden,
            normed,
            mean,
            rstd,
            probs,
            loss: loss / n as f64,
        }
    }
}

impl HostModel for LayerNormMlp {
    type Batch = MlpBatch;

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn params(&self) -> &[f32] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut Vec<f32> {
        &mut self.params
    }

    fn next_batch(&mut self) -> MlpBatch {
        let n = self.labels.len();
        let mut batch = MlpBatch {
            inputs: Vec::with_capacity(self.batch_size * INPUTS),
            labels: Vec::with_capacity(self.batch_size),
        };
        for i in index::sample(&mut self.rng, n, self.batch_size) {
            batch
                .inputs
                .extend_from_slice(&self.inputs[i * INPUTS..(i + 1) * INPUTS]);
            batch.labels.push(self.labels[i]);
        }
        batch
    }

    fn loss(&self, batch: &MlpBatch) -> f64 {
        self.forward(&batch.inputs, &batch.labels).loss
    }

    fn loss_and_grad(&self, batch: &MlpBatch, grad: &mut [f32]) -> f64 {
        let n = batch.labels.len();
        let f = self.forward(&batch.inputs, &batch.labels);
        // d loss / d logits = (softmax - one-hot) / B.
        let mut dlogits = f.probs;
        for (row, &y) in dlogits.chunks_mut(CLASSES).zip(&batch.labels) {
            row[y as usize] -= 1.0;
            row.iter_mut().for_each(|g| *g /= n as f32);
        }
        grad.fill(0.0);
        let p = &self.params;
        let (g_lower, g_upper) = grad.split_at_mut(W2);
        let (g_w2, g_b2) = g_upper.split_at_mut(B2 - W2);
        let mut dnormed = vec![0f32; n * HIDDEN];
        matmul_backward(
            &mut dnormed,
            g_w2,
            Some(g_b2),
            &dlogits,
            &f.normed,
            &p[W2..B2],
            HIDDEN,
        );
        let (g_first, g_ln) = g_lower.split_at_mut(LN_W);
        let (g_ln_w, g_ln_b) = g_ln.split_at_mut(HIDDEN);
        let mut dhidden = vec![0f32; n * HIDDEN];
        layernorm_backward(
            &mut dhidden,
            g_ln_w,
            g_ln_b,
            &dnormed,
            &f.hidden,
            &p[LN_W..LN_B],
            (&f.mean, &f.rstd),
        );
        let (g_w1, g_b1) = g_first.split_at_mut(B1);
        let mut dinputs = vec![0f32; n * INPUTS];
        matmul_backward(
            &mut dinputs,
            g_w1,
            Some(g_b1),
            &dhidden,
            &batch.inputs,
            &p[W1..B1],
            INPUTS,
        );
        f.loss
    }
}

/// Trains `model` by SGD on `schedule`, estimating the LLC of a copy (sampling
/// batches of `sgld_batch`) every `schedule.every` steps, so sampling never disturbs
/// the training batches, and hands each record to `each`. Returns the full-data
/// loss every few steps.
pub fn llc_over_training(
    model: &mut LayerNormMlp,
    schedule: &Schedule,
    settings: &SgldSettings,
    sgld_batch: usize,
    mut each: impl FnMut(&StepLlc) -> Result<()>,
) -> Result<Vec<(usize, f64)>> {
    let samples = model.labels.len();
    if sgld_batch == 0 || sgld_batch > samples {
        bail!("--batch-size {sgld_batch} must be between 1 and the example's {samples} samples");
    }
    let loss_every = (schedule.every / 4).max(1);
    let mut losses = Vec::new();
    let mut grad = vec![0f32; NUM_PARAMS];
    for step in 0..=schedule.steps {
        if step % loss_every == 0 {
            losses.push((step, model.full_loss()));
        }
        if step % schedule.every == 0 {
            let mut probe = model.clone();
            probe.batch_size = sgld_batch;
            let est = super::estimate(
                &mut HostTarget::new(&mut probe),
                settings,
                &indicatif::ProgressBar::hidden(),
            )?;
            each(&StepLlc::new(step, &est))?;
        }
        if step < schedule.steps {
            model.sgd_step(schedule.lr, &mut grad);
        }
    }
    Ok(losses)
}
