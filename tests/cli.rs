//! The command line: bad input ends in one clear line and exit code 2, never a
//! panic; help explains every flag; a short run succeeds.

mod common;

use std::path::Path;

use common::{fails, hgpt, succeeds};

fn write_config(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> String {
    let text = edit(hgpt::config::TINY_TOML.to_string());
    std::fs::write(dir.join(name), text).unwrap();
    name.to_string()
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&["train", "--config", "nope.toml"], dir.path());
    assert!(line.contains("nope.toml"), "{line}");
}

#[test]
fn unknown_key_is_named_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_config(dir.path(), "bad.toml", |t| {
        t.replace("n_head = 4", "n_head = 4\nn_heads = 4")
    });
    let line = fails(&["train", "--config", &f], dir.path());
    assert!(
        line.contains("bad.toml:7") && line.contains("model.n_heads"),
        "{line}"
    );
}

#[test]
fn unknown_section_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_config(dir.path(), "bad.toml", |t| {
        format!("{t}\n[optimizer]\nlr = 1\n")
    });
    let line = fails(&["train", "--config", &f], dir.path());
    assert!(line.contains("unknown section `[optimizer]`"), "{line}");
    assert!(!line.contains("data.optimizer"), "{line}");
}

#[test]
fn n_embd_not_divisible_by_n_head() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&["train", "--set", "model.n_head=3"], dir.path());
    assert!(
        line.contains("model.n_embd") && line.contains("model.n_head"),
        "{line}"
    );
}

/// The CUDA backend's flash attention takes head sizes up to 128: a bigger one is
/// refused before any GPU work (so this holds with or without a GPU).
#[test]
fn head_size_over_the_cuda_limit_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(
        &[
            "train",
            "--device",
            "cuda",
            "--set",
            "model.n_embd=256",
            "--set",
            "model.n_head=1",
            "--steps",
            "1",
        ],
        dir.path(),
    );
    assert!(
        line.contains("model.n_embd / model.n_head = 256") && line.contains("up to 128"),
        "{line}"
    );
}

#[test]
fn non_positive_or_unknown_exponent() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["0", "-2.5"] {
        let line = fails(
            &[
                "train",
                "--set",
                &format!("model.harmonic_exponent={value}"),
            ],
            dir.path(),
        );
        assert!(line.contains("model.harmonic_exponent"), "{line}");
    }
    let f = write_config(dir.path(), "bad.toml", |t| {
        t.replace("harmonic_exponent = 128", "harmonic_exponent = \"cube\"")
    });
    let line = fails(&["train", "--config", &f], dir.path());
    assert!(line.contains("bad.toml") && line.contains("cube"), "{line}");
}

#[test]
fn bad_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&["train", "--set", "train.learning_rate=1"], dir.path());
    assert!(line.contains("train.learning_rate"), "{line}");
    let line = fails(&["train", "--set", "model.n_layer=many"], dir.path());
    assert!(line.contains("model.n_layer=many"), "{line}");
    let line = fails(&["train", "--set", "lr"], dir.path());
    assert!(line.contains("section.key=value"), "{line}");
    let line = fails(&["train", "--set", "train.seq_len=4096"], dir.path());
    assert!(line.contains("block_size"), "{line}");
}

#[test]
fn malformed_toml_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_config(dir.path(), "bad.toml", |t| {
        t.replace("n_layer = 4", "n_layer = = 4")
    });
    let line = fails(&["train", "--config", &f], dir.path());
    assert!(line.contains("bad.toml:5"), "{line}");
}

#[test]
fn help_explains_every_flag() {
    let dir = tempfile::tempdir().unwrap();
    let top = String::from_utf8(hgpt(&["--help"], dir.path()).stdout).unwrap();
    assert!(top.contains("train") && top.contains("bench"), "{top}");
    let train = String::from_utf8(hgpt(&["train", "--help"], dir.path()).stdout).unwrap();
    for flag in [
        "--config", "--set", "--steps", "--out", "--device", "--resume",
    ] {
        assert!(train.contains(flag), "train --help lacks {flag}");
    }
    let flags: [(&str, &[&str]); 2] = [
        (
            "eval",
            &[
                "--checkpoint",
                "--data",
                "--max-tokens",
                "--stride",
                "--split",
                "--json",
                "--device",
            ],
        ),
        (
            "generate",
            &[
                "--checkpoint",
                "--prompt",
                "--max-new-tokens",
                "--temperature",
                "--top-k",
                "--seed",
                "--device",
            ],
        ),
    ];
    for (command, flags) in flags {
        let help = String::from_utf8(hgpt(&[command, "--help"], dir.path()).stdout).unwrap();
        for flag in flags {
            assert!(help.contains(flag), "{command} --help lacks {flag}");
        }
    }
}

