//! Causal multi-head self-attention as per-(batch, head) GEMMs.
//!
//! qkv[b,t,:] = [q | k | v], each c wide, head h at columns h*hs..(h+1)*hs.
//! Per (b, h), with Q, K, V the [T, hs] strided views:
//!   S = Q K^T / sqrt(hs);  P = softmax of each row over t2 <= t (0 above the
//!   diagonal), kept as the state [B, NH, T, T];  O = P V.
//! Backward: dP = dO V^T;  dS = P (dP - rowsum(P dP)) / sqrt(hs);
//!   dQ = dS K;  dK = dS^T Q;  dV = P^T dO.
//! Tasks run in parallel over (b, h); each GEMM is single-threaded inside its task.

use rayon::prelude::*;

use super::matmul::gemm_strided;
use super::{Real, SyncPtr, real};

pub fn attention_state_len(b: usize, t: usize, nh: usize) -> usize {
    b * nh * t * t
}

/// Row-wise causal softmax of S in place.
fn causal_softmax<F: Real>(p: &mut [F], t: usize) {
    for (row, r) in p.chunks_mut(t).enumerate() {
        let max = r[..=row].iter().fold(F::neg_infinity(), |m, &x| m.max(x));
        let mut sum = F::zero();
        for x in r[..=row].iter_mut() {
            *x = (*x - max).exp();
            sum = sum + *x;
        }
        for x in r[..=row].iter_mut() {
            *x = *x / sum;
        }
        r[row + 1..].fill(F::zero());
    }
}

pub fn attention_forward<F: Real>(
    out: &mut [F],
    att: &mut [F],
    qkv: &[F],
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale: F = real(1.0 / (hs as f64).sqrt());
    let out_len = out.len();
    let out = SyncPtr(out.as_mut_ptr());
    att.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        let (b, h) = (bh / nh, bh % nh);
        let base = b * t * 3 * c + h * hs;
        let (q, k, v) = (&qkv[base..], &qkv[base + c..], &qkv[base + 2 * c..]);
        // SAFETY: p is this task's own slice; task (b, h) writes only head h's
        // columns of batch b's rows of out.
        unsafe {
            gemm_strided(
                (p.as_mut_ptr(), p.len(), t),
                (t, t, hs),
                (q, 3 * c, 1),
                (k, 1, 3 * c),
                false,
                scale,
                false,
            );
            causal_softmax(p, t);
            let o = b * t * c + h * hs;
            gemm_strided(
                (out.get().add(o), out_len - o, c),
                (t, hs, t),
                (p, t, 1),
                (v, 3 * c, 1),
                false,
                F::one(),
                false,
            );
        }
    });
}

pub fn attention_backward<F: Real>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    att: &[F],
    t: usize,
    c: usize,
    nh: usize,
) {
    let b = dout.len() / (t * c);
    let hs = c / nh;
    let scale: F = real(1.0 / (hs as f64).sqrt());
    let dqkv_len = dqkv.len();
    let dqkv = SyncPtr(dqkv.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each(|bh| {
        let (bb, h) = (bh / nh, bh % nh);
        let p = &att[bh * t * t..][..t * t];
        let base = bb * t * 3 * c + h * hs;
        let (q, k, v) = (&qkv[base..], &qkv[base + c..], &qkv[base + 2 * c..]);
        let d_o = &dout[bb * t * c + h * hs..];
        // dS, built in place from dP.
        let mut ds = vec![F::zero(); t * t];
        // SAFETY: ds is this task's own buffer.
        unsafe {
            gemm_strided(
                (ds.as_mut_ptr(), ds.len(), t),
                (t, t, hs),
                (d_o, c, 1),
                (v, 1, 3 * c),
                false,
                F::one(),
                false,
            )
        };
        for (row, (d, p)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
            let dot = (0..=row).fold(F::zero(), |s, i| s + p[i] * d[i]);
            for i in 0..t {
                d[i] = p[i] * (d[i] - dot) * scale;
            }
        }
        let at = |off: usize| (unsafe { dqkv.get().add(off) }, dqkv_len - off, 3 * c);
        // SAFETY: task (bb, h) writes only head h's columns of batch bb's rows.
        unsafe {
            gemm_strided(
                at(base),
                (t, hs, t),
                (&ds, t, 1),
                (k, 3 * c, 1),
                false,
                F::one(),
                false,
            );
            gemm_strided(
                at(base + c),
                (t, hs, t),
                (&ds, 1, t),
                (q, 3 * c, 1),
                false,
                F::one(),
                false,
            );
            gemm_strided(
                at(base + 2 * c),
                (t, hs, t),
                (p, 1, t),
                (d_o, c, 1),
                false,
                F::one(),
                false,
            );
        }
    });
}
