//! Checkpoints: exact resume, SIGINT, kill -9 at any moment, retention, the
//! divergence guard, and one clear line for every kind of bad checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hgpt::backend::cpu::CpuBackend;
use hgpt::checkpoint::{self, Checkpoint};
use hgpt::config::Config;
use hgpt::data;
use hgpt::train::Trainer;

use common::{fails, hgpt, losses, strs, succeeds, train_args};

fn tiny_config(extra: &[&str]) -> Config {
    common::config(common::TINY, extra)
}

fn trainer(config: &Config) -> Trainer<CpuBackend> {
    let data = data::builtin(&data::DataSpec::of(config)).unwrap();
    Trainer::new(config, CpuBackend::<f32>::new(), data).unwrap()
}

#[test]
fn resume_continues_bit_for_bit() {
    // A warm-up and cosine decay over 8 steps, so the schedule step matters too.
    let config = tiny_config(&[
        "train.max_steps=8",
        "train.warmup_steps=3",
        "train.min_lr=1e-4",
    ]);
    let mut straight = trainer(&config);
    let expected: Vec<u64> = (0..8)
        .map(|_| straight.train_step().unwrap().loss.to_bits())
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let mut first = trainer(&config);
    let mut got: Vec<u64> = (0..4)
        .map(|_| first.train_step().unwrap().loss.to_bits())
        .collect();
    checkpoint::save(dir.path(), &first.snapshot().unwrap()).unwrap();
    drop(first);

    let mut resumed = trainer(&config);
    let ckpt = Checkpoint::open_run(dir.path()).unwrap();
    let (params, moments) = (ckpt.read_params().unwrap(), ckpt.read_moments().unwrap());
    resumed.restore(&ckpt, &params, &moments).unwrap();
    assert_eq!(resumed.step, 4);
    got.extend((0..4).map(|_| resumed.train_step().unwrap().loss.to_bits()));
    assert_eq!(got, expected, "losses after resume differ");
    assert_eq!(resumed.model.read_params(), straight.model.read_params());
    assert_eq!(resumed.optimizer.step, straight.optimizer.step);
}

#[test]
fn resume_on_prepared_shards_matches_the_run_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let docs = data::corpus::generate(3, 30_000).join("\n<|endoftext|>\n");
    let tokenizer = ["--val-fraction", "0.1", "--train-tokenizer", "300"];
    common::prepare_corpus(dir.path(), &docs, "prep", &tokenizer);
    // The learning rate is constant, so stopping at 4 of 9 steps changes nothing.
    let bpe = ["model.vocab_size=300"];
    let mut args = train_args(9, "whole", &bpe);
    args.extend(["--data".into(), "prep".into()]);
    succeeds(&strs(&args), dir.path());
    let mut args = train_args(4, "parts", &bpe);
    args.extend(["--data".into(), "prep".into()]);
    succeeds(&strs(&args), dir.path());
    succeeds(&["train", "--resume", "parts", "--steps", "9"], dir.path());
    let (whole, parts) = (
        losses(&dir.path().join("whole")),
        losses(&dir.path().join("parts")),
    );
    assert_eq!(parts.len(), 9);
    assert_eq!(parts, whole);
    let step = dir.path().join("parts/checkpoints/step_00000009");
    let saved = std::fs::read(step.join("tokenizer.json")).unwrap();
    let prepared =
        hgpt::data::Tokenizer::from_file(&dir.path().join("prep/tokenizer.json")).unwrap();
    let copy = hgpt::data::Tokenizer::from_file(&step.join("tokenizer.json")).unwrap();
    assert!(!saved.is_empty() && copy.hash() == prepared.hash());
}

