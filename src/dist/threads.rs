//! The CPU collective: a group of ranks that are threads of one process, for
//! `hgpt train --device cpu --ranks N` and for tests. It is not a network engine.
//!
//! Every collective is one exchange: each rank deposits its operand (read from its
//! backend to the host), the last to arrive publishes all of them in rank order, and
//! each rank computes its result from that list. Sums run in the fixed order
//! rank 0 + rank 1 + ... + rank N-1, element by element, so a result does not depend
//! on which thread came first and every rank computes bit-identical values.
//!
//! Failure: [`run`] records a rank whose body returns an error or panics, and a
//! rank whose body ends while others still wait for it; every rank waiting in (or
//! later entering) a collective then returns an error naming that rank, at once.

use std::any::Any;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use anyhow::{Result, anyhow};

use super::{Collective, Place};
use crate::backend::{Backend, Span};

type Payload = Box<dyn Any + Send + Sync>;

struct State {
    /// Exchanges completed so far.
    round: u64,
    /// This round's deposits, by rank.
    slots: Vec<Option<Payload>>,
    /// The last completed round's deposits, in rank order.
    done: Arc<Vec<Payload>>,
    /// Ranks whose body has ended.
    ended: Vec<bool>,
    /// The first failure, as "rank R failed: ERROR".
    failed: Option<String>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked holding the lock left the state consistent: every
        // change under it is a single assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `rank`'s body ended, failing with `error` if it did; wakes all.
    fn end(&self, rank: usize, error: Option<String>) {
        let mut s = self.lock();
        s.ended[rank] = true;
        if let Some(e) = error {
            s.failed.get_or_insert(format!("rank {rank} failed: {e}"));
        }
        self.changed.notify_all();
    }
}

/// One rank's handle on a group of thread-ranks.
pub struct ThreadRank {
    shared: Arc<Shared>,
    rank: usize,
}

