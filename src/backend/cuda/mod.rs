//! The CUDA backend: cudarc with dynamic loading, kernels from cuda/ compiled by
//! NVRTC, GEMMs through cuBLASLt.
//!
//! - `libs`: finding libcuda, libnvrtc, libcublasLt and the CUDA headers at run time.
//! - `kernels`: the cuda/*.cu families, NVRTC compilation to CUBIN, the disk cache;
//!   `resources`: ptxas's per-kernel report (registers, spills, shared memory) and the
//!   occupancy it allows.
//! - `gemm` (and `gemm_shape`, its arithmetic): row-major GEMMs through cuBLASLt (fp32
//!   or bf16 operands, fp32 output or bf16 for GELU's, optionally finished by a bias,
//!   GELU or GELU-derivative epilogue).
//! - `memory`: buffers, scratch slots (`scratch` sizes them for the memory plan) and
//!   the byte count; `shadow`: persistent bf16 copies of weight buffers, kept in step
//!   with every write.
//! - one launcher file per kernel family, the host half of its cuda/*.cu: `encoder`,
//!   `layernorm`, `linear` (matmul.cu, convert.cu), `attention` (flash_attention.cu,
//!   attention_decode.cu), `elementwise` (gelu.cu, residual.cu), `head`, `reduce`
//!   (global_norm.cu), `update` (adamw.cu, sgld.cu).
//! - `ops`: the Backend implementation, one line per op, dispatching to those files;
//!   `profile`: CUDA events around each op for `hgpt bench --profile`.
//!
//! Buffers are fp32 device allocations named by the trait's spans, but for
//! `alloc_gemm_operands` in bf16 mode (bf16); token buffers are u32. In bf16 mode GEMMs
//! multiply bf16 operands and accumulate in fp32, while parameters, AdamW moments,
//! the other activations and the head's math and loss stay fp32: fp32 master weights,
//! bf16 tensor-core products. A weight operand comes from its buffer's bf16 shadow,
//! which AdamW writes in the same pass as the fp32 update, so weights are not
//! converted per GEMM; the activations only GEMMs read (LayerNorm and GELU outputs)
//! are written in bf16 by the kernel that makes them, and the other activation
//! operands are converted to bf16 scratch just before each GEMM.
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

mod attention;
mod elementwise;
mod encoder;
pub mod gemm;
mod gemm_shape;
mod head;
pub mod kernels;
mod layernorm;
pub mod libs;
mod linear;
mod memory;
mod ops;
mod profile;
mod reduce;
pub mod resources;
mod scratch;
mod shadow;
mod update;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream, result as drv};

use crate::backend::GpuPrecision;
use gemm::Gemm;
use kernels::{Arg, Kernels};
use libs::Lib;
use shadow::Shadow;

pub use attention::{FlashKernels, attention_state_len, flash_kernels};
pub use memory::DeviceMem;
use scratch::{SLOTS, Slot};
pub use scratch::{step_scratch, training_slot_bytes};
pub use shadow::weight_shadow_bytes;

/// The GPU backend. Deliberately not `Send`: its raw driver calls (allocations,
/// copies, fills) act on whatever CUDA context is current on the calling thread, and
/// `new` makes its context current on the thread that opens it, so it must stay
/// there. (The doctest below fails to compile if it ever becomes `Send`.)
///
/// ```compile_fail
/// fn send<T: Send>() {}
/// send::<hgpt::backend::cuda::CudaBackend>();
/// ```
pub struct CudaBackend {
    precision: GpuPrecision,
    /// Floats of dot products the head holds at once (its chunk of positions x V).
    head_chunk_floats: Cell<usize>,
    name: String,
    arch: String,
    cc_major: i32,
    sms: u32,
    floats: RefCell<Vec<Option<memory::FloatBuf>>>,
    tokens: RefCell<Vec<Option<DeviceMem>>>,
    /// The host's copy of every token buffer (by buffer index), for the wte backward's
    /// bucket table (see `encoder`).
    token_host: RefCell<Vec<Vec<u32>>>,
    scratch: RefCell<Vec<Option<DeviceMem>>>,
    /// bf16 shadows of float buffers (by buffer index) whose spans are GEMM weights.
    shadows: RefCell<HashMap<usize, Shadow>>,
    /// The per-op profile's events while profiling (see `profile`), and whether an
    /// op is running (nested ops are not timed apart).
    profile: RefCell<Option<Vec<profile::Timed>>>,
    profile_depth: Cell<u32>,
    /// The op being profiled now, for its parts (see `profile`).
    profile_op: Cell<Option<&'static str>>,
    /// AdamW updates queued for one launch (see `update`), and the tensor table
    /// last copied to the GPU for it.
    adamw_pending: RefCell<Option<update::AdamwBatch>>,
    adamw_table: RefCell<Vec<i64>>,
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
    /// Keeps the backend on the thread whose current context it is (see above).
    not_send: PhantomData<*const ()>,
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
        CudaBackend::on_device(precision, 0)
    }

    /// Opens GPU `ordinal` (a data-parallel rank's local rank) as [`CudaBackend::new`]
    /// opens GPU 0.
    pub fn on_device(precision: GpuPrecision, ordinal: usize) -> Result<CudaBackend> {
        let count = device_count()?;
        if ordinal >= count {
            bail!("no CUDA device {ordinal}: {count} visible");
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("cannot open CUDA device {ordinal}: {e}"))?;
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
            token_host: RefCell::new(Vec::new()),
            scratch: RefCell::new((0..SLOTS).map(|_| None).collect()),
            shadows: RefCell::new(HashMap::new()),
            profile: RefCell::new(None),
            profile_depth: Cell::new(0),
            profile_op: Cell::new(None),
            adamw_pending: RefCell::new(None),
            adamw_table: RefCell::new(Vec::new()),
            epilogue_fallbacks: Cell::new(0),
            held: Cell::new(held),
            peak: Cell::new(held),
            gemm,
            kernels,
            stream,
            ctx,
            not_send: PhantomData,
        })
    }

    /// The stream every op of this backend runs on (a collective library queues its
    /// work there, after the ops that produced its operands).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
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

    /// Launches a kernel; whatever it may write is marked written (see `shadow`).
    pub(super) fn launch(
        &self,
        name: &str,
        grid: (u32, u32),
        block: (u32, u32),
        smem: u32,
        args: &[Arg],
    ) {
        for p in self
            .kernels
            .launch(&self.stream, name, grid, block, smem, args)
        {
            self.written(p);
        }
    }

    /// One launch of a warp-per-row kernel over `rows` rows (8 rows per block).
    pub(super) fn launch_rows(&self, name: &str, rows: usize, args: &[Arg]) {
        if rows > 0 {
            self.launch(name, (rows.div_ceil(8) as u32, 1), (256, 1), 0, args);
        }
    }

    /// A 1-D grid-stride launch over `n` elements, 256 threads a block.
    pub(super) fn launch_elems(&self, name: &str, n: usize, args: &[Arg]) {
        if n == 0 {
            return;
        }
        let blocks = n.div_ceil(256).min(self.sms as usize * 32) as u32;
        self.launch(name, (blocks, 1), (256, 1), 0, args)
    }
}

/// Whether kernels may move float4s at all these addresses (16-byte aligned; see
/// `load_floats` in cuda/common.cuh).
fn aligned16(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p.is_multiple_of(16))
}
