//! The memory plan against what the backends really allocate (the CPU here; the
//! CUDA backend's slots and peak in tests/cuda_parity.rs), the planner's search
//! for the largest micro-batch, and the commands' refusal, before allocating, of
//! sizes beyond the memory available (one line with both figures, no backtrace).

mod common;

use hgpt::backend::Backend;
use hgpt::backend::GpuPrecision;
use hgpt::backend::cpu::CpuBackend;
use hgpt::config::Config;
use hgpt::data;
use hgpt::memory::{
    Available, Held, Target, ensure_held_fits, gib, largest_micro_batch, parse_size, plan,
};
use hgpt::train::Trainer;

fn small(sets: &[&str]) -> Config {
    common::config(common::SMALL, &[&["train.batch_size=3"], sets].concat())
}

/// A training step (two micro-batches, clipping, AdamW) and a validation pass hold
/// exactly the planned buffers on the CPU: parameters, gradients, moments, the
/// activations as the model carves them, tokens. The CPU head's host scratch is
/// outside the backend's counter, so it is left out of the comparison.
#[test]
fn cpu_training_step_allocates_exactly_the_plan() {
    let variants: [&[&str]; 4] = [
        &[],
        &["model.head=softmax"],
        &["model.tie_embeddings=false", "model.n_layer=3"],
        &[
            "train.batch_size=5",
            "train.seq_len=17",
            "train.grad_accum=2",
        ],
    ];
    for sets in variants {
        let config = small(sets);
        let data = data::builtin(&data::DataSpec::of(&config)).unwrap();
        let mut tr = Trainer::new(&config, CpuBackend::<f32>::new(), data).unwrap();
        tr.train_step().unwrap();
        tr.evaluate().unwrap();
        tr.train_step().unwrap();
        let planned = plan(&config, config.train.batch_size, Target::Cpu, 1);
        let held = tr.model.backend.peak_memory_bytes();
        assert_eq!(
            held,
            planned.total_bytes - planned.head_chunk_bytes,
            "{sets:?}: {planned:#?}"
        );
    }
}

/// ln_1's, ln_2's and GELU's outputs (6 N C a layer, read only by GEMMs) are one line of the
/// plan: 2 bytes a value on a GPU in bf16 mode, where the backend stores them at its
/// GEMMs' operand type, 4 in fp32 mode and on the CPU; every other line is as in fp32.
#[test]
fn gemm_only_activations_take_two_bytes_a_value_in_bf16_mode() {
    let config = small(&["model.n_layer=3"]);
    let (b, n, c) = (4, 4 * 32, 32);
    let line = |target: Target| {
        let p = plan(&config, b, target, 1);
        let found: Vec<_> = p
            .items
            .iter()
            .filter(|i| i.what.starts_with("GEMM-only activations"))
            .map(|i| (i.what.clone(), i.bytes))
            .collect();
        assert_eq!(found.len(), 1, "{p:#?}");
        found[0].clone()
    };
    let gpu = |precision| Target::Cuda {
        precision,
        cc_major: 9,
    };
    let values = 3 * 6 * n * c;
    let (label, bf16_bytes) = line(gpu(GpuPrecision::Bf16));
    assert_eq!(bf16_bytes, 2 * values);
    for target in [Target::Cpu, gpu(GpuPrecision::Fp32)] {
        assert_eq!(line(target), (label.clone(), 4 * values), "{target:?}");
    }
}

#[test]
fn unchunked_plan_swaps_the_head_chunk_for_two_full_logit_tensors() {
    let config = small(&["model.vocab_size=300"]);
    let gpu = Target::Cuda {
        precision: GpuPrecision::Bf16,
        cc_major: 9,
    };
    for target in [Target::Cpu, gpu] {
        let p = plan(&config, 4, target, 1);
        let (n, v) = (4 * 32, 300);
        assert_eq!(p.unchunked_head_bytes, 2 * 4 * n * v);
        assert_eq!(
            p.unchunked_total_bytes,
            p.total_bytes - p.head_chunk_bytes + 2 * 4 * n * v
        );
        assert_eq!(
            p.total_bytes,
            p.items.iter().map(|i| i.bytes).sum::<usize>()
        );
    }
}

