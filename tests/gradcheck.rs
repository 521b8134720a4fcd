//! Finite-difference gradient checks, in f64, of every CPU op's backward, of both
//! heads, and of the whole model. Each check uses L = sum(out * r) for a random r,
//! central differences with step 1e-6, and fresh random inputs. Accumulated outputs
//! start from random values (the check subtracts them); overwritten outputs start as
//! NaN, so an op that adds instead of overwriting fails.

use std::cell::RefCell;

use hgpt::backend::cpu::{CpuBackend, attention, encoder, gelu, head, layernorm, matmul};
use hgpt::config::Config;
use hgpt::head::HeadKind;
use hgpt::model::Gpt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const H: f64 = 1e-6;

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| rng.random_range(-1.0..1.0) * scale)
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central-difference gradient of `f` at `x`.
fn numeric(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + H;
            let up = f(&x);
            x[i] = orig - H;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// Every element agrees to 1e-6 absolute + 1e-5 relative.
fn assert_grad(name: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{name}: length");
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!(
            (a - n).abs() <= 1e-6 + 1e-5 * n.abs(),
            "{name}[{i}]: analytic {a} vs numeric {n}"
        );
    }
}

/// (accumulated - start): the part an accumulating backward added.
fn added(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[test]
fn encoder_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (b, t, c, v) = (2, 3, 4, 5);
    let tokens: Vec<u32> = vec![1, 4, 1, 0, 1, 3]; // repeats must accumulate
    let (wte, wpe) = (random(&mut rng, v * c, 1.0), random(&mut rng, t * c, 1.0));
    let r = random(&mut rng, b * t * c, 1.0);
    let loss = |wte: &[f64], wpe: &[f64]| {
        let mut out = vec![0.0; b * t * c];
        encoder::encoder_forward(&mut out, &tokens, wte, wpe, t, c);
        dot(&out, &r)
    };
    let (start_te, start_pe) = (random(&mut rng, v * c, 1.0), random(&mut rng, t * c, 1.0));
    let (mut dwte, mut dwpe) = (start_te.clone(), start_pe.clone());
    encoder::encoder_backward(&mut dwte, &mut dwpe, &r, &tokens, t, c);
    assert_grad(
        "dwte",
        &added(&dwte, &start_te),
        &numeric(&wte, |x| loss(x, &wpe)),
    );
    assert_grad(
        "dwpe",
        &added(&dwpe, &start_pe),
        &numeric(&wpe, |x| loss(&wte, x)),
    );
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, c) = (5, 7);
    let (x, w, bias) = (
        random(&mut rng, n * c, 2.0),
        random(&mut rng, c, 1.0),
        random(&mut rng, c, 1.0),
    );
    let r = random(&mut rng, n * c, 1.0);
    let forward = |x: &[f64], w: &[f64], bias: &[f64]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, x, w, bias, 1e-5);
        (dot(&out, &r), mean, rstd)
    };
    let (_, mean, rstd) = forward(&x, &w, &bias);
    let (start_x, start_w, start_b) = (
        random(&mut rng, n * c, 1.0),
        random(&mut rng, c, 1.0),
        random(&mut rng, c, 1.0),
    );
    let (mut dx, mut dw, mut db) = (start_x.clone(), start_w.clone(), start_b.clone());
    layernorm::layernorm_backward(&mut dx, &mut dw, &mut db, &r, &x, &w, (&mean, &rstd));
    assert_grad(
        "dinp",
        &added(&dx, &start_x),
        &numeric(&x, |v| forward(v, &w, &bias).0),
    );
    assert_grad(
        "dweight",
        &added(&dw, &start_w),
        &numeric(&w, |v| forward(&x, v, &bias).0),
    );
    assert_grad(
        "dbias",
        &added(&db, &start_b),
        &numeric(&bias, |v| forward(&x, &w, v).0),
    );
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Sizes that are not multiples of any SIMD width, and more rows than a row block.
    let (n, c, oc) = (70, 5, 3);
    let (x, w, bias) = (
        random(&mut rng, n * c, 1.0),
        random(&mut rng, oc * c, 1.0),
        random(&mut rng, oc, 1.0),
    );
    let r = random(&mut rng, n * oc, 1.0);
    let loss = |x: &[f64], w: &[f64], bias: &[f64]| {
        let mut out = vec![f64::NAN; n * oc];
        matmul::matmul_forward(&mut out, x, w, Some(bias), c);
        dot(&out, &r)
    };
    let (start_w, start_b) = (random(&mut rng, oc * c, 1.0), random(&mut rng, oc, 1.0));
    let (mut dx, mut dw, mut db) = (vec![f64::NAN; n * c], start_w.clone(), start_b.clone());
    matmul::matmul_backward(&mut dx, &mut dw, Some(&mut db), &r, &x, &w, c);
    assert_grad("dinp", &dx, &numeric(&x, |v| loss(v, &w, &bias)));
    assert_grad(
        "dweight",
        &added(&dw, &start_w),
        &numeric(&w, |v| loss(&x, v, &bias)),
    );
    assert_grad(
        "dbias",
        &added(&db, &start_b),
        &numeric(&bias, |v| loss(&x, &w, v)),
    );
}

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (b, t, c, nh) = (2, 4, 6, 2);
    let qkv = random(&mut rng, b * t * 3 * c, 1.5);
    let r = random(&mut rng, b * t * c, 1.0);
    let forward = |qkv: &[f64]| {
        let mut out = vec![f64::NAN; b * t * c];
        let mut att = vec![f64::NAN; attention::attention_state_len(b, t, nh)];
        attention::attention_forward(&mut out, &mut att, qkv, t, c, nh);
        (out, att)
    };
    let (_, att) = forward(&qkv);
    let mut dqkv = vec![f64::NAN; qkv.len()];
    attention::attention_backward(&mut dqkv, &r, &qkv, &att, t, c, nh);
    assert_grad("dqkv", &dqkv, &numeric(&qkv, |v| dot(&forward(v).0, &r)));
}