#[test]
fn a_checkpoint_holds_named_tensors_state_and_config() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(3, "run", &[])), dir.path());
    let run = dir.path().join("run");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step_00000003");
    let ckpt = Checkpoint::open(&run).unwrap();
    assert_eq!(ckpt.dir, run.join("checkpoints/step_00000003"));
    // The `latest` pointer file names the same checkpoint (shells complete to it).
    let via_pointer = Checkpoint::open(&run.join("checkpoints/latest")).unwrap();
    assert_eq!(via_pointer.dir, ckpt.dir);
    assert_eq!(ckpt.state.step, 3);
    assert_eq!(ckpt.state.adam_step, 3);
    assert_eq!(ckpt.state.hgpt_version, env!("CARGO_PKG_VERSION"));
    let model = ckpt.load_model(CpuBackend::<f32>::new()).unwrap();
    assert_eq!(ckpt.read_moments().unwrap().len(), 2 * model.num_params());

    // The model file alone is enough to rebuild the model.
    let (config, alone) = checkpoint::load_model_file(
        &ckpt.dir.join("model.safetensors"),
        CpuBackend::<f32>::new(),
    )
    .unwrap();
    assert_eq!(config.model, ckpt.state.config.model);
    assert_eq!(alone.read_params(), model.read_params());

    let bytes = std::fs::read(ckpt.dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let qkv = st.tensor("h.0.attn.c_attn.weight").unwrap();
    assert_eq!(qkv.shape(), [96, 32]);
    assert!(st.tensor("wte.weight").is_ok() && st.tensor("ln_f.bias").is_ok());
    let bytes = std::fs::read(ckpt.dir.join("optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("m.wte.weight").is_ok() && st.tensor("v.h.0.mlp.c_fc.bias").is_ok());
}

#[test]
fn retention_keeps_the_newest_and_every_kth() {
    let dir = tempfile::tempdir().unwrap();
    let args = train_args(
        10,
        "run",
        &[
            "train.checkpoint_every=1",
            "train.keep_last=3",
            "train.keep_every=4",
        ],
    );
    succeeds(&strs(&args), dir.path());
    let steps: Vec<usize> = checkpoint::list(&dir.path().join("run"))
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(steps, [4, 8, 9, 10]);
}

#[test]
fn resume_reports_allowed_changes_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(2, "run", &[])), dir.path());
    let out = hgpt(
        &[
            "train",
            "--resume",
            "run",
            "--steps",
            "3",
            "--set",
            "train.log_every=2",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("changed on resume: train.max_steps: 2 -> 3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("changed on resume: train.log_every: 1 -> 2"),
        "{stderr}"
    );

    let line = fails(
        &[
            "train",
            "--resume",
            "run",
            "--set",
            "model.n_embd=64",
            "--set",
            "data.builtin_train_bytes=30000",
            "--set",
            "train.batch_size=2",
        ],
        dir.path(),
    );
    for diff in [
        "model.n_embd: 32 -> 64",
        "data.builtin_train_bytes: 20000 -> 30000",
        "train.batch_size: 4 -> 2",
    ] {
        assert!(line.contains(diff), "{line}");
    }
    let line = fails(&["train", "--resume", "nowhere"], dir.path());
    assert!(line.contains("nowhere"), "{line}");
    let line = fails(&strs(&train_args(2, "run", &[])), dir.path());
    assert!(
        line.contains("--resume"),
        "a fresh run refuses a run directory: {line}"
    );
}

/// Waits until the run has logged `steps` training steps.
fn wait_for_steps(run: &Path, steps: usize, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let logged =
            std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
        if logged >= steps {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "training ended early");
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_train(dir: &Path, args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_hgpt"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The losses of a fresh run of `steps` steps, for comparison.
fn reference_losses(steps: usize, extra: &[&str]) -> Vec<(u64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(steps, "ref", extra)), dir.path());
    losses(&dir.path().join("ref"))
}

#[test]
fn sigint_checkpoints_exits_zero_and_resume_matches() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = spawn_train(dir.path(), &train_args(1_000_000, "run", &[]));
    wait_for_steps(&run, 3, &mut child);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGINT exits 0");

    let stopped_at = Checkpoint::open(&run).unwrap().state.step;
    assert!(stopped_at >= 3);
    let total = stopped_at + 3;
    let steps = total.to_string();
    succeeds(&["train", "--resume", "run", "--steps", &steps], dir.path());
    assert_eq!(losses(&run), reference_losses(total, &[]));
}

fn signal(child: &std::process::Child, name: &str) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args([name, &pid]).status().unwrap();
    assert!(sent.success(), "kill {name} {pid}");
}

