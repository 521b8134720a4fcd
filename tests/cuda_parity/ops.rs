//! Every op of the trait against the CPU, table-driven: each case records its
//! mismatches and the test fails once all cases have run. Then sizes past the launch
//! caps, and the SGLD step with its noise.

use hgpt::backend::GpuPrecision;
use hgpt::backend::{Backend, Linear, Norm, SgldStep};

use super::attention::check_attention;
use super::harness::{B, Both, C, MODES, N, NH, Pair, TT, V, mat, normed, open_gpu, rel_err};

/// One case of `every_op_matches_the_cpu`: it runs an op (or a forward/backward
/// pair) on both backends and records what differs.
type Case = fn(&mut Both);

/// The per-op cases, by name.
const OPS: [(&str, Case); 7] = [
    ("encoder", encoder),
    ("layernorm", layernorm),
    ("matmul", matmul),
    ("attention and decode", attention_and_decode),
    ("gelu", gelu),
    ("add", add),
    ("reductions and copy", reductions_and_copy),
];

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_op_matches_the_cpu() {
    for (mode, tol) in MODES {
        let mut x = Both::new(open_gpu(mode), tol, 7);
        for (name, case) in OPS {
            println!("-- {mode:?} {name}");
            case(&mut x);
        }
        x.finish();
    }
}

fn encoder(x: &mut Both) {
    let (tok, wte, wpe) = (x.tokens(N, V), x.input(V * C), x.input(TT * C));
    let enc = x.poisoned(N * C);
    x.cpu
        .encoder_forward(mat(enc.c, C), tok.c, mat(wte.c, C), mat(wpe.c, C), TT);
    x.gpu
        .encoder_forward(mat(enc.g, C), tok.g, mat(wte.g, C), mat(wpe.g, C), TT);
    x.check("encoder_forward", enc);
    let (dwte, dwpe, dout) = (x.input(V * C), x.input(TT * C), x.input(N * C));
    x.cpu
        .encoder_backward(mat(dwte.c, C), mat(dwpe.c, C), mat(dout.c, C), tok.c, TT);
    x.gpu
        .encoder_backward(mat(dwte.g, C), mat(dwpe.g, C), mat(dout.g, C), tok.g, TT);
    x.check("encoder_backward dwte", dwte);
    x.check("encoder_backward dwpe", dwpe);
}

fn layernorm(x: &mut Both) {
    let (inp, w, b) = (x.input(N * C), x.input(C), x.input(C));
    let (out, mean, rstd) = (x.poisoned(N * C), x.poisoned(N), x.poisoned(N));
    x.cpu.layernorm_forward(
        normed(out.c, mean.c, rstd.c, C),
        mat(inp.c, C),
        Norm { w: w.c, b: b.c },
        1e-5,
    );
    x.gpu.layernorm_forward(
        normed(out.g, mean.g, rstd.g, C),
        mat(inp.g, C),
        Norm { w: w.g, b: b.g },
        1e-5,
    );
    for (what, p) in [("layernorm out", out), ("mean", mean), ("rstd", rstd)] {
        x.check(what, p);
    }
    let (dinp, dw, db, dout) = (x.input(N * C), x.input(C), x.input(C), x.input(N * C));
    x.cpu.layernorm_backward(
        mat(dinp.c, C),
        Norm { w: dw.c, b: db.c },
        mat(dout.c, C),
        mat(inp.c, C),
        w.c,
        normed(out.c, mean.c, rstd.c, C),
    );
    x.gpu.layernorm_backward(
        mat(dinp.g, C),
        Norm { w: dw.g, b: db.g },
        mat(dout.g, C),
        mat(inp.g, C),
        w.g,
        normed(out.g, mean.g, rstd.g, C),
    );
    for (what, p) in [
        ("layernorm dinp (+=)", dinp),
        ("dweight", dw),
        ("dbias", db),
    ] {
        x.check(what, p);
    }
}

