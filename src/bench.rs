//! `hgpt bench`: training throughput, and how close each op family runs to the
//! machine's own GEMM peak (measured here, on one large square product). On the GPU
//! the ops are not timed one by one (that would need a sync per op): it reports
//! throughput, the cuBLASLt GEMM peak and the peak device memory.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::backend::cpu::CpuBackend;
use crate::backend::cpu::matmul::gemm;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DeviceChoice, open_gpu};
use crate::config::Config;
use crate::data::{self, Dataset};
use crate::train::Trainer;

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
    pub params: usize,
    pub steps: usize,
    pub tokens_per_step: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    /// Best of a few square GEMMs through the backend's own GEMM path (CPU: 1024^3
    /// f32 on all threads; GPU: 4096^3 through cuBLASLt in the run's precision).
    pub gemm_peak_gflops: f64,
    /// All matmul forward/backward FLOPs over their time (CPU only: per-op timing).
    pub matmul_gflops: Option<f64>,
    /// Model FLOPs per second, counting 6N + 6 L C T per token (llm.c's estimate).
    pub model_gflops: f64,
    /// Most device memory held at once (GPU only).
    pub peak_memory_mib: Option<f64>,
    pub ops: BTreeMap<String, OpReport>,
}

/// FLOPs per trained token: 6 per parameter plus attention's 6 L C T.
fn flops_per_token(config: &Config, params: usize) -> f64 {
    let m = &config.model;
    6.0 * params as f64 + 6.0 * (m.n_layer * m.n_embd * config.train.seq_len) as f64
}

/// GFLOP/s of an n x n x n f32 GEMM, best of `reps`.
pub fn gemm_peak_gflops(n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|i| ((i * 104_729) % 1000) as f32 * 1e-3)
        .collect();
    let mut c = vec![0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        gemm(&mut c, n, n, n, (&a, n, 1), (&b, n, 1), false, 1.0);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Trains `config.train.max_steps` steps after `warmup` untimed ones on the device
/// `device` picks.
pub fn run(config: &Config, warmup: usize, device: DeviceChoice) -> Result<BenchReport> {
    let data = data::load(config, 0, 1)?;
    let (gpu, device_line) = open_gpu(device, config)?;
    eprintln!("{device_line}");
    match gpu {
        Some(gpu) => run_gpu(config, warmup, gpu, data),
        None => run_cpu(config, warmup, data),
    }
}

fn run_gpu(config: &Config, warmup: usize, gpu: CudaBackend, data: Dataset) -> Result<BenchReport> {
    let t = &config.train;
    let mut tr = Trainer::new(config, gpu, data)?;
    for _ in 0..warmup {
        tr.train_step();
    }
    tr.model.backend.synchronize();
    let t0 = Instant::now();
    for _ in 0..t.max_steps {
        tr.train_step();
    }
    tr.model.backend.synchronize();
    let elapsed = t0.elapsed().as_secs_f64();
    let steps = t.max_steps.max(1);
    let tokens_per_step = t.batch_size * t.seq_len * t.grad_accum;
    let tokens_per_s = (tokens_per_step * steps) as f64 / elapsed;
    let be = &tr.model.backend;
    Ok(BenchReport {
        device: be.describe(),
        params: tr.model.num_params(),
        steps,
        tokens_per_step,
        ms_per_step: elapsed * 1e3 / steps as f64,
        tokens_per_s,
        gemm_peak_gflops: be.gemm_peak_gflops(4096, 5),
        matmul_gflops: None,
        model_gflops: flops_per_token(config, tr.model.num_params()) * tokens_per_s / 1e9,
        peak_memory_mib: Some(be.peak_memory_bytes() as f64 / (1 << 20) as f64),
        ops: BTreeMap::new(),
    })
}

/// The CPU run, profiling every op.
fn run_cpu(config: &Config, warmup: usize, data: Dataset) -> Result<BenchReport> {
    let t = &config.train;
    let mut tr = Trainer::new(config, CpuBackend::<f32>::new(), data)?;
    for _ in 0..warmup {
        tr.train_step();
    }
    tr.model.backend.start_profile();
    let t0 = Instant::now();
    for _ in 0..t.max_steps {
        tr.train_step();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let profile = tr.model.backend.take_profile();
    let steps = t.max_steps.max(1);
    let op_time: f64 = profile.values().map(|s| s.time.as_secs_f64()).sum();
    let ops = profile
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
        .collect::<BTreeMap<_, _>>();
    let (mm_flops, mm_time) = profile
        .iter()
        .filter(|(k, _)| k.starts_with("matmul"))
        .fold((0.0, 0.0), |(f, s), (_, v)| {
            (f + v.flops, s + v.time.as_secs_f64())
        });
    let tokens_per_step = t.batch_size * t.seq_len * t.grad_accum;
    let tokens_per_s = (tokens_per_step * steps) as f64 / elapsed;
    Ok(BenchReport {
        device: tr.model.backend.describe(),
        params: tr.model.num_params(),
        steps,
        tokens_per_step,
        ms_per_step: elapsed * 1e3 / steps as f64,
        tokens_per_s,
        gemm_peak_gflops: gemm_peak_gflops(1024, 5),
        matmul_gflops: Some(mm_flops / mm_time / 1e9),
        model_gflops: flops_per_token(config, tr.model.num_params()) * tokens_per_s / 1e9,
        peak_memory_mib: None,
        ops,
    })
}

impl BenchReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "device: {}\nparameters: {:.2}M, {} tokens/step, {} timed steps\n\
             throughput: {:.0} tokens/s ({:.1} ms/step), model {:.1} GFLOP/s\n\
             GEMM peak: {:.1} GFLOP/s",
            self.device,
            self.params as f64 / 1e6,
            self.tokens_per_step,
            self.steps,
            self.tokens_per_s,
            self.ms_per_step,
            self.model_gflops,
            self.gemm_peak_gflops,
        );
        if let Some(mm) = self.matmul_gflops {
            s += &format!(
                "; model matmuls: {mm:.1} GFLOP/s ({:.0}% of peak)",
                100.0 * mm / self.gemm_peak_gflops
            );
        }
        if let Some(mib) = self.peak_memory_mib {
            s += &format!("\npeak device memory: {mib:.0} MiB");
        }
        s += "\n\n";
        if self.ops.is_empty() {
            return s;
        }
        s += &format!(
            "{:<20} {:>8} {:>12} {:>7} {:>10}\n",
            "op", "calls", "ms/step", "share", "GFLOP/s"
        );
        for (name, op) in &self.ops {
            s += &format!(
                "{:<20} {:>8} {:>12.2} {:>6.1}% {:>10}\n",
                name,
                op.calls,
                op.ms_per_step,
                100.0 * op.share,
                op.gflops.map_or("-".into(), |g| format!("{g:.1}"))
            );
        }
        s
    }
}
