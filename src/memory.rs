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
//!
//! Before allocating, commands compare what they will hold with the memory
//! available ([`available`]): on the GPU what the driver reports free, on the host
//! the least of /proc/meminfo's MemAvailable, the cgroup's room (limit less usage)
//! and `HGPT_MEMORY_LIMIT` (a cap the user sets, e.g. `8G`), so a size that cannot
//! fit ends in one line giving both figures instead of an allocation failure. The
//! check counts every step one memory holds at once ([`Held`]): a GPU rank's own
//! shard on its GPU; all of a CPU group's thread-ranks together on the host.

use anyhow::{Result, bail};
use serde::Serialize;

pub use crate::backend::Target;
use crate::backend::{Backend, GpuPrecision, ScratchItem, ScratchKind, StepShape, gpu_precision};
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
        item(
            "GEMM-only activations (bf16 with bf16 GEMMs)",
            target.gemm_operand_bytes() * acts.gemm_operands,
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
    // Saturating: a naive head's size for a batch no run could hold still compares.
    let unchunked_head_bytes = (2 * 4 * n).saturating_mul(v);
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
        unchunked_total_bytes: (total_bytes - head_chunk_bytes)
            .saturating_add(unchunked_head_bytes),
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

/// The environment variable that caps the memory hgpt plans to use, e.g. `8G`.
pub const MEMORY_LIMIT_ENV: &str = "HGPT_MEMORY_LIMIT";

/// Memory a command may use, and where that figure comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub bytes: usize,
    pub source: String,
}

/// `HGPT_MEMORY_LIMIT`'s value in bytes: a number of bytes, or a number with a
/// binary unit K, M, G or T (an optional `iB` or `B` after it), e.g. `512M`, `1.5G`.
pub fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (number, shift) = match t.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return None,
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let value: f64 = number.trim().parse().ok()?;
    let bytes = value * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

/// The smaller of two figures (either may be unknown).
fn least(a: Option<Available>, b: Option<Available>) -> Option<Available> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.bytes < a.bytes { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// `HGPT_MEMORY_LIMIT`, if set; an error naming it if it is not a size.
fn user_limit() -> Result<Option<Available>> {
    let Some(raw) = std::env::var_os(MEMORY_LIMIT_ENV) else {
        return Ok(None);
    };
    let raw = raw.to_string_lossy();
    match parse_size(&raw) {
        Some(bytes) => Ok(Some(Available {
            bytes,
            source: format!("{MEMORY_LIMIT_ENV}={raw}"),
        })),
        None => {
            bail!("{MEMORY_LIMIT_ENV}={raw}: expected a size such as 8G, 512M or a number of bytes")
        }
    }
}

/// A number in a file (a cgroup's limit or usage); None when absent or "max".
fn read_number(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Host memory the kernel can give without swapping: /proc/meminfo's MemAvailable.
fn mem_available() -> Option<Available> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(Available {
        bytes: kib * 1024,
        source: "MemAvailable in /proc/meminfo".into(),
    })
}

/// Room left under this process's cgroup memory limit (v2, then v1), if one is set.
fn cgroup_room() -> Option<Available> {
    let limits = [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ];
    limits.iter().find_map(|&(limit, usage)| {
        let limit_bytes = read_number(limit)?;
        // v1 spells "no limit" as a number near i64::MAX.
        if limit_bytes >= 1 << 60 {
            return None;
        }
        Some(Available {
            bytes: limit_bytes.saturating_sub(read_number(usage).unwrap_or(0)),
            source: format!("the cgroup limit in {limit}"),
        })
    })
}

/// The memory available to `backend`'s buffers: the GPU's free memory, or on the
/// host the least of MemAvailable and the cgroup's room; either capped by
/// `HGPT_MEMORY_LIMIT`. None when nothing gives a figure.
pub fn available<B: Backend + ?Sized>(backend: &B) -> Result<Option<Available>> {
    match backend.free_memory_bytes() {
        Some(bytes) => {
            let free = Available {
                bytes,
                source: format!("free on {}", backend.describe()),
            };
            Ok(least(Some(free), user_limit()?))
        }
        None => host_available(),
    }
}

/// Host memory available (for buffers that live on the host whatever the device).
pub fn host_available() -> Result<Option<Available>> {
    Ok(least(least(mem_available(), cgroup_room()), user_limit()?))
}

/// A petabyte: no machine hgpt runs on holds it, and sizes below it cannot
/// overflow the plan's arithmetic.
const BEYOND_ANY_MACHINE: f64 = (1u64 << 50) as f64;

/// Refuses `need` bytes, held by `what`, beyond `available` (or, with no figure,
/// beyond any machine): one line giving both.
pub fn ensure_fits(need: f64, what: &str, available: Option<&Available>) -> Result<()> {
    let limit = available.map_or(BEYOND_ANY_MACHINE, |a| a.bytes as f64);
    if need > limit {
        let have = available.map_or("more than any machine holds".to_string(), |a| {
            format!(
                "but only {:.2} GiB is available ({})",
                gib(a.bytes),
                a.source
            )
        });
        bail!(
            "does not fit: {what} needs {:.2} GiB, {have}",
            need / (1u64 << 30) as f64
        );
    }
    Ok(())
}

/// A lower bound, in f64 (no overflow), on the bytes a training step of `config`
/// at micro-batch `b`, as one rank of `ranks`, holds: parameters, gradients and
/// the rank's share of both moments of the embeddings and the layers' weights, one
/// residual per layer and position, and the tokens.
fn step_lower_bound(config: &Config, b: usize, ranks: usize) -> f64 {
    let m = &config.model;
    let (v, c, l) = (m.vocab_size as f64, m.n_embd as f64, m.n_layer as f64);
    let n = b as f64 * config.train.seq_len as f64;
    let params = v * c + m.block_size as f64 * c + l * 12.0 * c * c;
    (8.0 + 8.0 / ranks as f64) * params + 4.0 * n * c * l + 8.0 * n
}

/// What a training step of `config` at micro-batch `b` is, for the user.
fn step_what(config: &Config, b: usize, qualifier: &str) -> String {
    let m = &config.model;
    format!(
        "a training step of {} layers x {} channels, vocab {}, micro-batch {} x {} tokens{qualifier}",
        m.n_layer, m.n_embd, m.vocab_size, b, config.train.seq_len
    )
}

/// Refuses a step past any machine (a petabyte), whose plan is not computed: its
/// per-layer lists could not be held, nor its sums be kept from overflowing.
pub fn ensure_plannable(config: &Config, b: usize) -> Result<()> {
    ensure_fits(
        step_lower_bound(config, b, 1),
        &step_what(config, b, " (at least)"),
        None,
    )
}

/// Steps held at once in one memory: `copies` plans, each of one rank of `ranks`
/// data-parallel ranks (its 1/`ranks` shard of the moments), said as `label` after
/// the step in a refusal (e.g. "for 2 ranks on this host"; empty for one step).
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub copies: usize,
    pub ranks: usize,
    pub label: String,
}