#[test]
fn short_training_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let out = hgpt(
        &[
            "train",
            "--steps",
            "2",
            "--set",
            "model.n_layer=1",
            "--set",
            "model.n_embd=32",
            "--set",
            "train.seq_len=32",
            "--out",
            "run",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("unigram entropy"),
        "the entropy is printed at the start: {stderr}"
    );
    for f in ["config.toml", "metrics.jsonl", "loss.png"] {
        assert!(dir.path().join("run").join(f).exists(), "{f} missing");
    }
}

#[test]
fn bench_reports_throughput_mfu_and_memory_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = hgpt(
        &[
            "bench",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--micro-batch",
            "3",
            "--set",
            "model.n_layer=1",
            "--set",
            "model.n_embd=32",
            "--set",
            "model.head=softmax",
            "--json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = |k: &str| report[k].as_f64().unwrap();
    assert!(f("tokens_per_s") > 0.0 && f("gemm_peak_tflops") > 0.0);
    assert!(report["ops"]["matmul_forward"]["gflops"].as_f64().unwrap() > 0.0);
    assert_eq!(report["head"], "softmax");
    // --micro-batch sets the batch: 3 sequences of tiny's 128 tokens.
    assert_eq!(report["tokens_per_step"], 3 * 128);
    // MFU is model FLOP/s over the measured GEMM peak on the CPU.
    assert_eq!(report["peak_tflops"], report["gemm_peak_tflops"]);
    let mfu = f("model_tflops") / f("peak_tflops");
    assert!((f("mfu") - mfu).abs() < 1e-12 && f("mfu") > 0.0);
    // 1 layer x 32 channels, vocab 257, block 128: 6 N + 6 L C T per token.
    let n = f("params");
    assert_eq!(f("flops_per_token"), 6.0 * n + 6.0 * 32.0 * 128.0);
    // The CPU backend's buffers are exactly the memory plan.
    assert!(f("peak_memory_mib") > 0.0);
    assert_eq!(f("peak_memory_mib"), f("planned_memory_mib"));
}

/// `bench --profile` on the CPU: every op of the step in the table against its floor,
/// the shares of the step (with the time outside the ops) summing to 1.
#[test]
fn bench_profile_times_every_op_against_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let args = |json: bool| {
        let mut a = vec![
            "bench",
            "--device",
            "cpu",
            "--profile",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--micro-batch",
            "2",
            "--set",
            "model.n_layer=1",
            "--set",
            "model.n_embd=32",
        ];
        if json {
            a.push("--json");
        }
        a
    };
    let out = hgpt(&args(true), dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["copy_gbps"].as_f64().unwrap() > 0.0);
    let ops = report["ops"].as_object().unwrap();
    for op in [
        "encoder_forward",
        "encoder_backward",
        "layernorm_forward",
        "layernorm_backward",
        "matmul_forward",
        "matmul_backward",
        "attention_forward",
        "attention_backward",
        "gelu_forward",
        "gelu_backward",
        "residual_add",
        "head",
        "adamw",
    ] {
        let o = &ops[op];
        let f = |k: &str| o[k].as_f64().unwrap_or_else(|| panic!("{op}: no {k}"));
        assert!(f("ms_per_step") > 0.0 && f("gbps") > 0.0, "{op}: {o}");
        // The floor: the op's minimum over the measured ceilings, as a share of its time.
        assert!(f("floor_ms") > 0.0, "{op}: {o}");
        assert!((f("of_floor") - f("floor_ms") / f("ms_per_step")).abs() < 1e-9);
        assert!(
            o["bound"] == "compute" || o["bound"] == "memory",
            "{op}: {o}"
        );
    }
    assert!(ops["matmul_forward"]["gflops"].as_f64().unwrap() > 0.0);
    assert_eq!(ops["adamw"]["bound"], "memory");
    let shares: f64 = ops.values().map(|o| o["share"].as_f64().unwrap()).sum();
    let outside = report["outside_ops_share"].as_f64().unwrap();
    assert!(shares > 0.3 && shares <= 1.0 + 1e-6, "ops' shares {shares}");
    assert!(
        (shares + outside - 1.0).abs() < 1e-9,
        "{shares} + {outside}"
    );

    let out = hgpt(&args(false), dir.path());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    for col in ["floor ms", "bound", "of floor", "GB/s", "(outside the ops)"] {
        assert!(table.contains(col), "no {col} in the table:\n{table}");
    }
}

