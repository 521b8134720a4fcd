//! Training on several ranks: where this process stands among them (`launch`, from
//! the environment torchrun, srun or mpirun set) and how the ranks meet and watch
//! each other (`rendezvous`: rank 0 hands out a payload, the ranks check they run
//! the same thing, and a heartbeat ends every rank when one drops out).

pub mod launch;
pub mod rendezvous;

/// One rank's place in a run: its global rank, the number of ranks, and its index
/// among the ranks of its node (which GPU it takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
}
