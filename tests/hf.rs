//! Hugging Face export and import: round trips for both heads, the file layout
//! against a GPT-2 built here by hand in transformers' layout, the model's logits
//! recomputed from the exported tensors, one clear error for each bad input, and
//! the commands: export, import, and fine-tuning an import with `train --init`.

mod common;

use std::collections::HashMap;
use std::path::Path;

use hgpt::backend::cpu::CpuBackend;
use hgpt::checkpoint::Checkpoint;
use hgpt::config::{Config, HeadChoice, ModelConfig};
use hgpt::data::tokenizer::Tokenizer;
use hgpt::export::{self, Dtype};
use hgpt::model::{Gpt, idx};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::{Value, json};

use common::{fails, reference, strs, succeeds, train_args};

const EOT: u32 = 22;

/// A file's tensors by name: shape, dtype, values (F32 files only).
type FileTensors = HashMap<String, (Vec<usize>, StDtype, Vec<f32>)>;
/// A tensor to write: name, shape, dtype, raw bytes.
type RawTensor = (String, Vec<usize>, StDtype, Vec<u8>);

fn small(head: HeadChoice, tied: bool) -> ModelConfig {
    let (head, tied) = (
        format!("model.head={head}"),
        format!("model.tie_embeddings={tied}"),
    );
    let model = [
        "model.n_embd=16",
        "model.block_size=8",
        "model.vocab_size=23",
        "model.harmonic_exponent=sqrt",
        "model.harmonic_eps=1e-6",
        &head,
        &tied,
    ];
    common::config(common::SMALL, &model).model
}

/// A model with random weights, nonzero biases and non-unit gains, so that a
/// mixed-up layout cannot go unnoticed.
fn model(m: &ModelConfig, seed: u64) -> Gpt<CpuBackend> {
    let gpt = Gpt::new(CpuBackend::new(), m);
    gpt.init(seed);
    let mut p = gpt.read_params();
    for (i, x) in p.iter_mut().enumerate() {
        *x += 0.01 * ((i * 7919 % 101) as f32 / 101.0 - 0.5);
    }
    gpt.write_params(&p);
    gpt
}

fn cases() -> Vec<ModelConfig> {
    vec![
        small(HeadChoice::Harmonic, true),
        small(HeadChoice::Harmonic, false),
        small(HeadChoice::Softmax, true),
        small(HeadChoice::Softmax, false),
    ]
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn round_trip_is_bit_identical_for_both_heads() {
    for m in cases() {
        let gpt = model(&m, 5);
        let dir = tempfile::tempdir().unwrap();
        export::write_model(dir.path(), &m, &gpt.read_params(), Dtype::F32, Some(EOT)).unwrap();
        let back = export::read_model(dir.path()).unwrap();
        let (a, b) = (gpt.read_params(), back.params);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{:?} tied={}: parameters differ",
            m.head,
            m.tie_embeddings
        );
        assert_eq!(back.config.eot, Some(EOT));
        assert_eq!(back.config.model.head_kind(), m.head_kind());
        let expected = ModelConfig {
            harmonic_exponent: back.config.model.harmonic_exponent,
            harmonic_eps: back.config.model.harmonic_eps,
            ..m.clone()
        };
        assert_eq!(back.config.model, expected);
    }
}