#[test]
fn sigterm_checkpoints_and_a_second_sigint_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = spawn_train(dir.path(), &train_args(1_000_000, "run", &[]));
    wait_for_steps(&run, 2, &mut child);
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0), "SIGTERM exits 0");
    let first = Checkpoint::open(&run).unwrap().state.step;

    // Steps of a bigger model take long enough for the second signal to arrive
    // while the first is still being honoured; should the run have finished its
    // step and exited cleanly in between (or the two signals merged into one),
    // the attempt is repeated.
    let slow = [
        "model.n_layer=4",
        "model.n_embd=128",
        "model.block_size=128",
        "train.seq_len=128",
        "train.batch_size=16",
    ];
    let at_once = (0..5).any(|attempt| {
        let out = format!("slow{attempt}");
        let mut child = spawn_train(dir.path(), &train_args(1_000_000, &out, &slow));
        wait_for_steps(&dir.path().join(&out), 1, &mut child);
        signal(&child, "-INT");
        std::thread::sleep(Duration::from_millis(5));
        signal(&child, "-INT");
        let code = child.wait().unwrap().code();
        assert!(matches!(code, Some(0 | 130)), "exit code {code:?}");
        // Whenever it exits, what it committed is whole.
        for step_dir in checkpoint::list(&dir.path().join(&out)).unwrap().values() {
            Checkpoint::open(step_dir).unwrap().read_params().unwrap();
        }
        code == Some(130)
    });
    assert!(at_once, "a second SIGINT exits at once, with status 130");
    assert_eq!(Checkpoint::open(&run).unwrap().state.step, first);
}

#[test]
fn kill_9_at_any_moment_leaves_a_resumable_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // A checkpoint every step, so that a kill often lands inside a write.
    let extra = ["train.checkpoint_every=1", "train.keep_last=2"];
    let mut child = spawn_train(dir.path(), &train_args(1_000_000, "run", &extra));
    let mut resume = vec!["train".to_string(), "--resume".into(), "run".into()];
    for round in 0..4 {
        wait_for_steps(&run, 2 + round * 3, &mut child);
        std::thread::sleep(Duration::from_millis(7 * round as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever the moment, the newest checkpoint loads completely.
        let ckpt = Checkpoint::open(&run).unwrap();
        ckpt.read_params().unwrap();
        ckpt.read_moments().unwrap();
        checkpoint::tokenizer::load(&ckpt).unwrap();
        if round < 3 {
            resume.extend(["--steps".into(), "1000000".into()]);
            child = spawn_train(dir.path(), &resume);
            resume.truncate(3);
        }
    }
    let at = Checkpoint::open(&run).unwrap().state.step;
    let total = (at + 2).to_string();
    succeeds(&["train", "--resume", "run", "--steps", &total], dir.path());
    let stray: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporaries left: {stray:?}");
    assert_eq!(losses(&run), reference_losses(at + 2, &extra));
}

#[test]
fn divergence_stops_after_max_bad_steps_keeping_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // A huge learning rate sends the parameters to ~1e30 in one step, after which
    // every loss is non-finite.
    let args = train_args(
        50,
        "run",
        &[
            "train.lr=1e30",
            "train.min_lr=1e30",
            "train.checkpoint_every=1",
            "train.max_bad_steps=3",
        ],
    );
    let out = hgpt(&strs(&args), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains("diverged") && last.contains("3 steps in a row"),
        "{stderr}"
    );
    assert!(last.contains("step_00000001"), "{stderr}");
    let run = dir.path().join("run");
    let ckpt = Checkpoint::open(&run).unwrap();
    assert_eq!(ckpt.state.step, 1, "no checkpoint after the bad steps");
    ckpt.load_model(CpuBackend::<f32>::new()).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let skipped = metrics
        .lines()
        .filter(|l| l.contains("\"skipped\":true"))
        .count();
    assert_eq!(skipped, 3, "{metrics}");
    // A skipped step logs no training loss: null, never a finite number.
    for line in metrics.lines().filter(|l| l.contains("\"skipped\":true")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["train_loss"].is_null(), "{line}");
    }
}

#[test]
fn a_run_ending_on_skipped_steps_fails_naming_them_and_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // As above: step 1 is good (and checkpointed), steps 2 and 3 are non-finite,
    // fewer than max_bad_steps.
    let args = train_args(
        3,
        "run",
        &[
            "train.lr=1e30",
            "train.min_lr=1e30",
            "train.checkpoint_every=1",
            "train.max_bad_steps=10",
        ],
    );
    let out = hgpt(&strs(&args), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("done"));
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(last.contains("steps 2 to 3"), "{stderr}");
    assert!(last.contains("step_00000001"), "{stderr}");
    let ckpt = Checkpoint::open(&dir.path().join("run")).unwrap();
    assert_eq!(ckpt.state.step, 1, "no checkpoint after the bad steps");
}

