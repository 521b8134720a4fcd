//! The fused ops against the CPU (whose defaults chain the unfused ops) on each path
//! of their CUDA versions, and AdamW and the norm over float4s, with a tail and
//! misaligned.

use hgpt::backend::GpuPrecision;
use hgpt::backend::{AdamW, Backend, Gelu, Linear, Norm};

use super::harness::{Both, C, MODES, N, Pair, mat, normed, open_gpu};

/// The fused ops against the CPU (whose defaults chain the unfused ops), on each path
/// of their CUDA versions.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_ops_match_the_cpu_on_every_path() {
    for (mode, tol) in MODES {
        println!("-- {mode:?}");
        let mut x = Both::new(open_gpu(mode), tol, 19);

        // Residual + LayerNorm, and LayerNorm alone: float4 rows (C % 4 == 0, aligned),
        // then scalar rows for C = 45 and for misaligned spans.
        for (c, off) in [(48, 0), (45, 0), (48, 1)] {
            let what = format!("C = {c}, offset {off}");
            let (a, b) = (x.input_at(N * c, off), x.input_at(N * c, off));
            let (w, bias) = (x.input_at(c, off), x.input_at(c, off));
            let (res, out) = (x.poisoned_at(N * c, off), x.poisoned_at(N * c, off));
            let (mean, rstd) = (x.poisoned(N), x.poisoned(N));
            x.cpu.residual_layernorm_forward(
                mat(res.c, c),
                normed(out.c, mean.c, rstd.c, c),
                mat(a.c, c),
                mat(b.c, c),
                Norm { w: w.c, b: bias.c },
                1e-5,
            );
            x.gpu.residual_layernorm_forward(
                mat(res.g, c),
                normed(out.g, mean.g, rstd.g, c),
                mat(a.g, c),
                mat(b.g, c),
                Norm { w: w.g, b: bias.g },
                1e-5,
            );
            x.check(&format!("residual_layernorm residual, {what}"), res);
            x.check(&format!("residual_layernorm out, {what}"), out);
            x.check(&format!("residual_layernorm mean, {what}"), mean);
            x.check(&format!("residual_layernorm rstd, {what}"), rstd);
            let out = x.poisoned_at(N * c, off);
            x.cpu.layernorm_forward(
                normed(out.c, mean.c, rstd.c, c),
                mat(a.c, c),
                Norm { w: w.c, b: bias.c },
                1e-5,
            );
            x.gpu.layernorm_forward(
                normed(out.g, mean.g, rstd.g, c),
                mat(a.g, c),
                Norm { w: w.g, b: bias.g },
                1e-5,
            );
            x.check(&format!("layernorm out, {what}"), out);
        }

        // matmul + GELU and GELU + matmul backward. A width of 4C suits cuBLASLt's GELU
        // epilogues (its pre-activation's rows must hold a multiple of 8 floats); 4C + 4
        // does not, so it must take the unfused path.
        for width in [4 * C, 4 * C + 4] {
            for with_bias in [true, false] {
                let what = format!("width {width}, bias {with_bias}");
                let before = x.gpu.epilogue_fallbacks();
                let (inp, w, bias) = (x.input(N * C), x.input(width * C), x.input(width));
                let (pre, out) = (x.poisoned(N * width), x.poisoned(N * width));
                let b = |p: Pair| with_bias.then_some(p);
                x.cpu.matmul_gelu_forward(
                    Gelu {
                        pre: mat(pre.c, width),
                        out: mat(out.c, width),
                    },
                    mat(inp.c, C),
                    Linear {
                        w: mat(w.c, C),
                        b: b(bias).map(|p| p.c),
                    },
                );
                x.gpu.matmul_gelu_forward(
                    Gelu {
                        pre: mat(pre.g, width),
                        out: mat(out.g, width),
                    },
                    mat(inp.g, C),
                    Linear {
                        w: mat(w.g, C),
                        b: b(bias).map(|p| p.g),
                    },
                );
                x.check(&format!("matmul_gelu_forward pre, {what}"), pre);
                x.check(&format!("matmul_gelu_forward out, {what}"), out);

                // A layer [width -> C] reading act = gelu(pre).
                let (w2, dw2, db2, dout) = (
                    x.input(C * width),
                    x.input(C * width),
                    x.input(C),
                    x.input(N * C),
                );
                let (dpre, dact) = (x.poisoned(N * width), x.poisoned(N * width));
                x.cpu.gelu_matmul_backward(
                    Gelu {
                        pre: mat(dpre.c, width),
                        out: mat(dact.c, width),
                    },
                    Linear {
                        w: mat(dw2.c, width),
                        b: b(db2).map(|p| p.c),
                    },
                    mat(dout.c, C),
                    Gelu {
                        pre: mat(pre.c, width),
                        out: mat(out.c, width),
                    },
                    mat(w2.c, width),
                );
                x.gpu.gelu_matmul_backward(
                    Gelu {
                        pre: mat(dpre.g, width),
                        out: mat(dact.g, width),
                    },
                    Linear {
                        w: mat(dw2.g, width),
                        b: b(db2).map(|p| p.g),
                    },
                    mat(dout.g, C),
                    Gelu {
                        pre: mat(pre.g, width),
                        out: mat(out.g, width),
                    },
                    mat(w2.g, width),
                );
                x.check(&format!("gelu_matmul_backward dpre, {what}"), dpre);
                x.check(&format!("gelu_matmul_backward dweight (+=), {what}"), dw2);
                if with_bias {
                    x.check(&format!("gelu_matmul_backward dbias (+=), {what}"), db2);
                }
                let fallbacks = x.gpu.epilogue_fallbacks() - before;
                println!("  {what}: {fallbacks} GEMM(s) ran unfused");
                // bf16 tries the GELU epilogues, and a width cuBLASLt refuses falls
                // back; fp32 (the exactness mode) never tries them, so without a bias
                // nothing is tried and nothing falls back.
                match mode {
                    GpuPrecision::Bf16 if width % 8 != 0 => x.expect(
                        fallbacks >= 2,
                        format!("width {width} must take the unfused path"),
                    ),
                    GpuPrecision::Fp32 if !with_bias => x.expect(
                        fallbacks == 0,
                        format!("fp32 tried a GELU epilogue ({what})"),
                    ),
                    _ => {}
                }
            }
        }

        // AdamW and the sum of squares over float4s: a length with a tail of 3, then
        // misaligned spans (scalar throughout).
        for off in [0, 1] {
            let len = 4099;
            let (p, g, m) = (
                x.input_at(len, off),
                x.input_at(len, off),
                x.input_at(len, off),
            );
            let v = x.input_at(len, off);
            let v2: Vec<f32> = x.cpu.read(v.c).iter().map(|e| e * e).collect();
            x.cpu.write(v.c, &v2);
            x.gpu.write(v.g, &v2);
            let hp = AdamW {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                step: 2,
                grad_scale: 0.7,
            };
            x.cpu.adamw_update(p.c, g.c, m.c, v.c, hp);
            x.gpu.adamw_update(p.g, g.g, m.g, v.g, hp);
            for (what, t) in [("params", p), ("m", m), ("v", v)] {
                x.check(&format!("adamw {what}, {len} at offset {off}"), t);
            }
            let (cpu, gpu) = (x.cpu.sum_squares(g.c), x.gpu.sum_squares(g.g));
            let err = ((gpu - cpu) / cpu).abs();
            println!("sum_squares, {len} at offset {off}: relative error {err:.2e}");
            x.expect(
                err < 1e-9,
                format!("sum_squares at offset {off}: cpu {cpu} gpu {gpu}"),
            );
        }
        x.finish();
    }
}