fn matmul(x: &mut Both) {
    for with_bias in [true, false] {
        let oc = 3 * C + 5;
        let (inp, w, bias) = (x.input(N * C), x.input(oc * C), x.input(oc));
        let out = x.poisoned(N * oc);
        let bias_of = |p: Pair| with_bias.then_some(p);
        x.cpu.matmul_forward(
            mat(out.c, oc),
            mat(inp.c, C),
            Linear {
                w: mat(w.c, C),
                b: bias_of(bias).map(|p| p.c),
            },
        );
        x.gpu.matmul_forward(
            mat(out.g, oc),
            mat(inp.g, C),
            Linear {
                w: mat(w.g, C),
                b: bias_of(bias).map(|p| p.g),
            },
        );
        x.check(&format!("matmul_forward (bias {with_bias})"), out);
        let (dinp, dw, db, dout) = (
            x.poisoned(N * C),
            x.input(oc * C),
            x.input(oc),
            x.input(N * oc),
        );
        x.cpu.matmul_backward(
            mat(dinp.c, C),
            Linear {
                w: mat(dw.c, C),
                b: bias_of(db).map(|p| p.c),
            },
            mat(dout.c, oc),
            mat(inp.c, C),
            mat(w.c, C),
        );
        x.gpu.matmul_backward(
            mat(dinp.g, C),
            Linear {
                w: mat(dw.g, C),
                b: bias_of(db).map(|p| p.g),
            },
            mat(dout.g, oc),
            mat(inp.g, C),
            mat(w.g, C),
        );
        x.check("matmul_backward dinp", dinp);
        x.check("matmul_backward dweight (+=)", dw);
        if with_bias {
            x.check("matmul_backward dbias (+=)", db);
        }
    }
}

/// Attention at the shared shape, then decoding one position over a KV cache, which
/// is the last row of causal attention.
fn attention_and_decode(x: &mut Both) {
    let (qkv, out) = check_attention(x, B, TT, NH, C / NH);
    let qkv_host = x.cpu.read(qkv.c);
    let row = |r: usize, part: usize| &qkv_host[(r * 3 + part) * C..][..C];
    let last = TT - 1;
    let kv = |part: usize| {
        (0..TT)
            .flat_map(|r| row(r, part).to_vec())
            .collect::<Vec<_>>()
    };
    let (q1, k1, v1) = (x.from(row(last, 0)), x.from(&kv(1)), x.from(&kv(2)));
    let dec = x.poisoned(C);
    x.gpu
        .attention_decode(dec.g, q1.g, mat(k1.g, C), mat(v1.g, C), NH);
    let want = x.cpu.read(out.c.slice(last * C, C));
    let err = rel_err(&want, &x.gpu.read(dec.g));
    println!("attention_decode vs the last forward row: relative error {err:.2e}");
    x.expect(
        err < 1e-5,
        format!("attention_decode: relative error {err:.2e}"),
    );
}

fn gelu(x: &mut Both) {
    let (inp, dout) = (x.input(N * 4 * C), x.input(N * 4 * C));
    let (out, dinp) = (x.poisoned(N * 4 * C), x.poisoned(N * 4 * C));
    x.cpu.gelu_forward(out.c, inp.c);
    x.gpu.gelu_forward(out.g, inp.g);
    x.check("gelu_forward", out);
    x.cpu.gelu_backward(dinp.c, inp.c, dout.c);
    x.gpu.gelu_backward(dinp.g, inp.g, dout.g);
    x.check("gelu_backward", dinp);
}

fn add(x: &mut Both) {
    let (a, b, out) = (x.input(N * C), x.input(N * C), x.poisoned(N * C));
    x.cpu.add(out.c, a.c, b.c);
    x.gpu.add(out.g, a.g, b.g);
    x.check("add", out);
}

/// mean and sum_squares agree to f64 rounding; copy of a sub-span is exact.
fn reductions_and_copy(x: &mut Both) {
    let s = x.input(12345);
    for (what, cpu, gpu) in [
        ("mean", x.cpu.mean(s.c), x.gpu.mean(s.g)),
        (
            "sum_squares",
            x.cpu.sum_squares(s.c),
            x.gpu.sum_squares(s.g),
        ),
    ] {
        let err = ((gpu - cpu) / cpu).abs();
        println!("{what}: relative error {err:.2e}");
        x.expect(err < 1e-9, format!("{what}: cpu {cpu} gpu {gpu}"));
    }
    let sub = Pair {
        c: s.c.slice(100, 1000),
        g: s.g.slice(100, 1000),
    };
    let dst = x.poisoned(1000);
    x.cpu.copy(dst.c, sub.c);
    x.gpu.copy(dst.g, sub.g);
    x.check("copy of a sub-span", dst);
}

