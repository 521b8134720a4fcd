//! The output heads against the CPU: the loss, dh and dw over several chunks of rows,
//! the logits, the harmonic head with h exactly on a class centre, and the head's
//! gradients the same bits run to run (no float atomics in its backward).

use hgpt::backend::{Backend, Span};
use hgpt::head::HeadKind;

use super::harness::{Both, C, MODES, N, V, harmonic, head_grads, mat, open_gpu};

/// Vocabularies with the chunk each runs in (rows of V dot products). V = 101 in chunks
/// of 4 rows: the kernels' scalar path, N = 51 positions in 13 chunks, the last of 3
/// rows. V = 260 in chunks of 40: their float4 path, a part-filled column tile of 128,
/// and 2 chunks, the first of a full and a part-filled tile of 32 rows.
const SHAPES: [(usize, usize); 2] = [(V, 4), (260, 40)];

#[test]
#[ignore = "needs a CUDA GPU"]
fn both_heads_match_the_cpu_over_several_chunks() {
    for (mode, tol) in MODES {
        for (v, chunk) in SHAPES {
            let gpu = open_gpu(mode);
            gpu.set_head_chunk_floats(chunk * v);
            let mut x = Both::new(gpu, tol, 11);
            for kind in [harmonic(), HeadKind::Softmax] {
                println!("-- {mode:?} V={v} {kind:?}");
                let (h, w, tg) = (x.input(N * C), x.input(v * C), x.tokens(N, v));
                for with_grads in [false, true] {
                    let (losses, dh, dw) = (x.poisoned(N), x.poisoned(N * C), x.input(v * C));
                    let g = |dh: Span, dw: Span| with_grads.then_some((dh, dw, 1.0 / N as f32));
                    x.cpu.head_loss(
                        losses.c,
                        head_grads(g(dh.c, dw.c), C),
                        mat(h.c, C),
                        mat(w.c, C),
                        tg.c,
                        kind,
                    );
                    x.gpu.head_loss(
                        losses.g,
                        head_grads(g(dh.g, dw.g), C),
                        mat(h.g, C),
                        mat(w.g, C),
                        tg.g,
                        kind,
                    );
                    x.check("head losses", losses);
                    if with_grads {
                        x.check("head dh", dh);
                        x.check("head dw (+=)", dw);
                    }
                }
                // Aligned (float4 where V allows) and one float in (scalar).
                for off in [0, 1] {
                    let logits = x.poisoned_at(N * v, off);
                    x.cpu
                        .head_logits(mat(logits.c, v), mat(h.c, C), mat(w.c, C), kind);
                    x.gpu
                        .head_logits(mat(logits.g, v), mat(h.g, C), mat(w.g, C), kind);
                    x.check("head logits", logits);
                }
            }
            x.finish();
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn head_gradients_are_the_same_bits_run_to_run() {
    for (mode, tol) in MODES {
        for (v, chunk) in SHAPES {
            let gpu = open_gpu(mode);
            gpu.set_head_chunk_floats(chunk * v);
            let mut x = Both::new(gpu, tol, 17);
            for kind in [harmonic(), HeadKind::Softmax] {
                let (h, w, tg) = (x.input(N * C), x.input(v * C), x.tokens(N, v));
                let dw0 = x.values(v * C, 0.1, 1.0);
                let run = || {
                    let (losses, dh, dw) = (x.poisoned(N), x.poisoned(N * C), x.from(&dw0));
                    x.gpu.head_loss(
                        losses.g,
                        head_grads(Some((dh.g, dw.g, 1.0 / N as f32)), C),
                        mat(h.g, C),
                        mat(w.g, C),
                        tg.g,
                        kind,
                    );
                    [losses, dh, dw].map(|p| x.gpu.read(p.g))
                };
                let (first, second) = (run(), run());
                let outputs = first.iter().zip(&second);
                for (what, (a, b)) in ["losses", "dh", "dw"].into_iter().zip(outputs) {
                    let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                    x.expect(
                        same,
                        format!("{mode:?} V={v} {kind:?}: {what} differ between two runs"),
                    );
                }
            }
            x.finish();
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn harmonic_head_is_finite_with_h_on_a_class_centre() {
    for (mode, tol) in MODES {
        let mut x = Both::new(open_gpu(mode), tol, 13);
        // Small values, so |h|^2 + |w|^2 - 2 h.w rounds to far below eps on both
        // backends and both clamp it.
        let w = x.values(V * C, 0.01, 0.05);
        let targets: Vec<u32> = (0..N).map(|i| (i * 7 % V) as u32).collect();
        let h: Vec<f32> = targets
            .iter()
            .flat_map(|&y| w[y as usize * C..][..C].to_vec())
            .collect();
        let (w, h) = (x.from(&w), x.from(&h));
        let tg = x.tokens_from(&targets);
        let (losses, dh, dw) = (x.poisoned(N), x.poisoned(N * C), x.input(V * C));
        let kind = harmonic();
        x.cpu.head_loss(
            losses.c,
            head_grads(Some((dh.c, dw.c, 1.0)), C),
            mat(h.c, C),
            mat(w.c, C),
            tg.c,
            kind,
        );
        x.gpu.head_loss(
            losses.g,
            head_grads(Some((dh.g, dw.g, 1.0)), C),
            mat(h.g, C),
            mat(w.g, C),
            tg.g,
            kind,
        );
        let (lc, lg) = (x.cpu.read(losses.c), x.gpu.read(losses.g));
        x.expect(
            lg.iter().all(|l| l.is_finite()),
            format!("GPU losses not finite: {lg:?}"),
        );
        let worst = lc
            .iter()
            .zip(&lg)
            .map(|(c, g)| (c - g).abs() as f64)
            .fold(0.0, f64::max);
        println!(
            "{mode:?}: losses at the centre {:.3e} (cpu) vs {:.3e} (gpu), max diff {worst:.2e}",
            lc[0], lg[0]
        );
        x.expect(
            worst < tol.max(1e-5),
            format!("losses differ by {worst:.2e}"),
        );
        for (what, p) in [("dh", dh), ("dw", dw)] {
            let v = x.gpu.read(p.g);
            x.expect(
                v.iter().all(|g| g.is_finite()),
                format!("GPU {what} not finite"),
            );
        }
        x.finish();
    }
}
