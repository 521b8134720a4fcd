//! Batches for training and validation, served from shards.
//!
//! Each shard is cut into windows of T+1 tokens (inputs are the first T, targets the
//! last T; consecutive windows share one token; windows do not cross shards). An
//! epoch visits the shards in an order shuffled by (seed, epoch), and each shard's
//! windows in an order shuffled by (seed, epoch, shard): shuffled, yet reading one
//! shard at a time, which keeps page-cache use local when the data exceeds memory.
//! Batches are consecutive runs of B windows of that sequence, crossing shard
//! boundaries; batch k goes to rank k mod world, so the ranks together take every
//! window of an epoch once (except a remainder of fewer than B x world windows at
//! its end). Validation reads the first windows in file order, the same every time.

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::shard::Shard;

/// One micro-batch: `b` rows of `t` inputs and the `t` next tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    fn with_capacity(tokens: usize) -> Batch {
        Batch {
            inputs: Vec::with_capacity(tokens),
            targets: Vec::with_capacity(tokens),
        }
    }

    /// Appends the window of `t + 1` tokens at `start` of `shard`.
    fn push_window(
        &mut self,
        shard: &Shard,
        start: usize,
        t: usize,
        scratch: &mut Vec<u32>,
    ) -> Result<()> {
        scratch.clear();
        shard.read(start, t + 1, scratch)?;
        self.inputs.extend_from_slice(&scratch[..t]);
        self.targets.extend_from_slice(&scratch[1..]);
        Ok(())
    }
}

/// Where the loader is: with the same data and settings, the position fully
/// determines every batch that follows. After each step all ranks share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderPosition {
    pub epoch: u64,
    /// The shard (index in file-name order) where the next round of batches starts.
    pub shard: usize,
    /// Windows of that shard served this epoch, in its shuffled order.
    pub offset: u64,
}

pub struct Loader {
    shards: Vec<Shard>,
    /// Windows in each shard.
    windows: Vec<u64>,
    total: u64,
    b: usize,
    t: usize,
    seed: u64,
    rank: usize,
    world: usize,
    epoch: u64,
    /// Shards in this epoch's visiting order.
    order: Vec<usize>,
    /// starts[i]: windows in the shards visited before order[i]; ends with total.
    starts: Vec<u64>,
    /// Index in this epoch's window sequence where the next round of batches starts.
    next: u64,
    /// One shard's window order this epoch, kept while reading that shard.
    perm: Option<(usize, Vec<u32>)>,
}

/// A generator for one (seed, epoch, stream): stream 0 orders shards, stream
/// 1 + s orders the windows of shard s.
fn rng(seed: u64, epoch: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(stream);
    rng
}

impl Loader {
    /// Serves windows of `t + 1` tokens in batches of `b`, as rank `rank` of
    /// `world`; an error if the shards hold fewer than one batch per rank.
    pub fn new(
        shards: Vec<Shard>,
        b: usize,
        t: usize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<Loader> {
        assert!(rank < world && b > 0 && t > 0);
        let windows: Vec<u64> = shards
            .iter()
            .map(|s| (s.len().saturating_sub(1) / t) as u64)
            .collect();
        let total = windows.iter().sum();
        if total < (b * world) as u64 {
            bail!(
                "{} tokens in {} shard(s) make {total} windows of {} tokens, fewer than one batch of {b} per rank for {world} rank(s)",
                shards.iter().map(Shard::len).sum::<usize>(),
                shards.len(),
                t + 1
            );
        }
        let mut loader = Loader {
            shards,
            windows,
            total,
            b,
            t,
            seed,
            rank,
            world,
            epoch: 0,
            order: Vec::new(),
            starts: Vec::new(),
            next: 0,
            perm: None,
        };
        loader.start_epoch(0);
        Ok(loader)
    }

    /// Batches (of all ranks together) in one epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        self.total / self.round() * self.world as u64
    }

    /// Windows served by all ranks together per round of batches.
    fn round(&self) -> u64 {
        (self.b * self.world) as u64
    }

