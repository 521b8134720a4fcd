//! The CUDA backend: cudarc with dynamic loading, kernels from cuda/ compiled by
//! NVRTC, GEMMs through cuBLASLt.
//!
//! - `libs`: finding libcuda, libnvrtc, libcublasLt and the CUDA headers at run time.
//! - `kernels`: the cuda/*.cu families, NVRTC compilation to CUBIN, the disk cache.
//! - `gemm`: row-major GEMMs through cuBLASLt (fp32 or bf16 operands, fp32 output,
//!   optionally finished by a bias, GELU or GELU-derivative epilogue).
//! - `shadow`: persistent bf16 copies of weight buffers, kept in step with every write.
//! - `ops`: the Backend implementation, one method per op, chaining the above.
//!
//! Buffers are fp32 device allocations named by the trait's spans; token buffers are
//! u32. In bf16 mode GEMMs multiply bf16 operands and accumulate in fp32, while
//! parameters, AdamW moments, activations and the head's math and loss stay fp32:
//! fp32 master weights, bf16 tensor-core products. A weight operand comes from its
//! buffer's bf16 shadow, which AdamW writes in the same pass as the fp32 update, so
//! weights are not converted per GEMM; activation operands are still converted to
//! bf16 scratch just before each GEMM (keeping activations in bf16 is the next step).
//!
//! The fused ops of the trait run as one kernel or one GEMM each: residual add and
//! LayerNorm in one pass over the row, bias and GELU in cuBLASLt's epilogues (with the
//! unfused kernels as the fallback where cuBLASLt has no such kernel).
//!
//! Attention is flash attention (cuda/flash_attention.cu), fp32 SIMT in fp32 mode and
//! bf16 tensor cores with fp32 softmax in bf16 mode: it saves only each row's
//! log-sum-exp, never a T x T matrix.
//!
//! Everything runs on one stream; the host waits only when it reads a result back
//! (the loss, the gradient norm).

pub mod gemm;
pub mod kernels;
pub mod libs;
mod ops;
mod shadow;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream, result as drv};

use crate::backend::{Backend, Span, TokenSpan};
use gemm::Gemm;
use kernels::{Arg, Kernels};
use libs::Lib;
use shadow::Shadow;

/// How the GEMMs run: fp32 operands (parity with the CPU) or bf16 operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPrecision {
    Fp32,
    Bf16,
}

/// One device allocation, freed when dropped.
pub struct DeviceMem {
    pub ptr: u64,
    pub bytes: usize,
}

impl DeviceMem {
    /// `bytes` of zeroed device memory (at least one byte, so the pointer is real).
    fn zeroed(bytes: usize) -> Result<DeviceMem> {
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

/// Scratch memory the ops keep between calls, grown on demand.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// bf16 copies of a GEMM's activation operands (weights have their shadows).
    OperandA,
    OperandB,
    /// Flash attention's backward: D = rowsum(dy * y) per row, [B, NH, T].
    AttRowDots,
    /// The head: a chunk of dot products / G, and its bf16 copy.
    HeadRows,
    HeadG16,
    /// The bf16 copy of the head's input h [N, C] (w comes from its shadow).
    HeadH16,
    /// |h|^2, |w|^2, rowsum(G), colsum(G).
    HeadHsq,
    HeadWsq,
    HeadRowsum,
    HeadColsum,
    /// f64 partial sums of a reduction and its result.
    Partials,
    Scalar,
}
const SLOTS: usize = Slot::Scalar as usize + 1;

impl Slot {
    /// Every slot, in order (the length check makes a new slot a compile error here).
    const ALL: [Slot; SLOTS] = [
        Slot::OperandA,
        Slot::OperandB,
        Slot::AttRowDots,
        Slot::HeadRows,
        Slot::HeadG16,
        Slot::HeadH16,
        Slot::HeadHsq,
        Slot::HeadWsq,
        Slot::HeadRowsum,
        Slot::HeadColsum,
        Slot::Partials,
        Slot::Scalar,
    ];

