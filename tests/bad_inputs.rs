//! The README's table of bad inputs is the suite's own count: each row's checks
//! are the call sites in its test files of the suite's refusal helpers (`fails`,
//! `error_of`, `unwrap_err`, ...), a check that loops over several inputs counting
//! once. This test recounts them and fails, printing the table, when the README's
//! differs.

use std::path::Path;

/// (category, what the checks try, test files)
const CATEGORIES: &[(&str, &str, &[&str])] = &[
    (
        "command line and configs",
        "unknown keys and sections, bad values and types, layered-config errors, negative numbers, missing arguments, argument errors as one line",
        &["cli.rs"],
    ),
    (
        "data and prepare",
        "damaged shards and headers, tokens outside the vocabulary, shard names claimed by both splits, bad Parquet/JSONL columns, corrupt compressed input",
        &["data.rs", "prepare_formats.rs"],
    ),
    (
        "checkpoints and resume",
        "truncated and corrupted files, random byte flips (fuzzed), writes over checkpoints and inputs, locked runs, changed or cut shards, damaged metrics",
        &["checkpoint.rs", "checkpoint_fuzz.rs"],
    ),
    (
        "sizes and memory",
        "models, batches, ranks held together and corpora beyond the memory available, malformed HGPT_MEMORY_LIMIT",
        &["memory.rs"],
    ),
    (
        "eval and generate",
        "missing checkpoints, data from another tokenizer, bad sampling values",
        &["eval_generate.rs"],
    ),
    (
        "LLC",
        "bad step sizes, chains, ranks and temperatures, missing checkpoints and runs, locked outputs, models side by side beyond the memory",
        &["llc.rs"],
    ),
    (
        "probe",
        "unknown words, bad vectors and plots",
        &["probe.rs"],
    ),
    (
        "Hugging Face export and import",
        "imports of foreign configs and tensors or non-finite weights, outputs already taken, missing checkpoints, bad licenses",
        &["hf.rs", "hf_card.rs"],
    ),
    (
        "data parallel and launchers",
        "zero ranks, ranks that fail, panic or end early, ranks without a GPU",
        &["data_parallel.rs", "launch.rs"],
    ),
];

/// Calls that assert a refusal.
const REFUSALS: &[&str] = &[
    "fails(",
    "fails_env(",
    "error_of(",
    "prepare_error(",
    "train_error(",
    "unwrap_err()",
    ".is_err()",
    "expect_err(",
    "Err(line)",
];

fn checks(file: &str) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter(|l| !l.contains("fn ") && REFUSALS.iter().any(|r| l.contains(r)))
        .count()
}

fn table() -> String {
    let mut out = String::from("| category | checks | what they try |\n| --- | ---: | --- |\n");
    let mut total = 0;
    for (name, what, files) in CATEGORIES {
        let n: usize = files.iter().map(|f| checks(f)).sum();
        total += n;
        out += &format!("| {name} | {n} | {what} |\n");
    }
    out += &format!("| all | {total} | |\n");
    out
}

#[test]
fn the_readme_table_of_bad_inputs_counts_the_suites_checks() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let want = table();
    assert!(
        readme.contains(&want),
        "README.md's table of bad inputs differs from the suite; it should read:\n{want}"
    );
}
