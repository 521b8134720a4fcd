//! The LLC estimator: Aoyagi's formula, the sampler on deep linear networks against
//! it, SGLD's invariants, the LayerNorm example's spike, the GPT target, and the
//! command line's errors, and the plots' marks and legends.

mod common;

use std::process::Command;

use hgpt::backend::SgldStep;
use hgpt::backend::cpu::CpuBackend;
use hgpt::config::Config;
use hgpt::llc::aoyagi::learning_coefficient;
use hgpt::llc::dln::DeepLinearNetwork;
use hgpt::llc::layernorm_mlp::{self, LayerNormMlp, Schedule};
use hgpt::llc::{self, HostModel, HostTarget, SgldSettings, SgldTarget, gpt};
use hgpt::model::Gpt;
use hgpt::train::Trainer;
use indicatif::ProgressBar;

use common::{assert_legends_cover_no_trace, count_color, hgpt, png_rows};

/// Runs hgpt expecting a usage error; returns its single stderr line.
fn fails(args: &[&str]) -> String {
    common::fails(args, tempfile::tempdir().unwrap().path())
}

#[test]
fn aoyagi_matches_design_values() {
    assert_eq!(learning_coefficient(&[5, 3, 5], 0).unwrap(), 6.5);
    assert_eq!(learning_coefficient(&[10, 10, 10], 0).unwrap(), 37.5);
}

#[test]
fn aoyagi_one_layer_is_regular() {
    // One layer is a regular model of a*b parameters, whatever the rank.
    for (a, b) in [(1, 1), (3, 7), (10, 4)] {
        for r in 0..=a.min(b) {
            let l = learning_coefficient(&[a, b], r).unwrap();
            assert_eq!(l, (a * b) as f64 / 2.0, "({a},{b}) rank {r}");
        }
    }
}

#[test]
fn aoyagi_hand_derived_cases() {
    // (a,1,b), rank 0: |u|^2 |v|^2 with u in R^a, v in R^b has lambda min(a,b)/2.
    assert_eq!(learning_coefficient(&[5, 1, 5], 0).unwrap(), 2.5);
    assert_eq!(learning_coefficient(&[3, 1, 5], 0).unwrap(), 1.5);
    // A bottleneck of full rank h: regular up to the GL(h) symmetry, so
    // (dimension - h^2)/2 = (h(a+b) - h^2)/2.
    assert_eq!(learning_coefficient(&[5, 3, 5], 3).unwrap(), 10.5);
    assert_eq!(learning_coefficient(&[4, 2, 6], 2).unwrap(), 8.0);
    // A wide hidden layer at rank 0 is as complex as the 2x2 map it realises.
    assert_eq!(learning_coefficient(&[2, 10, 2], 0).unwrap(), 2.0);
    // (5,3,5) rank 1: M = (4,2,4), S = all, s = 10, l = 2, a = 2:
    // (10 - 1)/2 + 0 - 12.5 + 16 = 8.
    assert_eq!(learning_coefficient(&[5, 3, 5], 1).unwrap(), 8.0);
}

#[test]
fn aoyagi_rejects_impossible_ranks() {
    let e = learning_coefficient(&[5, 3, 5], 4).unwrap_err().to_string();
    assert!(e.contains("--rank 4") && e.contains('3'), "{e}");
    assert!(learning_coefficient(&[5], 0).is_err());
}

/// `hgpt llc dln --json` with default settings: (estimate, theory).
fn dln_estimate(widths: &str, rank: &str) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let out = hgpt(
        &["llc", "dln", "--widths", widths, "--rank", rank, "--json"],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["estimate"].as_f64().unwrap(),
        v["theory"].as_f64().unwrap(),
    )
}

#[test]
fn dln_estimate_within_15_percent_at_rank_zero() {
    let (est, theory) = dln_estimate("5,3,5", "0");
    assert_eq!(theory, 6.5);
    assert!((est / theory - 1.0).abs() < 0.15, "{est} vs {theory}");
}

