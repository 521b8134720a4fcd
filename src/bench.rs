//! The benchmark behind `hgpt bench` (whose table is src/cli/bench.rs): training
//! throughput and model FLOPs utilisation (MFU).
//!
//! Warm-up steps, then timed optimizer steps of the real training loop (data,
//! forward, backward, clipping, AdamW): tokens/s, ms/step, model FLOP/s by llm.c's
//! count (6 N + 6 L C T per token, docs/DESIGN.md section 6) over a peak: on the GPU
//! 989 TFLOP/s (H100 SXM dense bf16) unless `--peak-tflops` says otherwise (fp32
//! runs use the measured GEMM peak), on the CPU the GEMM peak measured here on one
//! large square product. Memory: the most the backend held at once, beside what
//! the memory plan (src/memory.rs) predicts. On the CPU every op is timed too (per-op
//! GFLOP/s); on the GPU that would need a sync per op, so it is not.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::backend::{self, Backend, DeviceChoice, GpuPrecision, Linear, Mat, OpStats, Target};
use crate::config::Config;
use crate::data::{self, DataSpec};
use crate::memory;
use crate::observe::Observer;
use crate::train::Trainer;

/// H100 SXM dense bf16 tensor-core peak, TFLOP/s: the default MFU denominator on
/// the GPU.
pub const H100_BF16_TFLOPS: f64 = 989.0;

#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub calls: u64,
    pub ms_per_step: f64,
    pub share: f64,
    /// Achieved GFLOP/s where the op's FLOPs are counted (GEMMs, attention, head).
    pub gflops: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub head: String,
    pub params: usize,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    pub warmup_steps: usize,
    pub steps: usize,
    pub tokens_per_step: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    /// llm.c's count: 6 N + 6 L C T.
    pub flops_per_token: f64,
    /// Model FLOPs per second, `flops_per_token * tokens_per_s`.
    pub model_tflops: f64,
    /// The peak MFU is measured against, and where it comes from.
    pub peak_tflops: f64,
    pub peak_source: String,
    /// model_tflops / peak_tflops.
    pub mfu: f64,
    /// Best of a few square GEMMs through the backend's dense layer (CPU: 1024^3 f32
    /// on all threads; GPU: 4096^3 through cuBLASLt in the run's precision, bf16 mode
    /// converting the activation operand as the model's matmuls do).
    pub gemm_peak_tflops: f64,
    /// All matmul forward/backward FLOPs over their time (CPU only: per-op timing).
    pub matmul_tflops: Option<f64>,
    /// Most bytes the backend held at once (GPU: device memory, workspace and
    /// scratch included; CPU: its buffers, without op-internal host scratch).
    pub peak_memory_mib: f64,
    /// What the memory plan predicts for the same figure.
    pub planned_memory_mib: f64,
    /// GEMMs whose fused epilogue (bias, GELU) the backend had no kernel for, so they
    /// ran as separate kernels, over the whole run (0 on the CPU, which fuses none).
    pub epilogue_fallbacks: usize,
    pub ops: BTreeMap<String, OpReport>,
}

/// FLOPs per trained token: 6 per parameter plus attention's 6 L C T.
pub fn flops_per_token(config: &Config, params: usize) -> f64 {
    let m = &config.model;
    6.0 * params as f64 + 6.0 * (m.n_layer * m.n_embd * config.train.seq_len) as f64
}

