//! LayerNorm on the GPU, the host half of cuda/layernorm.cu: one warp per row,
//! float4 loads where every row pointer is 16-byte aligned and C a multiple of 4. The
//! backward's dw, db are deterministic: per-block partials, then column sums. An `out`
//! in a bf16 buffer (GEMM-only activations in bf16 mode) is written by the *_bf16
//! kernels: the same values, rounded to bf16 as the GEMMs would round them.

use super::kernels::Arg::{F32, I32, Ptr};
use super::{CudaBackend, Slot, aligned16};
use crate::backend::{Mat, Norm, Normed, Span};

pub(super) fn layernorm_forward(be: &CudaBackend, y: Normed, inp: Mat, p: Norm, eps: f32) {
    let (n, c) = (inp.rows, inp.cols);
    let (out, mean, rstd) = (y.out.span, y.mean, y.rstd);
    let (inp, weight, bias) = (inp.span, p.w, p.b);
    let (out, kernel) = be.output_kernel(out, ["layernorm_forward", "layernorm_forward_bf16"]);
    let rows = [out, be.ptr(inp), be.ptr(weight), be.ptr(bias)];
    let vec4 = c.is_multiple_of(4) && aligned16(&rows);
    let [out, inp, weight, bias] = rows;
    be.launch_rows(
        kernel,
        n,
        &[
            Ptr(out),
            Ptr(be.ptr(mean)),
            Ptr(be.ptr(rstd)),
            Ptr(inp),
            Ptr(weight),
            Ptr(bias),
            I32(n as i32),
            I32(c as i32),
            F32(eps),
            I32(vec4 as i32),
        ],
    );
}

pub(super) fn residual_layernorm_forward(
    be: &CudaBackend,
    residual: Mat,
    y: Normed,
    a: Mat,
    b: Mat,
    p: Norm,
    eps: f32,
) {
    let (n, c) = (residual.rows, residual.cols);
    let (residual, out, mean, rstd) = (residual.span, y.out.span, y.mean, y.rstd);
    let (a, b, weight, bias) = (a.span, b.span, p.w, p.b);
    let (out, kernel) = be.output_kernel(
        out,
        [
            "residual_layernorm_forward",
            "residual_layernorm_forward_bf16",
        ],
    );
    let rows = [residual, a, b, weight, bias].map(|s| be.ptr(s));
    let [residual, a, b, weight, bias] = rows;
    let vec4 = c.is_multiple_of(4) && aligned16(&[rows.as_slice(), &[out]].concat());
    be.launch_rows(
        kernel,
        n,
        &[
            Ptr(residual),
            Ptr(out),
            Ptr(be.ptr(mean)),
            Ptr(be.ptr(rstd)),
            Ptr(a),
            Ptr(b),
            Ptr(weight),
            Ptr(bias),
            I32(n as i32),
            I32(c as i32),
            F32(eps),
            I32(vec4 as i32),
        ],
    );
}

pub(super) fn layernorm_backward(
    be: &CudaBackend,
    dinp: Mat,
    dp: Norm,
    dout: Mat,
    inp: Mat,
    weight: Span,
    saved: Normed,
) {
    let (n, c) = (inp.rows, inp.cols);
    let (dinp, dweight, dbias, dout) = (dinp.span, dp.w, dp.b, dout.span);
    let (inp, mean, rstd) = (inp.span, saved.mean, saved.rstd);
    if n == 0 {
        return;
    }
    let blocks = n.div_ceil(LN_BACKWARD_ROWS);
    let part = be.scratch(Slot::NormPartials, norm_partial_bytes(n, c));
    be.launch(
        "layernorm_backward",
        (blocks as u32, 1),
        (256, 1),
        0,
        &[
            Ptr(be.ptr(dinp)),
            Ptr(part),
            Ptr(be.ptr(dout)),
            Ptr(be.ptr(inp)),
            Ptr(be.ptr(weight)),
            Ptr(be.ptr(mean)),
            Ptr(be.ptr(rstd)),
            I32(n as i32),
            I32(c as i32),
        ],
    );
    be.column_sums_add(&[be.ptr(dweight), be.ptr(dbias)], part, blocks, 2 * c, None);
}

/// Rows per block of `layernorm_backward` (LN_BACKWARD_ROWS in cuda/layernorm.cu).
pub(super) const LN_BACKWARD_ROWS: usize = 32;

/// Bytes of the backward's per-block dw, db partials over `n` rows of `c` channels.
pub(super) fn norm_partial_bytes(n: usize, c: usize) -> usize {
    4 * n.div_ceil(LN_BACKWARD_ROWS) * 2 * c
}
