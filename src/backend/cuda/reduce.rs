//! Reductions on the GPU, the host half of cuda/global_norm.cu: sums (and sums of
//! squares) in f64 over fixed blocks and then in one block, so the result does not
//! depend on timing; the one result comes back to the host.

use cudarc::driver::result as drv;

use super::kernels::Arg::{I32, I64, Ptr};
use super::{CudaBackend, Slot, aligned16};
use crate::backend::Span;

impl CudaBackend {
    fn reduce(&self, src: Span, squares: bool) -> f64 {
        if src.len == 0 {
            return 0.0;
        }
        let blocks = src.len.div_ceil(256).min(1024);
        let partial = self.scratch(Slot::Partials, 1024 * 8);
        let out = self.scratch(Slot::Scalar, 8);
        self.launch(
            "sum_partials",
            (blocks as u32, 1),
            (256, 1),
            0,
            &[
                Ptr(partial),
                Ptr(self.ptr(src)),
                I64(src.len as i64),
                I32(squares as i32),
                I32(aligned16(&[self.ptr(src)]) as i32),
            ],
        );
        self.launch(
            "sum_final",
            (1, 1),
            (1024, 1),
            0,
            &[Ptr(out), Ptr(partial), I32(blocks as i32)],
        );
        let mut r = [0f64];
        // SAFETY: 8 bytes from a live scratch buffer; the copy waits for the kernels.
        unsafe { drv::memcpy_dtoh_sync(&mut r, out) }
            .unwrap_or_else(|e| panic!("CUDA error reading a reduction: {e}"));
        r[0]
    }
}

pub(super) fn mean(be: &CudaBackend, src: Span) -> f64 {
    be.reduce(src, false) / src.len as f64
}

pub(super) fn sum_squares(be: &CudaBackend, src: Span) -> f64 {
    be.reduce(src, true)
}
