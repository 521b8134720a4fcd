//! The token and position embeddings on the GPU, the host half of cuda/encoder.cu.

use super::CudaBackend;
use super::kernels::Arg::{I32, Ptr};
use crate::backend::{Span, TokenSpan};

pub(super) fn encoder_forward(
    be: &CudaBackend,
    out: Span,
    tokens: TokenSpan,
    wte: Span,
    wpe: Span,
    b: usize,
    t: usize,
    c: usize,
) {
    be.launch_elems(
        "encoder_forward",
        b * t * c,
        &[
            Ptr(be.ptr(out)),
            Ptr(be.tptr(tokens)),
            Ptr(be.ptr(wte)),
            Ptr(be.ptr(wpe)),
            I32((b * t) as i32),
            I32(t as i32),
            I32(c as i32),
        ],
    );
}

pub(super) fn encoder_backward(
    be: &CudaBackend,
    dwte: Span,
    dwpe: Span,
    dout: Span,
    tokens: TokenSpan,
    b: usize,
    t: usize,
    c: usize,
) {
    be.launch_elems(
        "encoder_backward_wte",
        b * t * c,
        &[
            Ptr(be.ptr(dwte)),
            Ptr(be.ptr(dout)),
            Ptr(be.tptr(tokens)),
            I32((b * t) as i32),
            I32(c as i32),
        ],
    );
    be.launch_elems(
        "encoder_backward_wpe",
        t * c,
        &[
            Ptr(be.ptr(dwpe)),
            Ptr(be.ptr(dout)),
            I32(b as i32),
            I32(t as i32),
            I32(c as i32),
        ],
    );
}
