//! `hgpt eval` and `hgpt generate`: the loss of a fresh model, stride invariance,
//! the report's form; deterministic sampling, and KV-cached greedy decoding that
//! agrees with full forward passes.

mod common;

use std::path::Path;

use hgpt::backend::cpu::CpuBackend;
use hgpt::data;
use hgpt::generate::{Sampler, argmax, generate};
use hgpt::model::Gpt;
use hgpt::train::Trainer;

use hgpt::data::shard::TokenWidth;

use common::{fails, hgpt, strs, succeeds, train_args};

/// Text from the built-in corpus's generator, so a trained model knows it.
fn corpus_text(dir: &Path, bytes: usize) -> String {
    let text = hgpt::data::corpus::generate(99, bytes).join("\n");
    std::fs::write(dir.join("text.txt"), &text).unwrap();
    text
}

/// `hgpt eval` of the run's checkpoint on text.txt, as JSON.
const EVAL_JSON: &[&str] = &[
    "eval",
    "--checkpoint",
    "run",
    "--data",
    "text.txt",
    "--json",
];

fn eval_json(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = EVAL_JSON.to_vec();
    args.extend(extra);
    serde_json::from_str(succeeds(&args, dir).trim()).unwrap()
}

#[test]
fn a_fresh_model_scores_about_ln_vocab() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(0, "run", &[])), dir.path());
    let text = corpus_text(dir.path(), 2000);
    let r = eval_json(dir.path(), &[]);
    let loss = r["loss"].as_f64().unwrap();
    assert!((loss - 257f64.ln()).abs() < 0.05, "loss {loss}");
    assert!((r["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-6);
    // Byte-level: one token per byte, each scored once.
    assert_eq!(r["tokens"].as_u64().unwrap() as usize, text.len());
    let bpb = r["bits_per_byte"].as_f64().unwrap();
    assert!((bpb - loss / std::f64::consts::LN_2).abs() < 1e-9);
}

#[test]
fn stride_changes_little_on_a_long_text() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(60, "run", &[])), dir.path());
    corpus_text(dir.path(), 6000);
    let side_by_side = eval_json(dir.path(), &[]);
    let overlapping = eval_json(dir.path(), &["--stride", "8"]);
    assert_eq!(side_by_side["tokens"], overlapping["tokens"]);
    let (a, b) = (
        side_by_side["loss"].as_f64().unwrap(),
        overlapping["loss"].as_f64().unwrap(),
    );
    assert!(a < 5.0, "the model learned something: {a}");
    assert!((a - b).abs() < 0.03 * a, "stride 32: {a}, stride 8: {b}");

    let limited = eval_json(dir.path(), &["--max-tokens", "100"]);
    assert_eq!(limited["tokens"], 100);
    let line = succeeds(
        &["eval", "--checkpoint", "run", "--data", "text.txt"],
        dir.path(),
    );
    for part in ["nats/token", "perplexity", "bits/byte", "tokens scored"] {
        assert!(line.contains(part), "{line}");
    }
}

#[test]
fn eval_refuses_bad_arguments_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(0, "run", &[])), dir.path());
    corpus_text(dir.path(), 200);
    std::fs::write(dir.path().join("empty.txt"), "").unwrap();
    std::fs::write(dir.path().join("binary.bin"), [0xff, 0xfe, 0x00]).unwrap();
    let base = ["eval", "--checkpoint", "run", "--data"];
    let cases: [(&[&str], &str); 6] = [
        (&["text.txt", "--stride", "0"], "--stride 0"),
        (&["text.txt", "--stride", "33"], "context (32 tokens)"),
        (&["text.txt", "--max-tokens", "0"], "--max-tokens 0"),
        (&["empty.txt"], "too little data"),
        (&["binary.bin"], "not UTF-8"),
        (&["missing.txt"], "missing.txt"),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let line = fails(&args, dir.path());
        assert!(line.contains(expected), "{args:?}: {line}");
    }
    let line = fails(
        &["eval", "--checkpoint", "nope", "--data", "text.txt"],
        dir.path(),
    );
    assert!(line.contains("nope"), "{line}");
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(30, "run", &[])), dir.path());
    let run = |seed: &str, temperature: &str| {
        succeeds(
            &[
                "generate",
                "--checkpoint",
                "run",
                "--prompt",
                "the capital of ",
                "--max-new-tokens",
                "80", // more than the context of 32: the cache is rebuilt
                "--seed",
                seed,
                "--temperature",
                temperature,
                "--top-k",
                "20",
            ],
            dir.path(),
        )
    };
    let a = run("7", "1.0");
    assert!(a.starts_with("the capital of "), "{a}");
    assert_eq!(a, run("7", "1.0"));
    assert_ne!(a, run("8", "1.0"), "another seed, another text");
    assert_eq!(run("1", "0"), run("2", "0"), "greedy ignores the seed");

    let long_prompt = "x".repeat(100);
    let out = hgpt(
        &[
            "generate",
            "--checkpoint",
            "run",
            "--prompt",
            &long_prompt,
            "--max-new-tokens",
            "3",
            "--seed",
            "1",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("keeping its last 32"), "{stderr}");
    let line = fails(
        &["generate", "--checkpoint", "run", "--temperature=-1"],
        dir.path(),
    );
    assert!(line.contains("--temperature -1"), "{line}");
}