impl ThreadRank {
    /// Deposits `mine` and returns every rank's deposit of this round, in rank order.
    fn exchange<T: Any + Send + Sync>(&self, mine: T) -> Result<Arc<Vec<Payload>>> {
        let sh = &self.shared;
        let mut s = sh.lock();
        let round = s.round;
        s.slots[self.rank] = Some(Box::new(mine));
        if s.slots.iter().all(Option::is_some) {
            let all = s.slots.iter_mut().map(|x| x.take().expect("deposited"));
            s.done = Arc::new(all.collect());
            s.round += 1;
            sh.changed.notify_all();
        }
        loop {
            if s.round != round {
                return Ok(s.done.clone());
            }
            if let Some(f) = &s.failed {
                return Err(anyhow!("{f}"));
            }
            if let Some(r) = (0..sh.world).find(|&r| s.ended[r] && s.slots[r].is_none()) {
                return Err(anyhow!(
                    "rank {r} ended while rank {} waited for it in a collective",
                    self.rank
                ));
            }
            s = sh.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Every rank's host vector, deposited in this round.
    fn gather_host<T: Any + Send + Sync + Clone>(&self, mine: Vec<T>) -> Result<Vec<Vec<T>>> {
        let all = self.exchange(mine)?;
        Ok(all
            .iter()
            .map(|p| p.downcast_ref::<Vec<T>>().expect("same type").clone())
            .collect())
    }
}

/// Element-wise sum of `parts` over `range`, in rank order.
fn sum_in_order<T: Copy + std::ops::Add<Output = T>>(
    parts: &[Vec<T>],
    range: Range<usize>,
) -> Vec<T> {
    let mut acc = parts[0][range.clone()].to_vec();
    for p in &parts[1..] {
        for (a, &x) in acc.iter_mut().zip(&p[range.clone()]) {
            *a = *a + x;
        }
    }
    acc
}

impl Collective for ThreadRank {
    fn place(&self) -> Place {
        Place {
            rank: self.rank,
            world: self.shared.world,
            local_rank: self.rank,
        }
    }

    fn all_reduce_sum(&self, be: &dyn Backend, buf: Span) -> Result<()> {
        let all = self.gather_host(be.read(buf))?;
        be.write(buf, &sum_in_order(&all, 0..buf.len));
        Ok(())
    }

    fn reduce_scatter_sum(
        &self,
        be: &dyn Backend,
        buf: Span,
        shards: &[Range<usize>],
    ) -> Result<()> {
        let all = self.gather_host(be.read(buf))?;
        let mine = shards[self.rank].clone();
        be.write(buf.slice(mine.start, mine.len()), &sum_in_order(&all, mine));
        Ok(())
    }

    fn all_gather(&self, be: &dyn Backend, buf: Span, shards: &[Range<usize>]) -> Result<()> {
        let mine = &shards[self.rank];
        let all = self.gather_host(be.read(buf.slice(mine.start, mine.len())))?;
        for (r, (part, range)) in all.iter().zip(shards).enumerate() {
            if r != self.rank {
                be.write(buf.slice(range.start, range.len()), part);
            }
        }
        Ok(())
    }

    fn broadcast(&self, be: &dyn Backend, buf: Span, root: usize) -> Result<()> {
        let mine = if self.rank == root {
            be.read(buf)
        } else {
            Vec::new()
        };
        let all = self.gather_host(mine)?;
        if self.rank != root {
            be.write(buf, &all[root]);
        }
        Ok(())
    }

    fn all_reduce_host(&self, values: &mut [f64]) -> Result<()> {
        let all = self.gather_host(values.to_vec())?;
        values.copy_from_slice(&sum_in_order(&all, 0..values.len()));
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(()).map(|_| ())
    }
}

/// Runs a group of `world` thread-ranks: rank 0 runs `first` on the calling thread
/// (it may hold what cannot cross threads, e.g. the caller's observer), ranks 1..
/// run `rest` on threads of their own. Returns rank 0's value, or else the first
/// failure ("rank R failed: ERROR"; a panic counts as a failure with its message).
pub fn run<T>(
    world: usize,
    first: impl FnOnce(ThreadRank) -> Result<T>,
    rest: impl Fn(ThreadRank) -> Result<()> + Sync,
) -> Result<T> {
    assert!(world > 0, "a group has at least one rank");
    let shared = Arc::new(Shared {
        world,
        state: Mutex::new(State {
            round: 0,
            slots: (0..world).map(|_| None).collect(),
            done: Arc::new(Vec::new()),
            ended: vec![false; world],
            failed: None,
        }),
        changed: Condvar::new(),
    });
    let value = std::thread::scope(|scope| {
        for rank in 1..world {
            let (shared, rest) = (shared.clone(), &rest);
            std::thread::Builder::new()
                .name(format!("rank {rank}"))
                .spawn_scoped(scope, move || {
                    let outcome = as_rank(&shared, rank, rest);
                    shared.end(rank, outcome.err());
                })
                .expect("spawn a rank thread");
        }
        let outcome = as_rank(&shared, 0, first);
        let (value, error) = match outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        shared.end(0, error);
        value
    });
    match (&shared.lock().failed, value) {
        (Some(f), _) => Err(anyhow!("{f}")),
        (None, Some(v)) => Ok(v),
        (None, None) => unreachable!("rank 0 ended without a value or a failure"),
    }
}

/// Runs `body` as rank `rank`: its value, or its error or panic as one line.
fn as_rank<T>(
    shared: &Arc<Shared>,
    rank: usize,
    body: impl FnOnce(ThreadRank) -> Result<T>,
) -> Result<T, String> {
    let handle = ThreadRank {
        shared: shared.clone(),
        rank,
    };
    match catch_unwind(AssertUnwindSafe(|| body(handle))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(panic_message(panic.as_ref())),
    }
}

/// The text a panic carried.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned());
    format!(
        "panicked: {}",
        text.unwrap_or_else(|| "(no message)".into())
    )
}
