//! The memory plan of a training step: the bytes a config holds at micro-batch B on
//! each backend, computed (not measured) from the very sizes the code allocates:
//! the parameter layout, the model's activation layout (`ActivationFloats`, carved
//! as `Gpt` carves it), the backend's attention state, and on the GPU every scratch
//! slot (`cuda::training_scratch_bytes`), the bf16 weight shadow and the cuBLASLt
//! workspace. Tests check the plan against the CPU backend's allocation counter,
//! and (on a GPU) against the CUDA backend's slots and peak. `hgpt memory` prints
//! it (src/cli/memory.rs).
//!
//! Two totals: with the head as it runs (chunks of positions, never B x T x V at
//! once), and without chunking, as a naive head would hold it: the full fp32 logits
//! [B, T, V] and their gradient in place of the chunk.

use serde::Serialize;

pub use crate::backend::Target;
use crate::backend::cpu::{attention as cpu_attention, head as cpu_head};
use crate::backend::cuda::{self, GpuPrecision, StepShape};
use crate::backend::gpu_precision;
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

/// The plan of one training step of `config` at micro-batch `b` on `target`.
pub fn plan(config: &Config, b: usize, target: Target) -> MemoryPlan {
    let m = &config.model;
    let t = config.train.seq_len;
    let (n, v) = (b * t, m.vocab_size);
    let params = ParamLayout::new(m).total;
    let state_len = match target {
        Target::Cpu => cpu_attention::attention_state_len(b, t, m.n_head),
        Target::Cuda { .. } => cuda::attention_state_len(b, t, m.n_head),
    };
    let acts = ActivationFloats::new(m, b, t, state_len);
    let item = |what: &str, bytes: usize| Item {
        what: what.to_string(),
        bytes,
    };
    let mut items = vec![
        item("parameters (fp32)", 4 * params),
        item("gradients (fp32)", 4 * params),
        item("AdamW moments m, v (fp32)", 8 * params),
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
    let (device, head_chunk_bytes) = match target {
        Target::Cpu => {
            let head = 4 * cpu_head::scratch_floats(n, v);
            items.push(item("head chunk (host scratch)", head));
            ("cpu (f32)".to_string(), head)
        }
        Target::Cuda {
            precision,
            cc_major,
        } => {
            let shape = StepShape {
                b,
                t,
                c: m.n_embd,
                nh: m.n_head,
                v,
                harmonic: m.head == HeadChoice::Harmonic,
                precision,
                head_chunk_floats: cuda::HEAD_CHUNK_FLOATS,
            };
            let slots = cuda::training_scratch_bytes(&shape);
            // One line per role, in the order the roles first appear.
            let mut head_chunk = 0;
            for slot in &slots {
                if slot.role == "head chunk" {
                    head_chunk += slot.bytes;
                }
                match items.iter_mut().find(|i| i.what == slot.role) {
                    Some(i) => i.bytes += slot.bytes,
                    None => items.push(item(slot.role, slot.bytes)),
                }
            }
            items.push(item(
                "bf16 weight shadow",
                cuda::weight_shadow_bytes(params, precision),
            ));
            items.push(item("cuBLASLt workspace", cuda::workspace_bytes(cc_major)));
            let p = match precision {
                GpuPrecision::Bf16 => "bf16 GEMMs",
                GpuPrecision::Fp32 => "fp32",
            };
            (format!("cuda sm_{cc_major}x ({p})"), head_chunk)
        }
    };
    items.retain(|i| i.bytes > 0);
    let total_bytes = items.iter().map(|i| i.bytes).sum();
    let unchunked_head_bytes = 2 * 4 * n * v;
    MemoryPlan {
        device,
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

/// The largest micro-batch whose plan fits in `capacity` bytes (with the chunked
/// head, or without), or 0 if not even one sequence does.
pub fn largest_micro_batch(
    config: &Config,
    target: Target,
    capacity: usize,
    chunked: bool,
) -> usize {
    let fits = |b: usize| {
        let p = plan(config, b, target);
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
/// config's precision, and the largest micro-batch fitting each of `gpu_gib`.
pub fn report(config: &Config, b: usize, gpu_gib: &[f64]) -> MemoryReport {
    let gpu = Target::Cuda {
        precision: gpu_precision(config.train.precision),
        cc_major: 9,
    };
    let plans = vec![plan(config, b, Target::Cpu), plan(config, b, gpu)];
    let fits = gpu_gib
        .iter()
        .map(|&g| {
            let capacity = (g * (1u64 << 30) as f64) as usize;
            Fit {
                gpu_gib: g,
                device: plans[1].device.clone(),
                largest_micro_batch: largest_micro_batch(config, gpu, capacity, true),
                largest_micro_batch_unchunked: largest_micro_batch(config, gpu, capacity, false),
            }
        })
        .collect();
    MemoryReport { plans, fits }
}
