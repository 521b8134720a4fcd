//! config.json and generation_config.json: hgpt's model config in transformers'
//! `GPT2Config` terms, and back.
//!
//! Reading is strict, because a key hgpt does not understand may change the
//! model's math: every key must be one transformers' GPT-2 (or its generic config)
//! defines, keys that alter the computation must have the values hgpt implements,
//! and the size keys must be present.

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value, json};

use crate::config::{Config, Exponent, HeadChoice, ModelConfig};

use super::tensors::Dtype;

pub const GPT2: &str = "gpt2";
pub const HARMONIC: &str = "harmonic_gpt2";
pub const HARMONIC_ARCH: &str = "HarmonicGPT2LMHeadModel";

/// Keys a GPT-2 config.json may carry that do not change the forward pass:
/// training-only settings (dropout, init, summary heads), token ids, generation
/// defaults older transformers stored in config.json, and bookkeeping.
const IGNORED_KEYS: &[&str] = &[
    "_name_or_path",
    "_num_labels",
    "attn_pdrop",
    "bad_words_ids",
    "begin_suppress_tokens",
    "bos_token_id",
    "chunk_size_feed_forward",
    "decoder_start_token_id",
    "diversity_penalty",
    "do_sample",
    "dtype",
    "early_stopping",
    "embd_pdrop",
    "eos_token_id",
    "finetuning_task",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "gradient_checkpointing",
    "id2label",
    "initializer_range",
    "is_decoder",
    "is_encoder_decoder",
    "label2id",
    "length_penalty",
    "max_length",
    "min_length",
    "n_ctx",
    "n_special",
    "no_repeat_ngram_size",
    "num_beam_groups",
    "num_beams",
    "num_return_sequences",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "pad_token_id",
    "predict_special_tokens",
    "prefix",
    "problem_type",
    "pruned_heads",
    "remove_invalid_values",
    "reorder_and_upcast_attn",
    "repetition_penalty",
    "resid_pdrop",
    "return_dict",
    "return_dict_in_generate",
    "sep_token_id",
    "summary_activation",
    "summary_first_dropout",
    "summary_proj_to_labels",
    "summary_type",
    "summary_use_proj",
    "suppress_tokens",
    "task_specific_params",
    "temperature",
    "tie_encoder_decoder",
    "tokenizer_class",
    "top_k",
    "top_p",
    "torch_dtype",
    "torchscript",
    "transformers_version",
    "typical_p",
    "use_bfloat16",
    "use_cache",
];

/// Keys hgpt reads or checks (see `parse`).
const READ_KEYS: &[&str] = &[
    "model_type",
    "architectures",
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "layer_norm_epsilon",
    "tie_word_embeddings",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "add_cross_attention",
];

/// Keys only a harmonic_gpt2 config has.
const HARMONIC_KEYS: &[&str] = &["auto_map", "harmonic_exponent", "harmonic_eps"];

/// The harmonic exponent n that hgpt computes with, as written to config.json.
pub fn resolved_exponent(m: &ModelConfig) -> f64 {
    match m.harmonic_exponent {
        Exponent::Sqrt => (m.n_embd as f64).sqrt(),
        Exponent::Value(v) => v,
    }
}

/// config.json for `m`. `eot` is the end-of-text id (GPT-2's bos and eos).
pub fn config_json(m: &ModelConfig, eot: Option<u32>, dtype: Dtype) -> Value {
    let mut c = json!({
        "model_type": GPT2,
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": m.vocab_size,
        "n_positions": m.block_size,
        "n_ctx": m.block_size,
        "n_embd": m.n_embd,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": m.ln_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "scale_attn_weights": true,
        // hgpt trains without dropout; fine-tuning in transformers does the same.
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": dtype.torch_name(),
    });
    if m.head == HeadChoice::Harmonic {
        let o = c.as_object_mut().expect("object");
        o.insert("model_type".into(), json!(HARMONIC));
        o.insert("architectures".into(), json!([HARMONIC_ARCH]));
        o.insert(
            "auto_map".into(),
            json!({
                "AutoConfig": "configuration_harmonic_gpt2.HarmonicGPT2Config",
                "AutoModel": "modeling_harmonic_gpt2.HarmonicGPT2Model",
                "AutoModelForCausalLM": "modeling_harmonic_gpt2.HarmonicGPT2LMHeadModel",
            }),
        );
        o.insert("harmonic_exponent".into(), json!(resolved_exponent(m)));
        o.insert("harmonic_eps".into(), json!(m.harmonic_eps));
    }
    c
}

/// generation_config.json: greedy by default; generation stops at end-of-text.
pub fn generation_config_json(eot: Option<u32>) -> Value {
    json!({
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "do_sample": false,
    })
}

/// What a config.json says, in hgpt's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    pub model: ModelConfig,
    /// The end-of-text id (`eos_token_id`), when given.
    pub eot: Option<u32>,
}

