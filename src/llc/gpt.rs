//! The GPT as an SGLD target: its own training loss (mean next-token loss over the
//! batch, harmonic or softmax head) and gradients, on whatever backend runs it.

use anyhow::{Context, Result};
use indicatif::ProgressBar;

use super::estimate::LlcEstimate;
use super::sampler::{SgldSettings, SgldTarget};
use crate::backend::{self, Backend, SgldStep, Span};
use crate::checkpoint::{TrainingState, compat};
use crate::config::Config;
use crate::data::{self, Batch, DataSpec, Dataset, Loader};
use crate::model::Gpt;

/// A model and the training batches to sample it with, on the model's backend: w*
/// is a second parameter buffer there, and the update is the backend's
/// `sgld_update`, so a GPU model's parameters never leave the GPU.
pub struct GptTarget<'a, B: Backend> {
    model: &'a mut Gpt<B>,
    /// w*, the parameters the model had when this was made.
    anchor: Span,
    loader: Loader,
    batch_size: usize,
    seq_len: usize,
}

impl<'a, B: Backend> GptTarget<'a, B> {
    /// `loader` yields batches of `batch_size` sequences of `seq_len` tokens.
    pub fn new(
        model: &'a mut Gpt<B>,
        loader: Loader,
        batch_size: usize,
        seq_len: usize,
    ) -> GptTarget<'a, B> {
        let anchor = model.backend.alloc(model.params.len);
        model.backend.copy(anchor, model.params);
        GptTarget {
            model,
            anchor,
            loader,
            batch_size,
            seq_len,
        }
    }
}

impl<B: Backend> Drop for GptTarget<'_, B> {
    fn drop(&mut self) {
        self.model.backend.free(self.anchor);
    }
}

impl<B: Backend> SgldTarget for GptTarget<'_, B> {
    type Batch = Batch;

    fn num_params(&self) -> usize {
        self.model.num_params()
    }

    /// Sequences per batch: the B of nbeta = B / ln B (each sequence's tokens are
    /// strongly dependent, so tokens would overstate the sample size).
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn next_batch(&mut self) -> Result<Batch> {
        self.loader.next_batch()
    }

    fn reset(&mut self) {
        self.model.backend.copy(self.model.params, self.anchor);
    }

    fn loss_and_grad(&mut self, batch: &Batch) -> (f64, f64) {
        let (b, t) = (self.batch_size, self.seq_len);
        self.model.zero_grads();
        let loss = self
            .model
            .loss_and_head_grad(&batch.inputs, &batch.targets, b, t, 1.0);
        self.model.backward();
        (loss, self.model.grad_norm().powi(2))
    }

    fn anchor_loss(&mut self, batch: &Batch) -> f64 {
        // The model reads its weights through `params` on every pass: point it at w*
        // (no copy), evaluate, point it back. (On a GPU in bf16 mode w*'s buffer gets
        // its own bf16 shadow; shadows are per buffer.)
        let (b, t) = (self.batch_size, self.seq_len);
        std::mem::swap(&mut self.model.params, &mut self.anchor);
        let loss = self.model.loss(&batch.inputs, &batch.targets, b, t);
        std::mem::swap(&mut self.model.params, &mut self.anchor);
        loss
    }

    fn step(&mut self, step: SgldStep) {
        let m = &self.model;
        m.backend.sgld_update(m.params, m.grads, self.anchor, step);
    }

    fn params(&self) -> Vec<f32> {
        self.model.read_params()
    }
}

/// The training data of `config` (`[data] dir`, or the built-in corpus) in batches
/// of `batch_size`, checked against a model from `checkpoint` (when there is one).
pub fn training_data(
    config: &Config,
    batch_size: usize,
    checkpoint: Option<&TrainingState>,
) -> Result<Dataset> {
    let data = data::load(&DataSpec {
        batch_size,
        ..DataSpec::of(config)
    })?;
    compat::check_data(&data, &config.model, checkpoint)
        .with_context(|| data.description.clone())?;
    Ok(data)
}

/// The LLC of `model` at its current weights, sampling `train` (batches of
/// `batch_size` sequences of `seq_len` tokens). The weights are left as they were.
pub fn estimate_on<B: Backend>(
    model: &mut Gpt<B>,
    train: Loader,
    batch_size: usize,
    seq_len: usize,
    settings: &SgldSettings,
    progress: &ProgressBar,
) -> Result<LlcEstimate> {
    let mut target = GptTarget::new(model, train, batch_size, seq_len);
    super::estimate(&mut target, settings, progress)
}

/// The LLC at each of several parameter vectors, each sampling its own data, side by
/// side on the CPU: one thread per estimate, each with its own model and a one-thread
/// pool for the ops (sharing one pool, the ops of both estimates interleave and the
/// gain is lost). Each estimate equals what `estimate_on` gives alone: the CPU ops
/// and the SGLD noise do not depend on the thread count.
pub fn estimate_side_by_side(
    jobs: Vec<(Vec<f32>, Dataset)>,
    config: &Config,
    batch_size: usize,
    settings: &SgldSettings,
    progress: &ProgressBar,
) -> Vec<Result<LlcEstimate>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(params, data)| {
                scope.spawn(move || -> Result<LlcEstimate> {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
                    pool.install(|| {
                        let mut model =
                            Gpt::with_params(backend::open_cpu(), &config.model, &params);
                        let seq_len = config.train.seq_len;
                        estimate_on(
                            &mut model, data.train, batch_size, seq_len, settings, progress,
                        )
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an estimate's thread panicked"))
            .collect()
    })
}
