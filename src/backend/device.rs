//! The one door to a device: `--device` and the config's precision in, a boxed
//! [`Backend`] out. Every command opens its backend here, once, and runs the model
//! through `Box<dyn Backend>` without knowing which it got.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use super::cpu::{self, CpuBackend};
use super::cuda::{self, CudaBackend};
use super::{Backend, ScratchItem, StepShape};
use crate::config::Precision;

/// Which device runs the model (`--device`): the GPU when one is usable (auto), the
/// CPU, or the GPU or an error saying why not (cuda).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// Every choice, as `--device` spells it.
    pub const NAMES: [&'static str; 3] = ["auto", "cpu", "cuda"];
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<DeviceChoice> {
        Ok(match s {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda,
            _ => bail!("--device {s}: expected one of auto, cpu, cuda"),
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let name = match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        };
        f.write_str(name)
    }
}

/// How the GPU's GEMMs run: fp32 operands (parity with the CPU) or bf16 operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPrecision {
    Fp32,
    Bf16,
}

/// What a backend runs on, as far as the memory plan and the benchmark need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Cpu,
    /// A GPU in the given precision; `cc_major` is its compute capability's major
    /// version (9 for H100 and H200), which sets the cuBLASLt workspace.
    Cuda {
        precision: GpuPrecision,
        cc_major: i32,
    },
}

impl Target {
    /// Floats of attention state per layer the backend keeps for the backward pass.
    pub fn attention_state_len(self, b: usize, t: usize, nh: usize) -> usize {
        match self {
            Target::Cpu => cpu::attention::attention_state_len(b, t, nh),
            Target::Cuda { .. } => cuda::attention_state_len(b, t, nh),
        }
    }

    /// Bytes a value of `Backend::alloc_gemm_operands` takes: 2 on a GPU in bf16
    /// mode (its GEMMs' operand type), else 4.
    pub fn gemm_operand_bytes(self) -> usize {
        match self {
            Target::Cuda {
                precision: GpuPrecision::Bf16,
                ..
            } => 2,
            _ => 4,
        }
    }

    /// What the backend holds over a training step of shape `s` beyond the model's
    /// own buffers (parameters, gradients, moments, activations, tokens).
    pub fn step_scratch(self, s: &StepShape) -> Vec<ScratchItem> {
        match self {
            Target::Cpu => cpu::step_scratch(s),
            Target::Cuda {
                precision,
                cc_major,
            } => cuda::step_scratch(s, precision, cc_major),
        }
    }
}

/// How the GPU runs a config's `train.precision` ("auto" is bf16 there).
pub fn gpu_precision(precision: Precision) -> GpuPrecision {
    match precision {
        Precision::Fp32 => GpuPrecision::Fp32,
        Precision::Auto | Precision::Bf16 => GpuPrecision::Bf16,
    }
}

/// Opens the backend `choice` asks for (auto: the GPU when the driver library and a
/// device are present, else the CPU), with a line for the user saying which it is and
/// why, which the caller prints once its set-up has succeeded, so a failed command
/// prints only its error. The GPU runs in `precision`; a model whose attention head
/// size (n_embd / n_head) its kernels cannot take is refused before any GPU work.
pub fn open(
    choice: DeviceChoice,
    precision: Precision,
    attention_head_size: usize,
) -> Result<(Box<dyn Backend>, String)> {
    let open_cuda = || -> Result<(Box<dyn Backend>, String)> {
        let (be, line) = open_gpu(precision, attention_head_size, 0)?;
        Ok((Box::new(be), line))
    };
    let why_cpu = match choice {
        DeviceChoice::Cuda => return open_cuda(),
        DeviceChoice::Auto => match cuda::device_count() {
            Ok(_) => return open_cuda(),
            Err(e) => format!("auto: no usable GPU: {e:#}"),
        },
        DeviceChoice::Cpu => "--device cpu".to_string(),
    };
    let mut line = format!("device: cpu ({why_cpu})");
    if precision == Precision::Bf16 {
        line += "; train.precision = \"bf16\" applies to CUDA only, the CPU runs fp32";
    }
    Ok((open_cpu(), line))
}

/// GPU `ordinal` as a concrete [`CudaBackend`] (a data-parallel rank hands it to
/// NCCL), with its device line; `ordinal` counts the GPUs this process sees.
pub fn open_gpu(
    precision: Precision,
    attention_head_size: usize,
    ordinal: usize,
) -> Result<(CudaBackend, String)> {
    if attention_head_size > cuda::MAX_HEAD_SIZE {
        bail!(
            "model.n_embd / model.n_head = {attention_head_size}: the CUDA backend's \
             attention takes head sizes up to {}; use --device cpu or more heads",
            cuda::MAX_HEAD_SIZE
        );
    }
    let be = CudaBackend::on_device(gpu_precision(precision), ordinal)?;
    let line = format!("device: {}", be.describe());
    Ok((be, line))
}
/// The f32 CPU backend. Its ops run on the rayon pool of the thread that calls them,
/// so a caller that runs several models side by side gives each thread its own pool
/// (`hgpt llc --run`: one thread per checkpoint, one op thread each).
pub fn open_cpu() -> Box<dyn Backend> {
    Box::new(CpuBackend::<f32>::new())
}
