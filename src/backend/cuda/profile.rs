//! The per-op profile on the GPU (`hgpt bench --profile`): while it is on, every op
//! of the Backend trait runs between two CUDA events recorded on the backend's
//! stream, and the events are read only when the profile is taken, after one
//! synchronize, so profiling adds no waits between ops. Times are the GPU's, from
//! the start event to the end event; an op nested in another (a fused op's
//! fallback) counts in the outer op only.
//!
//! A part of an op (`part`: the bf16 copies of activation operands before a GEMM,
//! the head's row pass) gets events of its own and a row of its own, and its time
//! is taken out of the op that ran it, so the rows still add up to the step. The
//! parts show what the ops spend beside their floors: the copies are the cost of
//! fp32 activations (docs/DESIGN.md 6.1), the row pass the head's memory-bound work.

use std::collections::BTreeMap;
use std::time::Duration;

use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

use super::CudaBackend;
use crate::backend::OpStats;
use crate::backend::cost::Cost;

/// One profiled op call, or a part of one (`within` the op that ran it), whose
/// events the GPU may not have reached yet.
pub(super) struct Timed {
    op: &'static str,
    within: Option<&'static str>,
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
        self.profile_op.set(Some(op));
        let r = self.record(op, None, cost, f);
        self.profile_op.set(None);
        self.profile_depth.set(0);
        r
    }

    /// Runs `f`, a part of the op running now, between two events of its own when
    /// profiling (a part outside any op is timed as an op of its own).
    pub(super) fn part<R>(&self, part: &'static str, cost: Cost, f: impl FnOnce() -> R) -> R {
        match self.profile_op.get() {
            _ if self.profile.borrow().is_none() => f(),
            Some(op) => self.record(part, Some(op), cost, f),
            None => self.profiled(part, cost, f),
        }
    }

    fn record<R>(
        &self,
        op: &'static str,
        within: Option<&'static str>,
        cost: Cost,
        f: impl FnOnce() -> R,
    ) -> R {
        let start = self.event();
        let r = f();
        let end = self.event();
        if let Some(p) = self.profile.borrow_mut().as_mut() {
            p.push(Timed {
                op,
                within,
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
        tally(timed.into_iter().map(|t| {
            let ms = t
                .start
                .elapsed_ms(&t.end)
                .unwrap_or_else(|e| panic!("CUDA error reading a profiling event: {e}"));
            let time = Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
            (t.op, t.within, time, t.cost)
        }))
    }
}

/// Calls and times by op name from (op, the op it is a part of, time, floor): a
/// part's time is counted in its own row and taken out of its op's (whose call
/// count and floor stay), so the rows add up to the time of the ops alone.
fn tally(
    timed: impl IntoIterator<Item = (&'static str, Option<&'static str>, Duration, Cost)>,
) -> BTreeMap<&'static str, OpStats> {
    let mut out: BTreeMap<&'static str, OpStats> = BTreeMap::new();
    let mut parts: BTreeMap<&'static str, Duration> = BTreeMap::new();
    for (op, within, time, cost) in timed {
        out.entry(op).or_default().add(time, cost);
        if let Some(parent) = within {
            *parts.entry(parent).or_default() += time;
        }
    }
    for (parent, time) in parts {
        let stats = out.entry(parent).or_default();
        stats.time = stats.time.saturating_sub(time);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::tally;
    use crate::backend::cost::Cost;

    #[test]
    fn a_parts_time_moves_from_its_op_to_its_own_row() {
        let ms = Duration::from_millis;
        let cost = |bytes: f64| Cost { flops: 0.0, bytes };
        let out = tally([
            ("to_bf16 operands", Some("matmul_forward"), ms(2), cost(6.0)),
            ("matmul_forward", None, ms(10), cost(100.0)),
            (
                "to_bf16 operands",
                Some("matmul_backward"),
                ms(3),
                cost(6.0),
            ),
            ("matmul_backward", None, ms(20), cost(200.0)),
            ("layernorm_forward", None, ms(4), cost(8.0)),
        ]);
        let time = |op| out[op].time;
        assert_eq!(time("matmul_forward"), ms(8));
        assert_eq!(time("matmul_backward"), ms(17));
        assert_eq!(time("to_bf16 operands"), ms(5));
        assert_eq!(time("layernorm_forward"), ms(4));
        let total: Duration = out.values().map(|s| s.time).sum();
        assert_eq!(total, ms(34), "the rows add up to the ops' time");
        assert_eq!(out["to_bf16 operands"].calls, 2);
        assert_eq!(out["matmul_forward"].calls, 1);
        assert_eq!(out["matmul_forward"].bytes, 100.0);
        assert_eq!(out["to_bf16 operands"].bytes, 12.0);
    }
}
