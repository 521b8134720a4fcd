//! The memory plan against what the backends really allocate (the CPU here; the
//! CUDA backend's slots and peak in tests/cuda_parity.rs), and the planner's search
//! for the largest micro-batch.

mod common;

use hgpt::backend::Backend;
use hgpt::backend::GpuPrecision;
use hgpt::backend::cpu::CpuBackend;
use hgpt::config::Config;
use hgpt::data;
use hgpt::memory::{Target, largest_micro_batch, plan};
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
        let planned = plan(&config, config.train.batch_size, Target::Cpu);
        let held = tr.model.backend.peak_memory_bytes();
        assert_eq!(
            held,
            planned.total_bytes - planned.head_chunk_bytes,
            "{sets:?}: {planned:#?}"
        );
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
        let p = plan(&config, 4, target);
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
/// their bf16 copy and row sums) while the naive head's two tensors are 2 B T V.
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
    let p = plan(&config, 64, gpu);
    let rows = (1 << 26) / 50304;
    assert_eq!(
        p.head_chunk_bytes,
        4 * rows * 50304 + 2 * rows * 50304 + 4 * rows
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
            let p = plan(&config, b, gpu);
            if chunked {
                p.total_bytes
            } else {
                p.unchunked_total_bytes
            }
        };
        for capacity in [total(1), total(7) + 1, total(100) - 1, 1 << 30] {
            let b = largest_micro_batch(&config, gpu, capacity, chunked);
            assert!(b >= 1 && total(b) <= capacity, "{capacity}: {b}");
            assert!(total(b + 1) > capacity, "{capacity}: {b} + 1 fits too");
        }
        assert_eq!(largest_micro_batch(&config, gpu, total(1) - 1, chunked), 0);
    }
}