#[test]
fn bench_and_memory_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(
        &["bench", "--device", "cpu", "--peak-tflops", "0"],
        dir.path(),
    );
    assert!(line.contains("--peak-tflops 0"), "{line}");
    let line = fails(&["bench", "--device", "cpu", "--steps", "0"], dir.path());
    assert!(line.contains("--steps 0"), "{line}");
    let line = fails(&["memory", "--gpu-memory", "80,-1"], dir.path());
    assert!(line.contains("--gpu-memory -1"), "{line}");
    let line = fails(&["memory", "--micro-batch", "0"], dir.path());
    assert!(line.contains("--micro-batch 0"), "{line}");
}

#[test]
fn memory_plans_both_devices_and_fits_the_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::env::current_dir()
        .unwrap()
        .join("configs/gpt2-124m-harmonic.toml");
    let out = succeeds(
        &[
            "memory",
            "--config",
            config.to_str().unwrap(),
            "--micro-batch",
            "64",
            "--gpu-memory",
            "80,141",
            "--json",
        ],
        dir.path(),
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let plans = report["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 2);
    for p in plans {
        assert_eq!(p["micro_batch"], 64);
        let total = p["total_bytes"].as_u64().unwrap();
        let items: u64 = p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(total, items);
        assert!(p["unchunked_total_bytes"].as_u64().unwrap() > total);
    }
    let fits = report["fits"].as_array().unwrap();
    let b = |i: usize, k: &str| fits[i][k].as_u64().unwrap();
    // More memory fits more; the naive head fits less.
    assert!(b(1, "largest_micro_batch") > b(0, "largest_micro_batch"));
    assert!(b(0, "largest_micro_batch") > b(0, "largest_micro_batch_unchunked"));
    let table = succeeds(&["memory"], dir.path());
    assert!(table.contains("total, chunked head"), "{table}");
}

#[test]
fn vocab_smaller_than_the_data_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&["train", "--set", "model.vocab_size=100"], dir.path());
    assert!(
        line.contains("model.vocab_size = 100") && line.contains("257"),
        "{line}"
    );
}

#[test]
fn commands_refuse_to_write_into_checkpoints_runs_or_their_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(
        &common::strs(&common::train_args(2, "run", &["train.checkpoint_every=2"])),
        d,
    );
    let step = "run/checkpoints/step_00000002";
    assert!(d.join(step).join("state.json").is_file());
    let model = std::fs::read(d.join(step).join("model.safetensors")).unwrap();
    for out in [step, "run", "run/hf", "./run/checkpoints/step_00000002/"] {
        let line = fails(&["export", "--checkpoint", "run", "--out", out], d);
        assert!(
            line.contains(out) && line.contains("pick another"),
            "{line}"
        );
    }
    let line = fails(&["import", "--hf", "run", "--out", "run/imported"], d);
    assert!(line.contains("run/imported"), "{line}");
    std::fs::write(d.join("docs.txt"), "some text\n").unwrap();
    let line = fails(&["prepare", "--input", "docs.txt", "--out", "docs.txt"], d);
    assert!(line.contains("overlaps the input docs.txt"), "{line}");
    let line = fails(&["prepare", "--input", "docs.txt", "--out", step], d);
    assert!(line.contains("checkpoint directory"), "{line}");
    let mut args = common::train_args(1, step, &[]);
    args.truncate(5);
    let line = fails(&common::strs(&args), d);
    assert!(line.contains("checkpoint directory"), "{line}");
    assert_eq!(
        std::fs::read(d.join(step).join("model.safetensors")).unwrap(),
        model,
        "the checkpoint is untouched"
    );
}