#[test]
fn dln_estimate_within_15_percent_at_low_rank() {
    let (est, theory) = dln_estimate("10,10,10", "5");
    assert_eq!(theory, 47.0);
    assert!((est / theory - 1.0).abs() < 0.15, "{est} vs {theory}");
}

#[test]
fn dln_estimate_is_the_same_on_one_thread_and_many() {
    let run = |threads: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hgpt"))
            .args(["llc", "dln", "--widths", "20,30,20", "--rank", "3"])
            .args(["--chains", "3", "--draws", "30", "--json"])
            .current_dir(dir.path())
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["chain_estimates"].clone()
    };
    assert_eq!(run("1"), run("4"));
}

#[test]
fn dln_estimate_within_15_percent_on_four_layers() {
    // The two four-layer networks a fixed step missed most (0.78 and 1.34 x theory):
    // flat to high order at rank 0, stiffening as chains spread at high rank.
    for (widths, rank, theory) in [("6,10,4,15,4", "0", 7.5), ("12,17,12,15,14", "12", 84.0)] {
        let (est, th) = dln_estimate(widths, rank);
        assert_eq!(th, theory);
        assert!(
            (est / th - 1.0).abs() < 0.15,
            "({widths}) rank {rank}: {est} vs {th}"
        );
    }
}

#[test]
fn tuned_step_grows_where_flat_and_settles_where_stiff() {
    let tuned = |widths: &[usize], rank: usize, start: f64| {
        let mut net = DeepLinearNetwork::at_true_parameter(widths, rank, 2000, 512, 0).unwrap();
        let s = SgldSettings {
            tune_epsilon: true,
            burnin: 120,
            ..settings(2, 40, start, 2.0, 512.0 / 512f64.ln())
        };
        let est =
            llc::estimate(&mut HostTarget::new(&mut net), &s, &ProgressBar::hidden()).unwrap();
        assert_eq!(est.diverged_chains, 0);
        println!(
            "({widths:?}) rank {rank}: step tuned from {start:e} to {:e}",
            est.epsilon
        );
        est.epsilon
    };
    // Rank 0, four layers: the loss is flat at w* = 0, so the step grows.
    assert!(tuned(&[6, 10, 4, 15, 4], 0, 2e-4) > 4e-4);
    // Rank 12: the chains feel the curvature, and the step settles near the same
    // value from either side.
    let (from_below, from_above) = (
        tuned(&[12, 17, 12, 15, 14], 12, 5e-5),
        tuned(&[12, 17, 12, 15, 14], 12, 8e-4),
    );
    assert!(
        from_below > 1e-4 && from_above < 3e-4 && from_above / from_below < 1.5,
        "{from_below:e} vs {from_above:e}"
    );
}

#[test]
fn sgld_noise_is_standard_normal_and_keyed() {
    use hgpt::backend::noise::{gaussian, noise_key};
    let key = noise_key(7, 1, 42);
    let xs: Vec<f64> = (0..200_000).map(|i| gaussian(key, i) as f64).collect();
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let kurtosis = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / (var * var);
    // Standard errors: 0.0022 for the mean, 0.0032 for the variance, 0.011 for kurtosis.
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var - 1.0).abs() < 0.015, "variance {var}");
    assert!((kurtosis - 3.0).abs() < 0.06, "kurtosis {kurtosis}");
    let lag1 = xs.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / n;
    assert!(lag1.abs() < 0.01, "neighbouring draws correlate: {lag1}");
    // The same (seed, chain, step) gives the same numbers; any other coordinate differs.
    assert_eq!(gaussian(noise_key(7, 1, 42), 5), xs[5] as f32);
    for other in [
        noise_key(8, 1, 42),
        noise_key(7, 2, 42),
        noise_key(7, 1, 43),
    ] {
        let same = (0..1000)
            .filter(|&i| gaussian(other, i) == xs[i as usize] as f32)
            .count();
        assert!(same < 5, "{same} of 1000 draws repeat under another key");
    }
}

