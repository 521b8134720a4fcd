//! The data pipeline end to end: prepare, shards in llm.c's layout, the loader,
//! and one-line errors for bad input.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hgpt::config::Config;
use hgpt::data::prepare::{PrepareOptions, PrepareReport, TokenizerSource, prepare};
use hgpt::data::shard::{Shard, TokenWidth, write_shard};
use hgpt::data::{Batch, Loader, LoaderPosition, Tokenizer, corpus};
use indicatif::ProgressBar;

fn options(inputs: &[&Path], out: &Path, tokenizer: TokenizerSource) -> PrepareOptions {
    PrepareOptions {
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        out: out.to_path_buf(),
        jsonl_field: "text".into(),
        tokenizer,
        val_fraction: 0.2,
        seed: 1337,
        shard_tokens: 5_000,
    }
}

/// All tokens of one split's shards, in order.
fn split_tokens(dir: &Path, split: &str) -> Vec<u32> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(split) && name.ends_with(".bin")
        })
        .collect();
    files.sort();
    let mut tokens = Vec::new();
    for f in files {
        let shard = Shard::open(&f).unwrap();
        shard.read(0, shard.len(), &mut tokens).unwrap();
    }
    tokens
}

/// Documents decoded from a split: the text between end-of-text tokens.
fn decoded_documents(dir: &Path, split: &str, tok: &Tokenizer) -> Vec<String> {
    let tokens = split_tokens(dir, split);
    assert_eq!(tokens.first(), Some(&tok.eot()), "a split starts with EOT");
    tokens[1..]
        .split(|&t| t == tok.eot())
        .map(|doc| tok.decode(doc))
        .collect()
}

/// Writes `docs` as a mix of plain text files (two documents in one, separated
/// by <|endoftext|>) and a JSON Lines file; returns the input directory.
fn write_inputs(root: &Path, docs: &[String]) -> PathBuf {
    let input = root.join("input");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    let (plain, rest) = docs.split_at(docs.len() / 2);
    for (i, pair) in plain.chunks(2).enumerate() {
        let text = pair.join("\n<|endoftext|>\n");
        std::fs::write(input.join("sub").join(format!("{i:03}.txt")), text).unwrap();
    }
    let lines: Vec<String> = rest
        .iter()
        .map(|d| serde_json::json!({ "id": 1, "text": d }).to_string())
        .collect();
    std::fs::write(input.join("docs.jsonl"), lines.join("\n") + "\n").unwrap();
    input
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn round_trip_text_to_shards_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = corpus::generate(3, 60_000);
    docs[1].push_str(" unicode: héllo ☃ 𝄞");
    let input = write_inputs(dir.path(), &docs);
    for (name, source) in [
        ("bytes", TokenizerSource::Bytes),
        ("trained", TokenizerSource::Train(400)),
    ] {
        let out = dir.path().join(name);
        let report = prepare(&options(&[&input], &out, source), &ProgressBar::hidden()).unwrap();
        let tok = Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
        let m = &report.manifest;
        assert_eq!(m.tokenizer_sha256, tok.hash());
        assert_eq!(m.vocab_size, tok.vocab_size());
        assert_eq!(m.train.documents + m.val.documents, docs.len() as u64);
        assert!(m.val.documents >= 1 && m.train.shards.len() > 1);
        assert_eq!(m.train.tokens as usize, split_tokens(&out, "train").len());
        let mut back = decoded_documents(&out, "train", &tok);
        back.extend(decoded_documents(&out, "val", &tok));
        assert_eq!(sorted(back), sorted(docs.clone()), "{name}");
        if name == "trained" {
            assert!(m.train.tokens < split_tokens(&dir.path().join("bytes"), "train").len() as u64);
        }
    }
}

/// GPT-2's map from bytes to the characters its vocabulary spells them with.
fn gpt2_byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

