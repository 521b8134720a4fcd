//! Dense layers through the `gemm` crate (multi-threaded, SIMD), row-major:
//! forward out[n,oc] = inp[n,c] W[oc,c]^T + bias; backward dinp = dout W,
//! dW += dout^T inp, dbias += column sums of dout.

use rayon::prelude::*;

use super::{ROW_BLOCK, Real, sum_row_blocks};

/// dst[m,n] = alpha dst + beta (a b), with `a` and `b` given by (slice, row stride,
/// column stride) so transposes cost nothing. `alpha` is ignored when `accumulate`
/// is false. Contiguous dst, all threads.
pub fn gemm<F: Real>(
    dst: &mut [F],
    (m, n, k): (usize, usize, usize),
    a: (&[F], usize, usize),
    b: (&[F], usize, usize),
    accumulate: bool,
    beta: F,
) {
    // SAFETY: dst is a live, exclusively borrowed slice of the stated length.
    unsafe {
        gemm_strided(
            (dst.as_mut_ptr(), dst.len(), n),
            (m, n, k),
            a,
            b,
            accumulate,
            beta,
            true,
        )
    }
}

/// As [`gemm`], with dst given as (pointer, elements reachable from it, row
/// stride) and threading optional (callers already running in parallel pass
/// `parallel = false`). Raw, so parallel tasks can write disjoint column blocks of
/// one matrix without forming overlapping `&mut` slices.
///
/// # Safety
/// `dst.0` must be valid for writes of `dst.1` elements, and no other thread may
/// touch the elements this product writes.
pub unsafe fn gemm_strided<F: Real>(
    dst: (*mut F, usize, usize),
    (m, n, k): (usize, usize, usize),
    a: (&[F], usize, usize),
    b: (&[F], usize, usize),
    accumulate: bool,
    beta: F,
    parallel: bool,
) {
    let reach = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        dst.1 > reach(m, dst.2, n, 1)
            && a.0.len() > reach(m, a.1, k, a.2)
            && b.0.len() > reach(k, b.1, n, b.2)
    );
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assertion above keeps every index the strides reach in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.2 as isize,
            accumulate,
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            F::one(),
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `c` input channels; n = inp.len() / c rows, oc = w.len() / c output channels.
pub fn matmul_forward<F: Real>(out: &mut [F], inp: &[F], w: &[F], bias: Option<&[F]>, c: usize) {
    let (n, oc) = (inp.len() / c, w.len() / c);
    if let Some(bias) = bias {
        out.par_chunks_mut(oc)
            .for_each(|row| row.copy_from_slice(bias));
    }
    // W^T as a [c, oc] matrix: element (k, j) = w[j*c + k].
    gemm(
        out,
        (n, oc, c),
        (inp, c, 1),
        (w, 1, c),
        bias.is_some(),
        F::one(),
    );
}

pub fn matmul_backward<F: Real>(
    dinp: &mut [F],
    dw: &mut [F],
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    w: &[F],
    c: usize,
) {
    let (n, oc) = (inp.len() / c, w.len() / c);
    gemm(dinp, (n, c, oc), (dout, oc, 1), (w, c, 1), false, F::one());
    // dout^T as an [oc, n] matrix: element (o, t) = dout[t*oc + o].
    gemm(dw, (oc, c, n), (dout, 1, oc), (inp, c, 1), true, F::one());
    if let Some(dbias) = dbias {
        column_sums_into(dbias, dout, n, oc);
    }
}

/// dst[j] += sum_i src[i, j], with a fixed summation order whatever the thread count.
pub fn column_sums_into<F: Real>(dst: &mut [F], src: &[F], n: usize, cols: usize) {
    let partial: Vec<Vec<F>> = (0..n.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|blk| {
            let mut p = vec![F::zero(); cols];
            for row in
                src[blk * ROW_BLOCK * cols..((blk + 1) * ROW_BLOCK).min(n) * cols].chunks(cols)
            {
                for (p, &v) in p.iter_mut().zip(row) {
                    *p = *p + v;
                }
            }
            p
        })
        .collect();
    sum_row_blocks(dst, &partial);
}