#[test]
fn cpu_sgld_update_is_the_formula_element_by_element() {
    use hgpt::backend::cpu::sgld::sgld_update;
    use hgpt::backend::noise::gaussian;
    // Longer than one parallel chunk, so the chunks' noise indices are checked too.
    let n = 10_000;
    let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    let anchor: Vec<f32> = (0..n).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
    let step = SgldStep::new(1e-3, 20.0, 3.0, 11, 2, 9);
    let mut updated = w.clone();
    sgld_update(&mut updated, &g, &anchor, step);
    let (half_eps, std) = (step.half_eps(), step.noise_std());
    for i in 0..n {
        let xi = gaussian(step.noise_key, i as u64);
        let want = w[i] - half_eps * (20.0 * g[i] + 3.0 * (w[i] - anchor[i])) + std * xi;
        assert_eq!(updated[i], want, "element {i}");
    }
    // The noise is what moves the weights most: the step is not a plain descent step.
    let moved: f64 = updated
        .iter()
        .zip(&w)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    assert!((moved / n as f64).sqrt() > 0.9 * std as f64);
}

/// Wraps a target and checks after every SGLD step that the parameters are still w*.
struct Pinned<T: SgldTarget> {
    inner: T,
    w_star: Vec<f32>,
    steps: usize,
}