#[test]
fn gpt2_bpe_files_make_a_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let chars = gpt2_byte_chars();
    let mut vocab: HashMap<String, u32> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let space = chars[b' ' as usize];
    vocab.insert(format!("{space}t"), 256);
    vocab.insert(format!("{space}th"), 257);
    vocab.insert("<|endoftext|>".into(), 258);
    let encoder = dir.path().join("encoder.json");
    let merges = dir.path().join("vocab.bpe");
    std::fs::write(&encoder, serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(&merges, format!("#version: 0.2\n{space} t\n{space}t h\n")).unwrap();
    let tok = Tokenizer::gpt2_bpe(&encoder, &merges).unwrap();
    assert_eq!((tok.vocab_size(), tok.eot()), (259, 258));
    let ids = tok.encode("a the");
    assert_eq!(ids, vec![b'a' as u32, 257, b'e' as u32]);
    assert_eq!(tok.decode(&ids), "a the");
}

/// A shard exactly as llm.c's scripts write it, byte by byte.
fn llmc_bytes(magic: i32, version: i32, count: i32, tokens: &[u32], width: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in [magic, version, count].into_iter().chain([0; 253]) {
        bytes.extend(i.to_le_bytes());
    }
    for &t in tokens {
        bytes.extend(&t.to_le_bytes()[..width]);
    }
    bytes
}

fn llmc_shard(path: &Path, magic: i32, version: i32, count: i32, tokens: &[u32], width: usize) {
    std::fs::write(path, llmc_bytes(magic, version, count, tokens, width)).unwrap();
}

#[test]
fn llmc_layout_shards_load_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..3000).map(|i| (i * 7919) % 50257).collect();
    let p16 = dir.path().join("tiny_shakespeare_train.bin");
    llmc_shard(&p16, 20240520, 1, 3000, &tokens, 2);
    let p32 = dir.path().join("big_vocab.bin");
    let wide: Vec<u32> = tokens.iter().map(|t| t + 70_000).collect();
    llmc_shard(&p32, 20240801, 7, 3000, &wide, 4);
    for (path, want) in [(&p16, &tokens), (&p32, &wide)] {
        let shard = Shard::open(path).unwrap();
        let mut got = Vec::new();
        shard.read(0, shard.len(), &mut got).unwrap();
        assert_eq!(&got, want);
    }
    // Our writer produces the same bytes.
    let ours = dir.path().join("ours.bin");
    write_shard(&ours, &tokens, TokenWidth::for_vocab(50257)).unwrap();
    assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&p16).unwrap());

    // A directory of llm.c shards (no tokenizer.json, no manifest) trains.
    std::fs::remove_file(&p32).unwrap();
    std::fs::remove_file(&ours).unwrap();
    llmc_shard(
        &dir.path().join("tiny_shakespeare_val.bin"),
        20240520,
        1,
        3000,
        &tokens,
        2,
    );
    // Without a tokenizer the ids are bounded by the model's vocabulary: llm.c's
    // padded GPT-2 one.
    let mut c = config(dir.path(), 4, 16);
    c.model.vocab_size = 50304;
    let data = hgpt::data::load(&hgpt::data::DataSpec::of(&c)).unwrap();
    assert!(data.tokenizer.is_none());
    assert_eq!(data.vocab_size, *tokens.iter().max().unwrap() as usize + 1);
}

fn error_of<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_shards_give_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = [1u32, 2, 3, 4];
    let cases = [
        ("magic", llmc_bytes(12345, 1, 4, &tokens, 2), "magic 12345"),
        (
            "version",
            llmc_bytes(20240520, 9, 4, &tokens, 2),
            "unknown shard version 9",
        ),
        (
            "count",
            llmc_bytes(20240520, 1, 3, &tokens, 2),
            "header says 3 tokens",
        ),
        (
            "truncated",
            llmc_bytes(20240520, 1, 40, &tokens, 2),
            "truncated",
        ),
        ("short", vec![0u8; 100], "truncated"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(format!("{name}.bin"));
        std::fs::write(&path, bytes).unwrap();
        let msg = error_of(Shard::open(&path));
        assert!(msg.contains(expect), "{name}: {msg}");
        assert!(msg.contains(&path.display().to_string()), "{name}: {msg}");
        assert!(!msg.contains('\n'), "{name}: {msg}");
    }
}

