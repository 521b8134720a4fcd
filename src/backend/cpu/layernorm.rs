//! LayerNorm over the last dimension, per row of c channels:
//! mean = sum x / c, rstd = 1/sqrt(var + eps) (biased variance),
//! y = (x - mean) rstd w + b.
//! Backward with xhat = (x - mean) rstd, dxhat = dy w:
//! dx += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)); dw += dy xhat; db += dy.

use rayon::prelude::*;

use super::{ROW_BLOCK, Real, real, sum_row_blocks};

pub fn layernorm_forward<F: Real>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    w: &[F],
    b: &[F],
    eps: f32,
) {
    let c = w.len();
    let inv_c: F = real(1.0 / c as f64);
    let eps: F = real(eps as f64);
    out.par_chunks_mut(c)
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .zip(inp.par_chunks(c))
        .for_each(|((o, (m, r)), x)| {
            let mu = x.iter().fold(F::zero(), |s, &v| s + v) * inv_c;
            let var = x.iter().fold(F::zero(), |s, &v| s + (v - mu) * (v - mu)) * inv_c;
            let rs = F::one() / (var + eps).sqrt();
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                *o = (x - mu) * rs * w + b;
            }
            *m = mu;
            *r = rs;
        });
}

pub fn layernorm_backward<F: Real>(
    dinp: &mut [F],
    dw: &mut [F],
    db: &mut [F],
    dout: &[F],
    inp: &[F],
    w: &[F],
    (mean, rstd): (&[F], &[F]),
) {
    let c = w.len();
    let inv_c: F = real(1.0 / c as f64);
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((dx, (dy, x)), (&mu, &rs))| {
            let (mut sum_dxhat, mut sum_dxhat_xhat) = (F::zero(), F::zero());
            for ((&dy, &x), &w) in dy.iter().zip(x).zip(w) {
                let xhat = (x - mu) * rs;
                sum_dxhat = sum_dxhat + dy * w;
                sum_dxhat_xhat = sum_dxhat_xhat + dy * w * xhat;
            }
            let (m1, m2) = (sum_dxhat * inv_c, sum_dxhat_xhat * inv_c);
            for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                let xhat = (x - mu) * rs;
                *dx = *dx + rs * (dy * w - m1 - xhat * m2);
            }
        });
    // Parameter gradients: per-block partial sums in a fixed order, so the result does
    // not depend on the thread count.
    let n = mean.len();
    let partial: Vec<(Vec<F>, Vec<F>)> = (0..n.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|blk| {
            let (mut pw, mut pb) = (vec![F::zero(); c], vec![F::zero(); c]);
            for row in blk * ROW_BLOCK..((blk + 1) * ROW_BLOCK).min(n) {
                let (dy, x) = (&dout[row * c..][..c], &inp[row * c..][..c]);
                for i in 0..c {
                    pw[i] = pw[i] + dy[i] * (x[i] - mean[row]) * rstd[row];
                    pb[i] = pb[i] + dy[i];
                }
            }
            (pw, pb)
        })
        .collect();
    let (pw, pb): (Vec<_>, Vec<_>) = partial.into_iter().unzip();
    sum_row_blocks(dw, &pw);
    sum_row_blocks(db, &pb);
}