#[test]
fn export_replaces_an_earlier_export_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(&common::strs(&common::train_args(0, "run", &[])), d);
    succeeds(&["export", "--checkpoint", "run", "--out", "hf"], d);
    std::fs::write(d.join("hf/stale.txt"), "from before").unwrap();
    succeeds(&["export", "--checkpoint", "run", "--out", "hf"], d);
    assert!(d.join("hf/config.json").is_file());
    assert!(!d.join("hf/stale.txt").exists(), "no stale file left");
    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/notes.txt"), "keep").unwrap();
    let line = fails(&["export", "--checkpoint", "run", "--out", "mine"], d);
    assert!(
        line.contains("mine") && line.contains("no export"),
        "{line}"
    );
    assert!(d.join("mine/notes.txt").is_file());
}

/// The batch is what asks for more text than the data holds: the message names
/// it first, and the corpus size second.
#[test]
fn a_batch_larger_than_the_data_is_blamed_on_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "--set",
        "train.batch_size=64",
        "--set",
        "data.builtin_val_bytes=2000",
    ];
    let line = fails(&args, dir.path());
    assert!(
        line.starts_with("error: a batch of 64 sequences of 128 tokens")
            && line.contains("data.builtin_val_bytes = 2000"),
        "{line}"
    );
}

/// `--val-fraction 0.99` on five documents keeps one for training (validation is
/// drawn one document per run of 1/fraction) and says how lopsided the split is,
/// naming the flag; it never speaks of a "single document".
#[test]
fn a_val_fraction_that_takes_most_documents_warns_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let docs = ["one", "two", "three", "four", "five"].join("\n<|endoftext|>\n");
    let prepared = common::prepare_corpus(dir.path(), &docs, "prep", &["--val-fraction", "0.99"]);
    let stderr = prepared.stderr;
    assert!(
        stderr.contains("1 documents") && stderr.contains("4 documents"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: validation holds") && stderr.contains("--val-fraction 0.99"),
        "{stderr}"
    );
    assert!(!stderr.contains("single document"), "{stderr}");
}

/// A negative number after a numeric flag is that flag's value, refused with its
/// range (by the command, or by the parser for whole numbers), never clap's
/// "unexpected argument '-1'".
#[test]
fn negative_numbers_are_values_refused_with_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let by_command: [(&[&str], &str); 4] = [
        (
            &["generate", "--checkpoint", "x", "--temperature", "-1"],
            "--temperature -1: must be a number >= 0",
        ),
        (
            &["bench", "--device", "cpu", "--peak-tflops", "-1"],
            "--peak-tflops -1",
        ),
        (&["memory", "--gpu-memory", "-1"], "--gpu-memory -1"),
        (&["llc", "layernorm", "--lr", "-1"], "--lr must be positive"),
    ];
    for (args, expected) in by_command {
        let line = fails(args, dir.path());
        assert!(line.contains(expected), "{args:?}: {line}");
    }
    let by_parser: [(&[&str], &str); 4] = [
        (
            &["generate", "--checkpoint", "x", "--top-k", "-1"],
            "--top-k",
        ),
        (
            &["generate", "--checkpoint", "x", "--max-new-tokens", "-5"],
            "--max-new-tokens",
        ),
        (&["generate", "--checkpoint", "x", "--seed", "-1"], "--seed"),
        (&["train", "--steps", "-3"], "--steps"),
    ];
    for (args, flag) in by_parser {
        let out = hgpt(args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value '-")
                && first.contains(flag)
                && first.contains("must be a whole number from 0"),
            "{args:?}: {stderr}"
        );
    }
}

/// Runs `hgpt config show` with `args` in `dir`, parsed back into a config.
fn shown(args: &[&str], dir: &Path) -> hgpt::config::Config {
    let text = succeeds(&[&["config", "show"], args].concat(), dir);
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The configs in configs/ name only their changes (over the defaults or each
/// other), and resolve to the values recorded from their complete versions.
#[test]
fn shipped_configs_resolve_to_their_recorded_values() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "tiny",
        "gpt2-124m-harmonic",
        "gpt2-124m-softmax",
        "gpt2-350m-harmonic",
    ] {
        let file = format!("configs/{name}.toml");
        let got = succeeds(&["config", "show", "--config", &file], root);
        let want =
            std::fs::read_to_string(root.join(format!("tests/fixtures/resolved/{name}.toml")))
                .unwrap();
        assert_eq!(got, want, "{file} resolves differently");
    }
}

