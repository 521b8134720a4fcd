//! GPU memory: float buffers (fp32, or bf16 for GEMM-only activations in bf16 mode)
//! and u32 buffers named by the trait's spans, the ops' scratch slots and the byte
//! count behind `peak_memory_bytes`. No kernel file but convert.cu's `to_bf16`: these
//! are the driver's allocations, copies and fills, all on the backend's one stream or
//! synchronous. Host reads and writes of a bf16 buffer convert (round to nearest even
//! on the way in, as `to_bf16` does).

use anyhow::{Result, anyhow};
use cudarc::driver::result as drv;
use cudarc::driver::sys as cu;

use super::gemm::DType;
use super::kernels::Arg::{I64, Ptr};
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

/// A buffer behind the trait's float spans: its values are `dtype` (fp32, or bf16 for
/// `alloc_gemm_operands` in bf16 mode).
pub(super) struct FloatBuf {
    pub mem: DeviceMem,
    pub dtype: DType,
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

    /// Device address of an fp32 span, bounds-checked against its buffer. Panics on a
    /// bf16 buffer: an op that reads one as floats is not adapted to it.
    pub(super) fn ptr(&self, s: Span) -> u64 {
        self.typed_ptr(s, DType::F32)
    }

    /// Device address of a span of a bf16 buffer (`alloc_gemm_operands` in bf16 mode).
    pub(super) fn ptr16(&self, s: Span) -> u64 {
        self.typed_ptr(s, DType::Bf16)
    }

    /// The element type of the buffer behind `s`.
    pub(super) fn dtype_of(&self, s: Span) -> DType {
        let bufs = self.floats.borrow();
        bufs[s.buf]
            .as_ref()
            .expect("use of a freed GPU buffer")
            .dtype
    }

    fn typed_ptr(&self, s: Span, dtype: DType) -> u64 {
        let bufs = self.floats.borrow();
        let b = bufs[s.buf].as_ref().expect("use of a freed GPU buffer");
        assert!(
            b.dtype == dtype,
            "GPU buffer {} holds {:?} values, read here as {dtype:?}: this op does not take \
             GEMM-only (bf16-stored) activations",
            s.buf,
            b.dtype
        );
        let size = dtype.bytes();
        assert!(
            (s.off + s.len) * size <= b.mem.bytes.max(size) || s.len == 0,
            "span {}+{} outside GPU buffer of {} values",
            s.off,
            s.len,
            b.mem.bytes / size
        );
        b.mem.ptr + (size * s.off) as u64
    }

    /// Device address of either kind of float span, with its element type.
    pub(super) fn any_ptr(&self, s: Span) -> (u64, DType) {
        let dtype = self.dtype_of(s);
        (self.typed_ptr(s, dtype), dtype)
    }

    /// The address of an op's output `s` and, of a kernel pair `[fp32, bf16]` that
    /// writes each type, the one for its buffer's.
    pub(super) fn output_kernel(
        &self,
        s: Span,
        [fp32, bf16]: [&'static str; 2],
    ) -> (u64, &'static str) {
        let (ptr, dtype) = self.any_ptr(s);
        let kernel = match dtype {
            DType::F32 => fp32,
            DType::Bf16 => bf16,
        };
        (ptr, kernel)
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

pub(super) fn alloc(be: &CudaBackend, len: usize, dtype: DType) -> Span {
    let mem = be.new_mem(dtype.bytes() * len);
    let mut bufs = be.floats.borrow_mut();
    bufs.push(Some(FloatBuf { mem, dtype }));
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
    let b: Option<FloatBuf> = be.floats.borrow_mut()[span.buf].take();
    if let Some(b) = b {
        be.drop_mem(b.mem);
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
    let (ptr, dtype) = be.any_ptr(dst);
    be.written(ptr);
    // SAFETY: the span is in bounds (typed_ptr checks); the copies are synchronous.
    let done = match dtype {
        DType::F32 => unsafe { drv::memcpy_htod_sync(ptr, src) },
        DType::Bf16 => unsafe { drv::memcpy_htod_sync(ptr, &to_bf16_bits(src)) },
    };
    done.unwrap_or_else(|e| panic!("CUDA error copying to the GPU: {e}"));
}

pub(super) fn read(be: &CudaBackend, src: Span) -> Vec<f32> {
    let (ptr, dtype) = be.any_ptr(src);
    // SAFETY: as for `write`; the copies wait for queued kernels.
    let got = match dtype {
        DType::F32 => {
            let mut out = vec![0f32; src.len];
            unsafe { drv::memcpy_dtoh_sync(&mut out, ptr) }.map(|()| out)
        }
        DType::Bf16 => {
            let mut bits = vec![0u16; src.len];
            unsafe { drv::memcpy_dtoh_sync(&mut bits, ptr) }.map(|()| {
                bits.iter()
                    .map(|&b| half::bf16::from_bits(b).to_f32())
                    .collect()
            })
        }
    };
    got.unwrap_or_else(|e| panic!("CUDA error copying from the GPU: {e}"))
}

/// The bf16 bit patterns of `x`, rounded to nearest even (as cuda/convert.cu rounds).
fn to_bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

pub(super) fn write_tokens(be: &CudaBackend, dst: TokenSpan, src: &[u32]) {
    assert_eq!(dst.len, src.len(), "write_tokens length");
    be.token_host.borrow_mut()[dst.buf][dst.off..dst.off + dst.len].copy_from_slice(src);
    // SAFETY: as for `write`.
    unsafe { drv::memcpy_htod_sync(be.tptr(dst), src) }
        .unwrap_or_else(|e| panic!("CUDA error copying tokens to the GPU: {e}"));
}

pub(super) fn fill(be: &CudaBackend, dst: Span, value: f32) {
    let (ptr, dtype) = be.any_ptr(dst);
    be.written(ptr);
    let stream = be.stream.cu_stream();
    // SAFETY: dst.len values of the buffer's width inside the span's buffer.
    let done = match dtype {
        DType::F32 => unsafe { cu::cuMemsetD32Async(ptr, value.to_bits(), dst.len, stream) },
        DType::Bf16 => unsafe {
            cu::cuMemsetD16Async(ptr, half::bf16::from_f32(value).to_bits(), dst.len, stream)
        },
    };
    done.result()
        .unwrap_or_else(|e| panic!("CUDA error filling a buffer: {e}"));
}

/// dst = src, converting where their buffers' types differ: fp32 to bf16 by
/// convert.cu's `to_bf16`, bf16 to fp32 (exact) through the host.
pub(super) fn copy(be: &CudaBackend, dst: Span, src: Span) {
    assert_eq!(dst.len, src.len, "copy length");
    let ((to, to_type), (from, from_type)) = (be.any_ptr(dst), be.any_ptr(src));
    match (from_type, to_type) {
        (DType::F32, DType::Bf16) => {
            let n = dst.len as i64;
            be.launch_elems("to_bf16", dst.len, &[Ptr(to), Ptr(from), I64(n)]);
        }
        (DType::Bf16, DType::F32) => write(be, dst, &read(be, src)),
        _ => {
            be.written(to);
            let bytes = to_type.bytes() * dst.len;
            // SAFETY: both spans are in bounds and do not overlap (trait contract).
            unsafe { drv::memcpy_dtod_async(to, from, bytes, be.stream.cu_stream()) }
                .unwrap_or_else(|e| panic!("CUDA error copying on the GPU: {e}"));
        }
    }
}
