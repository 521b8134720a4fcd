//! The memory plan (src/memory.rs) against the CUDA backend after training steps:
//! every scratch slot at its planned size, and the peak at the planned total.

use hgpt::backend::cuda;
use hgpt::backend::{Backend, StepShape};
use hgpt::data;
use hgpt::memory::{Target, plan};
use hgpt::train::Trainer;

use super::harness::{MODES, open_gpu, small_config};

/// After a training step the CUDA backend holds exactly the memory plan: every
/// scratch slot at its planned size, and the peak at the planned total.
#[test]
#[ignore = "needs a CUDA GPU"]
fn training_step_holds_exactly_the_memory_plan() {
    for (mode, _) in MODES {
        for head in ["harmonic", "softmax"] {
            let gpu = open_gpu(mode);
            let config = small_config(head, true);
            let data = data::builtin(&data::DataSpec::of(&config)).unwrap();
            let mut tr = Trainer::new(&config, gpu, data).unwrap();
            tr.train_step().unwrap();
            tr.train_step().unwrap();
            let be = &tr.model.backend;
            let (m, t) = (&config.model, &config.train);
            let shape = StepShape {
                b: t.batch_size,
                t: t.seq_len,
                c: m.n_embd,
                nh: m.n_head,
                v: m.vocab_size,
                harmonic: head == "harmonic",
                params: tr.model.num_params(),
            };
            assert_eq!(
                be.scratch_bytes(),
                cuda::training_slot_bytes(&shape, mode),
                "{mode:?} {head}: scratch slots"
            );
            let target = Target::Cuda {
                precision: mode,
                cc_major: be.cc_major(),
            };
            let total = plan(&config, t.batch_size, target).total_bytes;
            println!(
                "{mode:?} {head}: peak {} bytes, planned {total}",
                be.peak_memory_bytes()
            );
            assert_eq!(be.peak_memory_bytes(), total, "{mode:?} {head}: peak");
        }
    }
}