/// 124M at 64 x 1024 tokens: the head's chunk is bounded (2^26 dot products, plus
/// their bf16 copy, each row's lse and rowsum, and the partial sums of G per 128
/// columns of a row and per 32 rows of a column) while the naive head's two tensors
/// are 2 B T V.
#[test]
fn the_chunked_head_holds_far_less_than_full_logits_at_124m() {
    let config = Config::load(
        Some(std::path::Path::new("configs/gpt2-124m-harmonic.toml")),
        &[],
    )
    .unwrap();
    let gpu = Target::Cuda {
        precision: GpuPrecision::Bf16,
        cc_major: 9,
    };
    let p = plan(&config, 64, gpu, 1);
    let rows = (1 << 26) / 50304;
    let partials = 4 * rows * 50304usize.div_ceil(128) + 4 * rows.div_ceil(32) * 50304;
    assert_eq!(
        p.head_chunk_bytes,
        4 * rows * 50304 + 2 * rows * 50304 + 2 * 4 * rows + partials
    );
    assert_eq!(p.unchunked_head_bytes, 8 * 64 * 1024 * 50304);
    assert!(p.unchunked_total_bytes > p.total_bytes + (20usize << 30));
}

#[test]
fn largest_micro_batch_is_the_edge_of_what_fits() {
    let config = small(&[]);
    let gpu = Target::Cuda {
        precision: GpuPrecision::Bf16,
        cc_major: 9,
    };
    for chunked in [true, false] {
        let total = |b: usize| {
            let p = plan(&config, b, gpu, 1);
            if chunked {
                p.total_bytes
            } else {
                p.unchunked_total_bytes
            }
        };
        for capacity in [total(1), total(7) + 1, total(100) - 1, 1 << 30] {
            let b = largest_micro_batch(&config, gpu, capacity, chunked, 1);
            assert!(b >= 1 && total(b) <= capacity, "{capacity}: {b}");
            assert!(total(b + 1) > capacity, "{capacity}: {b} + 1 fits too");
        }
        assert_eq!(
            largest_micro_batch(&config, gpu, total(1) - 1, chunked, 1),
            0
        );
    }
}

#[test]
fn memory_limit_sizes_parse_in_binary_units() {
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("512M"), Some(512 << 20));
    assert_eq!(parse_size("8G"), Some(8 << 30));
    assert_eq!(parse_size("8GiB"), Some(8 << 30));
    assert_eq!(parse_size("1.5g"), Some(3 << 29));
    assert_eq!(parse_size("2T"), Some(2 << 40));
    for bad in ["", "G", "8X", "-1G", "0", "lots", "1e400"] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
}

/// The 124M config's CPU step does not fit in 1 GiB: `train` says so in one line
/// naming the plan's total and the cap, before building the model; a malformed
/// cap is named too.
#[test]
fn a_config_beyond_the_memory_limit_is_refused_with_both_figures() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::current_dir()
        .unwrap()
        .join("configs/gpt2-124m-harmonic.toml");
    let config = Config::load(Some(&path), &[]).unwrap();
    let planned = plan(&config, config.train.batch_size, Target::Cpu, 1).total_bytes;
    let args = [
        "train",
        "--device",
        "cpu",
        "--config",
        path.to_str().unwrap(),
        "--steps",
        "1",
        "--out",
        "run",
    ];
    let line = common::fails_env(&args, dir.path(), &[("HGPT_MEMORY_LIMIT", "1G")]);
    let need = format!("needs {:.2} GiB", gib(planned));
    assert!(
        line.contains("does not fit")
            && line.contains(&need)
            && line.contains("1.00 GiB is available (HGPT_MEMORY_LIMIT=1G)"),
        "{need}: {line}"
    );
    // Refused before anything was written: no run directory is left behind.
    assert!(!dir.path().join("run").exists());
    let line = common::fails_env(&args, dir.path(), &[("HGPT_MEMORY_LIMIT", "lots")]);
    assert!(line.contains("HGPT_MEMORY_LIMIT=lots"), "{line}");
}