/// The tiny config on `dir` with small batches.
fn config(dir: &Path, batch: usize, seq: usize) -> Config {
    let mut c = Config::tiny();
    c.data.dir = dir.display().to_string();
    c.train.batch_size = batch;
    c.train.seq_len = seq;
    c
}

#[test]
fn bad_data_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No shards at all.
    let msg = error_of(hgpt::data::load(&hgpt::data::DataSpec::of(&config(
        d, 2, 8,
    ))));
    assert!(msg.contains("no train shards"), "{msg}");

    // A token outside the tokenizer's vocabulary.
    Tokenizer::bytes().save(&d.join("tokenizer.json")).unwrap();
    let tokens: Vec<u32> = (0..200).map(|i| i % 257).collect();
    write_shard(&d.join("train_000000.bin"), &tokens, TokenWidth::U16).unwrap();
    let mut bad = tokens.clone();
    bad[50] = 300;
    let val = d.join("val_000000.bin");
    write_shard(&val, &bad, TokenWidth::U16).unwrap();
    let msg = error_of(hgpt::data::load(&hgpt::data::DataSpec::of(&config(
        d, 2, 8,
    ))));
    assert!(
        msg.contains("token 300") && msg.contains(&val.display().to_string()),
        "{msg}"
    );

    // An interrupted prepare.
    write_shard(&val, &tokens, TokenWidth::U16).unwrap();
    assert!(hgpt::data::load(&hgpt::data::DataSpec::of(&config(d, 2, 8))).is_ok());
    std::fs::write(d.join("prepare.incomplete"), "").unwrap();
    let msg = error_of(hgpt::data::load(&hgpt::data::DataSpec::of(&config(
        d, 2, 8,
    ))));
    assert!(msg.contains("did not finish"), "{msg}");
}

/// A u32 llm.c shard holding token 0xFFFFFFF0 and no tokenizer: the id is refused
/// against the model's vocabulary, naming the shard, before any count table is
/// sized by it (one entry per id up to it would be 34 GB).
#[test]
fn a_token_beyond_the_model_vocabulary_is_refused_before_counting() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens: Vec<u32> = (0..3000).map(|i| i % 250).collect();
    tokens[1234] = 0xFFFF_FFF0;
    let train = dir.path().join("fineweb_train_000001.bin");
    llmc_shard(&train, 20240801, 7, 3000, &tokens, 4);
    let val = dir.path().join("fineweb_val_000000.bin");
    llmc_shard(
        &val,
        20240801,
        7,
        3000,
        &tokens.iter().map(|t| t % 250).collect::<Vec<_>>(),
        4,
    );
    let msg = error_of(hgpt::data::load(&hgpt::data::DataSpec::of(&config(
        dir.path(),
        4,
        16,
    ))));
    assert!(
        msg.contains(&train.display().to_string())
            && msg.contains("token 4294967280")
            && msg.contains("model.vocab_size"),
        "{msg}"
    );
}

#[test]
fn prepare_refuses_empty_input_and_counts_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("a.txt"), "").unwrap();
    let out = dir.path().join("out");
    let msg = error_of(prepare(
        &options(&[&empty], &out, TokenizerSource::Bytes),
        &ProgressBar::hidden(),
    ));
    assert!(msg.contains("no input text"), "{msg}");
    std::fs::write(empty.join("a.txt"), "<|endoftext|>\n<|endoftext|>").unwrap();
    let msg = error_of(prepare(
        &options(&[&empty], &out, TokenizerSource::Bytes),
        &ProgressBar::hidden(),
    ));
    assert!(msg.contains("no text in the input"), "{msg}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing left behind"
    );

    let input = dir.path().join("latin1");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), b"caf\xe9 ok \xff\xfe end").unwrap();
    std::fs::write(input.join("b.txt"), "clean text").unwrap();
    let report: PrepareReport = prepare(
        &options(&[&input], &out, TokenizerSource::Bytes),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(report.manifest.invalid_utf8, 3);
    assert_eq!(report.files_with_invalid_utf8, 1);
    assert!(
        report
            .summary(&out)
            .contains("replaced 3 invalid UTF-8 sequences in 1 file")
    );
    let mut docs = decoded_documents(&out, "val", &Tokenizer::bytes());
    docs.extend(decoded_documents(&out, "train", &Tokenizer::bytes()));
    docs.sort();
    assert_eq!(docs, ["caf\u{FFFD} ok \u{FFFD}\u{FFFD} end", "clean text"]);

    // A second prepare into the same directory would mix old and new shards.
    let msg = error_of(prepare(
        &options(&[&input], &out, TokenizerSource::Bytes),
        &ProgressBar::hidden(),
    ));
    assert!(msg.contains("already holds prepared data"), "{msg}");
}

