//! What an export says about itself: the model card README.md generated from the
//! checkpoint and its run's metrics, config.json's current keys (`dtype`, the
//! trunk in `auto_map`), and tokenizer_config.json, the same for an export and a
//! `prepare` directory. (tools/test_hf_export.py checks the same files with
//! transformers itself; tests/hf_python.rs runs it.)

mod common;

use std::path::Path;

use hgpt::checkpoint::Checkpoint;
use serde_json::Value;

use common::{fails, strs, succeeds, train_args};

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The last `key` value logged in a run's metrics.jsonl.
fn last_logged(run: &Path, key: &str) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get(key).and_then(Value::as_f64))
        .next_back()
        .unwrap()
}

/// The card's front matter lines and its body.
fn card(dir: &Path) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let rest = text.strip_prefix("---\n").expect("front matter first");
    let (front, body) = rest.split_once("\n---\n").expect("front matter closed");
    (
        front.lines().map(str::to_string).collect(),
        body.to_string(),
    )
}

#[test]
fn model_card_is_generated_from_the_checkpoint_and_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sets = ["model.tie_embeddings=false", "train.eval_every=3"];
    succeeds(&strs(&train_args(3, "run", &sets)), d);
    let export = [
        "export",
        "--checkpoint",
        "run",
        "--out",
        "hf",
        "--dtype",
        "bf16",
        "--license",
        "apache-2.0",
        "--dataset",
        "roneneldan/TinyStories",
        "--dataset",
        "HuggingFaceFW/fineweb",
    ];
    succeeds(&export, d);
    let (front, body) = card(&d.join("hf"));
    for line in [
        "library_name: transformers",
        "license: apache-2.0",
        "pipeline_tag: text-generation",
        "- harmonic-loss",
        "- roneneldan/TinyStories",
        "- HuggingFaceFW/fineweb",
    ] {
        assert!(front.iter().any(|l| l == line), "{line} in {front:?}");
    }
    // The first paragraph says how to load it, before anything else.
    let first = body
        .split("\n\n")
        .find(|p| !p.trim().is_empty() && !p.trim_start().starts_with('#'))
        .unwrap();
    assert!(
        first.contains("AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)")
            && first.contains("GPT2LMHeadModel"),
        "{first}"
    );
    let params = Checkpoint::open(&d.join("run"))
        .unwrap()
        .read_params()
        .unwrap()
        .len();
    let facts = [
        "GPT-2: 1 layers, 2 heads, 32 channels, context 32, vocabulary 257".to_string(),
        "harmonic, exponent n = 32, eps = 1e-6, centres untied".to_string(),
        format!("| parameters | {params} "),
        "| weights | bf16 |".to_string(),
        "| steps | 3 |".to_string(),
        "| tokens | 384 (128 per step".to_string(),
        format!(
            "| final train loss | {:.4} nats/token (step 3) |",
            last_logged(&d.join("run"), "train_loss")
        ),
        format!(
            "| final validation loss | {:.4} nats/token (step 3) |",
            last_logged(&d.join("run"), "val_loss")
        ),
        "hgpt's built-in byte-level tokenizer".to_string(),
        "z_i = -(n/2) ln max(|h - w_i|^2, eps)".to_string(),
        "AutoTokenizer.from_pretrained(path, trust_remote_code=True)".to_string(),
        "AutoModel.from_pretrained(path, trust_remote_code=True)".to_string(),
    ];
    for fact in facts {
        assert!(body.contains(&fact), "{fact} in the card:\n{body}");
    }
}

