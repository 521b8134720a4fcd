//! A small model on both backends: the loss and every parameter gradient of one step,
//! then 50 training steps whose GPU loss tracks the CPU's.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use hgpt::backend::GpuPrecision;
use hgpt::backend::cpu::CpuBackend;
use hgpt::data;
use hgpt::model::Gpt;
use hgpt::train::Trainer;

use super::harness::{MODES, open_gpu, rel_err, small_config};

#[test]
#[ignore = "needs a CUDA GPU"]
fn model_loss_and_every_gradient_match_the_cpu() {
    for (mode, tol) in MODES {
        for (head, tie) in [("harmonic", true), ("softmax", true), ("softmax", false)] {
            let gpu = open_gpu(mode);
            let config = small_config(head, tie);
            let mut cpu = Gpt::new(CpuBackend::<f32>::new(), &config.model);
            let mut gpu = Gpt::new(gpu, &config.model);
            cpu.init(5);
            gpu.init(5);
            let (b, t) = (config.train.batch_size, config.train.seq_len);
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.random_range(0..97)).collect();
            let (inp, tgt) = (&tokens[..b * t], &tokens[1..]);
            let lc = cpu.loss_and_head_grad(inp, tgt, b, t, 1.0);
            let lg = gpu.loss_and_head_grad(inp, tgt, b, t, 1.0);
            cpu.backward();
            gpu.backward();
            let err = ((lg - lc) / lc).abs();
            println!("{mode:?} {head} tied={tie}: loss cpu {lc:.6} gpu {lg:.6} ({err:.2e})");
            assert!(err < tol, "loss differs: {err:.2e}");
            let (gc, gg) = (cpu.read_grads(), gpu.read_grads());
            for tensor in &cpu.layout.tensors {
                let r = tensor.offset..tensor.offset + tensor.len();
                let e = rel_err(&gc[r.clone()], &gg[r]);
                println!("  d{}: {e:.2e}", tensor.name);
                assert!(e < tol, "gradient of {} differs: {e:.2e}", tensor.name);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fifty_training_steps_track_the_cpu_loss_curve() {
    for (mode, tol) in [(GpuPrecision::Fp32, 1e-3), (GpuPrecision::Bf16, 5e-2)] {
        let gpu = open_gpu(mode);
        let config = small_config("harmonic", true);
        let data = || data::builtin(&data::DataSpec::of(&config)).unwrap();
        let mut cpu = Trainer::new(&config, CpuBackend::<f32>::new(), data()).unwrap();
        let mut gpu = Trainer::new(&config, gpu, data()).unwrap();
        let mut worst = 0f64;
        let (mut first, mut last) = (0.0, 0.0);
        for step in 0..50 {
            let (c, g) = (cpu.train_step().unwrap(), gpu.train_step().unwrap());
            let err = ((g.loss - c.loss) / c.loss).abs();
            worst = worst.max(err);
            assert!(
                err < tol,
                "{mode:?} step {step}: loss cpu {} gpu {}",
                c.loss,
                g.loss
            );
            if step == 0 {
                first = g.loss;
            }
            last = g.loss;
        }
        println!(
            "{mode:?}: 50 steps, GPU loss {first:.4} -> {last:.4}, worst step error {worst:.2e}"
        );
        assert!(last < first, "the GPU loss did not fall");
    }
}
