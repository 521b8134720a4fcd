//! The token and position embeddings on the GPU, the host half of cuda/encoder.cu.
//!
//! The wte backward is deterministic: the host groups the positions by token into a
//! bucket table (`buckets`, from its copy of the token buffer, see `token_host`), and
//! the kernel sums each bucket's rows in that fixed order, with no atomics. The table
//! travels in one synchronous copy, so the host waits there for the queued backward.

use cudarc::driver::result as drv;

use super::kernels::Arg::{I32, Ptr};
use super::{CudaBackend, Slot};
use crate::backend::{Mat, TokenSpan};

/// Channels per block of `encoder_backward_wte` (WTE_TILE in cuda/encoder.cu).
const WTE_TILE: usize = 256;

/// The bucket table of `tokens`: the positions sorted by (token, position), then one
/// (token, start, count) triple per distinct token, in increasing token order; `start`
/// indexes the positions. Its length is `tokens.len() + 3 * distinct tokens`.
fn buckets(tokens: &[u32]) -> Vec<u32> {
    let mut table: Vec<u32> = (0..tokens.len() as u32).collect();
    // Stable: equal tokens keep increasing positions.
    table.sort_by_key(|&r| tokens[r as usize]);
    let n = tokens.len();
    let mut start = 0;
    while start < n {
        let v = tokens[table[start] as usize];
        // Only the positions: the triples appended so far follow them in `table`.
        let end = start + table[start..n].partition_point(|&r| tokens[r as usize] == v);
        table.extend([v, start as u32, (end - start) as u32]);
        start = end;
    }
    table
}

/// Bytes of the bucket table's scratch for `n` positions over a vocabulary of `v`:
/// the positions and at most min(n, v) triples.
pub(super) fn bucket_bytes(n: usize, v: usize) -> usize {
    4 * (n + 3 * n.min(v))
}

pub(super) fn encoder_forward(
    be: &CudaBackend,
    out: Mat,
    tokens: TokenSpan,
    wte: Mat,
    wpe: Mat,
    t: usize,
) {
    let (b, c) = (out.rows / t, out.cols);
    let (out, wte, wpe) = (out.span, wte.span, wpe.span);
    be.launch_elems(
        "encoder_forward",
        b * t * c,
        &[
            Ptr(be.ptr(out)),
            Ptr(be.tptr(tokens)),
            Ptr(be.ptr(wte)),
            Ptr(be.ptr(wpe)),
            I32((b * t) as i32),
            I32(t as i32),
            I32(c as i32),
        ],
    );
}

pub(super) fn encoder_backward(
    be: &CudaBackend,
    dwte: Mat,
    dwpe: Mat,
    dout: Mat,
    tokens: TokenSpan,
    t: usize,
) {
    let (b, c, v) = (dout.rows / t, dout.cols, dwte.rows);
    let n = b * t;
    if n == 0 {
        return;
    }
    let table = buckets(&be.token_host(tokens));
    let at = be.scratch(Slot::EncoderBuckets, bucket_bytes(n, v));
    // SAFETY: table.len() <= n + 3 min(n, v) words fit the slot; the copy is synchronous.
    unsafe { drv::memcpy_htod_sync(at, &table) }
        .unwrap_or_else(|e| panic!("CUDA error copying the token buckets: {e}"));
    let distinct = (table.len() - n) / 3;
    be.launch(
        "encoder_backward_wte",
        (distinct as u32, c.div_ceil(WTE_TILE) as u32),
        (32, 8),
        0,
        &[
            Ptr(be.ptr(dwte.span)),
            Ptr(be.ptr(dout.span)),
            Ptr(at + 4 * n as u64),
            Ptr(at),
            I32(c as i32),
        ],
    );
    be.launch_elems(
        "encoder_backward_wpe",
        t * c,
        &[
            Ptr(be.ptr(dwpe.span)),
            Ptr(be.ptr(dout.span)),
            I32(b as i32),
            I32(t as i32),
            I32(c as i32),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::buckets;

    #[test]
    fn buckets_list_each_tokens_positions_in_order() {
        let tokens = [5, 2, 5, 7, 2, 5];
        let t = buckets(&tokens);
        let (pos, triples) = t.split_at(tokens.len());
        assert_eq!(pos, [1, 4, 0, 2, 5, 3]);
        assert_eq!(triples, [2, 0, 2, 5, 2, 3, 7, 5, 1]);
        assert_eq!(buckets(&[]), Vec::<u32>::new());
    }

    /// Against a plain grouping, on token lists long enough that the triples appended
    /// while the table is built could be mistaken for positions.
    #[test]
    fn buckets_of_many_tokens_hold_every_position_once_by_token() {
        let mut state = 7u64;
        for (n, vocab) in [(51, 101), (200, 7), (1000, 50304), (64, 1)] {
            let tokens: Vec<u32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % vocab) as u32
                })
                .collect();
            let mut want_pos: Vec<u32> = (0..n as u32).collect();
            want_pos.sort_by_key(|&r| (tokens[r as usize], r));
            let mut want_triples = Vec::new();
            for (i, &r) in want_pos.iter().enumerate() {
                let v = tokens[r as usize];
                match want_triples.chunks_exact_mut(3).last() {
                    Some([last, _, count]) if *last == v => *count += 1,
                    _ => want_triples.extend([v, i as u32, 1]),
                }
            }
            let t = buckets(&tokens);
            let (pos, triples) = t.split_at(n);
            assert_eq!(pos, want_pos, "positions, {n} tokens");
            assert_eq!(triples, want_triples, "triples, {n} tokens of {vocab}");
        }
    }
}