// ---- bad checkpoints: one line naming the file and the problem ----

/// A run with one checkpoint; returns (tempdir, its step directory).
fn one_checkpoint() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(1, "run", &[])), dir.path());
    std::fs::write(
        dir.path().join("text.txt"),
        "the capital of france is paris.",
    )
    .unwrap();
    let step = dir.path().join("run/checkpoints/step_00000001");
    (dir, step)
}

fn eval_fails(dir: &Path) -> String {
    fails(&["eval", "--checkpoint", "run", "--data", "text.txt"], dir)
}

/// Rewrites model.safetensors with `edit` applied to its tensors (keeping the
/// metadata, so only the edit is wrong).
fn rewrite_model(
    step: &Path,
    edit: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = step.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    let out = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn truncated_model_file() {
    let (dir, step) = one_checkpoint();
    let path = step.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let line = eval_fails(dir.path());
    assert!(
        line.contains("model.safetensors") && line.contains("truncated"),
        "{line}"
    );
}

#[test]
fn byte_flipped_model_file() {
    let (dir, step) = one_checkpoint();
    let path = step.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let line = eval_fails(dir.path());
    assert!(
        line.contains("model.safetensors") && line.contains("checksum"),
        "{line}"
    );
}

#[test]
fn missing_tensor() {
    let (dir, step) = one_checkpoint();
    rewrite_model(&step, |t| t.retain(|(n, ..)| n != "h.0.ln_2.bias"));
    let line = eval_fails(dir.path());
    assert!(
        line.contains("model.safetensors: missing tensor `h.0.ln_2.bias`"),
        "{line}"
    );
}

#[test]
fn wrong_shape() {
    let (dir, step) = one_checkpoint();
    rewrite_model(&step, |t| {
        let ln = t.iter_mut().find(|(n, ..)| n == "ln_f.weight").unwrap();
        ln.2 = vec![2, 16];
    });
    let line = eval_fails(dir.path());
    assert!(
        line.contains("model.safetensors: tensor `ln_f.weight` has shape [2, 16], expected [32]"),
        "{line}"
    );
}

#[test]
fn wrong_dtype() {
    let (dir, step) = one_checkpoint();
    rewrite_model(&step, |t| {
        let ln = t.iter_mut().find(|(n, ..)| n == "ln_f.weight").unwrap();
        ln.1 = safetensors::Dtype::I32;
    });
    let line = eval_fails(dir.path());
    assert!(
        line.contains("model.safetensors: tensor `ln_f.weight` has dtype I32, expected F32"),
        "{line}"
    );
}

#[test]
fn state_from_another_format_version() {
    let (dir, step) = one_checkpoint();
    let path = step.join("state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    let line = eval_fails(dir.path());
    assert!(
        line.contains("state.json: checkpoint format version 99")
            && line.contains("reads version 1"),
        "{line}"
    );
    let line = fails(&["train", "--resume", "run"], dir.path());
    assert!(line.contains("format version 99"), "{line}");
}

#[test]
fn missing_files_and_dangling_latest() {
    let (dir, step) = one_checkpoint();
    std::fs::remove_file(step.join("optimizer.safetensors")).unwrap();
    let line = fails(&["train", "--resume", "run", "--steps", "2"], dir.path());
    assert!(line.contains("optimizer.safetensors"), "{line}");
    // With no `latest` (a crash before the first one was written) the newest step
    // directory is the checkpoint.
    std::fs::remove_file(dir.path().join("run/checkpoints/latest")).unwrap();
    let ckpt = Checkpoint::open(&dir.path().join("run")).unwrap();
    assert_eq!(ckpt.dir, step);
    std::fs::write(dir.path().join("run/checkpoints/latest"), "step_00000077\n").unwrap();
    let line = eval_fails(dir.path());
    assert!(
        line.contains("latest") && line.contains("step_00000077"),
        "{line}"
    );
}

#[test]
fn a_second_process_on_a_locked_run_directory_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints every 20 steps, so that the resume below finds one.
    let args = train_args(100_000_000, "run", &["train.checkpoint_every=20"]);
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_hgpt"))
        .args(&args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.path().join("run/hgpt.lock");
    let pid = first.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&lock).map_or(true, |s| s.trim() != pid)
        || Checkpoint::open_run(&dir.path().join("run")).is_err()
    {
        assert!(std::time::Instant::now() < deadline, "no lock file written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = fails(&strs(&train_args(5, "run", &[])), dir.path());
    let resumed = fails(&["train", "--resume", "run", "--steps", "5"], dir.path());
    first.kill().unwrap();
    first.wait().unwrap();
    for line in [second, resumed] {
        assert!(line.contains(&format!("pid {pid}")), "{line}");
        assert!(line.contains("hgpt.lock"), "{line}");
    }
}

#[test]
fn a_run_killed_during_its_first_checkpoint_write_is_started_over_by_out() {
    let dir = tempfile::tempdir().unwrap();
    // The state a kill -9 in the first checkpoint write leaves: the config, and a
    // half-written temporary step directory, nothing committed.
    succeeds(&strs(&train_args(0, "whole", &[])), dir.path());
    let run = dir.path().join("run");
    let tmp = run.join("checkpoints/.tmp-step_00000001");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(
        dir.path().join("whole/config.toml"),
        run.join("config.toml"),
    )
    .unwrap();
    std::fs::write(tmp.join("model.safetensors"), b"\x10\x00\x00half").unwrap();
    assert!(Checkpoint::open_run(&run).is_err());
    let line = fails(&["train", "--resume", "run", "--steps", "3"], dir.path());
    assert!(
        line.contains("--out run"),
        "resume points to the way out: {line}"
    );

    let out = hgpt(&strs(&train_args(3, "run", &[])), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("starting it over"), "{stderr}");
    assert_eq!(Checkpoint::open_run(&run).unwrap().state.step, 3);
    assert!(!tmp.exists(), "the half-written directory is gone");
    assert_eq!(losses(&run).len(), 3);
}

#[test]
fn a_damaged_metrics_log_is_set_aside_and_never_blocks_resume() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(3, "run", &[])), dir.path());
    let metrics = dir.path().join("run/metrics.jsonl");
    let mut damaged = std::fs::read(&metrics).unwrap();
    let first_bad = damaged.iter().filter(|&&b| b == b'\n').count() + 1;
    // Bytes that are not UTF-8, a line that is not JSON, and a line cut off.
    damaged.extend(b"{\"step\": 9, \"train_lo\xff\xfe\nnot json\n{\"step\": 4, \"tr");
    std::fs::write(&metrics, &damaged).unwrap();
    let out = hgpt(&["train", "--resume", "run", "--steps", "5"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("3 damaged line(s) (first: line {first_bad})"))
            && stderr.contains("metrics.jsonl.damaged"),
        "{stderr}"
    );
    // Every line parses again, and the run's five steps are there.
    assert_eq!(losses(&dir.path().join("run")).len(), 5);
    let aside = std::fs::read(dir.path().join("run/metrics.jsonl.damaged")).unwrap();
    assert_eq!(aside, damaged, "the original is kept whole");
}