impl<T: SgldTarget> SgldTarget for Pinned<T> {
    type Batch = T::Batch;
    fn num_params(&self) -> usize {
        self.inner.num_params()
    }
    fn batch_size(&self) -> usize {
        self.inner.batch_size()
    }
    fn next_batch(&mut self) -> anyhow::Result<T::Batch> {
        self.inner.next_batch()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn loss_and_grad(&mut self, batch: &T::Batch) -> (f64, f64) {
        self.inner.loss_and_grad(batch)
    }
    fn anchor_loss(&mut self, batch: &T::Batch) -> f64 {
        self.inner.anchor_loss(batch)
    }
    fn step(&mut self, step: SgldStep) {
        self.inner.step(step);
        assert!(
            self.params() == self.w_star,
            "epsilon = 0 moved the weights"
        );
        self.steps += 1;
    }
    fn params(&self) -> Vec<f32> {
        self.inner.params()
    }
}

fn settings(chains: usize, draws: usize, epsilon: f64, gamma: f64, nbeta: f64) -> SgldSettings {
    SgldSettings {
        chains,
        max_chains: chains,
        draws,
        burnin: draws,
        epsilon,
        tune_epsilon: false,
        gamma,
        nbeta,
        seed: 3,
    }
}

#[test]
fn zero_epsilon_leaves_weights_and_gives_zero() {
    // A trained-through-the-drop LayerNorm model is not at an exact minimum, so its
    // minibatch losses differ: only pairing them at w* makes the estimate exactly 0.
    let mut model = LayerNormMlp::example(0);
    let mut grad = vec![0f32; model.params().len()];
    for _ in 0..600 {
        model.sgd_step(0.1, &mut grad);
    }
    let w_star = model.params().to_vec();
    let mut pinned = Pinned {
        inner: HostTarget::new(&mut model),
        w_star: w_star.clone(),
        steps: 0,
    };
    let s = settings(3, 20, 0.0, 100.0, 15.0);
    let est = llc::estimate(&mut pinned, &s, &ProgressBar::hidden()).unwrap();
    assert_eq!(pinned.steps, 3 * 40, "SGLD steps taken");
    assert_eq!(est.estimate, 0.0);
    assert_eq!(est.std, 0.0);
    assert_eq!(model.params(), w_star);
    for t in &est.traces {
        assert_eq!(t.draws(s.burnin), t.init_losses.as_slice());
    }
}

#[test]
fn sampler_restores_weights_and_is_seeded() {
    let make = || DeepLinearNetwork::at_true_parameter(&[4, 3, 4], 1, 500, 100, 1).unwrap();
    let s = settings(2, 30, 1e-3, 2.0, 20.0);
    let (mut a, mut b) = (make(), make());
    let w_star = a.params().to_vec();
    let ea = llc::estimate(&mut HostTarget::new(&mut a), &s, &ProgressBar::hidden()).unwrap();
    let eb = llc::estimate(&mut HostTarget::new(&mut b), &s, &ProgressBar::hidden()).unwrap();
    assert_eq!(a.params(), w_star);
    assert_eq!(ea.estimate, eb.estimate);
    assert!(ea.estimate > 0.0 && ea.diverged_chains == 0);
}

#[test]
fn divergence_is_caught_and_explained() {
    let mut net = DeepLinearNetwork::at_true_parameter(&[5, 3, 5], 3, 1000, 100, 0).unwrap();
    let est = llc::estimate(
        &mut HostTarget::new(&mut net),
        &settings(2, 20, 1.0, 1.0, 100.0),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(est.diverged_chains, 2);
    assert!(!est.trustworthy());
    assert!(
        est.warnings[0].contains("lower --epsilon"),
        "{:?}",
        est.warnings
    );
}

/// Central finite differences of the minibatch loss against `loss_and_grad`.
fn check_gradient<M: HostModel>(model: &mut M, coords: &[usize]) {
    let batch = model.next_batch();
    let mut grad = vec![0f32; model.params().len()];
    model.loss_and_grad(&batch, &mut grad);
    let w = model.params().to_vec();
    for &i in coords {
        let h = 1e-2 * w[i].abs().max(1e-2);
        model.params_mut()[i] = w[i] + h;
        let lp = model.loss(&batch);
        model.params_mut()[i] = w[i] - h;
        let lm = model.loss(&batch);
        model.params_mut()[i] = w[i];
        let fd = (lp - lm) / (2.0 * h as f64);
        let tol = 2e-2 * fd.abs().max(grad[i].abs() as f64) + 1e-4;
        assert!(
            (fd - grad[i] as f64).abs() < tol,
            "coordinate {i}: finite difference {fd}, gradient {}",
            grad[i]
        );
    }
}

#[test]
fn dln_gradient_matches_finite_differences() {
    let mut net = DeepLinearNetwork::at_true_parameter(&[3, 4, 2], 1, 64, 32, 5).unwrap();
    // Away from the minimum, where the gradient is not zero.
    net.params_mut().iter_mut().for_each(|x| *x += 0.3);
    check_gradient(&mut net, &[0, 5, 11, 12, 19]);
}

#[test]
fn layernorm_gradient_matches_finite_differences() {
    let mut model = LayerNormMlp::example(2);
    let mut grad = vec![0f32; model.params().len()];
    for _ in 0..700 {
        model.sgd_step(0.1, &mut grad);
    }
    // W1, b1, LayerNorm weight and bias, W2, b2.
    check_gradient(&mut model, &[3, 200, 260, 330, 400, 460, 705]);
}

#[test]
fn layernorm_example_spikes_at_the_loss_drop() {
    let schedule = Schedule {
        steps: 1000,
        every: 40,
        lr: 0.1,
    };
    let s = settings(4, 100, 1e-3, 100.0, 64.0 / 64f64.ln());
    let mut model = LayerNormMlp::example(0);
    let mut records = Vec::new();
    let losses = layernorm_mlp::llc_over_training(&mut model, &schedule, &s, 64, |r| {
        records.push(r.clone());
        Ok(())
    })
    .unwrap();
    let loss_at = |step: usize| losses.iter().find(|l| l.0 == step).unwrap().1;
    // The plateau: the loss sits at ln 4 and the LLC at about zero.
    let plateau: Vec<_> = records.iter().filter(|r| loss_at(r.step) > 1.38).collect();
    assert!(plateau.len() >= 5, "plateau too short: {losses:?}");
    assert!(
        plateau.iter().all(|r| r.estimate.abs() < 0.3),
        "{plateau:?}"
    );
    // The peak falls inside the drop, and stands well above where the LLC settles.
    let peak = records
        .iter()
        .max_by(|a, b| a.estimate.total_cmp(&b.estimate))
        .unwrap();
    let peak_loss = loss_at(peak.step);
    assert!(
        peak_loss < 1.3 && peak_loss > 0.1,
        "peak at step {} with loss {peak_loss}",
        peak.step
    );
    let tail: Vec<f64> = records
        .iter()
        .filter(|r| r.step >= 800)
        .map(|r| r.estimate)
        .collect();
    let settled = tail.iter().sum::<f64>() / tail.len() as f64;
    assert!(
        peak.estimate > 1.4 * settled && settled > 0.5,
        "peak {} vs settled {settled}",
        peak.estimate
    );
}

/// A one-layer GPT small enough to train and sample in a second.
fn small_gpt_config() -> Config {
    let one_layer = [
        "model.n_layer=1",
        "model.block_size=16",
        "train.seq_len=16",
        "data.builtin_val_bytes=2000",
    ];
    common::config(common::SMALL, &one_layer)
}

#[test]
fn gpt_estimate_runs_on_the_training_loss_and_restores_weights() {
    let config = small_gpt_config();
    let data = hgpt::data::load(&hgpt::data::DataSpec::of(&config)).unwrap();
    let mut tr = Trainer::new(&config, CpuBackend::<f32>::new(), data).unwrap();
    for _ in 0..20 {
        tr.train_step().unwrap();
    }
    let mut model: Gpt<CpuBackend> = tr.model;
    let before = model.read_params();
    let sample = |model: &mut Gpt<CpuBackend>, s: &SgldSettings| {
        let data = gpt::training_data(&config, 4, None).unwrap();
        gpt::estimate_on(model, data.train, 4, 16, s, &ProgressBar::hidden()).unwrap()
    };
    let est = sample(&mut model, &settings(2, 10, 1e-4, 1000.0, 4.0 / 4f64.ln()));
    assert_eq!(model.read_params(), before);
    assert!(
        est.estimate.is_finite() && est.diverged_chains == 0,
        "{est:?}"
    );
    assert!((est.init_loss - 5.0).abs() < 3.0, "{}", est.init_loss);
    // Paired losses: with no step the draws are the losses at w*, bit for bit.
    let zero = sample(&mut model, &settings(1, 5, 0.0, 1000.0, 3.0));
    assert_eq!(zero.estimate, 0.0);
}

const SMALL_RUN: [&str; 9] = [
    "--set=model.n_layer=1",
    "--set=model.n_embd=32",
    "--set=model.n_head=2",
    "--set=model.block_size=16",
    "--set=train.seq_len=16",
    "--set=train.batch_size=4",
    "--set=train.checkpoint_every=10",
    "--set=data.builtin_train_bytes=20000",
    "--set=data.builtin_val_bytes=2000",
];

#[test]
fn llc_of_every_checkpoint_of_a_run_and_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut train = vec!["train", "--device", "cpu", "--steps", "20", "--out", "run"];
    train.extend(SMALL_RUN);
    let out = hgpt(&train, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A damaged line (not UTF-8, not JSON) in the log: skipped, never blocking.
    let metrics = dir.path().join("run/metrics.jsonl");
    let mut log = std::fs::read(&metrics).unwrap();
    log.extend(b"{\"step\": 21, \xff\n");
    std::fs::write(&metrics, log).unwrap();
    let sample = ["--chains", "2", "--draws", "5", "--device", "cpu", "--json"];
    let mut args = vec!["llc", "--run", "run"];
    args.extend(sample);
    let out = hgpt(&args, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jsonl = std::fs::read_to_string(dir.path().join("run/llc.jsonl")).unwrap();
    let records = |jsonl: &str| -> Vec<(u64, f64)> {
        jsonl
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["estimate"].as_f64().unwrap())
            })
            .collect()
    };
    let side_by_side = records(&jsonl);
    let steps: Vec<u64> = side_by_side.iter().map(|r| r.0).collect();
    assert_eq!(steps, [10, 20]);
    // On one thread the checkpoints are estimated in turn: the same numbers.
    let one_thread = Command::new(env!("CARGO_BIN_EXE_hgpt"))
        .args(&args)
        .current_dir(dir.path())
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert_eq!(
        records(&String::from_utf8_lossy(&one_thread.stdout)),
        side_by_side
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), jsonl);
    assert!(dir.path().join("run/llc_over_training.png").is_file());

    let mut args = vec!["llc", "--checkpoint", "run/checkpoints/step_00000010"];
    args.extend(sample);
    let out = hgpt(&args, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["estimate"].as_f64().unwrap().is_finite(), "{v}");
    assert_eq!(v["settings"]["chains"], 2);
    let step_dir = dir.path().join("run/checkpoints/step_00000010");
    assert!(step_dir.join("llc.json").is_file() && step_dir.join("llc.png").is_file());

    // The same estimate, bit for bit, on one thread: the noise is counter-based and
    // the CPU ops sum in fixed blocks, whatever the thread count.
    let one_thread = Command::new(env!("CARGO_BIN_EXE_hgpt"))
        .args(&args)
        .current_dir(dir.path())
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let w: serde_json::Value = serde_json::from_slice(&one_thread.stdout).unwrap();
    assert_eq!(w["estimate"], v["estimate"]);
    assert_eq!(w["chain_estimates"], v["chain_estimates"]);
}

