//! NCCL at world size 1: the data-parallel step through `dist::nccl::Nccl` (every
//! collective called, on the backend's stream) trains like the single-process run.

use hgpt::data;
use hgpt::dist::Place;
use hgpt::dist::nccl::{Nccl, unique_id};
use hgpt::train::Trainer;

use super::harness::{MODES, open_gpu, rel_err, small_config};

#[test]
#[ignore = "needs a CUDA GPU and libnccl.so.2"]
fn nccl_at_world_size_one_trains_like_the_single_process_run() {
    for (mode, _) in MODES {
        let config = small_config("harmonic", true);
        let data = || data::builtin(&data::DataSpec::of(&config)).unwrap();
        let mut solo = Trainer::new(&config, open_gpu(mode), data()).unwrap();
        let gpu = open_gpu(mode);
        let nccl = Nccl::new(&gpu, Place::SOLO, &unique_id().unwrap()).unwrap();
        let mut ranked = Trainer::in_group(&config, gpu, data(), Box::new(nccl)).unwrap();
        for step in 0..20 {
            let (a, b) = (solo.train_step().unwrap(), ranked.train_step().unwrap());
            let err = ((b.loss - a.loss) / a.loss).abs();
            assert!(
                err < 1e-6,
                "{mode:?} step {step}: loss {} vs {}",
                a.loss,
                b.loss
            );
        }
        let (a, b) = (solo.snapshot().unwrap(), ranked.snapshot().unwrap());
        assert!(rel_err(&a.params, &b.params) < 1e-6, "{mode:?}: parameters");
        assert!(rel_err(&a.moments, &b.moments) < 1e-6, "{mode:?}: moments");
        println!("{mode:?}: 20 steps through NCCL at world size 1 match");
    }
}