#[test]
fn a_failed_prepare_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.txt"), corpus::generate(1, 50_000).join("\n")).unwrap();
    std::fs::write(
        input.join("b.jsonl"),
        "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let msg = error_of(prepare(
        &options(&[&input], &out, TokenizerSource::Bytes),
        &ProgressBar::hidden(),
    ));
    assert!(msg.contains("b.jsonl:2: no string field \"text\""), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing left behind"
    );
}

/// In-memory shards whose token at each position is a distinct id, so a window
/// is known by its first token.
fn numbered_shards(lens: &[usize]) -> Vec<Shard> {
    let mut next = 0u32;
    lens.iter()
        .map(|&n| {
            let tokens: Vec<u32> = (next..next + n as u32).collect();
            next += n as u32;
            Shard::in_memory("numbered", tokens)
        })
        .collect()
}

fn window_ids(batch: &Batch, t: usize) -> Vec<u32> {
    batch.inputs.chunks(t).map(|w| w[0]).collect()
}

#[test]
fn ranks_together_cover_each_window_of_an_epoch_once() {
    let (b, t, world) = (2, 4, 3);
    // Windows per shard: 9, 0, 7, 14, 6 = 36 = 6 rounds of 6: none left over.
    for (lens, leftover) in [(vec![37, 3, 29, 57, 25], 0), (vec![37, 3, 29, 57, 30], 1)] {
        let total: usize = lens.iter().map(|n| (n - 1) / t).sum();
        let mut seen = HashMap::new();
        for rank in 0..world {
            let mut loader = Loader::new(numbered_shards(&lens), b, t, 11, rank, world).unwrap();
            let per_rank = loader.batches_per_epoch() / world as u64;
            for _ in 0..per_rank {
                for w in window_ids(&loader.next_batch().unwrap(), t) {
                    *seen.entry(w).or_insert(0) += 1;
                }
            }
            assert_eq!(loader.position().epoch, 1, "the epoch is over");
        }
        assert!(seen.values().all(|&n| n == 1), "a window served twice");
        assert_eq!(seen.len() + leftover, total);
    }
}

#[test]
fn loader_is_deterministic_and_resumes_exactly_from_a_saved_position() {
    let (b, t) = (3, 5);
    let lens = [41, 66, 12, 90];
    let make = |seed| Loader::new(numbered_shards(&lens), b, t, seed, 1, 2).unwrap();
    let run = |l: &mut Loader, n| (0..n).map(|_| l.next_batch().unwrap()).collect::<Vec<_>>();
    let (mut a, mut same, mut other) = (make(5), make(5), make(6));
    let first = run(&mut a, 20);
    assert_eq!(first, run(&mut same, 20));
    assert_ne!(first, run(&mut other, 20));
    // Epochs reshuffle.
    let per_epoch = a.batches_per_epoch() as usize / 2;
    assert_ne!(
        run(&mut make(5), per_epoch),
        first[per_epoch..2 * per_epoch]
    );

    for stop in [0, 3, per_epoch - 1, per_epoch, 2 * per_epoch + 1] {
        let mut original = make(5);
        run(&mut original, stop);
        let saved = serde_json::to_string(&original.position()).unwrap();
        let expected = run(&mut original, 2 * per_epoch);
        let mut resumed = make(5);
        let pos: LoaderPosition = serde_json::from_str(&saved).unwrap();
        resumed.seek(pos).unwrap();
        assert_eq!(run(&mut resumed, 2 * per_epoch), expected, "stop {stop}");
    }
    let bad = LoaderPosition {
        epoch: 0,
        shard: 9,
        offset: 0,
    };
    assert!(error_of(make(5).seek(bad)).contains("does not fit this data"));
}