#[test]
fn half_precision_exports_round_to_nearest() {
    let m = small(HeadChoice::Harmonic, true);
    let gpt = model(&m, 6);
    let params = gpt.read_params();
    for (dtype, st_dtype, round) in [
        (
            Dtype::Bf16,
            StDtype::BF16,
            (|x| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (Dtype::F16, StDtype::F16, |x| {
            half::f16::from_f32(x).to_f32()
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        export::write_model(dir.path(), &m, &params, dtype, Some(EOT)).unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.iter().all(|(_, v)| v.dtype() == st_dtype), "{dtype}");
        let config = read_json(&dir.path().join("config.json"));
        assert_eq!(config["dtype"], dtype_name(dtype));
        let back = export::read_model(dir.path()).unwrap().params;
        let rounded: Vec<f32> = params.iter().map(|&x| round(x)).collect();
        assert_eq!(back, rounded, "{dtype}");
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "float32",
        Dtype::Bf16 => "bfloat16",
        Dtype::F16 => "float16",
    }
}

/// hgpt's tensor `i` of layer `l` as a host vector.
fn slice(gpt: &Gpt<CpuBackend>, params: &[f32], i: usize, l: usize) -> Vec<f32> {
    let t = &gpt.layout.tensors[i];
    let start = t.offset + l * t.layer_len();
    params[start..start + t.layer_len()].to_vec()
}

/// hgpt's [out, in] matrix as transformers' Conv1D [in, out], element by element.
fn conv1d(w: &[f32], out_dim: usize, in_dim: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for o in 0..out_dim {
        for i in 0..in_dim {
            t[i * out_dim + o] = w[o * in_dim + i];
        }
    }
    t
}

/// The model as transformers' GPT-2 holds it, written out by hand: name -> (shape,
/// values). `prefix` is "transformer." for GPT2LMHeadModel, "" for OpenAI's files.
fn hand_built(gpt: &Gpt<CpuBackend>, prefix: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let m = &gpt.config;
    let p = gpt.read_params();
    let (c, v, t) = (m.n_embd, m.vocab_size, m.block_size);
    let mut out = HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        out.insert(name, (shape, values));
    };
    put(
        format!("{prefix}wte.weight"),
        vec![v, c],
        slice(gpt, &p, idx::WTE, 0),
    );
    put(
        format!("{prefix}wpe.weight"),
        vec![t, c],
        slice(gpt, &p, idx::WPE, 0),
    );
    for l in 0..m.n_layer {
        let h = format!("{prefix}h.{l}.");
        let s = |i| slice(gpt, &p, i, l);
        put(format!("{h}ln_1.weight"), vec![c], s(idx::LN1W));
        put(format!("{h}ln_1.bias"), vec![c], s(idx::LN1B));
        put(
            format!("{h}attn.c_attn.weight"),
            vec![c, 3 * c],
            conv1d(&s(idx::QKVW), 3 * c, c),
        );
        put(format!("{h}attn.c_attn.bias"), vec![3 * c], s(idx::QKVB));
        put(
            format!("{h}attn.c_proj.weight"),
            vec![c, c],
            conv1d(&s(idx::ATTPROJW), c, c),
        );
        put(format!("{h}attn.c_proj.bias"), vec![c], s(idx::ATTPROJB));
        put(format!("{h}ln_2.weight"), vec![c], s(idx::LN2W));
        put(format!("{h}ln_2.bias"), vec![c], s(idx::LN2B));
        put(
            format!("{h}mlp.c_fc.weight"),
            vec![c, 4 * c],
            conv1d(&s(idx::FCW), 4 * c, c),
        );
        put(format!("{h}mlp.c_fc.bias"), vec![4 * c], s(idx::FCB));
        put(
            format!("{h}mlp.c_proj.weight"),
            vec![4 * c, c],
            conv1d(&s(idx::FCPROJW), c, 4 * c),
        );
        put(format!("{h}mlp.c_proj.bias"), vec![c], s(idx::FCPROJB));
    }
    put(
        format!("{prefix}ln_f.weight"),
        vec![c],
        slice(gpt, &p, idx::LNFW, 0),
    );
    put(
        format!("{prefix}ln_f.bias"),
        vec![c],
        slice(gpt, &p, idx::LNFB, 0),
    );
    if !m.tie_embeddings {
        put(
            "lm_head.weight".into(),
            vec![v, c],
            slice(gpt, &p, idx::LM_HEAD, 0),
        );
    }
    out
}

fn read_file_tensors(path: &Path) -> (FileTensors, Value) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .iter()
        .map(|(n, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n.to_string(), (v.shape().to_vec(), v.dtype(), values))
        })
        .collect();
    (tensors, json!(meta.metadata()))
}