/// Reads config.json text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<HfConfig> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| anyhow!("{file}: not valid JSON ({e})"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| anyhow!("{file}: not a JSON object"))?;
    let model_type = obj
        .get("model_type")
        .ok_or_else(|| anyhow!("{file}: missing key `model_type`"))?
        .as_str()
        .ok_or_else(|| anyhow!("{file}: `model_type` must be a string"))?;
    let harmonic = match model_type {
        GPT2 => false,
        HARMONIC => true,
        other => bail!(
            "{file}: unsupported model_type `{other}` (hgpt imports `{GPT2}` and `{HARMONIC}`)"
        ),
    };
    for key in obj.keys() {
        let known = IGNORED_KEYS.contains(&key.as_str())
            || READ_KEYS.contains(&key.as_str())
            || (harmonic && HARMONIC_KEYS.contains(&key.as_str()));
        if !known {
            bail!("{file}: unknown key `{key}` for model_type `{model_type}`");
        }
    }
    let r = Reader { obj, file };
    if let Some(archs) = obj.get("architectures").filter(|v| !v.is_null()) {
        let allowed: &[&str] = if harmonic {
            &[HARMONIC_ARCH]
        } else {
            &["GPT2LMHeadModel", "GPT2Model"]
        };
        let archs = archs
            .as_array()
            .ok_or_else(|| anyhow!("{file}: `architectures` must be a list"))?;
        for a in archs {
            if !a.as_str().is_some_and(|a| allowed.contains(&a)) {
                bail!(
                    "{file}: unsupported architecture {a} for model_type `{model_type}` (expected {})",
                    allowed.join(" or ")
                );
            }
        }
    }
    let n_embd = r.size("n_embd")?;
    let n_head = r.size("n_head")?;
    if !n_embd.is_multiple_of(n_head) {
        bail!("{file}: n_embd = {n_embd} is not divisible by n_head = {n_head}");
    }
    r.expect(
        "activation_function",
        &["\"gelu_new\"", "\"gelu_pytorch_tanh\""],
    )?;
    r.expect("n_inner", &["null", &(4 * n_embd).to_string()])?;
    r.expect("scale_attn_weights", &["true"])?;
    r.expect("scale_attn_by_inverse_layer_idx", &["false"])?;
    r.expect("add_cross_attention", &["false"])?;
    let defaults = Config::tiny().model;
    let (harmonic_exponent, harmonic_eps) = if harmonic {
        (
            Exponent::Value(r.positive("harmonic_exponent", None)?),
            r.positive("harmonic_eps", None)?,
        )
    } else {
        // Unused by a softmax model; kept at hgpt's defaults.
        (defaults.harmonic_exponent, defaults.harmonic_eps)
    };
    let model = ModelConfig {
        n_layer: r.size("n_layer")?,
        n_head,
        n_embd,
        block_size: r.size("n_positions")?,
        vocab_size: r.size("vocab_size")?,
        head: if harmonic {
            HeadChoice::Harmonic
        } else {
            HeadChoice::Softmax
        },
        harmonic_exponent,
        harmonic_eps,
        // transformers' default for GPT-2 is tied, and OpenAI's configs omit the key.
        tie_embeddings: match obj.get("tie_word_embeddings") {
            None => true,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| anyhow!("{file}: `tie_word_embeddings` must be true or false"))?,
        },
        ln_eps: r.positive("layer_norm_epsilon", Some(1e-5))?,
    };
    let eot = match obj.get("eos_token_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| anyhow!("{file}: `eos_token_id` = {v} is not a token id"))?,
        ),
    };
    Ok(HfConfig { model, eot })
}

/// Typed access to config.json keys with one-line errors.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    file: &'a str,
}

impl Reader<'_> {
    /// A required positive integer.
    fn size(&self, key: &str) -> Result<usize> {
        let v = self
            .obj
            .get(key)
            .ok_or_else(|| anyhow!("{}: missing key `{key}`", self.file))?;
        v.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("{}: `{key}` = {v} must be a positive integer", self.file))
    }

    /// A positive number; required when `default` is None.
    fn positive(&self, key: &str, default: Option<f64>) -> Result<f64> {
        let Some(v) = self.obj.get(key) else {
            return default.ok_or_else(|| anyhow!("{}: missing key `{key}`", self.file));
        };
        v.as_f64()
            .filter(|x| *x > 0.0 && x.is_finite())
            .ok_or_else(|| anyhow!("{}: `{key}` = {v} must be a positive number", self.file))
    }

    /// An optional key that, when present, must be one of `allowed` (as JSON text):
    /// the values under which transformers computes what hgpt computes.
    fn expect(&self, key: &str, allowed: &[&str]) -> Result<()> {
        match self.obj.get(key) {
            Some(v) if !allowed.contains(&v.to_string().as_str()) => bail!(
                "{}: `{key}` = {v} is not supported (hgpt implements {})",
                self.file,
                allowed.join(" or ")
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_heads() {
        for head in [HeadChoice::Harmonic, HeadChoice::Softmax] {
            let mut m = Config::tiny().model;
            m.head = head;
            m.tie_embeddings = head == HeadChoice::Softmax;
            let text = config_json(&m, Some(256), Dtype::F32).to_string();
            let back = parse(&text, "config.json").unwrap();
            assert_eq!(back.eot, Some(256));
            let mut expected = m.clone();
            if head == HeadChoice::Harmonic {
                expected.harmonic_exponent = Exponent::Value(resolved_exponent(&m));
            }
            assert_eq!(back.model, expected);
            assert_eq!(back.model.head_kind(), m.head_kind());
        }
    }

    #[test]
    fn sqrt_is_written_resolved() {
        let m = ModelConfig {
            harmonic_exponent: Exponent::Sqrt,
            ..Config::tiny().model
        };
        let c = config_json(&m, None, Dtype::F32);
        assert_eq!(c["harmonic_exponent"], json!((m.n_embd as f64).sqrt()));
        // hgpt computes with the same f32 n either way.
        let back = parse(&c.to_string(), "config.json").unwrap();
        assert_eq!(back.model.head_kind(), m.head_kind());
    }
}
