//! Data pipeline measurements for tools/bench-data.sh (not a test), run as
//! `cargo bench --bench data_bench -- COMMAND ...`:
//!
//!   data_bench generate DIR MB        built-in corpus text, 64 files, MB megabytes
//!   data_bench encode INPUT PREPARED  the tokenizers crate encoding INPUT's text
//!                                     with PREPARED's tokenizer.json: one call on
//!                                     one thread, and its own parallel batch call
//!   data_bench loader PREPARED        tokens/s served by the loader, and the
//!                                     start-up token scan
//!
//! Each prints one JSON object.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hgpt::config::Config;
use hgpt::data::input::{DocumentReader, list_files};
use hgpt::data::{Tokenizer, corpus, shard};

/// Text of the baseline encode: enough to time, small enough that the crate's
/// per-token Encoding (offsets, strings) fits in memory.
const ENCODE_BYTES: usize = 32 << 20;

fn generate(dir: &Path, mb: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let files = 64;
    for i in 0..files {
        let docs = corpus::generate(i as u64, mb * 1_000_000 / files);
        let text = docs.join("\n<|endoftext|>\n");
        std::fs::write(dir.join(format!("part_{i:03}.txt")), text)?;
    }
    println!("{{\"generated_mb\": {mb}, \"files\": {files}}}");
    Ok(())
}

fn encode(input: &Path, prepared: &Path) -> Result<()> {
    let tok = Tokenizer::from_file(&prepared.join("tokenizer.json"))?;
    let mut docs = Vec::new();
    let mut bytes = 0;
    for piece in DocumentReader::new(list_files(&[input.to_path_buf()])?, "text") {
        let piece = piece?;
        bytes += piece.text.len();
        docs.push(piece.text);
        if bytes >= ENCODE_BYTES {
            break;
        }
    }
    let text = docs.concat();
    let hf = tok.hf();
    let t0 = Instant::now();
    let single = hf
        .encode_fast(text.as_str(), false)
        .map_err(anyhow::Error::msg)?;
    let single_s = t0.elapsed().as_secs_f64();
    let single_tokens = single.get_ids().len();
    drop(single);
    let t0 = Instant::now();
    let batch = hf
        .encode_batch_fast(docs.iter().map(String::as_str).collect(), false)
        .map_err(anyhow::Error::msg)?;
    let batch_s = t0.elapsed().as_secs_f64();
    let batch_tokens: usize = batch.iter().map(|e| e.get_ids().len()).sum();
    let t0 = Instant::now();
    let ours: usize = docs.iter().map(|d| tok.encode(d).len()).sum();
    let ours_s = t0.elapsed().as_secs_f64();
    let mb = bytes as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "text_mb": mb,
            "vocab": tok.vocab_size(),
            "single_call_mb_per_s": mb / single_s,
            "single_call_tokens_per_s": single_tokens as f64 / single_s,
            "batch_call_mb_per_s": mb / batch_s,
            "batch_call_tokens_per_s": batch_tokens as f64 / batch_s,
            "hgpt_encode_one_thread_mb_per_s": mb / ours_s,
            "hgpt_encode_one_thread_tokens_per_s": ours as f64 / ours_s,
        })
    );
    Ok(())
}

fn loader(prepared: &Path) -> Result<()> {
    let mut config = Config::tiny();
    config.data.dir = prepared.display().to_string();
    config.model.block_size = 1024;
    config.train.seq_len = 1024;
    config.train.batch_size = 8;
    let t0 = Instant::now();
    let mut data = hgpt::data::load(&hgpt::data::DataSpec::of(&config))?;
    let load_s = t0.elapsed().as_secs_f64();
    let scanned: u64 = shard_tokens(prepared)?;
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    let t0 = Instant::now();
    let mut batches = 0;
    while t0.elapsed().as_secs_f64() < 3.0 {
        std::hint::black_box(data.train.next_batch()?);
        batches += 1;
    }
    let serve_s = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "batch": format!("{b} x {t}"),
            "served_tokens_per_s": (batches * b * t) as f64 / serve_s,
            "load_s": load_s,
            // Opening, checking and scanning every token once at start-up.
            "load_tokens_per_s": scanned as f64 / load_s,
        })
    );
    Ok(())
}

/// Tokens in all shards of a prepared directory.
fn shard_tokens(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "bin") {
            total += shard::Shard::open(&path)?.len() as u64;
        }
    }
    Ok(total)
}

fn main() -> Result<()> {
    const USAGE: &str =
        "usage: data_bench generate DIR MB | encode INPUT PREPARED | loader PREPARED";
    // cargo bench appends --bench to the arguments; it is not ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let path = |i: usize| args.get(i).map(Path::new).context(USAGE);
    match args.first().map(String::as_str) {
        Some("generate") => generate(path(1)?, args.get(2).context(USAGE)?.parse()?),
        Some("encode") => encode(path(1)?, path(2)?),
        Some("loader") => loader(path(1)?),
        // A plain `cargo bench` runs every bench with no command: say how, succeed.
        None => {
            eprintln!("{USAGE} (see tools/bench-data.sh)");
            Ok(())
        }
        Some(_) => bail!(USAGE),
    }
}