#[test]
fn export_matches_a_hand_built_gpt2() {
    for m in cases() {
        let gpt = model(&m, 7);
        let dir = tempfile::tempdir().unwrap();
        export::write_model(dir.path(), &m, &gpt.read_params(), Dtype::F32, Some(EOT)).unwrap();
        let (file, meta) = read_file_tensors(&dir.path().join("model.safetensors"));
        assert_eq!(meta, json!({"format": "pt"}));
        let expected = hand_built(&gpt, "transformer.");
        let mut names: Vec<_> = file.keys().collect();
        names.sort();
        let mut want: Vec<_> = expected.keys().collect();
        want.sort();
        assert_eq!(names, want, "tied={}", m.tie_embeddings);
        for (name, (shape, values)) in &expected {
            let (s, dtype, v) = &file[name];
            assert_eq!((s, *dtype), (shape, StDtype::F32), "{name}");
            assert_eq!(v, values, "{name}");
        }

        let config = read_json(&dir.path().join("config.json"));
        for (key, value) in [
            ("n_layer", json!(2)),
            ("n_head", json!(2)),
            ("n_embd", json!(16)),
            ("n_positions", json!(8)),
            ("n_ctx", json!(8)),
            ("vocab_size", json!(23)),
            ("activation_function", json!("gelu_new")),
            ("layer_norm_epsilon", json!(1e-5)),
            ("tie_word_embeddings", json!(m.tie_embeddings)),
            ("bos_token_id", json!(EOT)),
            ("eos_token_id", json!(EOT)),
        ] {
            assert_eq!(config[key], value, "config.json {key}");
        }
        let generation = read_json(&dir.path().join("generation_config.json"));
        assert_eq!(generation["eos_token_id"], json!(EOT));
        let py = dir.path().join("modeling_harmonic_gpt2.py");
        if m.head == HeadChoice::Harmonic {
            assert_eq!(config["model_type"], "harmonic_gpt2");
            assert_eq!(config["architectures"], json!(["HarmonicGPT2LMHeadModel"]));
            assert_eq!(
                config["auto_map"]["AutoModelForCausalLM"],
                "modeling_harmonic_gpt2.HarmonicGPT2LMHeadModel"
            );
            assert_eq!(config["harmonic_exponent"], json!(4.0)); // sqrt(16)
            assert_eq!(config["harmonic_eps"], json!(1e-6));
            let text = std::fs::read_to_string(py).unwrap();
            assert!(text.contains("class HarmonicGPT2LMHeadModel(GPT2LMHeadModel)"));
            assert!(dir.path().join("configuration_harmonic_gpt2.py").is_file());
        } else {
            assert_eq!(config["model_type"], "gpt2");
            assert_eq!(config["architectures"], json!(["GPT2LMHeadModel"]));
            assert!(config.get("auto_map").is_none() && !py.exists());
        }
    }
}