#[test]
fn validation_batches_are_sequential_windows() {
    let t = 4;
    let loader = Loader::new(numbered_shards(&[10, 13]), 2, t, 0, 0, 1).unwrap();
    let batches = loader.sequential_batches(10).unwrap();
    assert_eq!(batches.len(), 2); // 2 + 3 windows make two batches of 2
    let ids: Vec<u32> = batches.iter().flat_map(|b| window_ids(b, t)).collect();
    assert_eq!(ids, vec![0, 4, 10, 14]);
    assert_eq!(batches[0].targets[..4], [1, 2, 3, 4]);
}

/// The error line of a failed train run: the last line, the only one that is an
/// error (train says which device it chose before anything else).
fn train_error(code: i32, stderr: &str) -> &str {
    assert_eq!(code, 2, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    errors[0]
}

/// hgpt's exit code and stderr.
fn hgpt(args: &[&str], cwd: &Path) -> (i32, String) {
    let out = common::hgpt(args, cwd);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_prepares_trains_and_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = write_inputs(d, &corpus::generate(9, 30_000));
    std::fs::create_dir_all(d.join("empty")).unwrap();

    let (code, err) = hgpt(&["prepare", "--input", "empty", "--out", "x"], d);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: no input text in empty"), "{err}");

    let input = input.to_str().unwrap();
    let tokenizer = ["--train-tokenizer", "300"];
    let err = common::prepare_env(d, input, "prep", &tokenizer, &[]).stderr;
    assert!(err.contains("prepared prep"), "{err}");

    // A vocabulary the config names must hold the tokenizer's.
    let small = [
        "--set",
        "train.batch_size=2",
        "--set",
        "train.seq_len=32",
        "--set",
        "model.vocab_size=257",
    ];
    let (code, err) = hgpt(&[&["train", "--data", "prep"][..], &small].concat(), d);
    let line = train_error(code, &err);
    assert!(
        line.contains("model.vocab_size = 257") && line.contains("300"),
        "{err}"
    );

    let (code, err) = hgpt(&["train", "--data", "missing", "--steps", "1"], d);
    assert!(
        train_error(code, &err).contains("data.dir = missing"),
        "{err}"
    );
}

#[test]
fn unlisted_shards_match_llmc_names_exactly_and_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shard = |name: &str, n: usize| {
        let tokens: Vec<u32> = (0..n as u32).map(|i| i % 50).collect();
        write_shard(&d.join(name), &tokens, TokenWidth::U16).unwrap();
    };
    // "medieval" holds "val", "trainval" both words: neither is a split word here.
    shard("medieval_train_000000.bin", 300);
    shard("medieval_val_000000.bin", 200);
    shard("trainval.bin", 1000);
    shard("interval_notes.bin", 1000);
    let data = hgpt::data::load(&hgpt::data::DataSpec::of(&config(d, 2, 8))).unwrap();
    let desc = &data.description;
    assert!(
        desc.contains("300 training tokens in 1 shards, 200 validation tokens in 1 shards"),
        "{desc}"
    );
    assert!(
        desc.contains("train: medieval_train_000000.bin; val: medieval_val_000000.bin"),
        "{desc}"
    );

    use hgpt::data::claimed_splits;
    assert_eq!(claimed_splits("fineweb_train_000001.bin"), ["train"]);
    assert_eq!(claimed_splits("tiny_shakespeare_val.bin"), ["val"]);
    assert_eq!(claimed_splits("val_000000.bin"), ["val"]);
    assert!(claimed_splits("trainval.bin").is_empty());
    assert!(claimed_splits("train_000001.txt").is_empty());

    // A name that claims both splits is refused, naming it.
    shard("x_train_000001_val.bin", 300);
    let msg = error_of(hgpt::data::load(&hgpt::data::DataSpec::of(&config(
        d, 2, 8,
    ))));
    assert!(
        msg.contains("x_train_000001_val.bin") && msg.contains("both"),
        "{msg}"
    );
}
/// `prepare` warns when validation holds under 1% or over 20% of the tokens, and
/// when a trained tokenizer could not reach the vocabulary asked for; a share
/// inside the range and a reachable vocabulary draw no warning.
#[test]
fn prepare_warns_of_a_lopsided_validation_share_and_a_short_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = corpus::generate(10, 3_000).join("\n<|endoftext|>\n");
    let run = |out: &str, extra: &[&str]| common::prepare_corpus(d, &docs, out, extra).stderr;
    let err = run("half", &["--val-fraction", "0.5"]);
    assert!(
        err.contains("warning: validation holds") && err.contains("outside 1-20%"),
        "{err}"
    );
    let err = run(
        "tenth",
        &["--val-fraction", "0.1", "--train-tokenizer", "280"],
    );
    assert!(!err.contains("warning"), "{err}");
    let err = run(
        "big",
        &["--val-fraction", "0.1", "--train-tokenizer", "100000"],
    );
    assert!(
        err.contains("warning: --train-tokenizer 100000: the input supports only"),
        "{err}"
    );
}

