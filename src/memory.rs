//! The memory plan of a training step: the bytes a config holds at micro-batch B on
//! each backend, computed (not measured) from the very sizes the code allocates:
//! the parameter layout, the model's activation layout (`ActivationFloats`, carved
//! as `Gpt` carves it), the backend's attention state, and what the backend itself
//! says it holds beyond those (`Target::step_scratch`: on the GPU every scratch slot,
//! the bf16 weight shadow and the cuBLASLt workspace). Tests check the
//! plan against the CPU backend's allocation counter, and (on a GPU) against the
//! CUDA backend's slots and peak. `hgpt memory` prints it (src/cli/memory.rs).
//!
//! Data parallel over N GPUs (ZeRO-1) shards the AdamW moments: each GPU holds
//! those of its shard, the largest of `dist::shards(params, N)`; everything else
//! is held whole on every GPU.
//!
//! Two totals: with the head as it runs (chunks of positions, never B x T x V at
//! once), and without chunking, as a naive head would hold it: the full fp32 logits
//! [B, T, V] and their gradient in place of the chunk.

use serde::Serialize;

pub use crate::backend::Target;
use crate::backend::{GpuPrecision, ScratchItem, ScratchKind, StepShape, gpu_precision};
use crate::config::{Config, HeadChoice};
use crate::model::{ActivationFloats, ParamLayout};

/// One line of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub what: String,
    pub bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryPlan {
    pub device: String,
    /// Data-parallel ranks the optimizer state is sharded over (1: not sharded).
    pub gpus: usize,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub params: usize,
    /// Everything a step holds, the head's chunk included.
    pub items: Vec<Item>,
    /// The head's chunk scratch (part of `items`).
    pub head_chunk_bytes: usize,
    pub total_bytes: usize,
    /// A full [B, T, V] fp32 logits tensor and its gradient, held by a naive head.
    pub unchunked_head_bytes: usize,
    /// `total_bytes` with the head's chunk replaced by the naive head's tensors.
    pub unchunked_total_bytes: usize,
}

/// The plan's line for a piece of a backend's step memory.
fn label(item: &ScratchItem) -> &'static str {
    match item.kind {
        ScratchKind::HeadChunk if item.host => "head chunk (host scratch)",
        ScratchKind::HeadChunk => "head chunk",
        ScratchKind::HeadInputs => "head inputs (bf16 copy of h, norms)",
        ScratchKind::GemmOperands => "GEMM bf16 operand copies",
        ScratchKind::Attention => "attention scratch",
        ScratchKind::Reductions => "reductions",
        ScratchKind::GradReductions => "deterministic gradient sums",
        ScratchKind::OptimizerTable => "AdamW tensor table",
        ScratchKind::WeightShadow => "bf16 weight shadow",
        ScratchKind::GemmWorkspace => "cuBLASLt workspace",
    }
}