/// A model trained a little, so its logits are far from ties.
fn trained_model(head: &str) -> Gpt<CpuBackend> {
    let config = common::config(
        common::SMALL,
        &[
            &format!("model.head={head}"),
            "model.block_size=24",
            "train.seq_len=24",
            "data.builtin_val_bytes=4000",
        ],
    );
    let data = data::builtin(&data::DataSpec::of(&config)).unwrap();
    let mut tr = Trainer::new(&config, CpuBackend::new(), data).unwrap();
    for _ in 0..30 {
        tr.train_step().unwrap();
    }
    tr.model
}

#[test]
fn greedy_decoding_with_the_cache_matches_full_forward_passes() {
    for head in ["harmonic", "softmax"] {
        let mut model = trained_model(head);
        let prompt: Vec<u32> = b"the capital of ".iter().map(|&b| b as u32).collect();
        let block = model.config.block_size;
        let new = block - prompt.len();
        let mut sampler = Sampler::new(0.0, 0, 0);
        let mut cached = Vec::new();
        let tokens = generate(&mut model, &prompt, new, &mut sampler, None, |t| {
            cached.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(tokens, cached, "every token is handed over as it comes");
        assert_eq!(tokens.len(), new);

        // Step by step: the full forward pass over the context so far, and the
        // cached decoder's logits, agree closely and pick the same token.
        let v = model.config.vocab_size;
        let mut cache = model.kv_cache();
        let mut logits = model.prefill(&mut cache, &prompt);
        let mut context = prompt.clone();
        for &token in &tokens {
            let full = model.logits(&context, 1, context.len());
            let last = &full[(context.len() - 1) * v..];
            let diff = last
                .iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-3, "{head}: logits differ by {diff}");
            assert_eq!(argmax(last), token, "{head}: at position {}", context.len());
            context.push(token);
            if context.len() < block {
                logits = model.decode_step(&mut cache, token);
            }
        }
    }
}

#[test]
fn generation_past_the_context_keeps_going() {
    let mut model = trained_model("harmonic");
    let mut sampler = Sampler::new(0.8, 10, 3);
    let tokens = generate(&mut model, &[256], 100, &mut sampler, None, |_| Ok(())).unwrap();
    assert_eq!(tokens.len(), 100);
    assert!(tokens.iter().all(|&t| t < 257));
}

/// A vocabulary padded past the tokenizer's (config::padded_vocab) has ids that
/// are no text: the sampler never draws them, greedy or not, however likely.
#[test]
fn padding_ids_are_never_sampled() {
    let mut logits = vec![0.0f32; 384];
    logits[300..].fill(50.0); // the padding rows, made the likeliest
    logits[7] = 1.0;
    for (temperature, top_k) in [(0.0, 0), (1.0, 0), (1.0, 5), (5.0, 0)] {
        let mut sampler = Sampler::new(temperature, top_k, 11).within(300);
        for _ in 0..200 {
            let t = sampler.next(&logits);
            assert!(
                t < 300,
                "drew padding id {t} at T={temperature}, top_k={top_k}"
            );
        }
    }
    assert_eq!(Sampler::new(0.0, 0, 0).within(300).next(&logits), 7);
    assert_eq!(
        Sampler::new(0.0, 0, 0).next(&logits),
        300,
        "unlimited, it would"
    );
}

/// `hgpt prepare` of built-in corpus documents into `out` (with `extra` flags).
fn prepare(dir: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    let docs = hgpt::data::corpus::generate(5, 6000).join("\n<|endoftext|>\n");
    let extra = [&["--val-fraction", "0.2"][..], extra].concat();
    common::prepare_corpus(dir, &docs, out, &extra).manifest()
}

#[test]
fn eval_of_a_prepared_directory_checks_its_tokenizer_and_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(0, "run", &[])), dir.path());
    let manifest = prepare(dir.path(), "prep", &[]);
    let eval = |data: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--checkpoint", "run", "--data", data, "--json"];
        args.extend(extra);
        serde_json::from_str::<serde_json::Value>(succeeds(&args, dir.path()).trim()).unwrap()
    };
    let val = eval("prep", &[]);
    assert_eq!(
        val["tokens"].as_u64(),
        Some(manifest["val"]["tokens"].as_u64().unwrap() - 1)
    );
    assert!(
        val.get("bits_per_byte").is_none(),
        "no bytes for token shards: {val}"
    );
    assert!((val["loss"].as_f64().unwrap() - 257f64.ln()).abs() < 0.05);
    let train = eval("prep", &["--split", "train"]);
    assert_eq!(
        train["tokens"].as_u64(),
        Some(manifest["train"]["tokens"].as_u64().unwrap() - 1)
    );

    // Shards made with another tokenizer.
    prepare(dir.path(), "bpe", &["--train-tokenizer", "300"]);
    let line = fails(
        &["eval", "--checkpoint", "run", "--data", "bpe"],
        dir.path(),
    );
    assert!(
        line.contains("bpe/tokenizer.json") && line.contains("not tokenized as"),
        "{line}"
    );

    // llm.c-style shards with no tokenizer, holding ids the model does not have.
    let llmc = dir.path().join("llmc");
    std::fs::create_dir(&llmc).unwrap();
    for split in ["train", "val"] {
        let path = llmc.join(format!("x_{split}_000000.bin"));
        hgpt::data::shard::write_shard(&path, &[1, 2, 300, 4], TokenWidth::U16).unwrap();
    }
    let line = fails(
        &["eval", "--checkpoint", "run", "--data", "llmc"],
        dir.path(),
    );
    assert!(
        line.contains("token 300") && line.contains("257 tokens"),
        "{line}"
    );

    // The checkpoint's own copy of the tokenizer, swapped for another.
    let step = dir.path().join("run/checkpoints/step_00000000");
    std::fs::copy(
        dir.path().join("bpe/tokenizer.json"),
        step.join("tokenizer.json"),
    )
    .unwrap();
    corpus_text(dir.path(), 100);
    let line = fails(
        &["eval", "--checkpoint", "run", "--data", "text.txt"],
        dir.path(),
    );
    assert!(
        line.contains("step_00000000/tokenizer.json") && line.contains("not the tokenizer"),
        "{line}"
    );
}

