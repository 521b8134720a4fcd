//! GPU memory: fp32 and u32 buffers named by the trait's spans, the ops' scratch
//! slots and the byte count behind `peak_memory_bytes`. No kernel file: these are the
//! driver's allocations, copies and fills, all on the backend's one stream or
//! synchronous.

use anyhow::{Result, anyhow};
use cudarc::driver::result as drv;
use cudarc::driver::sys as cu;

use super::{CudaBackend, Slot};
use crate::backend::{Backend, Span, TokenSpan};

/// One device allocation, freed when dropped.
pub struct DeviceMem {
    pub ptr: u64,
    pub bytes: usize,
}

impl DeviceMem {
    /// `bytes` of zeroed device memory (at least one byte, so the pointer is real).
    pub(super) fn zeroed(bytes: usize) -> Result<DeviceMem> {
        let bytes = bytes.max(1);
        // SAFETY: a fresh allocation in the current context, zeroed before use.
        unsafe {
            let ptr = drv::malloc_sync(bytes)
                .map_err(|e| anyhow!("cannot allocate {bytes} bytes on the GPU: {e}"))?;
            drv::memset_d8_sync(ptr, 0, bytes)
                .map_err(|e| anyhow!("cannot clear GPU memory: {e}"))?;
            Ok(DeviceMem { ptr, bytes })
        }
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed once; callers synchronise first
        // when kernels may still use it.
        let _ = unsafe { drv::free_sync(self.ptr) };
    }
}

impl CudaBackend {
    pub(super) fn track(&self, delta: isize) {
        let held = (self.held.get() as isize + delta) as usize;
        self.held.set(held);
        self.peak.set(self.peak.get().max(held));
    }

    pub(super) fn new_mem(&self, bytes: usize) -> DeviceMem {
        let m = DeviceMem::zeroed(bytes).unwrap_or_else(|e| panic!("{e:#}"));
        self.track(m.bytes as isize);
        m
    }

    pub(super) fn drop_mem(&self, m: DeviceMem) {
        // Kernels queued earlier may still read it.
        self.synchronize();
        self.track(-(m.bytes as isize));
        drop(m);
    }

    /// Device address of a float span, bounds-checked against its buffer.
    pub(super) fn ptr(&self, s: Span) -> u64 {
        let bufs = self.floats.borrow();
        let m = bufs[s.buf].as_ref().expect("use of a freed GPU buffer");
        assert!(
            (s.off + s.len) * 4 <= m.bytes.max(4) || s.len == 0,
            "span {}+{} outside GPU buffer of {} floats",
            s.off,
            s.len,
            m.bytes / 4
        );
        m.ptr + 4 * s.off as u64
    }

    pub(super) fn tptr(&self, s: TokenSpan) -> u64 {
        let bufs = self.tokens.borrow();
        let m = bufs[s.buf]
            .as_ref()
            .expect("use of a freed GPU token buffer");
        assert!((s.off + s.len) * 4 <= m.bytes.max(4) || s.len == 0);
        m.ptr + 4 * s.off as u64
    }

    /// The tokens of a span, from the host's copy of its buffer (tokens reach the GPU
    /// only through `write_tokens`, which keeps that copy).
    pub(super) fn token_host(&self, s: TokenSpan) -> Vec<u32> {
        self.token_host.borrow()[s.buf][s.off..s.off + s.len].to_vec()
    }

    /// At least `bytes` of scratch for `slot`; its contents are not kept when it grows.
    pub(super) fn scratch(&self, slot: Slot, bytes: usize) -> u64 {
        let i = slot as usize;
        let too_small = self.scratch.borrow()[i]
            .as_ref()
            .is_none_or(|m| m.bytes < bytes);
        if too_small {
            // Taken out first: dropping synchronizes, which may launch queued work that
            // asks for scratch itself, so no borrow may be held across it.
            let old = self.scratch.borrow_mut()[i].take();
            if let Some(old) = old {
                self.drop_mem(old);
            }
            let m = self.new_mem(bytes);
            self.scratch.borrow_mut()[i] = Some(m);
        }
        self.scratch.borrow()[i].as_ref().unwrap().ptr
    }
}