#[test]
fn attention_is_causal() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (b, t, c, nh) = (1, 5, 4, 2);
    let mut qkv = random(&mut rng, b * t * 3 * c, 1.0);
    let run = |qkv: &[f64]| {
        let (mut out, mut att) = (
            vec![0.0; b * t * c],
            vec![0.0; attention::attention_state_len(b, t, nh)],
        );
        attention::attention_forward(&mut out, &mut att, qkv, t, c, nh);
        out
    };
    let before = run(&qkv);
    // Changing the last position's q, k and v must leave earlier outputs alone.
    for x in &mut qkv[(t - 1) * 3 * c..] {
        *x += 1.0;
    }
    let after = run(&qkv);
    assert_eq!(before[..(t - 1) * c], after[..(t - 1) * c]);
    assert_ne!(before[(t - 1) * c..], after[(t - 1) * c..]);
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x = random(&mut rng, 50, 4.0);
    let r = random(&mut rng, 50, 1.0);
    let mut dx = vec![f64::NAN; 50];
    gelu::gelu_backward(&mut dx, &x, &r);
    let num = numeric(&x, |v| {
        let mut out = vec![0.0; 50];
        gelu::gelu_forward(&mut out, v);
        dot(&out, &r)
    });
    assert_grad("dinp", &dx, &num);
}

fn check_head(kind: HeadKind, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // More rows than one head chunk (256), so chunking and the harmonic column sums
    // across chunks are exercised.
    let (n, c, v) = (300, 6, 9);
    let h = random(&mut rng, n * c, 1.0);
    let w = random(&mut rng, v * c, 1.0);
    let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let scale = 0.7;
    let loss = |h: &[f64], w: &[f64]| {
        let mut losses = vec![0.0; n];
        head::head_loss(&mut losses, None, h, w, &targets, c, kind);
        scale * losses.iter().sum::<f64>()
    };
    let start_w = random(&mut rng, v * c, 1.0);
    let (mut dh, mut dw) = (vec![f64::NAN; n * c], start_w.clone());
    let mut losses = vec![0.0; n];
    head::head_loss(
        &mut losses,
        Some((&mut dh, &mut dw, scale)),
        &h,
        &w,
        &targets,
        c,
        kind,
    );
    assert!(
        (scale * losses.iter().sum::<f64>() - loss(&h, &w)).abs() < 1e-9,
        "loss with and without grads"
    );
    assert_grad("dh", &dh, &numeric(&h, |x| loss(x, &w)));
    assert_grad("dw", &added(&dw, &start_w), &numeric(&w, |x| loss(&h, x)));
}

#[test]
fn softmax_head_matches_finite_differences() {
    check_head(HeadKind::Softmax, 7);
}

#[test]
fn harmonic_head_matches_finite_differences() {
    check_head(
        HeadKind::Harmonic {
            exponent: 2.45,
            eps: 1e-6,
        },
        8,
    );
    check_head(
        HeadKind::Harmonic {
            exponent: 11.0,
            eps: 1e-6,
        },
        9,
    );
}

/// The whole model, in f64 through the Backend trait, for one head.
fn check_model(head: &str, tie: bool) {
    let config = Config::tiny()
        .with_override(&format!("model.head={head}"))
        .and_then(|c| c.with_override(&format!("model.tie_embeddings={tie}")))
        .unwrap();
    let mut m = config.model.clone();
    (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size) = (2, 2, 8, 6, 11);
    let mut model = Gpt::new(CpuBackend::<f64>::new(), &m);
    model.init(42);
    // Larger weights than GPT-2's init, so every path carries a visible gradient.
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for p in model.backend.slice_mut(model.params) {
        *p += rng.random_range(-0.3..0.3);
    }
    let (b, t) = (2, 5);
    let inputs: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..11)).collect();
    let targets: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..11)).collect();
    model.zero_grads();
    model.loss_and_head_grad(&inputs, &targets, b, t, 1.0);
    model.backward();
    let analytic = model.backend.slice(model.grads).to_vec();
    let params = model.backend.slice(model.params).to_vec();
    // A second model evaluates the loss at perturbed parameters.
    let probe = RefCell::new(Gpt::new(CpuBackend::<f64>::new(), &m));
    let loss_at = |p: &[f64]| {
        let mut g = probe.borrow_mut();
        g.backend.slice_mut(g.params).copy_from_slice(p);
        g.loss(&inputs, &targets, b, t)
    };
    for (name, shape, offset) in model.layout.named() {
        let len: usize = shape.iter().product();
        let num = numeric(&params[offset..offset + len], |x| {
            let mut p = params.clone();
            p[offset..offset + len].copy_from_slice(x);
            loss_at(&p)
        });
        assert_grad(
            &format!("{head} {name}"),
            &analytic[offset..offset + len],
            &num,
        );
    }
}

#[test]
fn whole_model_harmonic_matches_finite_differences() {
    check_model("harmonic", true);
}

#[test]
fn whole_model_softmax_untied_matches_finite_differences() {
    check_model("softmax", false);
}
