//! The token and position embeddings on the GPU, the host half of cuda/encoder.cu.

use super::CudaBackend;
use super::kernels::Arg::{I32, Ptr};
use crate::backend::{Mat, TokenSpan};

pub(super) fn encoder_forward(
    be: &CudaBackend,
    out: Mat,
    tokens: TokenSpan,
    wte: Mat,
    wpe: Mat,
    t: usize,
) {
    let (b, c) = (out.rows / t, out.cols);
    let (out, wte, wpe) = (out.span, wte.span, wpe.span);
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
    dwte: Mat,
    dwpe: Mat,
    dout: Mat,
    tokens: TokenSpan,
    t: usize,
) {
    let (b, c) = (dout.rows / t, dout.cols);
    let (dwte, dwpe, dout) = (dwte.span, dwpe.span, dout.span);
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