/// `hgpt train --device cpu --ranks 2` holds both ranks in one process: under a
/// cap that one unsharded rank fits but the two sharded ranks together do not,
/// the run is refused in one line naming the two ranks, their combined need and
/// the cap, before anything is written; at exactly their combined need it trains.
#[test]
fn two_cpu_thread_ranks_are_checked_together_against_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(common::TINY, common::WIDE);
    let b = config.train.batch_size;
    let (one, each) = (
        plan(&config, b, Target::Cpu, 1).total_bytes,
        plan(&config, b, Target::Cpu, 2).total_bytes,
    );
    assert!(one < 2 * each, "one rank alone would already be refused");
    let mut args = common::train_args(1, "run", common::WIDE);
    args.extend(["--device", "cpu", "--ranks", "2"].map(String::from));
    let args = common::strs(&args);
    let cap = one.to_string();
    let line = common::fails_env(&args, dir.path(), &[("HGPT_MEMORY_LIMIT", &cap)]);
    common::assert_refuses_two_held(&line, "for 2 ranks on this host", each, &cap);
    assert!(!dir.path().join("run").exists());
    let cap = (2 * each).to_string();
    let out = common::hgpt_env(&args, dir.path(), &[("HGPT_MEMORY_LIMIT", &cap)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

/// A GPU rank of a data-parallel group holds only its shard of the moments: a
/// memory between its sharded plan and the unsharded one takes it, as one rank
/// of 4, but refuses a lone rank; just under the sharded plan, the refusal names
/// the rank of 4. On the host, 4 ranks are held together and refused.
#[test]
fn a_gpu_rank_is_checked_with_its_shard_and_the_host_with_every_rank() {
    let config = common::config(common::TINY, common::WIDE);
    let b = config.train.batch_size;
    let gpu = Target::Cuda {
        precision: GpuPrecision::Bf16,
        cc_major: 9,
    };
    let (sharded, whole) = (
        plan(&config, b, gpu, 4).total_bytes,
        plan(&config, b, gpu, 1).total_bytes,
    );
    let limit = |bytes: usize| Available {
        bytes,
        source: "a test's limit".into(),
    };
    let check = |ranks: usize, target: Target, bytes: usize| {
        ensure_held_fits(
            &config,
            b,
            &Held::rank_of(ranks, target),
            target,
            Some(&limit(bytes)),
        )
        .map_err(|e| e.to_string())
    };
    let between = (sharded + whole) / 2;
    assert!(sharded < between && between < whole);
    assert_eq!(check(4, gpu, between), Ok(()));
    assert_eq!(check(4, gpu, sharded), Ok(()));
    let line = check(1, gpu, between).unwrap_err();
    assert!(
        line.contains(&format!("needs {:.2} GiB", gib(whole))),
        "{line}"
    );
    assert!(
        !line.contains("rank"),
        "a lone rank is named as none: {line}"
    );
    let line = check(4, gpu, sharded - 1).unwrap_err();
    assert!(line.contains("as one rank of 4 on its GPU needs"), "{line}");
    let line = check(4, Target::Cpu, between).unwrap_err();
    assert!(line.contains("for 4 ranks on this host (4 x"), "{line}");
}

/// Sizes no machine holds end in one line from every command that allocates them,
/// never an allocation abort (134) or a panic (101). A billion layers is refused
/// against the machine's own figure (MemAvailable or the cgroup), whatever it is.
#[test]
fn sizes_that_cannot_fit_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    // (arguments, under a 16G cap rather than the machine's figure, what is named)
    let cases: [(&[&str], bool, &str); 5] = [
        (
            &["train", "--device", "cpu", "--set", "model.n_layer=100000"],
            true,
            "100000 layers",
        ),
        (
            &[
                "train",
                "--device",
                "cpu",
                "--set",
                "model.n_layer=1000000000",
            ],
            false,
            "1000000000 layers",
        ),
        (
            &["bench", "--device", "cpu", "--set", "model.n_layer=100000"],
            true,
            "100000 layers",
        ),
        (
            &["llc", "dln", "--widths", "100000,100000"],
            true,
            "widths [100000, 100000]",
        ),
        (
            &["train", "--set", "data.builtin_train_bytes=1000000000000"],
            true,
            "data.builtin_train_bytes = 1000000000000",
        ),
    ];
    for (args, capped, names) in cases {
        let env: &[(&str, &str)] = if capped {
            &[("HGPT_MEMORY_LIMIT", "16G")]
        } else {
            &[]
        };
        let line = common::fails_env(args, dir.path(), env);
        assert!(
            line.contains("does not fit") && line.contains(names) && line.contains("available"),
            "{args:?}: {line}"
        );
    }
    // `hgpt memory` plans without allocating, but not a step past any machine.
    let line = common::fails(
        &["memory", "--set", "model.n_layer=1000000000000"],
        dir.path(),
    );
    assert!(
        line.contains("1000000000000 layers") && line.contains("more than any machine holds"),
        "{line}"
    );
}
