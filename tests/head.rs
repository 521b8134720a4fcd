//! Properties of the harmonic head (docs/DESIGN.md section 3), through the f32 backend.

use hgpt::backend::cpu::CpuBackend;
use hgpt::backend::{Backend, HeadGrads, Mat};
use hgpt::config::Config;
use hgpt::head::HeadKind;
use hgpt::model::Gpt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HARMONIC: HeadKind = HeadKind::Harmonic {
    exponent: 8.0,
    eps: 1e-6,
};

struct Case {
    h: Vec<f32>,
    w: Vec<f32>,
    targets: Vec<u32>,
    n: usize,
    c: usize,
    v: usize,
}

fn case(seed: u64) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, c, v) = (20, 16, 37);
    Case {
        h: (0..n * c).map(|_| rng.random_range(-1.0..1.0)).collect(),
        w: (0..v * c).map(|_| rng.random_range(-1.0..1.0)).collect(),
        targets: (0..n).map(|_| rng.random_range(0..v as u32)).collect(),
        n,
        c,
        v,
    }
}

/// Per-position losses and, with grads, (dh, dw).
fn run(k: &Case, kind: HeadKind) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let be = CpuBackend::<f32>::new();
    let mat = |rows, cols| Mat::new(be.alloc(rows * cols), rows, cols);
    let (h, w, dh, dw) = (mat(k.n, k.c), mat(k.v, k.c), mat(k.n, k.c), mat(k.v, k.c));
    let losses = be.alloc(k.n);
    let targets = be.alloc_tokens(k.n);
    be.write(h.span, &k.h);
    be.write(w.span, &k.w);
    be.write_tokens(targets, &k.targets);
    let grads = HeadGrads { dh, dw, scale: 1.0 };
    be.head_loss(losses, Some(grads), h, w, targets, kind);
    (be.read(losses), be.read(dh.span), be.read(dw.span))
}

fn logits(k: &Case, kind: HeadKind) -> Vec<f32> {
    let be = CpuBackend::<f32>::new();
    let mat = |rows, cols| Mat::new(be.alloc(rows * cols), rows, cols);
    let (h, w, out) = (mat(k.n, k.c), mat(k.v, k.c), mat(k.n, k.v));
    be.write(h.span, &k.h);
    be.write(w.span, &k.w);
    be.head_logits(out, h, w, kind);
    be.read(out.span)
}

fn softmax(z: &[f32]) -> Vec<f64> {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let e: Vec<f64> = z.iter().map(|&x| (x as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[test]
fn probabilities_sum_to_one_and_match_distances() {
    let k = case(1);
    let z = logits(&k, HARMONIC);
    for (row, zr) in z.chunks(k.v).enumerate() {
        let p = softmax(zr);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        // p_i is proportional to d_i^-n: check against distances computed directly.
        let h = &k.h[row * k.c..][..k.c];
        let d_pow: Vec<f64> =
            k.w.chunks(k.c)
                .map(|w| {
                    let d2: f64 = h.iter().zip(w).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                    d2.powf(-8.0 / 2.0)
                })
                .collect();
        let total: f64 = d_pow.iter().sum();
        for (pi, di) in p.iter().zip(&d_pow) {
            assert!(
                (pi - di / total).abs() < 1e-4,
                "p {pi} vs d^-n share {}",
                di / total
            );
        }
    }
}

#[test]
fn loss_is_scale_invariant_for_harmonic_but_not_softmax() {
    let k = case(2);
    let scaled = Case {
        h: k.h.iter().map(|x| x * 3.7).collect(),
        w: k.w.iter().map(|x| x * 3.7).collect(),
        ..case(2)
    };
    let (base, _, _) = run(&k, HARMONIC);
    let (big, _, _) = run(&scaled, HARMONIC);
    for (a, b) in base.iter().zip(&big) {
        assert!(
            (a - b).abs() < 1e-4 * a.abs().max(1.0),
            "harmonic loss {a} vs scaled {b}"
        );
    }
    // The same check fails for the softmax head: the property is the harmonic head's.
    let (sbase, _, _) = run(&k, HeadKind::Softmax);
    let (sbig, _, _) = run(&scaled, HeadKind::Softmax);
    assert!(sbase.iter().zip(&sbig).any(|(a, b)| (a - b).abs() > 0.1));
}

#[test]
fn finite_when_hidden_state_equals_a_class_centre() {
    let mut k = case(3);
    // Row 0 sits exactly on its target's centre, row 1 exactly on a wrong centre.
    let (t0, wrong) = (k.targets[0] as usize, (k.targets[1] as usize + 1) % k.v);
    let (c, w) = (k.c, k.w.clone());
    k.h[..c].copy_from_slice(&w[t0 * c..][..c]);
    k.h[c..2 * c].copy_from_slice(&w[wrong * c..][..c]);
    let (losses, dh, dw) = run(&k, HARMONIC);
    assert!(
        losses.iter().chain(&dh).chain(&dw).all(|x| x.is_finite()),
        "non-finite output"
    );
    assert!(
        losses[0] < 1e-3,
        "on its own centre the loss is ~0, got {}",
        losses[0]
    );
    assert!(
        losses[1] > 10.0,
        "on a wrong centre the loss is large, got {}",
        losses[1]
    );
    let z = logits(&k, HARMONIC);
    assert!(z.iter().all(|x| x.is_finite()));
}

#[test]
fn initial_loss_is_close_to_ln_vocab() {
    for head in ["harmonic", "softmax"] {
        let config = Config::tiny()
            .with_override(&format!("model.head={head}"))
            .unwrap();
        let mut model = Gpt::new(CpuBackend::<f32>::new(), &config.model);
        model.init(7);
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (b, t) = (4, 64);
        let inputs: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..257)).collect();
        let targets: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..257)).collect();
        let loss = model.loss(&inputs, &targets, b, t);
        let ln_v = (config.model.vocab_size as f64).ln();
        assert!(
            (loss - ln_v).abs() < 0.05 * ln_v,
            "{head}: initial loss {loss} vs ln V {ln_v}"
        );
    }
}
