//! `hgpt bench`: the benchmark's report as a table, or as JSON.

use anyhow::Result;
use clap::Args;

use hgpt::bench::{BenchReport, BenchRequest};

use super::{ConfigArgs, DeviceArgs, Stderr, micro_batch, whole};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Warm-up steps before timing (timed steps: --steps, default 10)
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = whole::<usize>)]
    warmup: usize,
    /// Sequences per micro-batch (shorthand for --set train.batch_size=B)
    #[arg(long, value_name = "B", allow_negative_numbers = true, value_parser = whole::<usize>)]
    micro_batch: Option<usize>,
    /// Peak TFLOP/s for MFU (default: 989, H100 SXM dense bf16, on the GPU in bf16;
    /// the measured GEMM peak on the CPU and for fp32)
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    peak_tflops: Option<f64>,
    /// Time every op of the step on the GPU too (CUDA events; the CPU always does)
    #[arg(long)]
    profile: bool,
    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let micro_batch = micro_batch(args.micro_batch)?;
    let mut config = args.config.load()?;
    if let Some(b) = micro_batch {
        config.train.batch_size = b;
    }
    if args.config.steps.is_none() {
        config.train.max_steps = 10;
    }
    let request = BenchRequest {
        config: &config,
        warmup: args.warmup,
        device: args.device.device,
        peak_tflops: args.peak_tflops,
        profile: args.profile,
    };
    let report = hgpt::bench::run(&request, &mut Stderr)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", table(&report));
    }
    Ok(())
}

/// The report as a table: the run, throughput, MFU, memory, and where profiled every
/// op, longest first, against its floor.
fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "device: {}\n{} head, {:.2}M parameters; {} x {} tokens x {} micro-batches = {} tokens/step; \
             {} warm-up + {} timed steps\n\
             throughput: {:.0} tokens/s, {:.1} ms/step\n\
             MFU: {:.1}% ({:.3} model TFLOP/s at {:.0} MFLOP/token, of {:.3} TFLOP/s: {})\n\
             GEMM peak: {:.3} TFLOP/s; copy bandwidth: {:.1} GB/s",
        r.device,
        r.head,
        r.params as f64 / 1e6,
        r.micro_batch,
        r.seq_len,
        r.grad_accum,
        r.tokens_per_step,
        r.warmup_steps,
        r.steps,
        r.tokens_per_s,
        r.ms_per_step,
        100.0 * r.mfu,
        r.model_tflops,
        r.flops_per_token / 1e6,
        r.peak_tflops,
        r.peak_source,
        r.gemm_peak_tflops,
        r.copy_gbps,
    );
    if let Some(mm) = r.matmul_tflops {
        s += &format!(
            "; model matmuls: {:.3} TFLOP/s ({:.0}% of peak)",
            mm,
            100.0 * mm / r.gemm_peak_tflops
        );
    }
    s += &format!(
        "\npeak memory held by the backend: {:.0} MiB (planned {:.0} MiB)\n",
        r.peak_memory_mib, r.planned_memory_mib
    );
    if r.epilogue_fallbacks > 0 {
        s += &format!(
            "epilogue fallbacks: {} GEMMs ran their bias/GELU as separate kernels\n",
            r.epilogue_fallbacks
        );
    }
    s += "\n";
    if r.ops.is_empty() {
        return s;
    }
    s += &format!(
        "{:<27} {:>6} {:>10} {:>6} {:>9} {:>8} {:>10} {:>7} {:>8}\n",
        "op", "calls", "ms/step", "share", "GFLOP/s", "GB/s", "floor ms", "bound", "of floor"
    );
    let mut ops: Vec<_> = r.ops.iter().collect();
    ops.sort_by(|a, b| b.1.ms_per_step.total_cmp(&a.1.ms_per_step));
    for (name, op) in ops {
        s += &format!(
            "{:<27} {:>6} {:>10.3} {:>5.1}% {:>9} {:>8.1} {:>10.3} {:>7} {:>7.1}%\n",
            name,
            op.calls,
            op.ms_per_step,
            100.0 * op.share,
            op.gflops.map_or("-".into(), |g| format!("{g:.1}")),
            op.gbps,
            op.floor_ms,
            op.bound,
            100.0 * op.of_floor,
        );
    }
    if let Some(outside) = r.outside_ops_share {
        s += &format!(
            "{:<27} {:>6} {:>10.3} {:>5.1}%\n",
            "(outside the ops)",
            "",
            outside * r.ms_per_step,
            100.0 * outside
        );
    }
    s
}