impl Held {
    /// One rank of a group of `ranks` on `target`: a GPU holds its rank alone; the
    /// host holds every rank of the group, whose plans add up (the CPU backend's
    /// ranks are threads of one process: `hgpt train --device cpu --ranks N`).
    pub fn rank_of(ranks: usize, target: Target) -> Held {
        let (copies, label) = match (ranks, target) {
            (1, _) => (1, String::new()),
            (_, Target::Cpu) => (ranks, format!(" for {ranks} ranks on this host")),
            (_, Target::Cuda { .. }) => (1, format!(" as one rank of {ranks} on its GPU")),
        };
        Held {
            copies,
            ranks,
            label,
        }
    }
}

/// Refuses the training steps `held` holds of `config` at micro-batch `b`, on
/// `target`, beyond `available` (see [`plan`]; `hgpt memory` shows it item by
/// item): one line naming the steps, how many are held at once, and both figures.
pub fn ensure_held_fits(
    config: &Config,
    b: usize,
    held: &Held,
    target: Target,
    available: Option<&Available>,
) -> Result<()> {
    let copies = held.copies as f64;
    let bound = copies * step_lower_bound(config, b, held.ranks);
    if bound > BEYOND_ANY_MACHINE {
        let what = step_what(config, b, &format!("{} (at least)", held.label));
        return ensure_fits(bound, &what, available);
    }
    let each = plan(config, b, target, held.ranks).total_bytes;
    let label = match held.copies {
        1 => held.label.clone(),
        n => format!("{} ({n} x {:.2} GiB)", held.label, gib(each)),
    };
    ensure_fits(
        copies * each as f64,
        &step_what(config, b, &label),
        available,
    )
}

/// Refuses a training step of `config` at micro-batch `b`, as one of `ranks`
/// data-parallel ranks, that cannot fit in the memory available to `backend`
/// together with what the group holds beside it there ([`Held::rank_of`]).
pub fn ensure_step_fits<B: Backend + ?Sized>(
    config: &Config,
    b: usize,
    ranks: usize,
    backend: &B,
) -> Result<()> {
    let target = backend.target();
    let held = Held::rank_of(ranks, target);
    ensure_held_fits(config, b, &held, target, available(backend)?.as_ref())
}
