//! The output head on the CPU: the steps of the chunked head (crate::head::chunked)
//! over host slices, in chunks of CHUNK positions so memory stays at CHUNK x V floats
//! whatever the batch.

use rayon::prelude::*;

use super::matmul::{column_sums_into, gemm};
use super::{Real, real};
use crate::head::chunked::{self, HeadSteps};
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
    grads: Option<(&mut [F], &mut [F], F)>,
    h: &[F],
    w: &[F],
    targets: &[u32],
    c: usize,
    kind: HeadKind,
) {
    let (n, v) = (losses.len(), w.len() / c);
    let with_grads = grads.is_some();
    let mut steps = Steps {
        losses,
        grads,
        h,
        w,
        targets,
        c,
        v,
        kind,
        w_sq: squared_norms(w, c),
        colsum: vec![F::zero(); v],
        dots: vec![F::zero(); CHUNK.min(n) * v],
    };
    chunked::head_loss(&mut steps, kind, n, CHUNK, with_grads);
}

/// The chunked head's steps over host slices, with the chunk's dot products (G after
/// the row pass) in `dots`.
struct Steps<'a, F: Real> {
    losses: &'a mut [F],
    grads: Option<(&'a mut [F], &'a mut [F], F)>,
    h: &'a [F],
    w: &'a [F],
    targets: &'a [u32],
    c: usize,
    v: usize,
    kind: HeadKind,
    w_sq: Vec<F>,
    colsum: Vec<F>,
    dots: Vec<F>,
}

impl<F: Real> HeadSteps for Steps<'_, F> {
    fn dots(&mut self, r0: usize, rows: usize) {
        let (c, v) = (self.c, self.v);
        let hc = &self.h[r0 * c..(r0 + rows) * c];
        let d = &mut self.dots[..rows * v];
        gemm(d, (rows, v, c), (hc, c, 1), (self.w, 1, c), false, F::one());
    }

    fn rows(&mut self, r0: usize, rows: usize, grads: bool) {
        let (kind, v) = (self.kind, self.v);
        let h_sq = squared_norms(&self.h[r0 * self.c..(r0 + rows) * self.c], self.c);
        let scale = self.grads.as_ref().filter(|_| grads).map(|g| g.2);
        let w_sq = &self.w_sq;
        self.losses[r0..r0 + rows]
            .par_iter_mut()
            .zip(self.dots[..rows * v].par_chunks_mut(v))
            .zip(h_sq.par_iter().zip(&self.targets[r0..r0 + rows]))
            .for_each(|((loss, row), (&hh, &y))| {
                *loss = row_loss_and_grad(kind, row, hh, w_sq, y as usize, scale);
            });
    }

    fn grad_h(&mut self, r0: usize, rows: usize, coef: f32) {
        let (c, v, w) = (self.c, self.v, self.w);
        let d = &self.dots[..rows * v];
        let (dh, _, _) = self.grads.as_mut().expect("gradient steps need grads");
        let dhc = &mut dh[r0 * c..(r0 + rows) * c];
        gemm(
            dhc,
            (rows, c, v),
            (d, v, 1),
            (w, c, 1),
            false,
            real(coef as f64),
        );
    }

    fn grad_w(&mut self, r0: usize, rows: usize, coef: f32) {
        let (c, v) = (self.c, self.v);
        let hc = &self.h[r0 * c..(r0 + rows) * c];
        let d = &self.dots[..rows * v];
        let (_, dw, _) = self.grads.as_mut().expect("gradient steps need grads");
        gemm(
            dw,
            (v, c, rows),
            (d, 1, v),
            (hc, c, 1),
            true,
            real(coef as f64),
        );
    }

    fn harmonic_chunk(&mut self, r0: usize, rows: usize) {
        let (c, v) = (self.c, self.v);
        let hc = &self.h[r0 * c..(r0 + rows) * c];
        let d = &self.dots[..rows * v];
        let (dh, _, _) = self.grads.as_mut().expect("gradient steps need grads");
        let two: F = real(2.0);
        dh[r0 * c..(r0 + rows) * c]
            .par_chunks_mut(c)
            .zip(d.par_chunks(v))
            .zip(hc.par_chunks(c))
            .for_each(|((dh, g), h)| {
                let rs = two * g.iter().fold(F::zero(), |s, &x| s + x);
                for (dh, &h) in dh.iter_mut().zip(h) {
                    *dh = *dh + rs * h;
                }
            });
        column_sums_into(&mut self.colsum, d, rows, v);
    }

    fn harmonic_end(&mut self) {
        let (c, w) = (self.c, self.w);
        let colsum = std::mem::take(&mut self.colsum);
        let (_, dw, _) = self.grads.as_mut().expect("gradient steps need grads");
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