pub(super) fn alloc(be: &CudaBackend, len: usize) -> Span {
    let m = be.new_mem(4 * len);
    let mut bufs = be.floats.borrow_mut();
    bufs.push(Some(m));
    Span {
        buf: bufs.len() - 1,
        off: 0,
        len,
    }
}

pub(super) fn alloc_tokens(be: &CudaBackend, len: usize) -> TokenSpan {
    let m = be.new_mem(4 * len);
    be.token_host.borrow_mut().push(vec![0; len]);
    let mut bufs = be.tokens.borrow_mut();
    bufs.push(Some(m));
    TokenSpan {
        buf: bufs.len() - 1,
        off: 0,
        len,
    }
}

pub(super) fn free(be: &CudaBackend, span: Span) {
    assert_eq!(span.off, 0, "free takes whole buffers");
    be.drop_shadow(span.buf);
    let m: Option<DeviceMem> = be.floats.borrow_mut()[span.buf].take();
    if let Some(m) = m {
        be.drop_mem(m);
    }
}

pub(super) fn free_tokens(be: &CudaBackend, span: TokenSpan) {
    assert_eq!(span.off, 0, "free takes whole buffers");
    be.token_host.borrow_mut()[span.buf] = Vec::new();
    let m: Option<DeviceMem> = be.tokens.borrow_mut()[span.buf].take();
    if let Some(m) = m {
        be.drop_mem(m);
    }
}

pub(super) fn write(be: &CudaBackend, dst: Span, src: &[f32]) {
    assert_eq!(dst.len, src.len(), "write length");
    be.written(be.ptr(dst));
    // SAFETY: the span is in bounds (ptr checks); the copy is synchronous.
    unsafe { drv::memcpy_htod_sync(be.ptr(dst), src) }
        .unwrap_or_else(|e| panic!("CUDA error copying to the GPU: {e}"));
}

pub(super) fn read(be: &CudaBackend, src: Span) -> Vec<f32> {
    let mut out = vec![0f32; src.len];
    // SAFETY: as for `write`; the copy waits for queued kernels.
    unsafe { drv::memcpy_dtoh_sync(&mut out, be.ptr(src)) }
        .unwrap_or_else(|e| panic!("CUDA error copying from the GPU: {e}"));
    out
}

pub(super) fn write_tokens(be: &CudaBackend, dst: TokenSpan, src: &[u32]) {
    assert_eq!(dst.len, src.len(), "write_tokens length");
    be.token_host.borrow_mut()[dst.buf][dst.off..dst.off + dst.len].copy_from_slice(src);
    // SAFETY: as for `write`.
    unsafe { drv::memcpy_htod_sync(be.tptr(dst), src) }
        .unwrap_or_else(|e| panic!("CUDA error copying tokens to the GPU: {e}"));
}

pub(super) fn fill(be: &CudaBackend, dst: Span, value: f32) {
    be.written(be.ptr(dst));
    // SAFETY: dst.len 32-bit words inside the span's buffer.
    unsafe { cu::cuMemsetD32Async(be.ptr(dst), value.to_bits(), dst.len, be.stream.cu_stream()) }
        .result()
        .unwrap_or_else(|e| panic!("CUDA error filling a buffer: {e}"));
}

pub(super) fn copy(be: &CudaBackend, dst: Span, src: Span) {
    assert_eq!(dst.len, src.len, "copy length");
    be.written(be.ptr(dst));
    // SAFETY: both spans are in bounds and do not overlap (trait contract).
    unsafe { drv::memcpy_dtod_async(be.ptr(dst), be.ptr(src), 4 * dst.len, be.stream.cu_stream()) }
        .unwrap_or_else(|e| panic!("CUDA error copying on the GPU: {e}"));
}