/// `llc --run` on two CPU threads samples a run's two checkpoints side by side,
/// a model each: a memory that holds one model but not both is refused in one
/// line naming the two, their need and the limit, before anything is estimated;
/// exactly their need is enough.
#[test]
fn llc_of_a_run_checks_the_models_it_samples_side_by_side_together() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let every = ["train.checkpoint_every=1"];
    let wide = [common::WIDE, &every].concat();
    common::succeeds(&common::strs(&common::train_args(2, "run", &wide)), d);
    let config = common::config(common::TINY, &wide);
    let b = config.train.batch_size;
    let each = hgpt::memory::plan(&config, b, hgpt::memory::Target::Cpu, 1).total_bytes;
    let args = [
        "llc", "--run", "run", "--device", "cpu", "--chains", "1", "--draws", "2", "--json",
    ];
    let limit = (2 * each - 1).to_string();
    let env = [("RAYON_NUM_THREADS", "2"), ("HGPT_MEMORY_LIMIT", &limit)];
    let line = common::fails_env(&args, d, &env);
    let held = "for 2 checkpoints sampled side by side";
    common::assert_refuses_two_held(&line, held, each, &limit);
    assert!(!d.join("run/llc.jsonl").exists());
    let limit = (2 * each).to_string();
    let env = [("RAYON_NUM_THREADS", "2"), ("HGPT_MEMORY_LIMIT", &limit)];
    let out = common::hgpt_env(&args, d, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

#[test]
fn bad_arguments_give_one_line() {
    let line = fails(&["llc", "--checkpoint", "no/such/step_00000100"]);
    assert!(
        line.contains("no/such/step_00000100") && line.contains("does not exist"),
        "{line}"
    );
    let line = fails(&["llc", "dln", "--widths", "5,3,5", "--epsilon", "-1"]);
    assert!(line.contains("--epsilon") && line.contains("-1"), "{line}");
    let line = fails(&["llc", "dln", "--widths", "5,3,5", "--chains", "0"]);
    assert!(line.contains("--chains"), "{line}");
    let line = fails(&["llc", "--checkpoint", ".", "--gamma", "-5"]);
    assert!(line.contains("--gamma"), "{line}");
    let line = fails(&["llc", "dln", "--widths", "5,3,5", "--nbeta", "hot"]);
    assert!(line.contains("--nbeta") && line.contains("hot"), "{line}");
    let line = fails(&["llc", "dln", "--widths", "5,3,5", "--rank", "4"]);
    assert!(line.contains("--rank 4"), "{line}");
    let line = fails(&["llc", "--run", "no/such/run"]);
    assert!(line.contains("no/such/run"), "{line}");
    let line = fails(&["llc", "--run", "."]);
    assert!(line.contains("no checkpoints"), "{line}");
    fails(&["llc"]);
}

/// Draws of one noise stream, pinned: tools/cuda_emu/sgld.cpp holds cuda/sgld.cu to
/// the same numbers, so the CPU and the GPU are checked to draw the same noise even
/// where no GPU runs the parity tests.
const PINNED_KEY: u64 = 0x0123_4567_89ab_cdef;
const PINNED_NOISE: [(u64, f32); 6] = [
    (0, 2.1872323),
    (1, -0.47345328),
    (2, 0.75995743),
    (3, 0.2917902),
    (1000, 0.8879527),
    (1002, 0.6460418),
];

#[test]
fn sgld_noise_is_pinned() {
    use hgpt::backend::noise::gaussian;
    for (i, want) in PINNED_NOISE {
        assert_eq!(gaussian(PINNED_KEY, i), want, "draw {i}");
    }
    // Indices past 2^32 are their own draws, not a wrapped repeat.
    assert_ne!(gaussian(PINNED_KEY, (1 << 32) + 5), gaussian(PINNED_KEY, 5));
}

/// `hgpt llc dln` with an output directory it cannot write, and settings that
/// would take about a minute to estimate: (its one error line, seconds taken).
fn dln_into(out: &std::path::Path) -> (String, f64) {
    let started = std::time::Instant::now();
    let out = out.to_str().unwrap();
    let line = fails(&[
        "llc", "dln", "--widths", "5,3,5", "--chains", "1", "--draws", "200000", "--out", out,
    ]);
    (line, started.elapsed().as_secs_f64())
}

#[test]
fn llc_checks_its_output_directory_before_estimating() {
    let dir = tempfile::tempdir().unwrap();
    // A directory under a regular file cannot be made, even by root.
    let file = dir.path().join("a_file");
    std::fs::write(&file, "").unwrap();
    let (line, secs) = dln_into(&file.join("out"));
    assert!(
        line.contains("a_file/out") && line.contains("not writable"),
        "{line}"
    );
    assert!(secs < 10.0, "failed after {secs:.1}s: it estimated first");

    use std::os::unix::fs::PermissionsExt;
    let read_only = dir.path().join("read_only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(read_only.join("probe"), "").is_ok() {
        println!("skipped the read-only directory: this user (root) writes there anyway");
        return;
    }
    let (line, secs) = dln_into(&read_only);
    assert!(
        line.contains("read_only") && line.contains("not writable"),
        "{line}"
    );
    assert!(secs < 10.0, "failed after {secs:.1}s: it estimated first");
}

#[test]
fn llc_into_a_locked_output_directory_fails_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // This test process holds the lock, as a training run or another llc would.
    let _held = hgpt::checkpoint::lock::acquire(&out).unwrap();
    let (line, secs) = dln_into(&out);
    let pid = format!("pid {}", std::process::id());
    assert!(line.contains(&pid) && line.contains("hgpt.lock"), "{line}");
    assert!(secs < 10.0, "failed after {secs:.1}s: it estimated first");
}