/// GFLOP/s of an n x n x n GEMM through the backend's own dense layer
/// (`matmul_forward`, no bias), best of `reps`: the product the model's matmuls run,
/// in the backend's precision.
pub fn gemm_peak_gflops(be: &dyn Backend, n: usize, reps: usize) -> f64 {
    let (a, b, c) = (be.alloc(n * n), be.alloc(n * n), be.alloc(n * n));
    be.fill(a, 0.5);
    be.fill(b, 0.25);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        be.synchronize();
        let t0 = Instant::now();
        let (x, w) = (Mat::new(a, n, n), Mat::new(b, n, n));
        be.matmul_forward(Mat::new(c, n, n), x, Linear { w, b: None });
        be.synchronize();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    for s in [a, b, c] {
        be.free(s);
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// What to run: `config.train.max_steps` timed steps after `warmup` untimed ones.
pub struct BenchRequest<'a> {
    pub config: &'a Config,
    pub warmup: usize,
    pub device: DeviceChoice,
    /// The MFU denominator; None: the default for the device.
    pub peak_tflops: Option<f64>,
}

/// Runs the benchmark on the chosen device (which `observer` hears of).
pub fn run(req: &BenchRequest, observer: &mut dyn Observer) -> Result<BenchReport> {
    if let Some(p) = req.peak_tflops
        && !(p > 0.0 && p.is_finite())
    {
        bail!("--peak-tflops {p}: must be a positive number");
    }
    if req.config.train.max_steps == 0 {
        bail!("--steps 0: the benchmark needs at least one timed step");
    }
    let data = data::load(&DataSpec::of(req.config))?;
    let (backend, device_line) = backend::open(
        req.device,
        req.config.train.precision,
        req.config.model.head_size(),
    )?;
    observer.note(&device_line);
    let steps = req.config.train.max_steps;
    let mut tr = Trainer::new(req.config, backend, data)?;
    for _ in 0..req.warmup {
        tr.train_step()?;
    }
    let be = &tr.model.backend;
    // Only the timed steps are profiled (where the backend profiles at all: the CPU,
    // whose bookkeeping is a few map updates per op, nothing beside the ops' time).
    be.synchronize();
    be.start_profile();
    let t0 = Instant::now();
    for _ in 0..steps {
        tr.train_step()?;
    }
    let be = &tr.model.backend;
    be.synchronize();
    let seconds = t0.elapsed().as_secs_f64();
    let profile = be.take_profile();
    // Read before the GEMM peak's own buffers count towards it.
    let peak_memory_bytes = be.peak_memory_bytes();
    let epilogue_fallbacks = be.epilogue_fallbacks();
    let target = be.target();
    let gemm_n = match target {
        Target::Cpu => 1024,
        Target::Cuda { .. } => 4096,
    };
    let gemm_peak_tflops = gemm_peak_gflops(be.as_ref(), gemm_n, 5) / 1e3;
    let (peak_tflops, peak_source) = match (req.peak_tflops, target) {
        (Some(p), _) => (p, "--peak-tflops".to_string()),
        (None, Target::Cpu) => (gemm_peak_tflops, "measured f32 GEMM peak".into()),
        (
            None,
            Target::Cuda {
                precision: GpuPrecision::Bf16,
                ..
            },
        ) => (H100_BF16_TFLOPS, "H100 SXM dense bf16 (default)".into()),
        (
            None,
            Target::Cuda {
                precision: GpuPrecision::Fp32,
                ..
            },
        ) => (gemm_peak_tflops, "measured fp32 GEMM peak".into()),
    };
    let ops = op_reports(&profile, steps);
    let (mm_flops, mm_time) = profile
        .iter()
        .filter(|(k, _)| k.starts_with("matmul"))
        .fold((0.0, 0.0), |(f, s), (_, v)| {
            (f + v.flops, s + v.time.as_secs_f64())
        });
    let matmul_tflops = (mm_time > 0.0).then(|| mm_flops / mm_time / 1e12);
    let timing = Timing {
        req,
        params: tr.model.num_params(),
        seconds,
        peak_tflops,
        peak_source,
        gemm_peak_tflops,
        peak_memory_bytes,
        epilogue_fallbacks,
        target,
    };
    Ok(timing.report(be.describe(), matmul_tflops, ops))
}

/// Each profiled op's calls, time per step, share of all ops' time and GFLOP/s.
fn op_reports(
    profile: &BTreeMap<&'static str, OpStats>,
    steps: usize,
) -> BTreeMap<String, OpReport> {
    let op_time: f64 = profile.values().map(|s| s.time.as_secs_f64()).sum();
    profile
        .iter()
        .map(|(name, s)| {
            let secs = s.time.as_secs_f64();
            let report = OpReport {
                calls: s.calls,
                ms_per_step: secs * 1e3 / steps as f64,
                share: secs / op_time,
                gflops: (s.flops > 0.0).then(|| s.flops / secs / 1e9),
            };
            (name.to_string(), report)
        })
        .collect()
}

/// The report's fields shared by both devices.
struct Timing<'a> {
    req: &'a BenchRequest<'a>,
    params: usize,
    seconds: f64,
    peak_tflops: f64,
    peak_source: String,
    gemm_peak_tflops: f64,
    peak_memory_bytes: usize,
    epilogue_fallbacks: usize,
    target: Target,
}

impl Timing<'_> {
    fn report(
        self,
        device: String,
        matmul_tflops: Option<f64>,
        ops: BTreeMap<String, OpReport>,
    ) -> BenchReport {
        let config = self.req.config;
        let t = &config.train;
        let steps = t.max_steps;
        let tokens_per_step = t.batch_size * t.seq_len * t.grad_accum;
        let tokens_per_s = (tokens_per_step * steps) as f64 / self.seconds;
        let flops_per_token = flops_per_token(config, self.params);
        let model_tflops = flops_per_token * tokens_per_s / 1e12;
        let planned = memory::plan(config, t.batch_size, self.target);
        // The plan counts the CPU head's host scratch, which the backend's counter
        // does not see; compare like with like.
        let planned_bytes = match self.target {
            Target::Cpu => planned.total_bytes - planned.head_chunk_bytes,
            Target::Cuda { .. } => planned.total_bytes,
        };
        BenchReport {
            device,
            head: config.model.head.to_string(),
            params: self.params,
            micro_batch: t.batch_size,
            seq_len: t.seq_len,
            grad_accum: t.grad_accum,
            warmup_steps: self.req.warmup,
            steps,
            tokens_per_step,
            ms_per_step: self.seconds * 1e3 / steps as f64,
            tokens_per_s,
            flops_per_token,
            model_tflops,
            peak_tflops: self.peak_tflops,
            peak_source: self.peak_source,
            mfu: model_tflops / self.peak_tflops,
            gemm_peak_tflops: self.gemm_peak_tflops,
            matmul_tflops,
            peak_memory_mib: mib(self.peak_memory_bytes),
            planned_memory_mib: mib(planned_bytes),
            epilogue_fallbacks: self.epilogue_fallbacks,
            ops,
        }
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
