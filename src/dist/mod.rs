//! Data-parallel training's collectives: a rank's [`Place`] in its group, the
//! [`Collective`] operations the trainer calls, and how a flat vector is split into
//! one contiguous [`shards`] range per rank (ZeRO-1: each rank owns the optimizer
//! state of its range).
//!
//! A collective acts on backend memory, named by [`Span`]s of the [`Backend`] the
//! caller passes: the thread-rank implementation ([`threads`]) moves floats through
//! the host with `Backend::read`/`write`; the NCCL one (in the CUDA backend) hands
//! NCCL the device addresses `Backend::device_ptr` gives. Scalars the loop needs
//! across ranks (partial sums of squares, losses) go through
//! [`Collective::all_reduce_host`] in f64. Every operation is fallible: when a peer
//! fails, the others' next collective returns an error naming it.
//!
//! How separate processes become one group: [`launch`] reads a rank's place from
//! the environment torchrun, srun or mpirun set, and [`rendezvous`] brings the
//! ranks together (rank 0 hands out a payload, the ranks check they run the same
//! thing, and a heartbeat ends every rank when one drops out).

pub mod launch;
pub mod nccl;
pub mod rendezvous;
pub mod threads;

use std::ops::Range;

use anyhow::Result;

use crate::backend::{Backend, Span};

/// Where one rank stands: its rank in the group, the group's size, and its rank on
/// its own node (which GPU it drives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
}

impl Place {
    /// The only rank of a group of one.
    pub const SOLO: Place = Place {
        rank: 0,
        world: 1,
        local_rank: 0,
    };

    /// Rank 0 writes the run's files (metrics, plots, checkpoints).
    pub fn is_first(&self) -> bool {
        self.rank == 0
    }
}

/// Collective operations over the ranks of one group. Every rank calls the same
/// operations in the same order with spans of the same lengths; `shards` is
/// [`shards`]`(buf.len, world)` on every rank.
pub trait Collective {
    fn place(&self) -> Place;
    /// buf = the sum of every rank's buf, on every rank.
    fn all_reduce_sum(&self, be: &dyn Backend, buf: Span) -> Result<()>;
    /// buf[shards[rank]] = the sum over ranks of their buf[shards[rank]]; the rest of
    /// this rank's buf is left as it was.
    fn reduce_scatter_sum(
        &self,
        be: &dyn Backend,
        buf: Span,
        shards: &[Range<usize>],
    ) -> Result<()>;
    /// buf[shards[r]] = rank r's buf[shards[r]], for every r, on every rank.
    fn all_gather(&self, be: &dyn Backend, buf: Span, shards: &[Range<usize>]) -> Result<()>;
    /// buf = rank `root`'s buf, on every rank.
    fn broadcast(&self, be: &dyn Backend, buf: Span, root: usize) -> Result<()>;
    /// values = the sum of every rank's values (host scalars, in f64).
    fn all_reduce_host(&self, values: &mut [f64]) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// The group of one rank: every collective leaves its operands as they are.
pub struct Solo;

impl Collective for Solo {
    fn place(&self) -> Place {
        Place::SOLO
    }
    fn all_reduce_sum(&self, _: &dyn Backend, _: Span) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, _: &dyn Backend, _: Span, _: &[Range<usize>]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, _: &dyn Backend, _: Span, _: &[Range<usize>]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &dyn Backend, _: Span, _: usize) -> Result<()> {
        Ok(())
    }
    fn all_reduce_host(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// `n` elements split into `world` contiguous ranges in rank order, covering
/// `0..n` once: the first `n % world` ranges hold one element more than the others
/// (so sizes differ by at most one; some are empty when `n < world`).
pub fn shards(n: usize, world: usize) -> Vec<Range<usize>> {
    assert!(world > 0, "a group has at least one rank");
    let (base, extra) = (n / world, n % world);
    let mut start = 0;
    (0..world)
        .map(|r| {
            let len = base + usize::from(r < extra);
            start += len;
            start - len..start
        })
        .collect()
}