    /// Bytes this slot grows to over one training step of shape `s` (forward with
    /// the head's gradients, backward, gradient norm): the largest request the ops
    /// make of it. The match is exhaustive, so a new slot cannot be left out of the
    /// memory plan; tests/cuda_parity.rs checks every figure against the backend.
    fn training_bytes(self, s: &StepShape) -> usize {
        let (n, c, v) = (s.b * s.t, s.c, s.v);
        let btc = n * c;
        let bf16 = s.precision == GpuPrecision::Bf16;
        let rows = (s.head_chunk_floats / v).clamp(1, n);
        let bf16_only = |bytes: usize| if bf16 { bytes } else { 0 };
        let harmonic_only = |bytes: usize| if s.harmonic { bytes } else { 0 };
        match self {
            // The widest activation operands (weights come from their shadows): the
            // MLP's [N, 4C] as A (fc_proj's input, fc's output gradient) and as B.
            Slot::OperandA | Slot::OperandB => bf16_only(2 * 4 * btc),
            Slot::AttRowDots => 4 * s.b * s.nh * s.t,
            Slot::HeadRows => 4 * rows * v,
            Slot::HeadG16 => bf16_only(2 * rows * v),
            Slot::HeadH16 => bf16_only(2 * btc),
            Slot::HeadHsq => harmonic_only(4 * n),
            Slot::HeadWsq | Slot::HeadColsum => harmonic_only(4 * v),
            Slot::HeadRowsum => harmonic_only(4 * rows),
            Slot::Partials => 1024 * 8,
            Slot::Scalar => 8,
        }
    }
}

impl Slot {
    /// What the slot is for, as the memory plan groups it.
    fn role(self) -> &'static str {
        match self {
            Slot::OperandA | Slot::OperandB => "GEMM bf16 operand copies",
            Slot::AttRowDots => "attention scratch",
            Slot::HeadRows | Slot::HeadG16 | Slot::HeadRowsum => "head chunk",
            Slot::HeadH16 | Slot::HeadHsq | Slot::HeadWsq | Slot::HeadColsum => {
                "head inputs (bf16 copy of h, norms)"
            }
            Slot::Partials | Slot::Scalar => "reductions",
        }
    }
}

/// The shape of a training step, for the scratch plan.
#[derive(Clone, Copy, Debug)]
pub struct StepShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    pub v: usize,
    pub harmonic: bool,
    pub precision: GpuPrecision,
    /// The head's chunk of positions x vocabulary (`HEAD_CHUNK_FLOATS` by default).
    pub head_chunk_floats: usize,
}

/// One scratch slot in the memory plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotBytes {
    /// As `CudaBackend::scratch_bytes` names it ("HeadRows").
    pub name: String,
    /// What it is for ("head chunk").
    pub role: &'static str,
    pub bytes: usize,
}

/// Every scratch slot's bytes after a training step of shape `s` (0: never used).
pub fn training_scratch_bytes(s: &StepShape) -> Vec<SlotBytes> {
    Slot::ALL
        .iter()
        .map(|&slot| SlotBytes {
            name: format!("{slot:?}"),
            role: slot.role(),
            bytes: slot.training_bytes(s),
        })
        .collect()
}

/// Bytes of bf16 weight shadows (see `shadow`) a model of `params` parameters holds:
/// in bf16 mode one, of the parameter buffer, the only buffer whose spans are GEMM
/// weights.
pub fn weight_shadow_bytes(params: usize, precision: GpuPrecision) -> usize {
    match precision {
        GpuPrecision::Bf16 => 2 * params,
        GpuPrecision::Fp32 => 0,
    }
}

/// Floats of attention state kept per layer for the backward pass: each row's
/// log-sum-exp of scores, [B, NH, T] (flash attention keeps nothing else).
pub fn attention_state_len(b: usize, t: usize, nh: usize) -> usize {
    b * nh * t
}

pub struct CudaBackend {
    precision: GpuPrecision,
    /// Floats of dot products the head holds at once (its chunk of positions x V).
    head_chunk_floats: Cell<usize>,
    name: String,
    arch: String,
    cc_major: i32,
    sms: u32,
    floats: RefCell<Vec<Option<DeviceMem>>>,
    tokens: RefCell<Vec<Option<DeviceMem>>>,
    scratch: RefCell<Vec<Option<DeviceMem>>>,
    /// bf16 shadows of float buffers (by buffer index) whose spans are GEMM weights.
    shadows: RefCell<HashMap<usize, Shadow>>,
    /// GEMMs whose epilogue cuBLASLt had no kernel for, run unfused instead.
    epilogue_fallbacks: Cell<usize>,
    /// Bytes this backend holds now and at most (buffers, scratch, GEMM workspace).
    held: Cell<usize>,
    peak: Cell<usize>,
    gemm: Gemm,
    kernels: Kernels,
    stream: Arc<CudaStream>,
    // Last, so every allocation above is freed while the context still exists.
    ctx: Arc<CudaContext>,
}

/// The largest attention head size (n_embd / n_head) the flash attention kernels
/// take: each thread accumulates 8 of a row's head dims, 16 threads to a row.
pub const MAX_HEAD_SIZE: usize = 128;

/// GPUs visible to the driver; an error says why there are none (no driver library,
/// no device).
pub fn device_count() -> Result<usize> {
    libs::require(Lib::Driver)?;
    drv::init().map_err(|e| anyhow!("the CUDA driver did not initialise: {e}"))?;
    let n = drv::device::get_count().map_err(|e| anyhow!("cannot count CUDA devices: {e}"))?;
    if n < 1 {
        return Err(anyhow!("no CUDA device"));
    }
    Ok(n as usize)
}

/// Floats of dot products the head holds at once by default: chunks of positions
/// keep B*T*V from ever being materialised (256 MiB in fp32).
pub const HEAD_CHUNK_FLOATS: usize = 1 << 26;

/// cuBLASLt workspace: what NVIDIA recommends for Hopper (32 MiB) and earlier (4 MiB).
pub fn workspace_bytes(cc_major: i32) -> usize {
    if cc_major >= 9 { 32 << 20 } else { 4 << 20 }
}