    /// The shard order of `epoch` and the windows before each shard in it.
    fn plan(&self, epoch: u64) -> (Vec<usize>, Vec<u64>) {
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        order.shuffle(&mut rng(self.seed, epoch, 0));
        let starts = std::iter::once(0)
            .chain(order.iter().scan(0, |acc, &s| {
                *acc += self.windows[s];
                Some(*acc)
            }))
            .collect();
        (order, starts)
    }

    fn start_epoch(&mut self, epoch: u64) {
        (self.order, self.starts) = self.plan(epoch);
        self.epoch = epoch;
        self.next = 0;
        self.perm = None;
    }

    /// (index into `order`, offset in that shard) of window `g` of this epoch.
    fn locate(&self, g: u64) -> (usize, u64) {
        debug_assert!(g < self.total);
        let i = self.starts.partition_point(|&s| s <= g) - 1;
        (i, g - self.starts[i])
    }

    /// The first token of the window at `offset` in shard `s`'s order this epoch.
    fn window_start(&mut self, s: usize, offset: u64) -> usize {
        if self.perm.as_ref().is_none_or(|(cached, _)| *cached != s) {
            let mut perm: Vec<u32> = (0..self.windows[s] as u32).collect();
            perm.shuffle(&mut rng(self.seed, self.epoch, 1 + s as u64));
            self.perm = Some((s, perm));
        }
        let (_, perm) = self.perm.as_ref().expect("just filled");
        perm[offset as usize] as usize * self.t
    }

    pub fn position(&self) -> LoaderPosition {
        let (i, offset) = self.locate(self.next);
        LoaderPosition {
            epoch: self.epoch,
            shard: self.order[i],
            offset,
        }
    }

    /// Continues from `pos`, as saved by [`Loader::position`] on the same data.
    pub fn seek(&mut self, pos: LoaderPosition) -> Result<()> {
        if pos.shard < self.shards.len() && pos.offset < self.windows[pos.shard] {
            let (order, starts) = self.plan(pos.epoch);
            let i = order
                .iter()
                .position(|&s| s == pos.shard)
                .expect("every shard");
            let g = starts[i] + pos.offset;
            if g + self.round() <= self.total {
                self.start_epoch(pos.epoch);
                self.next = g;
                return Ok(());
            }
        }
        bail!(
            "loader position (epoch {}, shard {}, offset {}) does not fit this data ({} shards, {} windows of {} tokens, batch {} x {} ranks)",
            pos.epoch,
            pos.shard,
            pos.offset,
            self.shards.len(),
            self.total,
            self.t + 1,
            self.b,
            self.world
        )
    }

    /// This rank's next batch; moves to the next epoch (reshuffled) when done. An
    /// error if a shard's file no longer holds its tokens.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let mut batch = Batch::with_capacity(self.b * self.t);
        let mut scratch = Vec::with_capacity(self.t + 1);
        let first = self.next + (self.rank * self.b) as u64;
        for g in first..first + self.b as u64 {
            let (i, offset) = self.locate(g);
            let s = self.order[i];
            let start = self.window_start(s, offset);
            batch.push_window(&self.shards[s], start, self.t, &mut scratch)?;
        }
        self.next += self.round();
        if self.next + self.round() > self.total {
            self.start_epoch(self.epoch + 1);
        }
        Ok(batch)
    }

    /// The first `count` batches in file order (for validation): at most as many
    /// as the shards hold.
    pub fn sequential_batches(&self, count: usize) -> Result<Vec<Batch>> {
        let mut windows = self
            .shards
            .iter()
            .zip(&self.windows)
            .flat_map(|(shard, &n)| (0..n as usize).map(move |w| (shard, w * self.t)));
        let mut scratch = Vec::with_capacity(self.t + 1);
        let count = count.min((self.total / self.b as u64) as usize);
        (0..count)
            .map(|_| {
                let mut batch = Batch::with_capacity(self.b * self.t);
                for (shard, start) in windows.by_ref().take(self.b) {
                    batch.push_window(shard, start, self.t, &mut scratch)?;
                }
                Ok(batch)
            })
            .collect()
    }
}