#[test]
fn a_config_file_names_only_the_keys_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lr.toml"), "[train]\nlr = 1e-3\n").unwrap();
    let mut want = hgpt::config::Config::tiny();
    want.train.lr = 1e-3;
    assert_eq!(shown(&["--config", "lr.toml"], dir.path()), want);
    want.train.seed = 7;
    let got = shown(
        &["--config", "lr.toml", "--set", "train.seed=7"],
        dir.path(),
    );
    assert_eq!(got, want, "--set applies over the file");
    assert_eq!(shown(&[], dir.path()), hgpt::config::Config::tiny());
}

#[test]
fn a_base_file_is_found_relative_to_the_config_and_layered_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("big.toml"),
        "[model]\nn_layer = 6\n[train]\nlr = 1e-3\n",
    )
    .unwrap();
    std::fs::write(
        sub.join("child.toml"),
        "base = \"big.toml\"\n[train]\nlr = 2e-3\n",
    )
    .unwrap();
    let got = shown(&["--config", "sub/child.toml"], dir.path());
    assert_eq!((got.model.n_layer, got.train.lr), (6, 2e-3));
    std::fs::write(dir.path().join("t.toml"), "base = \"tiny\"\n").unwrap();
    assert_eq!(
        shown(&["--config", "t.toml"], dir.path()),
        hgpt::config::Config::tiny()
    );
}

#[test]
fn layered_config_errors_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        (
            "type.toml",
            "[train]\n\nlr = \"fast\"\n",
            "type.toml:3: train.lr",
        ),
        (
            "key.toml",
            "[train]\nlearning_rate = 1\n",
            "key.toml:2: unknown key `train.learning_rate`",
        ),
        (
            "section.toml",
            "[model]\nn_layer = 2\n[extra]\nx = 1\n",
            "section.toml:3: unknown section `[extra]`",
        ),
        ("top.toml", "lr = 1\n", "top.toml:1: unknown key `lr`"),
        (
            "missing.toml",
            "base = \"nope.toml\"\n",
            "missing.toml:1: base = \"nope.toml\"",
        ),
        ("self.toml", "base = \"self.toml\"\n", "a cycle"),
        ("kind.toml", "base = 3\n", "kind.toml:1: base must be"),
    ];
    for (file, text, want) in cases {
        std::fs::write(d.join(file), text).unwrap();
        let line = fails(&["config", "show", "--config", file], d);
        assert!(line.contains(want), "{file}: {line}");
    }
    // A cycle through two files is one line too.
    std::fs::write(d.join("a.toml"), "base = \"b.toml\"\n").unwrap();
    std::fs::write(d.join("b.toml"), "base = \"a.toml\"\n").unwrap();
    let line = fails(&["config", "show", "--config", "a.toml"], d);
    assert!(
        line.contains("b.toml:1") && line.contains("a cycle"),
        "{line}"
    );
    // Values that parse but make no sense are still refused after layering.
    std::fs::write(d.join("v.toml"), "[train]\nmin_lr = 1.0\n").unwrap();
    let line = fails(&["config", "show", "--config", "v.toml"], d);
    assert!(line.contains("train.min_lr"), "{line}");
}

/// nanoGPT's and llm.c's habit: one line per logged step on stdout, with the step,
/// loss, learning rate, gradient norm, time per step, throughput and MFU, whether
/// or not a terminal is attached (here none is).
#[test]
fn train_prints_a_log_line_per_logged_step_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["train", "--steps", "4", "--out", "run"];
    for o in common::TINY {
        args.extend(["--set", o]);
    }
    args.extend(["--set", "train.log_every=2"]);
    let stdout = succeeds(&args, dir.path());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (line, step) in lines.iter().zip(["2/4", "4/4"]) {
        let fields: Vec<&str> = line.split(" | ").collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert_eq!(
            fields[0].split_whitespace().collect::<Vec<_>>(),
            ["step", step]
        );
        for (field, name) in fields[1..]
            .iter()
            .zip(["loss", "lr", "norm", "ms", "tok/s", "MFU"])
        {
            assert!(field.contains(name), "{name} missing in {line}");
        }
        let loss: f64 = fields[1].trim_start_matches("loss ").parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{line}");
    }
}