/// The plan of one training step of `config` at micro-batch `b` on `target`, per
/// rank of `gpus` data-parallel ranks.
pub fn plan(config: &Config, b: usize, target: Target, gpus: usize) -> MemoryPlan {
    let m = &config.model;
    let t = config.train.seq_len;
    let (n, v) = (b * t, m.vocab_size);
    let layout = ParamLayout::new(m);
    let params = layout.total;
    let state_len = target.attention_state_len(b, t, m.n_head);
    let acts = ActivationFloats::new(m, b, t, state_len);
    let item = |what: &str, bytes: usize| Item {
        what: what.to_string(),
        bytes,
    };
    let mut items = vec![
        item("parameters (fp32)", 4 * params),
        item("gradients (fp32)", 4 * params),
        match gpus {
            1 => item("AdamW moments m, v (fp32)", 8 * params),
            _ => item(
                &format!("AdamW moments m, v (fp32), a 1/{gpus} shard"),
                8 * crate::dist::shards(params, gpus)[0].len(),
            ),
        },
        item(
            &format!(
                "activations of {} layers, without attention state",
                m.n_layer
            ),
            4 * (acts.layers - acts.attention_state),
        ),
        item("attention state, all layers", 4 * acts.attention_state),
        item("embeddings, ln_f, losses", 4 * acts.trunk),
        item("backward gradient scratch", 4 * acts.backward),
        item("tokens (inputs, targets)", 2 * 4 * n),
    ];
    let shape = StepShape {
        b,
        t,
        c: m.n_embd,
        nh: m.n_head,
        v,
        harmonic: m.head == HeadChoice::Harmonic,
        params,
        tensors: layout.tensors.len(),
    };
    // One line per label, in the order the labels first appear.
    let scratch = target.step_scratch(&shape);
    for s in &scratch {
        match items.iter_mut().find(|i| i.what == label(s)) {
            Some(i) => i.bytes += s.bytes,
            None => items.push(item(label(s), s.bytes)),
        }
    }
    let head_chunk_bytes = scratch
        .iter()
        .filter(|s| s.kind == ScratchKind::HeadChunk)
        .map(|s| s.bytes)
        .sum();
    let device = match target {
        Target::Cpu => "cpu (f32)".to_string(),
        Target::Cuda {
            precision,
            cc_major,
        } => {
            let p = match precision {
                GpuPrecision::Bf16 => "bf16 GEMMs",
                GpuPrecision::Fp32 => "fp32",
            };
            format!("cuda sm_{cc_major}x ({p})")
        }
    };
    items.retain(|i| i.bytes > 0);
    let total_bytes = items.iter().map(|i| i.bytes).sum();
    let unchunked_head_bytes = 2 * 4 * n * v;
    MemoryPlan {
        device,
        gpus,
        micro_batch: b,
        seq_len: t,
        params,
        items,
        head_chunk_bytes,
        total_bytes,
        unchunked_head_bytes,
        unchunked_total_bytes: total_bytes - head_chunk_bytes + unchunked_head_bytes,
    }
}

/// The largest micro-batch whose plan (per rank of `gpus`) fits in `capacity`
/// bytes (with the chunked head, or without), or 0 if not even one sequence does.
pub fn largest_micro_batch(
    config: &Config,
    target: Target,
    capacity: usize,
    chunked: bool,
    gpus: usize,
) -> usize {
    let fits = |b: usize| {
        let p = plan(config, b, target, gpus);
        let bytes = if chunked {
            p.total_bytes
        } else {
            p.unchunked_total_bytes
        };
        bytes <= capacity
    };
    if !fits(1) {
        return 0;
    }
    // Double past the edge, then bisect: fits(lo), !fits(hi).
    let mut hi = 2;
    while fits(hi) {
        hi *= 2;
    }
    let mut lo = hi / 2;
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// GPU memory sizes the plan is fitted into by default: what nvidia-smi reports
/// for an H100 80GB (81,559 MiB) and an H200 (143,771 MiB).
pub const DEFAULT_GPU_GIB: [f64; 2] = [79.65, 140.4];

/// The `hgpt memory` report: the plan on the CPU and the GPU side by side, and the
/// largest micro-batch fitting each GPU memory size.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub plans: Vec<MemoryPlan>,
    pub fits: Vec<Fit>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fit {
    pub gpu_gib: f64,
    pub device: String,
    pub largest_micro_batch: usize,
    pub largest_micro_batch_unchunked: usize,
}

/// The plans of `config` at micro-batch `b` on the CPU and on an sm_90 GPU in the
/// config's precision, per rank of `gpus` data-parallel ranks, and the largest
/// micro-batch fitting each of `gpu_gib`.
pub fn report(config: &Config, b: usize, gpu_gib: &[f64], gpus: usize) -> MemoryReport {
    let gpu = Target::Cuda {
        precision: gpu_precision(config.train.precision),
        cc_major: 9,
    };
    let plans = vec![
        plan(config, b, Target::Cpu, gpus),
        plan(config, b, gpu, gpus),
    ];
    let fits = gpu_gib
        .iter()
        .map(|&g| {
            let capacity = (g * (1u64 << 30) as f64) as usize;
            Fit {
                gpu_gib: g,
                device: plans[1].device.clone(),
                largest_micro_batch: largest_micro_batch(config, gpu, capacity, true, gpus),
                largest_micro_batch_unchunked: largest_micro_batch(
                    config, gpu, capacity, false, gpus,
                ),
            }
        })
        .collect();
    MemoryReport { plans, fits }
}