fn write_safetensors(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An OpenAI-style GPT-2 directory: no `transformer.` prefix, the causal-mask
/// buffers beside the parameters, and a config.json as OpenAI's uploads have it.
fn write_openai_style(dir: &Path, gpt: &Gpt<CpuBackend>, dtype: StDtype) {
    let m = &gpt.config;
    let encode = |v: &[f32]| -> Vec<u8> {
        match dtype {
            StDtype::F32 => f32_bytes(v),
            StDtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        }
    };
    let mut tensors: Vec<_> = hand_built(gpt, "")
        .into_iter()
        .map(|(n, (s, v))| (n, s, dtype, encode(&v)))
        .collect();
    let t = m.block_size;
    for l in 0..m.n_layer {
        let mask: Vec<f32> = (0..t * t)
            .map(|i| f32::from(u8::from(i % t <= i / t)))
            .collect();
        tensors.push((
            format!("h.{l}.attn.bias"),
            vec![1, 1, t, t],
            dtype,
            encode(&mask),
        ));
        tensors.push((
            format!("h.{l}.attn.masked_bias"),
            vec![],
            dtype,
            encode(&[-1e4]),
        ));
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors);
    let config = json!({
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": EOT,
        "embd_pdrop": 0.1,
        "eos_token_id": EOT,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": m.block_size,
        "n_embd": m.n_embd,
        "n_head": m.n_head,
        "n_layer": m.n_layer,
        "n_positions": m.block_size,
        "resid_pdrop": 0.1,
        "summary_activation": null,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": true,
        "summary_type": "cls_index",
        "summary_use_proj": true,
        "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
        "vocab_size": m.vocab_size,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn imports_openai_style_gpt2() {
    let m = small(HeadChoice::Softmax, true);
    let gpt = model(&m, 8);
    let params = gpt.read_params();
    for dtype in [StDtype::F32, StDtype::F16] {
        let dir = tempfile::tempdir().unwrap();
        write_openai_style(dir.path(), &gpt, dtype);
        let back = export::read_model(dir.path()).unwrap();
        let defaults = Config::tiny().model; // unused by a softmax model
        let expected = ModelConfig {
            harmonic_exponent: defaults.harmonic_exponent,
            harmonic_eps: defaults.harmonic_eps,
            ..m.clone()
        };
        assert_eq!(back.config.model, expected, "{dtype:?}");
        let want: Vec<f32> = match dtype {
            StDtype::F16 => params
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect(),
            _ => params.clone(),
        };
        assert_eq!(back.params, want, "{dtype:?}");
    }
}

/// Logits of `tokens` computed in f64 straight from an exported directory's
/// config.json and model.safetensors by the reference forward pass.
fn logits_from_export(dir: &Path, tokens: &[u32]) -> Vec<f64> {
    let config = read_json(&dir.join("config.json"));
    let (file, _) = read_file_tensors(&dir.join("model.safetensors"));
    reference::gpt2_logits(&config, |n| &file[n].2, tokens)
}

#[test]
fn logits_recomputed_from_the_export_match_the_model() {
    let tokens = [3u32, 17, 0, 22, 9, 9, 4];
    for m in cases() {
        let mut gpt = model(&m, 9);
        let dir = tempfile::tempdir().unwrap();
        export::write_model(dir.path(), &m, &gpt.read_params(), Dtype::F32, Some(EOT)).unwrap();
        let ours = gpt.logits(&tokens, 1, tokens.len());
        let theirs = logits_from_export(dir.path(), &tokens);
        assert_eq!(ours.len(), theirs.len());
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(&a, b)| (a as f64 - b).abs() / (1.0 + b.abs()))
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-4,
            "{:?} tied={}: {worst}",
            m.head,
            m.tie_embeddings
        );
    }
}

/// An f32 export of a small harmonic model to break in each bad-input test.
fn exported() -> tempfile::TempDir {
    let m = small(HeadChoice::Harmonic, true);
    let dir = tempfile::tempdir().unwrap();
    export::write_model(
        dir.path(),
        &m,
        &model(&m, 1).read_params(),
        Dtype::F32,
        Some(EOT),
    )
    .unwrap();
    dir
}

fn import_error(dir: &Path) -> String {
    import_error_of(export::read_model(dir))
}

/// The error of a failed import, checked to be one line.
fn import_error_of<T>(result: anyhow::Result<T>) -> String {
    let err = match result {
        Ok(_) => panic!("import succeeded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut config = read_json(&path);
    edit(config.as_object_mut().unwrap());
    std::fs::write(path, config.to_string()).unwrap();
}

#[test]
fn bad_config_is_named() {
    type Edit = fn(&mut serde_json::Map<String, Value>);
    let cases: &[(Edit, &[&str])] = &[
        (
            |c| drop(c.remove("n_embd")),
            &["config.json", "missing key `n_embd`"],
        ),
        (
            |c| drop(c.remove("harmonic_eps")),
            &["missing key `harmonic_eps`"],
        ),
        (
            |c| drop(c.remove("model_type")),
            &["missing key `model_type`"],
        ),
        (
            |c| drop(c.insert("rotary_dim".into(), json!(8))),
            &["unknown key `rotary_dim`"],
        ),
        (
            |c| drop(c.insert("model_type".into(), json!("llama"))),
            &["unsupported model_type `llama`"],
        ),
        (
            |c| drop(c.insert("activation_function".into(), json!("relu"))),
            &["`activation_function` = \"relu\""],
        ),
        (
            |c| drop(c.insert("n_head".into(), json!(3))),
            &["n_embd = 16 is not divisible by n_head = 3"],
        ),
        (
            |c| drop(c.insert("n_layer".into(), json!("two"))),
            &["`n_layer` = \"two\" must be a positive integer"],
        ),
        (
            |c| {
                drop(c.insert(
                    "architectures".into(),
                    json!(["GPT2ForSequenceClassification"]),
                ))
            },
            &["unsupported architecture \"GPT2ForSequenceClassification\""],
        ),
    ];
    for (edit, wants) in cases {
        let dir = exported();
        edit_config(dir.path(), *edit);
        let err = import_error(dir.path());
        for want in *wants {
            assert!(err.contains(want), "want `{want}` in: {err}");
        }
    }
    // A softmax GPT-2 has no harmonic keys.
    let dir = exported();
    edit_config(dir.path(), |c| {
        drop(c.insert("model_type".into(), json!("gpt2")))
    });
    assert!(import_error(dir.path()).contains("unknown key `auto_map` for model_type `gpt2`"));
}

/// Rewrites model.safetensors with `edit` applied to its (name, shape, bytes) list.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.shape().to_vec(),
                v.dtype(),
                v.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    write_safetensors(&path, &tensors);
}

#[test]
fn bad_tensors_are_named() {
    let dir = exported();
    edit_tensors(dir.path(), |t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "transformer.h.1.mlp.c_fc.weight")
            .unwrap();
        e.1 = vec![64, 16]; // hgpt's [out, in], not Conv1D's [in, out]
    });
    let err = import_error(dir.path());
    assert!(
        err.contains("`transformer.h.1.mlp.c_fc.weight` has shape [64, 16], expected [16, 64]"),
        "{err}"
    );

    let dir = exported();
    edit_tensors(dir.path(), |t| t.retain(|e| e.0 != "transformer.ln_f.bias"));
    let err = import_error(dir.path());
    assert!(
        err.contains("missing tensor `transformer.ln_f.bias`"),
        "{err}"
    );

    let dir = exported();
    edit_tensors(dir.path(), |t| {
        t.push((
            "score.weight".into(),
            vec![2],
            StDtype::F32,
            f32_bytes(&[1.0, 2.0]),
        ))
    });
    assert!(import_error(dir.path()).contains("unknown tensor `score.weight`"));

    let dir = exported();
    edit_tensors(dir.path(), |t| {
        let e = t
            .iter()
            .find(|e| e.0 == "transformer.wpe.weight")
            .unwrap()
            .clone();
        t.push(("wpe.weight".into(), e.1, e.2, e.3));
    });
    let err = import_error(dir.path());
    assert!(
        err.contains("duplicates") && err.contains("`wpe.weight`"),
        "{err}"
    );

    let dir = exported();
    edit_tensors(dir.path(), |t| {
        t.push((
            "transformer.h.2.ln_1.bias".into(),
            vec![16],
            StDtype::F32,
            f32_bytes(&[0.0; 16]),
        ))
    });
    let err = import_error(dir.path());
    assert!(
        err.contains("`transformer.h.2.ln_1.bias` does not fit the model"),
        "{err}"
    );

    let dir = exported();
    edit_tensors(dir.path(), |t| {
        let e = t
            .iter_mut()
            .find(|e| e.0 == "transformer.ln_f.weight")
            .unwrap();
        e.2 = StDtype::I32;
    });
    assert!(import_error(dir.path()).contains("has dtype I32"));

    // A tied model whose file carries a different lm_head.
    let dir = exported();
    edit_tensors(dir.path(), |t| {
        let e = t
            .iter()
            .find(|e| e.0 == "transformer.wte.weight")
            .unwrap()
            .clone();
        t.push(("lm_head.weight".into(), e.1, e.2, vec![0; e.3.len()]));
    });
    assert!(import_error(dir.path()).contains("differs from transformer.wte.weight"));
}

#[test]
fn bad_files_are_named() {
    let dir = exported();
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors.index.json"), "{}").unwrap();
    assert!(import_error(dir.path()).contains("sharded checkpoints are not supported"));

    let dir = exported();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(import_error(dir.path()).contains("config.json"));

    let dir = exported();
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    assert!(import_error(dir.path()).contains("not a safetensors file"));

    let dir = exported();
    std::fs::write(dir.path().join("config.json"), b"{\"model_type\": ").unwrap();
    assert!(import_error(dir.path()).contains("not valid JSON"));
}

#[test]
fn tokenizer_travels_with_the_export() {
    let m = ModelConfig {
        vocab_size: 257,
        ..small(HeadChoice::Harmonic, true)
    };
    let tok = Tokenizer::bytes();
    let dir = tempfile::tempdir().unwrap();
    export::export(
        dir.path(),
        &m,
        &model(&m, 2).read_params(),
        &tok,
        Dtype::F32,
    )
    .unwrap();
    let config = read_json(&dir.path().join("tokenizer_config.json"));
    assert_eq!(config["eos_token"], "<|endoftext|>");
    assert_eq!(config["model_max_length"], json!(m.block_size));
    assert_eq!(
        read_json(&dir.path().join("config.json"))["eos_token_id"],
        json!(256)
    );
    let (_, back) = export::import(dir.path()).unwrap();
    assert_eq!(back.hash(), tok.hash());

    // GPT-2's older tokenizer files instead of tokenizer.json.
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let vocab: serde_json::Map<String, Value> = (0..=256u32)
        .map(|id| (tok.hf().id_to_token(id).unwrap(), json!(id)))
        .collect();
    std::fs::write(
        dir.path().join("vocab.json"),
        Value::Object(vocab).to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\n").unwrap();
    let (_, back) = export::import(dir.path()).unwrap();
    assert_eq!((back.eot(), back.encode("hi é")), (256, tok.encode("hi é")));

    std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
    assert!(import_error_of(export::import(dir.path())).contains("no tokenizer.json"));
}

#[test]
fn tokenizer_must_fit_the_model() {
    let dir = exported(); // vocab 23, eos 22
    Tokenizer::bytes()
        .save(&dir.path().join("tokenizer.json"))
        .unwrap();
    let err = import_error_of(export::import(dir.path()));
    assert!(
        err.contains("257 tokens, more than config.json's vocab_size 23"),
        "{err}"
    );

    let m = ModelConfig {
        vocab_size: 257,
        ..small(HeadChoice::Softmax, true)
    };
    let dir = tempfile::tempdir().unwrap();
    export::write_model(
        dir.path(),
        &m,
        &model(&m, 2).read_params(),
        Dtype::F32,
        Some(7),
    )
    .unwrap();
    Tokenizer::bytes()
        .save(&dir.path().join("tokenizer.json"))
        .unwrap();
    let err = import_error_of(export::import(dir.path()));
    assert!(
        err.contains("eos_token_id 7 is not the tokenizer's end-of-text token 256"),
        "{err}"
    );
}

fn params_of(checkpoint: &Path) -> Vec<f32> {
    Checkpoint::open(checkpoint).unwrap().read_params().unwrap()
}

#[test]
fn commands_round_trip_both_heads() {
    for head in ["harmonic", "softmax"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let head_set = format!("model.head={head}");
        succeeds(&strs(&train_args(3, "run", &[&head_set])), d);
        succeeds(&["export", "--checkpoint", "run", "--out", "hf"], d);
        succeeds(&["import", "--hf", "hf", "--out", "ck"], d);
        let trained = params_of(&d.join("run"));
        let imported = params_of(&d.join("ck"));
        assert!(
            trained
                .iter()
                .zip(&imported)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{head}: parameters differ after export and import"
        );

        // The import scores and generates exactly as the original.
        std::fs::write(d.join("text.txt"), "The capital of France is Paris.").unwrap();
        for args in [
            vec!["eval", "--data", "text.txt", "--json", "--checkpoint"],
            vec![
                "generate",
                "--temperature",
                "0",
                "--max-new-tokens",
                "20",
                "--checkpoint",
            ],
        ] {
            let run = succeeds(&[&args[..], &["run"]].concat(), d);
            let ck = succeeds(&[&args[..], &["ck"]].concat(), d);
            assert_eq!(run, ck, "{head}: {args:?}");
        }

        // Exporting the import again writes the same files.
        succeeds(&["export", "--checkpoint", "ck", "--out", "hf2"], d);
        for file in ["model.safetensors", "config.json", "tokenizer.json"] {
            let (a, b) = (d.join("hf").join(file), d.join("hf2").join(file));
            assert!(
                std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
                "{head}: {file}"
            );
        }
    }
}

#[test]
fn train_init_starts_from_an_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    succeeds(&strs(&train_args(3, "run", &[])), d);
    succeeds(
        &[
            "export",
            "--checkpoint",
            "run",
            "--out",
            "hf",
            "--dtype",
            "bf16",
        ],
        d,
    );
    succeeds(&["import", "--hf", "hf", "--out", "ck"], d);
    let bf16: Vec<f32> = params_of(&d.join("run"))
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(params_of(&d.join("ck")), bf16);

    // No steps: the new run's checkpoint holds the imported parameters.
    succeeds(
        &["train", "--init", "ck", "--steps", "0", "--out", "ft0"],
        d,
    );
    assert_eq!(params_of(&d.join("ft0")), bf16);
    let sets: Vec<String> = ["train.batch_size=2", "train.log_every=1"]
        .iter()
        .flat_map(|s| ["--set".to_string(), s.to_string()])
        .collect();
    let mut args = vec!["train", "--init", "ck", "--steps", "2", "--out", "ft"];
    args.extend(strs(&sets));
    succeeds(&args, d);
    let state = Checkpoint::open(&d.join("ft")).unwrap().state;
    assert_eq!(state.step, 2);
    assert_eq!(state.config.train.batch_size, 2);

    let line = fails(
        &[
            "train",
            "--init",
            "ck",
            "--set",
            "model.n_layer=2",
            "--out",
            "bad",
        ],
        d,
    );
    assert!(line.contains("model.n_layer: 1 -> 2"), "{line}");
}

#[test]
fn commands_name_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hf = exported();
    std::fs::remove_file(hf.path().join("model.safetensors")).unwrap();
    std::fs::write(hf.path().join("model.safetensors.index.json"), "{}").unwrap();
    let hf_dir = hf.path().to_str().unwrap();
    let line = fails(&["import", "--hf", hf_dir, "--out", "ck"], d);
    assert!(line.contains("model.safetensors.index.json"), "{line}");

    std::fs::create_dir(d.join("taken")).unwrap();
    let line = fails(&["import", "--hf", hf_dir, "--out", "taken"], d);
    assert!(line.contains("taken: already exists"), "{line}");

    let line = fails(&["export", "--checkpoint", "nowhere", "--out", "hf"], d);
    assert!(line.contains("nowhere"), "{line}");
}

/// A model holding NaN or infinity is refused on import, naming the first tensor
/// (and layer) that does, and nothing is written.
#[test]
fn import_refuses_non_finite_weights_naming_the_tensor() {
    let m = ModelConfig {
        vocab_size: 257,
        ..small(HeadChoice::Harmonic, true)
    };
    let mut params = model(&m, 3).read_params();
    let layout = hgpt::model::ParamLayout::new(&m);
    let qkvw = layout
        .tensors
        .iter()
        .find(|t| t.name.contains("c_attn.weight"))
        .unwrap();
    // Layer 1's attention weight, then a later infinity.
    params[qkvw.offset + qkvw.layer_len() + 5] = f32::NAN;
    *params.last_mut().unwrap() = f32::INFINITY;
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    export::export(&hf, &m, &params, &Tokenizer::bytes(), Dtype::F32).unwrap();
    let out = dir.path().join("ck");
    let err = import_error_of(export::import_checkpoint(&hf, &out));
    assert!(
        err.contains("2 weights are not finite") && err.contains("h.1.attn.c_attn.weight"),
        "{err}"
    );
    assert!(!out.exists());
}
