//! The per-op profile on the GPU (`hgpt bench --profile`): while it is on, every op
//! of the Backend trait runs between two CUDA events recorded on the backend's
//! stream, and the events are read only when the profile is taken, after one
//! synchronize, so profiling adds no waits between ops. Times are the GPU's, from
//! the start event to the end event; an op nested in another (a fused op's
//! fallback) counts in the outer op only.

use std::collections::BTreeMap;
use std::time::Duration;

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::CudaBackend;
use crate::backend::OpStats;
use crate::backend::cost::Cost;

/// One profiled op call whose events the GPU may not have reached yet.
pub(super) struct Timed {
    op: &'static str,
    cost: Cost,
    start: CudaEvent,
    end: CudaEvent,
}

impl CudaBackend {
    /// Runs op `op` (after any queued AdamW updates, which it may read), timed when
    /// profiling.
    pub(super) fn op<R>(&self, op: &'static str, cost: Cost, f: impl FnOnce() -> R) -> R {
        self.flush_updates();
        self.profiled(op, cost, f)
    }

    /// Runs `f` between two events when profiling and not inside another profiled op.
    pub(super) fn profiled<R>(&self, op: &'static str, cost: Cost, f: impl FnOnce() -> R) -> R {
        if self.profile.borrow().is_none() || self.profile_depth.get() > 0 {
            return f();
        }
        self.profile_depth.set(1);
        let start = self.event();
        let r = f();
        let end = self.event();
        self.profile_depth.set(0);
        if let Some(p) = self.profile.borrow_mut().as_mut() {
            p.push(Timed {
                op,
                cost,
                start,
                end,
            });
        }
        r
    }

    fn event(&self) -> CudaEvent {
        self.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap_or_else(|e| panic!("CUDA error recording a profiling event: {e}"))
    }

    pub(super) fn start_profiling(&self) {
        *self.profile.borrow_mut() = Some(Vec::new());
    }

    /// Every op's calls, GPU time and floor since `start_profiling`, by name.
    pub(super) fn take_profiling(&self) -> BTreeMap<&'static str, OpStats> {
        self.flush_updates();
        let timed = self.profile.borrow_mut().take().unwrap_or_default();
        let mut out: BTreeMap<&'static str, OpStats> = BTreeMap::new();
        for t in timed {
            let ms = t
                .start
                .elapsed_ms(&t.end)
                .unwrap_or_else(|e| panic!("CUDA error reading a profiling event: {e}"));
            let time = Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
            out.entry(t.op).or_default().add(time, t.cost);
        }
        out
    }
}
