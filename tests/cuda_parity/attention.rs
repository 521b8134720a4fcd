//! Flash attention against the CPU's T x T attention: its output, its saved row
//! log-sum-exps and dqkv, over shapes around and past its tiles and at GPT-2's.

use std::time::Instant;

use hgpt::backend::{AttnShape, Backend};

use super::harness::{Both, MODES, Pair, mat, open_gpu, rel_err};

/// Attention forward and backward on both backends at one shape: the output, the
/// GPU's saved state (each row's log-sum-exp of scores, B*NH*T floats, against the
/// host's f64 value from qkv) and dqkv. Returns qkv and the output.
pub fn check_attention(x: &mut Both, b: usize, t: usize, nh: usize, hs: usize) -> (Pair, Pair) {
    let c = nh * hs;
    let what = format!("attention B={b} T={t} NH={nh} HS={hs}");
    let qkv = x.input(b * t * 3 * c);
    let out = x.poisoned(b * t * c);
    assert_eq!(
        x.gpu.attention_state_len(AttnShape { b, t, nh }),
        b * nh * t,
        "GPU state size"
    );
    let state_c = x
        .cpu
        .alloc(x.cpu.attention_state_len(AttnShape { b, t, nh }));
    let state_g = x.gpu.alloc(b * nh * t);
    x.gpu.fill(state_g, f32::NAN);
    x.cpu.attention_forward(
        mat(out.c, c),
        state_c,
        mat(qkv.c, 3 * c),
        AttnShape { b, t, nh },
    );
    x.gpu.attention_forward(
        mat(out.g, c),
        state_g,
        mat(qkv.g, 3 * c),
        AttnShape { b, t, nh },
    );
    x.check(&format!("{what} forward"), out);

    let host = x.cpu.read(qkv.c);
    let at = |bb: usize, tt: usize, part: usize, h: usize| {
        &host[(bb * t + tt) * 3 * c + part * c + h * hs..][..hs]
    };
    let scale = 1.0 / (hs as f64).sqrt();
    let mut lse = Vec::with_capacity(b * nh * t);
    for bb in 0..b {
        for h in 0..nh {
            for tt in 0..t {
                let scores: Vec<f64> = (0..=tt)
                    .map(|j| {
                        let (q, k) = (at(bb, tt, 0, h), at(bb, j, 1, h));
                        scale
                            * q.iter()
                                .zip(k)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse.push((m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln()) as f32);
            }
        }
    }
    let err = rel_err(&lse, &x.gpu.read(state_g));
    println!("{what} row log-sum-exps: relative error {err:.2e}");
    x.expect(
        err < x.tol,
        format!("{what} row log-sum-exps: relative error {err:.2e}"),
    );

    let (dqkv, dout) = (x.poisoned(b * t * 3 * c), x.input(b * t * c));
    x.cpu.attention_backward(
        mat(dqkv.c, 3 * c),
        mat(dout.c, c),
        mat(qkv.c, 3 * c),
        mat(out.c, c),
        state_c,
        AttnShape { b, t, nh },
    );
    x.gpu.attention_backward(
        mat(dqkv.g, 3 * c),
        mat(dout.g, c),
        mat(qkv.g, 3 * c),
        mat(out.g, c),
        state_g,
        AttnShape { b, t, nh },
    );
    x.check(&format!("{what} backward"), dqkv);
    x.cpu.free(state_c);
    x.gpu.free(state_g);
    (qkv, out)
}

/// Flash attention against the CPU's T x T attention: T = 1, T around and past the
/// kernels' tiles (64 rows, 32 columns), head sizes from 5 to the largest, 128: in bf16
/// mode both instantiations, hp64 (HS <= 64: 5, 8, 16, 40, 64) and hp128 (80, 128).
#[test]
#[ignore = "needs a CUDA GPU"]
fn flash_attention_matches_the_cpu() {
    for (mode, tol) in MODES {
        println!("-- {mode:?}");
        let mut x = Both::new(open_gpu(mode), tol, 19);
        for (b, t, nh, hs) in [
            (1, 1, 1, 8),
            (2, 1, 3, 64),
            (3, 17, 4, 8),
            (2, 31, 2, 16),
            (1, 64, 2, 64),
            (2, 65, 3, 64),
            (1, 100, 2, 128),
            (2, 33, 1, 5),
            (1, 257, 2, 64),
            (1, 130, 1, 128),
            (1, 97, 2, 40),
            (2, 70, 1, 80),
        ] {
            check_attention(&mut x, b, t, nh, hs);
        }
        x.finish();
    }
}

/// Flash attention at GPT-2 124M's attention shape (T 1024, 12 heads of 64; B 8 to
/// keep the CPU's T x T reference small): parity with the CPU, and each pass's time
/// against the FLOPs its kernels do (2 causal tile products forward, 7 backward).
#[test]
#[ignore = "needs a CUDA GPU"]
fn flash_attention_at_gpt2_shapes_matches_and_is_timed() {
    let (b, t, nh, hs) = (8, 1024, 12, 64);
    for (mode, tol) in MODES {
        let mut x = Both::new(open_gpu(mode), tol, 23);
        let (qkv, out) = check_attention(&mut x, b, t, nh, hs);
        let c = nh * hs;
        let (state, dqkv, dout) = (
            x.gpu.alloc(b * nh * t),
            x.gpu.alloc(b * t * 3 * c),
            x.gpu.alloc(b * t * c),
        );
        x.gpu.fill(dout, 0.5);
        let best_ms = |f: &dyn Fn()| {
            f(); // warm-up
            (0..5)
                .map(|_| {
                    x.gpu.synchronize();
                    let t0 = Instant::now();
                    f();
                    x.gpu.synchronize();
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        let forward = best_ms(&|| {
            x.gpu.attention_forward(
                mat(out.g, c),
                state,
                mat(qkv.g, 3 * c),
                AttnShape { b, t, nh },
            )
        });
        let backward = best_ms(&|| {
            x.gpu.attention_backward(
                mat(dqkv, 3 * c),
                mat(dout, c),
                mat(qkv.g, 3 * c),
                mat(out.g, c),
                state,
                AttnShape { b, t, nh },
            )
        });
        // One causal tile product: 2 HS per (query, key <= query) pair, per (b, head).
        let product = 2.0 * (hs * b * nh) as f64 * (t * (t + 1) / 2) as f64;
        let tflops = |products: f64, ms: f64| products * product / ms / 1e9;
        println!(
            "{mode:?} flash attention B={b} T={t} NH={nh} HS={hs}: forward {forward:.3} ms \
             ({:.1} TFLOP/s), backward {backward:.3} ms ({:.1} TFLOP/s)",
            tflops(2.0, forward),
            tflops(7.0, backward)
        );
        x.finish();
    }
}