/// An estimate from two hand-made chains: 20 burn-in steps falling from the loss at
/// w* (1.0) to each chain's level, then 20 draws alternating 0.01 about it (so the
/// halves' means agree and the chains count as levelled).
fn estimate_at_levels(levels: [f64; 2]) -> llc::LlcEstimate {
    let mut s = settings(2, 20, 1e-3, 1.0, 10.0);
    s.burnin = 20;
    let traces = levels
        .iter()
        .map(|&level| llc::sampler::ChainTrace {
            losses: (0..40)
                .map(|i| {
                    let t = (i as f64 / 20.0).min(1.0);
                    1.0 + t * (level - 1.0) + if i % 2 == 0 { 0.01 } else { -0.01 }
                })
                .collect(),
            init_losses: vec![1.0; 20],
            diverged_at: None,
            epsilon: 1e-3,
        })
        .collect();
    llc::LlcEstimate::new(traces, s, 10, 4, 0.0)
}

/// llc.png marks a chain's mean over the draws with the warning colour only when
/// the estimate carries a warning; its legend sits above every trace and marker.
#[test]
fn llc_plot_marks_an_estimate_with_a_warning_and_its_legend_covers_no_trace() {
    use llc::plot::{WARNING_COLOR, chain_color, plot_traces};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llc.png");
    let rgb = |c: plotters::style::RGBColor| (c.0, c.1, c.2);
    let (warning, chains) = (
        rgb(WARNING_COLOR),
        [rgb(chain_color(0)), rgb(chain_color(1))],
    );
    let mut traces = chains.to_vec();
    // Chain 1 ends highest, so without a band kept for it the legend would cover it.
    for (levels, warned) in [([1.2, 1.5], false), ([0.6, 1.5], true)] {
        let est = estimate_at_levels(levels);
        assert_eq!(!est.trustworthy(), warned, "{:?}", est.warnings);
        plot_traces(&path, "t", &est).unwrap();
        let rows = png_rows(&path);
        let marked = count_color(&rows, warning);
        if warned {
            // Two markers and the legend's sample, each a triangle of size 7.
            assert!(
                marked > 60,
                "the warned estimate is not marked: {marked} px"
            );
            traces.push(warning);
        } else {
            assert_eq!(marked, 0, "a healthy estimate is marked as warned");
        }
        assert_legends_cover_no_trace(&rows, 1, &traces);
    }
}

