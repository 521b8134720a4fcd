//! An independent GPT-2 forward pass in f64, written from transformers'
//! GPT2LMHeadModel (Conv1D weights `[in, out]`, biased-variance LayerNorm,
//! tanh-GELU, causal softmax attention) and the harmonic head of
//! modeling_harmonic_gpt2.py. It shares no code with hgpt's model, so agreeing
//! with it checks the model and an export's layout at once.

use serde_json::{Value, json};

/// Layer norm over one row, as transformers computes it (biased variance).
fn layer_norm(x: &[f64], w: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let r = 1.0 / (var + eps).sqrt();
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) * r * w[i] as f64 + b[i] as f64)
        .collect()
}

/// x @ W + b with a Conv1D weight W [in, out].
fn conv1d_apply(x: &[f64], w: &[f32], b: &[f32]) -> Vec<f64> {
    let out = b.len();
    let mut y: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    for (i, xi) in x.iter().enumerate() {
        for (o, yo) in y.iter_mut().enumerate() {
            *yo += xi * w[i * out + o] as f64;
        }
    }
    y
}

/// GPT-2's GELU, the tanh approximation (transformers' `gelu_new`).
fn gelu_new(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// Logits `[t, vocab]` of `tokens` (one sequence of t), in f64, from a config.json
/// (`config`) and the tensors under transformers' names (`w`), following
/// transformers' GPT2LMHeadModel and, for `model_type` harmonic_gpt2, the head in
/// modeling_harmonic_gpt2.py: logit_i = -(n/2) ln max(|h - c_i|^2, eps).
pub fn gpt2_logits<'a>(config: &Value, w: impl Fn(&str) -> &'a [f32], tokens: &[u32]) -> Vec<f64> {
    let get = |k: &str| config[k].as_u64().unwrap() as usize;
    let (c, nh, nl, v) = (
        get("n_embd"),
        get("n_head"),
        get("n_layer"),
        get("vocab_size"),
    );
    let eps = config["layer_norm_epsilon"].as_f64().unwrap();
    let hs = c / nh;
    let t = tokens.len();
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .enumerate()
        .map(|(pos, &tok)| {
            (0..c)
                .map(|i| {
                    w("transformer.wte.weight")[tok as usize * c + i] as f64
                        + w("transformer.wpe.weight")[pos * c + i] as f64
                })
                .collect()
        })
        .collect();
    for l in 0..nl {
        let p = |s: &str| format!("transformer.h.{l}.{s}");
        let qkv: Vec<Vec<f64>> = x
            .iter()
            .map(|r| {
                let h = layer_norm(r, w(&p("ln_1.weight")), w(&p("ln_1.bias")), eps);
                conv1d_apply(&h, w(&p("attn.c_attn.weight")), w(&p("attn.c_attn.bias")))
            })
            .collect();
        for t1 in 0..t {
            let mut y = vec![0.0; c];
            for h in 0..nh {
                let q = &qkv[t1][h * hs..(h + 1) * hs];
                let scores: Vec<f64> = (0..=t1)
                    .map(|t2| {
                        let k = &qkv[t2][c + h * hs..c + (h + 1) * hs];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hs as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (t2, s) in scores.iter().enumerate() {
                    let a = (s - max).exp() / z;
                    for i in 0..hs {
                        y[h * hs + i] += a * qkv[t2][2 * c + h * hs + i];
                    }
                }
            }
            let proj = conv1d_apply(&y, w(&p("attn.c_proj.weight")), w(&p("attn.c_proj.bias")));
            x[t1].iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
        }
        for r in x.iter_mut() {
            let h = layer_norm(r, w(&p("ln_2.weight")), w(&p("ln_2.bias")), eps);
            let fc: Vec<f64> = conv1d_apply(&h, w(&p("mlp.c_fc.weight")), w(&p("mlp.c_fc.bias")))
                .into_iter()
                .map(gelu_new)
                .collect();
            let out = conv1d_apply(&fc, w(&p("mlp.c_proj.weight")), w(&p("mlp.c_proj.bias")));
            r.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        }
    }
    let head = if config["tie_word_embeddings"] == json!(true) {
        w("transformer.wte.weight")
    } else {
        w("lm_head.weight")
    };
    let harmonic = config["model_type"] == "harmonic_gpt2";
    let mut logits = Vec::new();
    for r in &x {
        let h = layer_norm(
            r,
            w("transformer.ln_f.weight"),
            w("transformer.ln_f.bias"),
            eps,
        );
        for tok in 0..v {
            let c_i = &head[tok * c..(tok + 1) * c];
            logits.push(if harmonic {
                let n = config["harmonic_exponent"].as_f64().unwrap();
                let floor = config["harmonic_eps"].as_f64().unwrap();
                let s: f64 = h
                    .iter()
                    .zip(c_i)
                    .map(|(a, &b)| (a - b as f64).powi(2))
                    .sum();
                -(n / 2.0) * s.max(floor).ln()
            } else {
                h.iter().zip(c_i).map(|(a, &b)| a * b as f64).sum()
            });
        }
    }
    logits
}