/// Sizes past the launch cap, so the grid-stride loops, layernorm_backward's many
/// blocks of partial sums, column sums split over several row ranges, the two-stage
/// reduction and the wte backward's large buckets of repeated tokens all run.
#[test]
#[ignore = "needs a CUDA GPU"]
fn large_shapes_take_the_grid_stride_paths() {
    let mut x = Both::new(open_gpu(GpuPrecision::Fp32), 1e-4, 17);
    // 8192 rows: 256 blocks of layernorm_backward partials, 16 row ranges of column sums.
    let (n, c, oc) = (8192, 40, 33);

    let (inp, w, b) = (x.input(n * c), x.input(c), x.input(c));
    let (out, mean, rstd) = (x.poisoned(n * c), x.poisoned(n), x.poisoned(n));
    x.cpu.layernorm_forward(
        normed(out.c, mean.c, rstd.c, c),
        mat(inp.c, c),
        Norm { w: w.c, b: b.c },
        1e-5,
    );
    x.gpu.layernorm_forward(
        normed(out.g, mean.g, rstd.g, c),
        mat(inp.g, c),
        Norm { w: w.g, b: b.g },
        1e-5,
    );
    let (dinp, dw, db, dout) = (x.input(n * c), x.input(c), x.input(c), x.input(n * c));
    x.cpu.layernorm_backward(
        mat(dinp.c, c),
        Norm { w: dw.c, b: db.c },
        mat(dout.c, c),
        mat(inp.c, c),
        w.c,
        normed(out.c, mean.c, rstd.c, c),
    );
    x.gpu.layernorm_backward(
        mat(dinp.g, c),
        Norm { w: dw.g, b: db.g },
        mat(dout.g, c),
        mat(inp.g, c),
        w.g,
        normed(out.g, mean.g, rstd.g, c),
    );
    for (what, p) in [("layernorm dinp", dinp), ("dweight", dw), ("dbias", db)] {
        x.check(what, p);
    }

    let (w, dw, db, dout) = (
        x.input(oc * c),
        x.input(oc * c),
        x.input(oc),
        x.input(n * oc),
    );
    let dinp = x.poisoned(n * c);
    x.cpu.matmul_backward(
        mat(dinp.c, c),
        Linear {
            w: mat(dw.c, c),
            b: Some(db.c),
        },
        mat(dout.c, oc),
        mat(inp.c, c),
        mat(w.c, c),
    );
    x.gpu.matmul_backward(
        mat(dinp.g, c),
        Linear {
            w: mat(dw.g, c),
            b: Some(db.g),
        },
        mat(dout.g, oc),
        mat(inp.g, c),
        mat(w.g, c),
    );
    x.check("matmul_backward dinp", dinp);
    x.check("matmul_backward dweight", dw);
    x.check("matmul_backward dbias over 16 row ranges", db);

    // 1.5M elements: more than the 32 blocks per SM of 256 threads launch_elems caps at.
    let big = 1_500_000;
    let (inp, out) = (x.input(big), x.poisoned(big));
    x.cpu.gelu_forward(out.c, inp.c);
    x.gpu.gelu_forward(out.g, inp.g);
    x.check("gelu_forward, grid-stride", out);
    let (cpu, gpu) = (x.cpu.sum_squares(inp.c), x.gpu.sum_squares(inp.g));
    x.expect(
        ((gpu - cpu) / cpu).abs() < 1e-9,
        format!("sum_squares over {big}: cpu {cpu} gpu {gpu}"),
    );

    // 64 x 128 positions over 7 tokens: each wte row sums a bucket of ~1200 positions.
    let (bb, t, c, v) = (64, 128, 160, 7);
    let tok = x.tokens(bb * t, v);
    let (dwte, dwpe, dout) = (x.input(v * c), x.input(t * c), x.input(bb * t * c));
    x.cpu
        .encoder_backward(mat(dwte.c, c), mat(dwpe.c, c), mat(dout.c, c), tok.c, t);
    x.gpu
        .encoder_backward(mat(dwte.g, c), mat(dwpe.g, c), mat(dout.g, c), tok.g, t);
    x.check("encoder_backward dwte, repeated tokens", dwte);
    x.check("encoder_backward dwpe", dwpe);
    x.finish();
}

/// The SGLD step draws its noise from a counter-based generator both backends
/// implement, so the GPU's step equals the CPU's up to float rounding (1e-5), noise
/// included; over sizes past the launch cap (grid-stride indices) and an odd length.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sgld_update_matches_the_cpu() {
    let mut x = Both::new(open_gpu(GpuPrecision::Fp32), 1e-5, 9);
    let n = 3_000_001;
    let (w, g, anchor) = (x.input(n), x.input(n), x.input(n));
    for (i, epsilon) in [1e-4, 1e-2].into_iter().enumerate() {
        let step = SgldStep::new(epsilon, 148.0, 2.0, 5, 3, i as u64);
        x.cpu.sgld_update(w.c, g.c, anchor.c, step);
        x.gpu.sgld_update(w.g, g.g, anchor.g, step);
        x.check(&format!("sgld_update, epsilon {epsilon}"), w);
    }
    x.finish();
}