/// Runs hgpt with its stdout a pipe whose reader has already gone (as `| head`
/// leaves it once it has its lines), and its stderr too when `stderr_closed` (as
/// `2>&1 | head`); returns the exit status and what reached stderr.
fn with_stdout_closed(
    args: &[&str],
    dir: &Path,
    stderr_closed: bool,
) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_hgpt"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    if stderr_closed {
        drop(child.stderr.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_generate_and_eval_quietly() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(0, "run", &[])), dir.path());
    corpus_text(dir.path(), 2000);
    let commands: [&[&str]; 3] = [
        &[
            "generate",
            "--checkpoint",
            "run",
            "--max-new-tokens",
            "100000",
            "--seed",
            "1",
        ],
        EVAL_JSON,
        &EVAL_JSON[..5],
    ];
    for args in commands {
        let (status, stderr) = with_stdout_closed(args, dir.path(), false);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error"), "{args:?}: {stderr}");
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
    }
    // The device note goes to the closed pipe as well.
    let (status, _) = with_stdout_closed(commands[0], dir.path(), true);
    assert_eq!(status.code(), Some(0));
}

/// A copy of run's checkpoint with every weight NaN, as checkpoint `nan`.
fn nan_checkpoint(dir: &Path) {
    let ckpt = hgpt::checkpoint::Checkpoint::open_run(&dir.join("run")).unwrap();
    let params = vec![f32::NAN; ckpt.read_params().unwrap().len()];
    let tokenizer = hgpt::checkpoint::tokenizer::load(&ckpt).unwrap();
    hgpt::checkpoint::save_model(&dir.join("nan"), &ckpt.state.config, &params, &tokenizer)
        .unwrap();
}

