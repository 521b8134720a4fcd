//! The NCCL collective, for ranks that each drive one GPU through the CUDA backend.
//! NCCL is the engine: every operation is one NCCL call (or one NCCL group of calls)
//! queued on the backend's stream on the spans' device addresses
//! (`Backend::device_ptr`), so it runs after the ops that produced its operands.
//!
//! Shards of unequal size (a parameter count not divisible by the world size) are
//! reduce-scattered as a group of `ncclReduce`s, one to each shard's owner, and
//! all-gathered as a group of `ncclBroadcast`s from each owner; equal shards use
//! `ncclReduceScatter` and `ncclAllGather`.
//!
//! libnccl.so.2 is loaded at run time like the other CUDA libraries (see
//! `backend::cuda::libs`). A peer that fails shows up here as an NCCL error, or, while
//! waiting for a host result, as the communicator's asynchronous error, which aborts
//! the communicator and ends the rank with one line.

use std::cell::Cell;
use std::ffi::{CStr, c_void};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::CudaStream;
use cudarc::nccl::sys::{self, ncclDataType_t, ncclRedOp_t, ncclResult_t};

use super::{Collective, Place};
use crate::backend::cuda::CudaBackend;
use crate::backend::cuda::libs::{self, Lib};
use crate::backend::{Backend, Span};

/// The 128 bytes rank 0 makes and every rank passes to [`Nccl::new`] (the launcher's
/// rendezvous carries them).
pub type UniqueId = [u8; 128];

/// A fresh unique id, made on rank 0.
pub fn unique_id() -> Result<UniqueId> {
    libs::require(Lib::Nccl)?;
    let mut id = std::mem::MaybeUninit::<sys::ncclUniqueId>::uninit();
    // SAFETY: NCCL fills the id it is handed.
    let id = unsafe {
        check(sys::ncclGetUniqueId(id.as_mut_ptr()), "ncclGetUniqueId")?;
        id.assume_init()
    };
    Ok(id.internal.map(|c| c as u8))
}

/// One rank's NCCL communicator, on its backend's stream.
pub struct Nccl {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    place: Place,
    /// Set once `ncclCommAbort` has freed `comm` (a peer failed): it must not be
    /// destroyed again when dropped.
    aborted: Cell<bool>,
}

impl Nccl {
    /// Joins the group `id` names as `place.rank` of `place.world`, queueing work on
    /// `backend`'s stream. Blocks until every rank has joined.
    pub fn new(backend: &CudaBackend, place: Place, id: &UniqueId) -> Result<Nccl> {
        libs::require(Lib::Nccl)?;
        let id = sys::ncclUniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let mut comm = std::mem::MaybeUninit::<sys::ncclComm_t>::uninit();
        let (world, rank) = (place.world as i32, place.rank as i32);
        // SAFETY: NCCL writes the communicator it is handed.
        let comm = unsafe {
            check(
                sys::ncclCommInitRank(comm.as_mut_ptr(), world, id, rank),
                "ncclCommInitRank",
            )
            .with_context(|| format!("rank {} cannot join the NCCL group", place.rank))?;
            comm.assume_init()
        };
        Ok(Nccl {
            comm,
            stream: backend.stream().clone(),
            place,
            aborted: Cell::new(false),
        })
    }

    fn raw_stream(&self) -> sys::cudaStream_t {
        self.stream.cu_stream() as sys::cudaStream_t
    }

