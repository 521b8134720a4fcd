//! The output head on the CPU, processed in chunks of positions so memory stays at
//! CHUNK x V floats whatever the batch:
//!   D = H W^T (GEMM), one row pass (crate::head) turns D into loss and G,
//!   softmax:  dH = G W,                      dW += G^T H
//!   harmonic: dH = 2 (rowsum(G) H - G W),    dW += 2 (colsum(G) W - G^T H)

use rayon::prelude::*;

use super::matmul::{column_sums_into, gemm};
use super::{Real, real};
use crate::head::{HeadKind, logits_from_dots, row_loss_and_grad};

const CHUNK: usize = 256;

/// Floats of host scratch `head_loss` holds at its peak for `n` positions: the
/// chunk's dot products, |h|^2 of its rows, |w|^2 and colsum(G).
pub fn scratch_floats(n: usize, v: usize) -> usize {
    let rows = CHUNK.min(n);
    rows * v + rows + 2 * v
}

fn squared_norms<F: Real>(m: &[F], c: usize) -> Vec<F> {
    m.par_chunks(c)
        .map(|r| r.iter().fold(F::zero(), |s, &x| s + x * x))
        .collect()
}

/// Writes losses[n]; with `grads` = (dh, dw, scale): dh = scale dL/dh, dw += scale dL/dw.
pub fn head_loss<F: Real>(
    losses: &mut [F],
    mut grads: Option<(&mut [F], &mut [F], F)>,
    h: &[F],
    w: &[F],
    targets: &[u32],
    c: usize,
    kind: HeadKind,
) {
    let (n, v) = (losses.len(), w.len() / c);
    let harmonic = matches!(kind, HeadKind::Harmonic { .. });
    let w_sq = squared_norms(w, c);
    let mut colsum = vec![F::zero(); v];
    let mut dots = vec![F::zero(); CHUNK.min(n) * v];
    for r0 in (0..n).step_by(CHUNK) {
        let rows = CHUNK.min(n - r0);
        let hc = &h[r0 * c..(r0 + rows) * c];
        let d = &mut dots[..rows * v];
        gemm(d, (rows, v, c), (hc, c, 1), (w, 1, c), false, F::one());
        let h_sq = squared_norms(hc, c);
        let scale = grads.as_ref().map(|g| g.2);
        losses[r0..r0 + rows]
            .par_iter_mut()
            .zip(d.par_chunks_mut(v))
            .zip(h_sq.par_iter().zip(&targets[r0..r0 + rows]))
            .for_each(|((loss, row), (&hh, &y))| {
                *loss = row_loss_and_grad(kind, row, hh, &w_sq, y as usize, scale);
            });
        let Some((dh, dw, _)) = grads.as_mut() else {
            continue;
        };
        let dhc = &mut dh[r0 * c..(r0 + rows) * c];
        let two: F = real(2.0);
        let gw_coef = if harmonic { -two } else { F::one() };
        // dH = gw_coef * G W, then the harmonic head adds 2 rowsum(G) h.
        gemm(dhc, (rows, c, v), (d, v, 1), (w, c, 1), false, gw_coef);
        // dW += gw_coef * G^T H
        gemm(dw, (v, c, rows), (d, 1, v), (hc, c, 1), true, gw_coef);
        if harmonic {
            dhc.par_chunks_mut(c)
                .zip(d.par_chunks(v))
                .zip(hc.par_chunks(c))
                .for_each(|((dh, g), h)| {
                    let rs = two * g.iter().fold(F::zero(), |s, &x| s + x);
                    for (dh, &h) in dh.iter_mut().zip(h) {
                        *dh = *dh + rs * h;
                    }
                });
            column_sums_into(&mut colsum, d, rows, v);
        }
    }
    if let (true, Some((_, dw, _))) = (harmonic, grads) {
        let two: F = real(2.0);
        dw.par_chunks_mut(c)
            .zip(w.par_chunks(c))
            .zip(&colsum)
            .for_each(|((dw, w), &cs)| {
                for (dw, &w) in dw.iter_mut().zip(w) {
                    *dw = *dw + two * cs * w;
                }
            });
    }
}

pub fn head_logits<F: Real>(
    out: &mut [F],
    h: &[F],
    w: &[F],
    n: usize,
    c: usize,
    v: usize,
    kind: HeadKind,
) {
    gemm(out, (n, v, c), (h, c, 1), (w, 1, c), false, F::one());
    let w_sq = squared_norms(w, c);
    let h_sq = squared_norms(h, c);
    out.par_chunks_mut(v)
        .zip(h_sq.par_iter())
        .for_each(|(row, &hh)| logits_from_dots(kind, row, hh, &w_sq));
}
