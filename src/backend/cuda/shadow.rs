//! bf16 shadows of weight buffers, for bf16 mode: a GEMM reads its weight operand
//! from the bf16 copy of the buffer it lives in, instead of converting it every call.
//!
//! The rule that keeps a shadow equal to bf16(its buffer):
//! - a float buffer gets a shadow the first time one of its spans is a GEMM weight
//!   (in a model, only the parameter buffer);
//! - every write into the buffer's memory marks the shadow stale: a kernel's
//!   non-const pointer arguments (`CudaBackend::launch` reports them), a GEMM's output,
//!   `write`, `fill` and `copy`;
//! - a stale shadow is refreshed whole, on the stream, just before a GEMM reads it;
//! - `adamw_update` and `sgld_update` keep a fresh shadow fresh: their kernels write
//!   the bf16 value in the same pass as the fp32 update (`update_in_place`), so
//!   neither training nor an LLC chain ever refreshes;
//! - freeing the buffer frees its shadow.

use super::kernels::Arg::{I64, Ptr};
use super::{CudaBackend, DeviceMem, GpuPrecision};
use crate::backend::Span;

/// Bytes of bf16 weight shadows (see `shadow`) a model of `params` parameters holds:
/// in bf16 mode one, of the parameter buffer, the only buffer whose spans are GEMM
/// weights.
pub fn weight_shadow_bytes(params: usize, precision: GpuPrecision) -> usize {
    match precision {
        GpuPrecision::Bf16 => 2 * params,
        GpuPrecision::Fp32 => 0,
    }
}

pub(super) struct Shadow {
    /// Address and length in floats of the shadowed fp32 buffer.
    base: u64,
    floats: usize,
    /// `floats` bf16 values.
    mem: DeviceMem,
    fresh: bool,
}

impl CudaBackend {
    /// The bf16 copy of weight span `s`, made or refreshed first if needed.
    pub(super) fn weight16(&self, s: Span) -> u64 {
        self.ptr(s); // bounds check
        let at = 2 * s.off as u64;
        let known = self.shadows.borrow().get(&s.buf).map(|sh| sh.fresh);
        match known {
            Some(true) => {}
            Some(false) => self.refresh_shadow(s.buf),
            None => {
                let (base, floats) = {
                    let bufs = self.floats.borrow();
                    let b = bufs[s.buf].as_ref().expect("use of a freed GPU buffer");
                    (b.mem.ptr, b.mem.bytes / 4)
                };
                let mem = self.new_mem(2 * floats);
                let shadow = Shadow {
                    base,
                    floats,
                    mem,
                    fresh: false,
                };
                self.shadows.borrow_mut().insert(s.buf, shadow);
                self.refresh_shadow(s.buf);
            }
        }
        self.shadows.borrow()[&s.buf].mem.ptr + at
    }

    fn refresh_shadow(&self, buf: usize) {
        let (dst, src, n) = {
            let shadows = self.shadows.borrow();
            let sh = &shadows[&buf];
            (sh.mem.ptr, sh.base, sh.floats)
        };
        self.launch_elems("to_bf16", n, &[Ptr(dst), Ptr(src), I64(n as i64)]);
        self.mark_fresh(buf);
    }

    /// A write may have reached the float memory at `ptr`: the shadow of the buffer
    /// holding it, if any, is stale.
    pub(super) fn written(&self, ptr: u64) {
        for sh in self.shadows.borrow_mut().values_mut() {
            if (sh.base..sh.base + 4 * sh.floats as u64).contains(&ptr) {
                sh.fresh = false;
            }
        }
    }

    /// Runs `launch`, which launches a kernel that updates span `s` in place, with
    /// where that kernel should also write its bf16 values (`fresh_shadow_of`, 0 for
    /// none); a fresh shadow the kernel wrote stays fresh.
    pub(super) fn update_in_place(&self, s: Span, launch: impl FnOnce(u64)) {
        let s16 = self.fresh_shadow_of(s);
        launch(s16);
        // The launch marked the span written; a fresh shadow got its values too.
        if s16 != 0 {
            self.mark_fresh(s.buf);
        }
    }

    /// Where a kernel that updates span `s` should also write its bf16 values: the
    /// span's place in a fresh shadow, or 0 (no shadow, or a stale one, which the next
    /// GEMM refreshes whole anyway).
    fn fresh_shadow_of(&self, s: Span) -> u64 {
        match self.shadows.borrow().get(&s.buf) {
            Some(sh) if sh.fresh => sh.mem.ptr + 2 * s.off as u64,
            _ => 0,
        }
    }

    /// After a kernel wrote both a span and its place in the shadow.
    fn mark_fresh(&self, buf: usize) {
        if let Some(sh) = self.shadows.borrow_mut().get_mut(&buf) {
            sh.fresh = true;
        }
    }

    pub(super) fn drop_shadow(&self, buf: usize) {
        let shadow = self.shadows.borrow_mut().remove(&buf);
        if let Some(sh) = shadow {
            self.drop_mem(sh.mem);
        }
    }
}