impl CudaBackend {
    /// Opens GPU 0: checks every library, compiles (or loads cached) kernels for its
    /// architecture and sets up cuBLASLt.
    pub fn new(precision: GpuPrecision) -> Result<CudaBackend> {
        device_count()?;
        let ctx = CudaContext::new(0).map_err(|e| anyhow!("cannot open CUDA device 0: {e}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| anyhow!("cannot query the GPU: {e}"))?;
        let arch = format!("sm_{major}{minor}");
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap_or(1)
            .max(1) as u32;
        let kernels = Kernels::load(&ctx, &arch)
            .with_context(|| format!("preparing the CUDA kernels for {name} ({arch})"))?;
        libs::require(Lib::CublasLt)?;
        let ws = DeviceMem::zeroed(workspace_bytes(major))?;
        let held = ws.bytes;
        let gemm = Gemm::new(ws)?;
        let stream = ctx.default_stream();
        Ok(CudaBackend {
            precision,
            head_chunk_floats: Cell::new(HEAD_CHUNK_FLOATS),
            name,
            arch,
            cc_major: major,
            sms,
            floats: RefCell::new(Vec::new()),
            tokens: RefCell::new(Vec::new()),
            scratch: RefCell::new((0..SLOTS).map(|_| None).collect()),
            shadows: RefCell::new(HashMap::new()),
            epilogue_fallbacks: Cell::new(0),
            held: Cell::new(held),
            peak: Cell::new(held),
            gemm,
            kernels,
            stream,
            ctx,
        })
    }

    /// The GPU's compute capability major version (9 for H100 and H200).
    pub fn cc_major(&self) -> i32 {
        self.cc_major
    }

    /// Caps the head's chunk of positions x vocabulary (tests use it to force several
    /// chunks on small inputs).
    pub fn set_head_chunk_floats(&self, floats: usize) {
        self.head_chunk_floats.set(floats.max(1));
    }

    /// How many bias/GELU epilogue GEMMs cuBLASLt had no kernel for (they ran as
    /// separate kernels instead): 0 when every fusion ran fused.
    pub fn epilogue_fallbacks(&self) -> usize {
        self.epilogue_fallbacks.get()
    }

    /// Every scratch slot's bytes now (0: not allocated), named by slot.
    pub fn scratch_bytes(&self) -> Vec<(String, usize)> {
        let slots = self.scratch.borrow();
        Slot::ALL
            .iter()
            .map(|&slot| {
                let bytes = slots[slot as usize].as_ref().map_or(0, |m| m.bytes);
                (format!("{slot:?}"), bytes)
            })
            .collect()
    }

    fn track(&self, delta: isize) {
        let held = (self.held.get() as isize + delta) as usize;
        self.held.set(held);
        self.peak.set(self.peak.get().max(held));
    }

    fn new_mem(&self, bytes: usize) -> DeviceMem {
        let m = DeviceMem::zeroed(bytes).unwrap_or_else(|e| panic!("{e:#}"));
        self.track(m.bytes as isize);
        m
    }

    fn drop_mem(&self, m: DeviceMem) {
        // Kernels queued earlier may still read it.
        self.synchronize();
        self.track(-(m.bytes as isize));
        drop(m);
    }

    /// Device address of a float span, bounds-checked against its buffer.
    fn ptr(&self, s: Span) -> u64 {
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

    fn tptr(&self, s: TokenSpan) -> u64 {
        let bufs = self.tokens.borrow();
        let m = bufs[s.buf]
            .as_ref()
            .expect("use of a freed GPU token buffer");
        assert!((s.off + s.len) * 4 <= m.bytes.max(4) || s.len == 0);
        m.ptr + 4 * s.off as u64
    }

    /// At least `bytes` of scratch for `slot`; its contents are not kept when it grows.
    fn scratch(&self, slot: Slot, bytes: usize) -> u64 {
        let i = slot as usize;
        let too_small = self.scratch.borrow()[i]
            .as_ref()
            .is_none_or(|m| m.bytes < bytes);
        if too_small {
            if let Some(old) = self.scratch.borrow_mut()[i].take() {
                self.drop_mem(old);
            }
            let m = self.new_mem(bytes);
            self.scratch.borrow_mut()[i] = Some(m);
        }
        self.scratch.borrow()[i].as_ref().unwrap().ptr
    }

    /// Launches a kernel; whatever it may write is marked written (see `shadow`).
    fn launch(&self, name: &str, grid: (u32, u32), block: (u32, u32), smem: u32, args: &[Arg]) {
        for p in self
            .kernels
            .launch(&self.stream, name, grid, block, smem, args)
        {
            self.written(p);
        }
    }

    /// A 1-D grid-stride launch over `n` elements, 256 threads a block.
    fn launch_elems(&self, name: &str, n: usize, args: &[Arg]) {
        if n == 0 {
            return;
        }
        let blocks = n.div_ceil(256).min(self.sms as usize * 32) as u32;
        self.launch(name, (blocks, 1), (256, 1), 0, args)
    }
}
