//! The GPT as an SGLD target: its own training loss (mean next-token loss over the
//! batch, harmonic or softmax head) and gradients, on whatever backend runs it.

use anyhow::{Result, bail};
use indicatif::ProgressBar;

use super::estimate::LlcEstimate;
use super::sampler::{SgldSettings, SgldTarget};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DeviceChoice, open_gpu};
use crate::checkpoint;
use crate::config::Config;
use crate::data::{self, Batch, Dataset, Loader};
use crate::model::Gpt;

/// A model and the training batches to sample it with.
pub struct GptTarget<'a, B: Backend> {
    model: &'a mut Gpt<B>,
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
        GptTarget {
            model,
            loader,
            batch_size,
            seq_len,
        }
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

    fn params(&self) -> Vec<f32> {
        self.model.read_params()
    }

    fn set_params(&mut self, w: &[f32]) {
        self.model.write_params(w);
    }

    fn next_batch(&mut self) -> Batch {
        self.loader.next_batch()
    }

    fn loss(&mut self, batch: &Batch) -> f64 {
        let (b, t) = (self.batch_size, self.seq_len);
        self.model
            .forward(&batch.inputs, &batch.targets, b, t, None)
    }

    fn loss_and_grad(&mut self, batch: &Batch, grad: &mut [f32]) -> f64 {
        let (b, t) = (self.batch_size, self.seq_len);
        self.model.zero_grads();
        let loss = self
            .model
            .forward(&batch.inputs, &batch.targets, b, t, Some(1.0));
        self.model.backward();
        grad.copy_from_slice(&self.model.read_grads());
        loss
    }
}

/// The training data of `config` (`[data] dir`, or the built-in corpus) in batches
/// of `batch_size`, checked against a model trained on data tokenized as
/// `tokenizer_hash` says (when known).
pub fn training_data(
    config: &Config,
    batch_size: usize,
    tokenizer_hash: Option<&str>,
) -> Result<Dataset> {
    let mut config = config.clone();
    config.train.batch_size = batch_size;
    let data = data::load(&config, 0, 1)?;
    if let (Some(have), Some(want)) = (checkpoint::tokenizer::hash(&data), tokenizer_hash)
        && have != want
    {
        bail!(
            "{}: tokenizer sha256 {have}, but the model was trained on {want}: not the data it was trained on",
            data.description
        );
    }
    if data.vocab_size > config.model.vocab_size {
        bail!(
            "the data's vocabulary ({} tokens) is larger than the model's vocab_size {}",
            data.vocab_size,
            config.model.vocab_size
        );
    }
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

/// A GPT on whichever device `--device` chose, for estimating one checkpoint after
/// another without reopening the device.
pub enum DeviceGpt {
    Cpu(Box<Gpt<CpuBackend>>),
    Cuda(Box<Gpt<CudaBackend>>),
}

impl DeviceGpt {
    /// Opens the device (saying which on stderr) and allocates the model there.
    pub fn open(device: DeviceChoice, config: &Config) -> Result<DeviceGpt> {
        let (gpu, device_line) = open_gpu(device, config)?;
        eprintln!("{device_line}");
        Ok(match gpu {
            Some(gpu) => DeviceGpt::Cuda(Box::new(Gpt::new(gpu, &config.model))),
            None => DeviceGpt::Cpu(Box::new(Gpt::new(CpuBackend::new(), &config.model))),
        })
    }

    /// The LLC at `params` on the training data of `config`.
    pub fn estimate(
        &mut self,
        params: &[f32],
        config: &Config,
        data: Dataset,
        batch_size: usize,
        settings: &SgldSettings,
        progress: &ProgressBar,
    ) -> Result<LlcEstimate> {
        let seq_len = config.train.seq_len;
        match self {
            DeviceGpt::Cpu(m) => {
                m.write_params(params);
                estimate_on(m, data.train, batch_size, seq_len, settings, progress)
            }
            DeviceGpt::Cuda(m) => {
                m.write_params(params);
                estimate_on(m, data.train, batch_size, seq_len, settings, progress)
            }
        }
    }
}