/// `train --data` with a config that leaves model.vocab_size alone takes the
/// data's vocabulary, padded to a multiple of 128, and says so; a vocabulary the
/// config names is kept.
#[test]
fn data_sets_the_vocabulary_padded_unless_the_config_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = hgpt::data::corpus::generate(3, 20_000).join("\n<|endoftext|>\n");
    common::prepare_corpus(d, &docs, "prep", &["--train-tokenizer", "300"]);
    let out = hgpt(&["config", "show", "--data", "prep"], d);
    assert!(out.status.success());
    let config: hgpt::config::Config =
        toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(
        config.model.vocab_size, 384,
        "300 padded to a multiple of 128"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("model.vocab_size = 384") && stderr.contains("300"),
        "{stderr}"
    );
    let named = shown(&["--data", "prep", "--set", "model.vocab_size=300"], d);
    assert_eq!(named.model.vocab_size, 300);
    std::fs::write(d.join("v.toml"), "[model]\nvocab_size = 320\n").unwrap();
    let named = shown(&["--data", "prep", "--config", "v.toml"], d);
    assert_eq!(named.model.vocab_size, 320);
    // Without data the built-in byte-level vocabulary stays unpadded.
    assert_eq!(shown(&[], d).model.vocab_size, 257);
}

/// The `hgpt` command lines in README.md's sh blocks, comments dropped, split into
/// arguments (double quotes group).
fn readme_commands() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut in_sh = false;
    let mut commands = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        let Some(rest) = line.strip_prefix("hgpt ").filter(|_| in_sh) else {
            continue;
        };
        let rest = rest.split(" #").next().unwrap();
        let args: Vec<String> = rest
            .split('"')
            .enumerate()
            .flat_map(|(i, part)| match i % 2 {
                1 => vec![part.to_string()],
                _ => part.split_whitespace().map(str::to_string).collect(),
            })
            .collect();
        commands.push(args);
    }
    commands
}

/// README puts `hgpt` on the PATH before using it; every README example names a
/// command and flags the binary has, and those that need no run, data or GPU run
/// as written from the checkout.
#[test]
fn readme_examples_name_real_commands_and_flags_and_the_cheap_ones_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let install = readme.find("\ncargo install --path .\n");
    assert!(
        install.is_some_and(|i| readme.find("\nhgpt ").is_some_and(|h| i < h)),
        "README installs hgpt before its first `hgpt` example"
    );
    let commands = readme_commands();
    assert!(commands.len() > 15, "{commands:?}");
    for args in &commands {
        let subcommands: Vec<&str> = args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .take(2)
            .map(String::as_str)
            .filter(|a| a.chars().all(|c| c.is_ascii_lowercase()))
            .collect();
        let help = hgpt(&[&subcommands[..], &["--help"]].concat(), root);
        assert!(help.status.success(), "README: hgpt {}", args.join(" "));
        let help = String::from_utf8(help.stdout).unwrap();
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag.as_str()),
                "README: `hgpt {}`: {flag} is not a flag of `hgpt {}`",
                args.join(" "),
                subcommands.join(" ")
            );
        }
        if ["config", "memory"].contains(&subcommands[0]) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            succeeds(&args, root);
        }
    }
}

/// What the argument parser refuses is one line too, keeping what names the
/// culprit (the missing arguments, the flag, the value), without clap's usage
/// block; --help still prints in full.
#[test]
fn argument_errors_are_one_line_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &[&str]); 4] = [
        (&["eval"], &["--checkpoint <PATH>", "--data <PATH>"]),
        (&["train", "--foo"], &["'--foo'"]),
        (&["bogus"], &["'bogus'"]),
        (&["train", "--steps", "-3"], &["'-3'", "--steps"]),
    ];
    for (args, names) in cases {
        let line = fails(args, dir.path());
        for name in names {
            assert!(line.contains(name), "{args:?}: {line}");
        }
        assert!(!line.contains("Usage"), "{args:?}: {line}");
    }
    let help = succeeds(&["train", "--help"], dir.path());
    assert!(help.contains("Usage: hgpt train"), "{help}");
}
