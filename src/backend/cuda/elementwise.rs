//! Element-wise ops on the GPU, the host half of cuda/gelu.cu (GELU, tanh form, and
//! its derivative) and cuda/residual.cu (the residual add): 1-D grid-stride launches.
//! GELU's output may be a bf16 buffer (stored for GEMMs only): `gelu_forward_bf16`.

use super::CudaBackend;
use super::kernels::Arg::{I64, Ptr};
use crate::backend::Span;

pub(super) fn gelu_forward(be: &CudaBackend, out: Span, inp: Span) {
    let (out_ptr, kernel) = be.output_kernel(out, ["gelu_forward", "gelu_forward_bf16"]);
    be.launch_elems(
        kernel,
        out.len,
        &[Ptr(out_ptr), Ptr(be.ptr(inp)), I64(out.len as i64)],
    );
}

pub(super) fn gelu_backward(be: &CudaBackend, dinp: Span, inp: Span, dout: Span) {
    be.launch_elems(
        "gelu_backward",
        dinp.len,
        &[
            Ptr(be.ptr(dinp)),
            Ptr(be.ptr(inp)),
            Ptr(be.ptr(dout)),
            I64(dinp.len as i64),
        ],
    );
}

pub(super) fn add(be: &CudaBackend, out: Span, a: Span, b: Span) {
    be.launch_elems(
        "residual_add",
        out.len,
        &[
            Ptr(be.ptr(out)),
            Ptr(be.ptr(a)),
            Ptr(be.ptr(b)),
            I64(out.len as i64),
        ],
    );
}
