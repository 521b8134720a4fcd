//! Training behaviour: overfitting one batch, determinism, the schedule, and what a
//! run leaves in its directory.

mod common;

use hgpt::backend::DeviceChoice;
use hgpt::backend::cpu::CpuBackend;
use hgpt::config::Config;
use hgpt::data;
use hgpt::model::Gpt;
use hgpt::train::optim::{Optimizer, clip_scale};
use hgpt::train::schedule::learning_rate;
use hgpt::train::{self, Trainer};

use common::{assert_legends_cover_no_trace, count_color, png_rows};

/// The tiny config shrunk so a test trains in a second or two.
fn small(head: &str) -> Config {
    common::config(common::SMALL, &[&format!("model.head={head}")])
}

#[test]
fn overfits_one_batch() {
    for head in ["harmonic", "softmax"] {
        let config = small(head);
        let mut ds = data::builtin(&data::DataSpec::of(&config)).unwrap();
        let batch = ds.train.next_batch().unwrap();
        let mut model = Gpt::new(CpuBackend::<f32>::new(), &config.model);
        model.init(1);
        let mut opt = Optimizer::new(&model, 0..model.num_params());
        let mut loss = f64::NAN;
        for _ in 0..300 {
            model.zero_grads();
            loss = model.loss_and_head_grad(&batch.inputs, &batch.targets, 4, 32, 1.0);
            model.backward();
            let scale = clip_scale(model.grad_norm(), 1.0);
            opt.update(&model, &config.train, 3e-3, scale);
            if loss < 0.05 {
                break;
            }
        }
        assert!(
            loss < 0.05,
            "{head}: loss {loss} after 300 steps on one batch"
        );
    }
}

fn losses(config: &Config, steps: usize) -> Vec<f64> {
    let data = data::builtin(&data::DataSpec::of(config)).unwrap();
    let mut tr = Trainer::new(config, CpuBackend::<f32>::new(), data).unwrap();
    (0..steps).map(|_| tr.train_step().unwrap().loss).collect()
}

#[test]
fn same_seed_gives_the_same_losses() {
    let config = small("harmonic")
        .with_override("train.grad_accum=2")
        .unwrap();
    let a = losses(&config, 6);
    let b = losses(&config, 6);
    assert_eq!(a, b, "bit-identical loss sequences");
    let other = losses(&config.with_override("train.seed=99").unwrap(), 6);
    assert_ne!(a, other, "a different seed changes the run");
}

#[test]
fn gradient_accumulation_matches_a_larger_batch() {
    // Two micro-batches of 2 sequences give the gradient of one batch of 4.
    let config = small("harmonic");
    let mut ds = data::builtin(&data::DataSpec::of(&config)).unwrap();
    let batch = ds.train.next_batch().unwrap();
    let grads = |parts: usize| {
        let mut model = Gpt::new(CpuBackend::<f32>::new(), &config.model);
        model.init(3);
        model.zero_grads();
        let rows = 4 / parts;
        for p in 0..parts {
            let r = p * rows * 32..(p + 1) * rows * 32;
            model.loss_and_head_grad(
                &batch.inputs[r.clone()],
                &batch.targets[r],
                rows,
                32,
                1.0 / parts as f32,
            );
            model.backward();
        }
        model.read_grads()
    };
    let (one, two) = (grads(1), grads(2));
    let norm = one.iter().map(|x| x * x).sum::<f32>().sqrt();
    let diff = one
        .iter()
        .zip(&two)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    assert!(
        diff < 1e-5 * norm,
        "accumulated gradient differs by {diff} (norm {norm})"
    );
}

#[test]
fn schedule_warms_up_then_decays_to_min_lr() {
    let t = Config::tiny().train;
    assert!(learning_rate(&t, 0) < t.lr / t.warmup_steps as f64 * 1.5);
    assert!((learning_rate(&t, t.warmup_steps) - t.lr).abs() < 1e-12);
    let mid = learning_rate(&t, (t.warmup_steps + t.max_steps) / 2);
    assert!((mid - (t.lr + t.min_lr) / 2.0).abs() < 1e-3 * t.lr);
    assert!((learning_rate(&t, t.max_steps) - t.min_lr).abs() < 1e-12);
    let rates: Vec<f64> = (t.warmup_steps..t.max_steps)
        .map(|s| learning_rate(&t, s))
        .collect();
    assert!(
        rates.windows(2).all(|w| w[1] <= w[0]),
        "monotone decay after warm-up"
    );
}

#[test]
fn clipping_scales_down_only_above_the_limit() {
    assert_eq!(clip_scale(0.5, 1.0), 1.0);
    assert!((clip_scale(4.0, 1.0) - 0.25).abs() < 1e-7);
    assert_eq!(clip_scale(4.0, 0.0), 1.0, "0 turns clipping off");
}

#[test]
fn a_run_writes_config_metrics_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let config = small("harmonic")
        .with_override("train.max_steps=6")
        .and_then(|c| c.with_override("train.log_every=2"))
        .and_then(|c| c.with_override("train.eval_every=3"))
        .unwrap();
    let summary = train::run(&config, dir.path(), DeviceChoice::Cpu, &mut ()).unwrap();
    assert_eq!(summary.steps, 6);
    let written = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    assert_eq!(
        hgpt::config::parse(&written, "config.toml").unwrap(),
        config,
        "resolved config round-trips"
    );
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<_> = records
        .iter()
        .filter(|r| r.get("train_loss").is_some())
        .collect();
    let evals: Vec<_> = records
        .iter()
        .filter(|r| r.get("val_loss").is_some())
        .collect();
    assert_eq!(train.len(), 3);
    assert_eq!(evals.len(), 2);
    for r in &train {
        for key in [
            "step",
            "train_loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "elapsed_s",
        ] {
            assert!(r[key].is_number(), "metrics record lacks {key}: {r}");
        }
    }
    let png = std::fs::read(dir.path().join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

/// loss.png draws the unigram entropy as a horizontal line across the plot, and
/// marks validation points, so even a run with a single one shows it; its legend
/// covers none of them.
#[test]
fn loss_plot_draws_the_entropy_line_and_marks_validation_points() {
    use hgpt::train::metrics::{EvalRecord, TrainRecord};
    use hgpt::train::plot::{ENTROPY_COLOR, plot_losses};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    let train: Vec<TrainRecord> = (1..=50)
        .map(|step| TrainRecord {
            step,
            train_loss: 5.0 - 0.08 * step as f64,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_s: 1.0,
            elapsed_s: 1.0,
        })
        .collect();
    let eval = [EvalRecord {
        step: 25,
        val_loss: 3.2,
    }];
    // RGB pixels of the plot with these validation records.
    let draw = |eval: &[EvalRecord]| {
        plot_losses(&path, "t", &train, eval, 3.0).unwrap();
        png_rows(&path)
    };
    let rows = draw(&eval);
    let w = rows[0].len();
    let green = (ENTROPY_COLOR.0, ENTROPY_COLOR.1, ENTROPY_COLOR.2);
    let widest_green_row = rows
        .iter()
        .map(|row| row.iter().filter(|&&p| p == green).count())
        .max()
        .unwrap();
    assert!(
        widest_green_row > w / 2,
        "no entropy line: {widest_green_row} px"
    );
    // A single validation point is a line of one point: only its marker shows.
    let red = (255, 0, 0);
    let marked = count_color(&rows, red) - count_color(&draw(&[]), red);
    assert!(
        marked > 30,
        "the validation point is not marked: {marked} red px"
    );
    assert_legends_cover_no_trace(&rows, 1, &[green, red, (0, 0, 255)]);
}