/// llc_over_training.png marks exactly the estimates that carry a warning, and
/// neither panel's legend covers its trace.
#[test]
fn llc_over_training_plot_marks_warned_estimates_and_its_legends_cover_no_trace() {
    use llc::plot::{LLC_COLOR, StepPoint, TRAIN_LOSS_COLOR, WARNING_COLOR, plot_over_training};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llc_over_training.png");
    let rgb = |c: plotters::style::RGBColor| (c.0, c.1, c.2);
    let warning = rgb(WARNING_COLOR);
    let train_loss: Vec<(usize, f64)> = (0..=30).map(|s| (s, 2.0 + s as f64 / 30.0)).collect();
    let draw = |warned: &[usize]| {
        // The LLC rises to its last checkpoint: both traces end at their panel's top.
        let points: Vec<StepPoint> = (0..4)
            .map(|i| StepPoint {
                step: 10 * i,
                llc: 1.0 + i as f64,
                llc_std: 0.1,
                warned: warned.contains(&i),
            })
            .collect();
        plot_over_training(&path, "t", &points, &train_loss).unwrap();
        png_rows(&path)
    };
    let rows = draw(&[]);
    assert_eq!(count_color(&rows, warning), 0, "no estimate is warned");
    let traces = [rgb(LLC_COLOR), rgb(TRAIN_LOSS_COLOR)];
    assert_legends_cover_no_trace(&rows, 2, &traces);
    let one = count_color(&draw(&[1]), warning);
    let two = count_color(&draw(&[1, 2]), warning);
    assert!(one > 20, "the warned estimate is not marked: {one} px");
    // The legend's sample is drawn once; each warned estimate adds a marker.
    assert!(two > one + 20, "a second warned estimate is not marked");
    let rows = draw(&[1, 3]);
    assert_legends_cover_no_trace(&rows, 2, &[traces[0], traces[1], warning]);
}