/// `hgpt prepare --out out --seed S` over `docs.txt` in `d`: the manifest.
fn prepare_seeded(d: &Path, out: &str, fraction: &str, seed: &str) -> serde_json::Value {
    let extra = ["--val-fraction", fraction, "--seed", seed];
    common::prepare_env(d, "docs.txt", out, &extra, &[]).manifest()
}

/// Validation documents are drawn by the seed, not always the first; an input that
/// ends before the draw still gives validation one document (its last).
#[test]
fn prepare_draws_validation_documents_by_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = corpus::generate(10, 2_000);
    std::fs::write(d.join("docs.txt"), docs.join("\n<|endoftext|>\n")).unwrap();
    let val_tokens: std::collections::BTreeSet<u64> = ["1", "2", "3", "4", "5"]
        .iter()
        .map(|seed| {
            let m = prepare_seeded(d, &format!("s{seed}"), "0.1", seed);
            assert_eq!(m["val"]["documents"], 1);
            assert_eq!(m["train"]["documents"], 9);
            m["val"]["tokens"].as_u64().unwrap()
        })
        .collect();
    assert!(val_tokens.len() > 1, "every seed picked the same document");
    let again = prepare_seeded(d, "again", "0.1", "1");
    let first = prepare_seeded(d, "first", "0.1", "1");
    assert_eq!(again["val"], first["val"], "the same seed, the same split");

    std::fs::write(d.join("docs.txt"), docs[..3].join("\n<|endoftext|>\n")).unwrap();
    let m = prepare_seeded(d, "short", "0.001", "1");
    assert_eq!(
        (
            m["val"]["documents"].as_u64(),
            m["train"]["documents"].as_u64()
        ),
        (Some(1), Some(2))
    );
}

/// On a stderr that is no terminal, `prepare` tells its progress and ETA in lines.
#[test]
fn prepare_prints_progress_lines_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs = corpus::generate(40, 100_000).join("\n<|endoftext|>\n");
    std::fs::write(d.join("docs.txt"), docs).unwrap();
    let tokenizer = ["--train-tokenizer", "400"];
    let env = [("HGPT_PROGRESS_SECS", "0")];
    let err = common::prepare_env(d, "docs.txt", "p", &tokenizer, &env).stderr;
    let line = err
        .lines()
        .find(|l| l.starts_with("prepare: input bytes: "));
    assert!(line.is_some_and(|l| l.contains("elapsed")), "{err}");
}
