//! `hgpt memory`: the memory plan as a table, or as JSON.

use anyhow::{Result, bail};
use clap::Args;

use hgpt::memory::{DEFAULT_GPU_GIB, MemoryPlan, MemoryReport, gib};

use super::{ConfigArgs, micro_batch, whole};

#[derive(Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Sequences per micro-batch (default: the config's train.batch_size)
    #[arg(long, value_name = "B", allow_negative_numbers = true, value_parser = whole::<usize>)]
    micro_batch: Option<usize>,
    /// GPU memory sizes to fit the largest micro-batch into, GiB (default: an H100
    /// 80GB's 79.65 and an H200's 140.4, as nvidia-smi reports them)
    #[arg(
        long,
        value_name = "GIB",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    gpu_memory: Vec<f64>,
    /// Data-parallel GPUs: the plan per GPU, with the AdamW moments sharded over N
    /// (ZeRO-1)
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    gpus: u64,
    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(args: MemoryArgs) -> Result<()> {
    let micro_batch = micro_batch(args.micro_batch)?;
    let config = args.config.load()?;
    let gpu_gib = if args.gpu_memory.is_empty() {
        DEFAULT_GPU_GIB.to_vec()
    } else {
        args.gpu_memory
    };
    if let Some(g) = gpu_gib.iter().find(|g| !(**g > 0.0 && g.is_finite())) {
        bail!("--gpu-memory {g}: must be a positive number of GiB");
    }
    let batch = micro_batch.unwrap_or(config.train.batch_size);
    hgpt::memory::ensure_plannable(&config, batch)?;
    let report = hgpt::memory::report(&config, batch, &gpu_gib, args.gpus as usize);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", table(&report));
    }
    Ok(())
}

/// The plans side by side, item by item, and the largest micro-batch per GPU size.
fn table(r: &MemoryReport) -> String {
    let (cpu, gpu) = (&r.plans[0], &r.plans[1]);
    let mut s = format!(
        "memory plan of one training step: micro-batch {} x {} tokens = {} tokens, {:.2}M parameters\n",
        cpu.micro_batch,
        cpu.seq_len,
        cpu.micro_batch * cpu.seq_len,
        cpu.params as f64 / 1e6
    );
    if cpu.gpus > 1 {
        s += &format!(
            "per rank of {} data-parallel ranks (ZeRO-1: optimizer moments sharded)\n",
            cpu.gpus
        );
    }
    s += "\n";
    s += &format!("{:<52} {:>12} {:>24}\n", "GiB", cpu.device, gpu.device);
    // Every item of either plan, in order of first appearance.
    let mut names: Vec<&str> = cpu.items.iter().map(|i| i.what.as_str()).collect();
    for i in &gpu.items {
        if !names.contains(&i.what.as_str()) {
            names.push(&i.what);
        }
    }
    let cell = |p: &MemoryPlan, name: &str| {
        p.items
            .iter()
            .find(|i| i.what == name)
            .map_or("-".to_string(), |i| format!("{:.3}", gib(i.bytes)))
    };
    for name in names {
        s += &format!(
            "{:<52} {:>12} {:>24}\n",
            name,
            cell(cpu, name),
            cell(gpu, name)
        );
    }
    let row = |label: &str, f: fn(&MemoryPlan) -> usize| {
        format!(
            "{:<52} {:>12.3} {:>24.3}\n",
            label,
            gib(f(cpu)),
            gib(f(gpu))
        )
    };
    s += &row("total, chunked head", |p| p.total_bytes);
    s += &row("total, unchunked head (full [B,T,V] logits + grad)", |p| {
        p.unchunked_total_bytes
    });
    s += "\n";
    for f in &r.fits {
        s += &format!(
            "largest micro-batch in {:.2} GiB ({}): {} chunked, {} unchunked\n",
            f.gpu_gib, f.device, f.largest_micro_batch, f.largest_micro_batch_unchunked
        );
    }
    s
}