    /// Waits for the queued work, watching the communicator: a peer's failure
    /// (NCCL's asynchronous error) aborts it and ends this rank with an error.
    fn wait(&self) -> Result<()> {
        loop {
            // SAFETY: the stream is alive while self is.
            match unsafe { cudarc::driver::sys::cuStreamQuery(self.stream.cu_stream()) } {
                cudarc::driver::sys::CUresult::CUDA_SUCCESS => return Ok(()),
                cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY => {}
                e => bail!("CUDA error waiting for an NCCL collective: {e:?}"),
            }
            let mut state = ncclResult_t::ncclSuccess;
            // SAFETY: the communicator is alive while self is.
            unsafe {
                check(
                    sys::ncclCommGetAsyncError(self.comm, &mut state),
                    "ncclCommGetAsyncError",
                )?
            };
            if state != ncclResult_t::ncclSuccess && state != ncclResult_t::ncclInProgress {
                // SAFETY: as above; abort is the documented way out of a failed group.
                unsafe { sys::ncclCommAbort(self.comm) };
                self.aborted.set(true);
                bail!(
                    "rank {}: the NCCL group failed ({}); a peer rank ended or lost its connection",
                    self.place.rank,
                    error_text(state)
                );
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Runs `calls` as one NCCL group.
    fn group(&self, what: &str, calls: impl FnOnce() -> Result<()>) -> Result<()> {
        // SAFETY: group calls only bracket the collectives `calls` queues.
        unsafe { check(sys::ncclGroupStart(), "ncclGroupStart")? };
        let queued = calls();
        // SAFETY: as above.
        let ended = unsafe { check(sys::ncclGroupEnd(), "ncclGroupEnd") };
        queued.and(ended).with_context(|| format!("NCCL {what}"))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Abort freed it already (NCCL: a communicator is destroyed or aborted, once).
        if self.aborted.get() {
            return;
        }
        // SAFETY: the communicator was made by ncclCommInitRank and is not used again.
        unsafe {
            sys::ncclCommDestroy(self.comm);
        }
    }
}

/// The span's device address as NCCL takes it; an error on a host-memory backend.
fn address(be: &dyn Backend, span: Span, written: bool) -> Result<*mut c_void> {
    let ptr = be.device_ptr(span, written).ok_or_else(|| {
        anyhow!(
            "the NCCL collective needs the CUDA backend ({})",
            be.describe()
        )
    })?;
    Ok(ptr as *mut c_void)
}

fn check(r: ncclResult_t, call: &str) -> Result<()> {
    match r {
        ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress => Ok(()),
        e => bail!("{call} failed: {}", error_text(e)),
    }
}

fn error_text(r: ncclResult_t) -> String {
    // SAFETY: NCCL returns a static string for every result code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(r)) };
    text.to_string_lossy().into_owned()
}

const F32: ncclDataType_t = ncclDataType_t::ncclFloat32;
const SUM: ncclRedOp_t = ncclRedOp_t::ncclSum;

/// Whether every shard has the first one's length.
fn even(shards: &[Range<usize>]) -> bool {
    shards.iter().all(|s| s.len() == shards[0].len())
}

impl Collective for Nccl {
    fn place(&self) -> Place {
        self.place
    }

    fn all_reduce_sum(&self, be: &dyn Backend, buf: Span) -> Result<()> {
        let p = address(be, buf, true)?;
        // SAFETY: an in-place reduction of buf.len floats on the backend's stream.
        unsafe {
            let r = sys::ncclAllReduce(p, p, buf.len, F32, SUM, self.comm, self.raw_stream());
            check(r, "ncclAllReduce")
        }
    }

    fn reduce_scatter_sum(
        &self,
        be: &dyn Backend,
        buf: Span,
        shards: &[Range<usize>],
    ) -> Result<()> {
        let base = address(be, buf, true)? as *mut f32;
        let (s, mine) = (self.raw_stream(), &shards[self.place.rank]);
        if even(shards) {
            // SAFETY: NCCL reads the whole buffer and writes this rank's shard, an
            // in-place reduce-scatter (recv = send + rank * count).
            return unsafe {
                let out = base.add(mine.start) as *mut c_void;
                let r = sys::ncclReduceScatter(
                    base as *const c_void,
                    out,
                    mine.len(),
                    F32,
                    SUM,
                    self.comm,
                    s,
                );
                check(r, "ncclReduceScatter")
            };
        }
        self.group("reduce-scatter of uneven shards", || {
            for (root, range) in shards.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                // SAFETY: each shard's range lies inside buf; the owner reduces in place.
                unsafe {
                    let p = base.add(range.start) as *mut c_void;
                    let r = sys::ncclReduce(p, p, range.len(), F32, SUM, root as i32, self.comm, s);
                    check(r, "ncclReduce")?;
                }
            }
            Ok(())
        })
    }

    fn all_gather(&self, be: &dyn Backend, buf: Span, shards: &[Range<usize>]) -> Result<()> {
        let base = address(be, buf, true)? as *mut f32;
        let (s, mine) = (self.raw_stream(), &shards[self.place.rank]);
        if even(shards) {
            // SAFETY: in-place all-gather: this rank's shard sits at its place in buf.
            return unsafe {
                let own = base.add(mine.start) as *const c_void;
                let r = sys::ncclAllGather(own, base as *mut c_void, mine.len(), F32, self.comm, s);
                check(r, "ncclAllGather")
            };
        }
        self.group("all-gather of uneven shards", || {
            for (root, range) in shards.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                // SAFETY: each shard's range lies inside buf; its owner sends it.
                unsafe {
                    let p = base.add(range.start) as *mut c_void;
                    let r = sys::ncclBroadcast(p, p, range.len(), F32, root as i32, self.comm, s);
                    check(r, "ncclBroadcast")?;
                }
            }
            Ok(())
        })
    }

    fn broadcast(&self, be: &dyn Backend, buf: Span, root: usize) -> Result<()> {
        let p = address(be, buf, true)?;
        // SAFETY: an in-place broadcast of buf.len floats.
        unsafe {
            let r = sys::ncclBroadcast(
                p,
                p,
                buf.len,
                F32,
                root as i32,
                self.comm,
                self.raw_stream(),
            );
            check(r, "ncclBroadcast")
        }
    }

    fn all_reduce_host(&self, values: &mut [f64]) -> Result<()> {
        use cudarc::driver::result as drv;
        let bytes = std::mem::size_of_val(values);
        // SAFETY: a private device buffer of `bytes`, freed below.
        let dev = unsafe { drv::malloc_sync(bytes.max(8)) }.context("CUDA allocation for NCCL")?;
        let reduced = (|| -> Result<()> {
            // SAFETY: copies of `values` to and from the buffer just allocated; the
            // reduction runs on the stream, waited for before the copy back.
            unsafe {
                drv::memcpy_htod_sync(dev, values).context("CUDA copy for NCCL")?;
                let p = dev as *mut c_void;
                let r = sys::ncclAllReduce(
                    p,
                    p,
                    values.len(),
                    ncclDataType_t::ncclFloat64,
                    SUM,
                    self.comm,
                    self.raw_stream(),
                );
                check(r, "ncclAllReduce")?;
                self.wait()?;
                drv::memcpy_dtoh_sync(values, dev).context("CUDA copy for NCCL")?;
            }
            Ok(())
        })();
        // SAFETY: allocated above, no longer used.
        let _ = unsafe { drv::free_sync(dev) };
        reduced
    }

    fn barrier(&self) -> Result<()> {
        self.all_reduce_host(&mut [0.0]).map(|_| ())
    }
}