#[test]
fn softmax_card_loads_without_custom_code_and_omits_what_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(&strs(&train_args(2, "run", &["model.head=softmax"])), d);
    succeeds(&["export", "--checkpoint", "run", "--out", "hf"], d);
    succeeds(&["import", "--hf", "hf", "--out", "ck"], d);
    succeeds(&["export", "--checkpoint", "ck", "--out", "hf2"], d);
    let (front, body) = card(&d.join("hf"));
    assert!(
        !front
            .iter()
            .any(|l| l.starts_with("license") || l.starts_with("datasets"))
    );
    assert!(
        !front
            .iter()
            .any(|l| l.contains("harmonic") || l.contains("custom_code"))
    );
    assert!(body.contains("loads as `GPT2LMHeadModel`") && !body.contains("trust_remote_code"));
    assert!(body.contains("| head | softmax (dot product), tied to the token embedding |"));
    // The run evaluates at its last step: the card has that loss.
    let val = last_logged(&d.join("run"), "val_loss");
    assert!(
        body.contains(&format!(
            "| final validation loss | {val:.4} nats/token (step 2) |"
        )),
        "{body}"
    );
    // An import has taken no steps and has no metrics.
    let (_, body) = card(&d.join("hf2"));
    assert!(body.contains("| steps | 0 |") && body.contains("| final train loss | not recorded |"));
}

#[test]
fn bad_card_metadata_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(&strs(&train_args(1, "run", &[])), d);
    let line = fails(
        &[
            "export",
            "--checkpoint",
            "run",
            "--out",
            "hf",
            "--license",
            "MIT License",
        ],
        d,
    );
    assert!(
        line.contains("--license `MIT License`: not a Hugging Face identifier"),
        "{line}"
    );
    let line = fails(
        &[
            "export",
            "--checkpoint",
            "run",
            "--out",
            "hf",
            "--dataset",
            "a b",
        ],
        d,
    );
    assert!(line.contains("--dataset `a b`"), "{line}");
}

#[test]
fn config_names_the_dtype_and_the_trunk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(&strs(&train_args(1, "run", &[])), d);
    succeeds(
        &[
            "export",
            "--checkpoint",
            "run",
            "--out",
            "hf",
            "--dtype",
            "f16",
        ],
        d,
    );
    let path = d.join("hf").join("config.json");
    let mut config = read_json(&path);
    assert_eq!(config["dtype"], "float16");
    assert!(config.get("torch_dtype").is_none());
    let auto_map = &config["auto_map"];
    assert_eq!(
        auto_map["AutoModel"],
        "modeling_harmonic_gpt2.HarmonicGPT2Model"
    );
    assert_eq!(
        auto_map["AutoModelForCausalLM"],
        "modeling_harmonic_gpt2.HarmonicGPT2LMHeadModel"
    );
    // Configs written by older transformers (`torch_dtype`) still import.
    let obj = config.as_object_mut().unwrap();
    let dtype = obj.remove("dtype").unwrap();
    obj.insert("torch_dtype".into(), dtype);
    std::fs::write(&path, config.to_string()).unwrap();
    succeeds(&["import", "--hf", "hf", "--out", "ck"], d);
}

#[test]
fn prepare_and_export_tokenizers_carry_the_same_roles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let docs: Vec<String> = (0..40)
        .map(|i| format!("Document {i}: the cat sat on the mat, and then it sat again."))
        .collect();
    let text = docs.join("\n<|endoftext|>\n");
    common::prepare_corpus(d, &text, "data", &["--val-fraction", "0.2"]);
    succeeds(&strs(&train_args(1, "run", &["data.dir=data"])), d);
    succeeds(&["export", "--checkpoint", "run", "--out", "hf"], d);
    let prepared = read_json(&d.join("data").join("tokenizer_config.json"));
    let exported = read_json(&d.join("hf").join("tokenizer_config.json"));
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        assert_eq!(prepared[key], "<|endoftext|>", "{key}");
        assert_eq!(exported[key], prepared[key], "{key}");
    }
    for config in [&prepared, &exported] {
        assert_eq!(config["split_special_tokens"], true);
        assert_eq!(config["tokenizer_class"], "PreTrainedTokenizerFast");
        assert!(
            config.get("auto_map").is_none(),
            "no remote code for the tokenizer"
        );
    }
    assert_eq!(exported["model_max_length"], 32);
    assert!(prepared.get("model_max_length").is_none());
    assert_eq!(
        std::fs::read(d.join("data").join("tokenizer.json")).unwrap(),
        std::fs::read(d.join("hf").join("tokenizer.json")).unwrap()
    );
}