#[test]
fn a_model_with_nan_weights_scores_nan_and_does_not_generate() {
    for head in ["harmonic", "softmax"] {
        let dir = tempfile::tempdir().unwrap();
        let set = format!("model.head={head}");
        succeeds(&strs(&train_args(0, "run", &[&set])), dir.path());
        corpus_text(dir.path(), 500);
        nan_checkpoint(dir.path());
        let args = ["eval", "--checkpoint", "nan", "--data", "text.txt"];
        let json: serde_json::Value =
            serde_json::from_str(succeeds(&[&args[..], &["--json"]].concat(), dir.path()).trim())
                .unwrap();
        assert!(json["loss"].is_null(), "{head}: {json}");
        assert!(json["perplexity"].is_null(), "{head}: {json}");
        let line = succeeds(&args, dir.path());
        assert!(line.starts_with("loss NaN nats/token"), "{head}: {line}");

        let out = hgpt(
            &[
                "generate",
                "--checkpoint",
                "nan",
                "--prompt",
                "the",
                "--seed",
                "1",
            ],
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{head}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let last = stderr.lines().last().unwrap();
        assert!(
            last.starts_with("error: ") && last.contains("not finite"),
            "{head}: {stderr}"
        );
    }
}

/// Any count of new tokens is a request, not an allocation: the largest ones
/// generate until the reader has enough (here: at once) and end quietly, as a
/// small one does, with no capacity panic (101) or allocation abort (134).
#[test]
fn generate_takes_any_max_new_tokens() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(0, "run", &[])), dir.path());
    for n in ["1000000000000", "18446744073709551615"] {
        let args = [
            "generate",
            "--checkpoint",
            "run",
            "--max-new-tokens",
            n,
            "--seed",
            "1",
        ];
        let (status, stderr) = with_stdout_closed(&args, dir.path(), false);
        assert!(!stderr.contains("error"), "{n}: {stderr}");
        assert_eq!(status.code(), Some(0), "{n}: {stderr}");
    }
}

/// What `generate::run` hands its reader and its observer, in order.
#[derive(Debug, PartialEq)]
enum Said {
    Text(String),
    Note(String),
}

/// A writer and an observer that log into one list, so their order shows.
#[derive(Clone, Default)]
struct Log(std::rc::Rc<std::cell::RefCell<Vec<Said>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf).into_owned();
        if !text.is_empty() {
            self.0.borrow_mut().push(Said::Text(text));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl hgpt::observe::Observer for Log {
    fn note(&mut self, line: &str) {
        self.0.borrow_mut().push(Said::Note(line.to_string()));
    }
}

/// The device line is a note said before any text (stderr before the stream on
/// stdout), so it never lands in the middle of the generated text.
#[test]
fn generate_names_the_device_before_the_text() {
    let dir = tempfile::tempdir().unwrap();
    succeeds(&strs(&train_args(0, "run", &[])), dir.path());
    let log = Log::default();
    let request = hgpt::generate::GenerateRequest {
        checkpoint: &dir.path().join("run"),
        prompt: "the ",
        max_new_tokens: 20,
        temperature: 1.0,
        top_k: 0,
        seed: Some(1),
        device: hgpt::backend::DeviceChoice::Cpu,
    };
    hgpt::generate::run(&request, &mut log.clone(), &mut log.clone()).unwrap();
    let said = log.0.borrow();
    let device = said
        .iter()
        .position(|s| matches!(s, Said::Note(n) if n.starts_with("device: ")))
        .unwrap_or_else(|| panic!("no device line: {said:?}"));
    let first_text = said
        .iter()
        .position(|s| matches!(s, Said::Text(_)))
        .unwrap_or_else(|| panic!("no text: {said:?}"));
    assert!(device < first_text, "{said:?}");
    assert_eq!(said[first_text], Said::Text("the ".into()));
}