/// A data directory of byte-level shards (llm.c's layout with a tokenizer.json)
/// at `dir`: the built-in corpus's text, enough for the TINY settings; the
/// training shard (120 KB) is larger than a few sampled blocks would cover.
fn byte_shards(dir: &Path) {
    use hgpt::data::shard::{TokenWidth, write_shard};
    let tok = data::Tokenizer::bytes();
    std::fs::create_dir_all(dir).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    for (name, seed, bytes) in [
        ("train_000000.bin", 1, 60_000),
        ("val_000000.bin", 2, 4_000),
    ] {
        let tokens = data::join_documents(&tok, &data::corpus::generate(seed, bytes));
        write_shard(&dir.join(name), &tokens, TokenWidth::U16).unwrap();
    }
}

/// `hgpt train --resume RUN --steps N` and extra arguments, run in `cwd`: its
/// exit code and stderr.
fn resume(cwd: &Path, run: &Path, steps: usize, extra: &[&str]) -> (Option<i32>, String) {
    let steps = steps.to_string();
    let mut args = vec![
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--steps",
        &steps,
    ];
    args.extend(extra);
    let out = hgpt(&args, cwd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn resume_does_not_depend_on_how_the_data_path_is_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    byte_shards(&d.join("data/x"));
    let mut args = train_args(5, "whole", &[]);
    args.extend(["--data".into(), "data/x".into()]);
    succeeds(&strs(&args), d);
    let mut args = train_args(2, "run", &[]);
    args.extend(["--data".into(), "./data/x".into()]);
    succeeds(&strs(&args), d);
    let run = d.join("run");
    let recorded = Checkpoint::open_run(&run).unwrap().state.config.data.dir;
    assert!(Path::new(&recorded).is_absolute(), "{recorded}");

    // Another spelling of the same directory.
    let (code, stderr) = resume(d, &run, 3, &["--data", "data/x/"]);
    assert_eq!(code, Some(0), "{stderr}");
    // From another working directory, the run's own (relative) spelling long gone.
    std::fs::create_dir(d.join("elsewhere")).unwrap();
    let (code, stderr) = resume(&d.join("elsewhere"), &run, 4, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    // The same data moved: its identity, not its path, decides.
    std::fs::rename(d.join("data/x"), d.join("moved")).unwrap();
    let (code, stderr) = resume(d, &run, 5, &["--data", "moved"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the data is now at"), "{stderr}");
    assert_eq!(losses(&run), losses(&d.join("whole")));
}

#[test]
fn resume_refuses_a_shard_changed_in_place_and_accepts_one_only_touched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    byte_shards(&d.join("data"));
    let mut args = train_args(2, "run", &[]);
    args.extend(["--data".into(), "data".into()]);
    succeeds(&strs(&args), d);
    let run = d.join("run");
    let shard = d.join("data/train_000000.bin");
    let original = std::fs::read(&shard).unwrap();

    // Touched, content unchanged: a note, and the run goes on.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (code, stderr) = resume(d, &run, 3, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("modified since the checkpoint"), "{stderr}");

    // One token changed, same size: refused in one line naming the shard.
    let mut changed = original.clone();
    let middle = (changed.len() / 2) & !1;
    changed[middle] ^= 1;
    std::fs::write(&shard, &changed).unwrap();
    let line = fails(&["train", "--resume", "run", "--steps", "4"], d);
    assert!(
        line.contains(&shard.display().to_string()) && line.contains("changed since"),
        "{line}"
    );

    // A checkpoint written before fingerprints were recorded still resumes.
    std::fs::write(&shard, &original).unwrap();
    let latest = checkpoint::latest(&run).unwrap().join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
    assert!(state["data"]["train"][0]["tokens_crc32"].is_string());
    state.as_object_mut().unwrap().remove("data");
    std::fs::write(&latest, serde_json::to_string(&state).unwrap()).unwrap();
    let (code, stderr) = resume(d, &run, 4, &[]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_shard_cut_short_while_training_stops_it_in_one_line_keeping_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    byte_shards(&d.join("data"));
    let mut args = train_args(100_000_000, "run", &["train.checkpoint_every=5"]);
    args.extend(["--data".into(), "data".into()]);
    let log = std::fs::File::create(d.join("stderr.txt")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hgpt"))
        .args(&args)
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let run = d.join("run");
    let start = Instant::now();
    while Checkpoint::open_run(&run).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "training ended early");
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let shard = d.join("data/train_000000.bin");
    std::fs::File::options()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(1024 + 100)
        .unwrap();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(d.join("stderr.txt")).unwrap();
    assert_eq!(status.code(), Some(2), "{status}: {stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: ")
            && last.contains("train_000000.bin")
            && last.contains("shorter than when it was opened")
            && last.contains("the last checkpoint"),
        "{stderr}"
    );
    assert!(Checkpoint::open_run(&run).is_ok(), "the checkpoint is kept");
}

#[test]
fn a_corrupted_byte_in_the_config_of_a_model_header_is_a_format_error() {
    let (dir, step) = one_checkpoint();
    let path = step.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(7).position(|w| w == b"n_layer").unwrap();
    bytes[at + 3] = b'b'; // n_lbyer: still valid JSON and TOML, an unknown key
    std::fs::write(&path, &bytes).unwrap();
    let line = eval_fails(dir.path());
    assert!(
        line.contains("model.safetensors") && line.contains("corrupted metadata"),
        "{line}"
    );
}

/// A lock that created its directory removes it when nothing else was written
/// there; a directory that existed, or holds anything else, stays.
#[test]
fn a_run_lock_leaves_no_empty_directory_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    drop(hgpt::checkpoint::lock::acquire(&fresh).unwrap());
    assert!(!fresh.exists());
    let used = dir.path().join("used");
    let lock = hgpt::checkpoint::lock::acquire(&used).unwrap();
    std::fs::write(used.join("config.toml"), "").unwrap();
    drop(lock);
    assert!(used.join("config.toml").is_file());
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    drop(hgpt::checkpoint::lock::acquire(&existing).unwrap());
    assert!(existing.is_dir());
}

/// The `abandoned-*` directories under `run`'s checkpoints.
fn abandoned_dirs(run: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("abandoned-")
        })
        .collect()
}

/// The one `abandoned-*` directory under `run`'s checkpoints.
fn abandoned_dir(run: &Path) -> PathBuf {
    let dirs = abandoned_dirs(run);
    assert_eq!(dirs.len(), 1, "one abandoned directory: {dirs:?}");
    dirs[0].clone()
}

/// The steps of metrics.jsonl's lines that hold `key`, in file order.
fn logged_steps(run: &Path, key: &str) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get(key).is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn resume_from_an_earlier_step_retrains_bit_for_bit_keeping_the_later_branch_aside() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    let every = [
        "train.checkpoint_every=2",
        "train.keep_last=10",
        "train.eval_every=2",
    ];
    succeeds(&strs(&train_args(6, "run", &every)), d);
    let original_log = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let original_losses = losses(&run);
    // The parameters and moments (the file's metadata is in no fixed order).
    let step6 = |dir: &Path| {
        let ckpt = Checkpoint::open(&dir.join("step_00000006")).unwrap();
        (ckpt.read_params().unwrap(), ckpt.read_moments().unwrap())
    };
    let original_step6 = step6(&run.join("checkpoints"));

    let out = hgpt(
        &[
            "train",
            "--resume",
            "run",
            "--from-step",
            "2",
            "--steps",
            "6",
        ],
        d,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let aside = abandoned_dir(&run);
    assert!(
        stderr.contains("resuming at step 2: the later checkpoints (steps 4, 6)")
            && stderr.contains(&*aside.file_name().unwrap().to_string_lossy()),
        "{stderr}"
    );
    // The branch retrained from step 2 is the one the run took the first time.
    assert_eq!(losses(&run), original_losses);
    assert!(step6(&run.join("checkpoints")) == original_step6);
    // Each step is logged once: the abandoned branch's lines after step 2 are gone.
    assert_eq!(logged_steps(&run, "train_loss"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(logged_steps(&run, "val_loss"), [2, 4, 6]);
    // Nothing is lost: the later checkpoints and the whole log are kept aside.
    assert!(step6(&aside) == original_step6);
    assert!(
        aside
            .join("step_00000004")
            .join(checkpoint::STATE_FILE)
            .is_file()
    );
    assert_eq!(
        std::fs::read(aside.join("metrics.jsonl")).unwrap(),
        original_log
    );
    let kept: Vec<usize> = checkpoint::list(&run).unwrap().into_keys().collect();
    assert_eq!(kept, [2, 4, 6]);
    assert_eq!(
        checkpoint::latest(&run).unwrap(),
        run.join("checkpoints").join("step_00000006")
    );
}

#[test]
fn resume_names_a_kept_checkpoint_by_its_directory_and_refuses_a_step_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    let mut args = train_args(
        4,
        "run",
        &["train.checkpoint_every=2", "train.keep_last=10"],
    );
    args.extend(["--device", "cpu", "--ranks", "2"].map(String::from));
    succeeds(&strs(&args), d);

    let line = fails(&["train", "--resume", "run", "--from-step", "3"], d);
    assert!(
        line.contains("no checkpoint at step 3; the kept steps are 2, 4"),
        "{line}"
    );
    let line = fails(
        &[
            "train",
            "--resume",
            "run/checkpoints/step_00000002",
            "--from-step",
            "4",
        ],
        d,
    );
    assert!(line.contains("--from-step is 4"), "{line}");
    let out = hgpt(&["train", "--from-step", "2", "--steps", "4"], d);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    assert!(abandoned_dirs(&run).is_empty(), "refusals move nothing");

    // Two thread-ranks: rank 0 alone sets the later checkpoint aside.
    let out = hgpt(
        &[
            "train",
            "--resume",
            "run/checkpoints/step_00000002",
            "--steps",
            "4",
            "--device",
            "cpu",
            "--ranks",
            "2",
        ],
        d,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming at step 2"), "{stderr}");
    assert!(abandoned_dir(&run).join("step_00000004").is_dir());
    assert_eq!(logged_steps(&run, "train_loss"), [1, 2, 3, 4]);
}
