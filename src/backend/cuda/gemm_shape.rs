//! The arithmetic of a cuBLASLt call, apart from the calls themselves (so a CPU can
//! test it): our row-major products as cuBLASLt's column-major layouts, the pointer
//! alignments it picks kernels by, and the one-line description of a failed call.

use cudarc::cublaslt::result::CublasError;

use super::gemm::{DType, Operand, Product};

/// Largest power of two (up to 256) dividing every byte address the operand touches;
/// cuBLASLt assumes 256 unless told, and picks kernels by it.
pub(super) fn alignment(ptr: u64) -> u32 {
    let bits = ptr | 256;
    1 << bits.trailing_zeros()
}

/// cuBLASLt's (rows, cols, leading dimension) of its A, B and C for our row-major
/// C[m, n] = op(A)[m, k] op(B)[k, n]. Its A is our B and its B our A: a row-major
/// matrix read column-major is its transpose, so C^T = op(B)^T op(A)^T is what it
/// computes, with the same transpose flags.
pub(super) fn column_major(
    m: usize,
    n: usize,
    k: usize,
    a_trans: bool,
    b_trans: bool,
) -> ([usize; 3], [usize; 3], [usize; 3]) {
    // Stored B is [k, n] (or [n, k] when transposed); column-major that is [n, k]
    // (or [k, n]), and op must give B^T [n, k].
    let lt_a = if b_trans { [k, n, k] } else { [n, k, n] };
    // Likewise stored A, which op must turn into A^T [k, m].
    let lt_b = if a_trans { [m, k, m] } else { [k, m, k] };
    (lt_a, lt_b, [n, m, n])
}

/// A failed GEMM in one line: types, shape, transposes, cuBLASLt's leading dimensions,
/// the byte alignments of A, B, C and D, the epilogue, and cuBLASLt's `version`.
pub(super) fn failure(
    dtype: DType,
    c: u64,
    a: Operand,
    b: Operand,
    p: Product,
    version: usize,
    err: &CublasError,
) -> String {
    let (la, lb, lc) = column_major(p.m, p.n, p.k, a.trans, b.trans);
    format!(
        "cuBLASLt GEMM failed: {err:?} ({dtype:?}, m={} n={} k={}, transposes A={} B={}, \
         leading dimensions A={} B={} C={}, alignments A={} B={} C={} D={} bytes, epilogue {:?}, \
         cuBLASLt {version})",
        p.m,
        p.n,
        p.k,
        a.trans,
        b.trans,
        lb[2],
        la[2],
        lc[2],
        alignment(a.ptr),
        alignment(b.ptr),
        alignment(c),
        alignment(c),
        p.epilogue
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::gemm::{DType, Epilogue, Operand, Product};

    /// x[i, j] of a column-major matrix with leading dimension ld, or of its transpose.
    fn at(x: &[f32], ld: usize, trans: bool, i: usize, j: usize) -> f32 {
        if trans { x[i * ld + j] } else { x[j * ld + i] }
    }

    /// The layouts, run through cuBLASLt's column-major definition, compute the
    /// row-major product, for every combination of transposes.
    #[test]
    fn column_major_layouts_compute_the_row_major_product() {
        let (m, n, k) = (3, 5, 4);
        let fill = |len: usize, seed: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
        };
        for (a_trans, b_trans) in [(false, false), (false, true), (true, false), (true, true)] {
            let (a, b) = (fill(m * k, 0.1), fill(k * n, 0.7));
            // Row-major reference: op(A)[i, l] and op(B)[l, j] from the stored matrices.
            let ra = |i: usize, l: usize| if a_trans { a[l * m + i] } else { a[i * k + l] };
            let rb = |l: usize, j: usize| if b_trans { b[j * k + l] } else { b[l * n + j] };
            let (la, lb, lc) = column_major(m, n, k, a_trans, b_trans);
            // Shapes as cuBLASLt checks them: op(A_lt) [n, k], op(B_lt) [k, m], ld >= rows.
            let op_dims = |l: [usize; 3], t: bool| if t { (l[1], l[0]) } else { (l[0], l[1]) };
            assert_eq!(op_dims(la, b_trans), (n, k));
            assert_eq!(op_dims(lb, a_trans), (k, m));
            assert!(la[2] >= la[0] && lb[2] >= lb[0] && lc[2] >= lc[0]);
            // cuBLASLt: D[i, j] = sum_l op(A_lt)[i, l] op(B_lt)[l, j], A_lt = our b.
            let mut d = vec![0f32; n * m];
            for i in 0..lc[0] {
                for j in 0..lc[1] {
                    d[j * lc[2] + i] = (0..k)
                        .map(|l| at(&b, la[2], b_trans, i, l) * at(&a, lb[2], a_trans, l, j))
                        .sum();
                }
            }
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|l| ra(i, l) * rb(l, j)).sum();
                    let got = d[i * n + j];
                    assert!(
                        (want - got).abs() < 1e-5,
                        "trans {a_trans}/{b_trans} at {i},{j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_failure_names_transposes_leading_dimensions_alignments_epilogue_and_version() {
        let (a, b) = (
            Operand {
                ptr: 0x1000,
                trans: false,
            },
            Operand {
                ptr: 0x1008,
                trans: true,
            },
        );
        let p = Product {
            m: 3,
            n: 5,
            k: 4,
            alpha: 1.0,
            beta: 0.0,
            epilogue: Epilogue::Bias { bias: 0x2000 },
            out: DType::F32,
        };
        let err =
            CublasError(cudarc::cublaslt::sys::cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED);
        let line = failure(DType::Bf16, 0x3004, a, b, p, 120803, &err);
        for part in [
            "CUBLAS_STATUS_EXECUTION_FAILED",
            "Bf16, m=3 n=5 k=4",
            "transposes A=false B=true",
            "leading dimensions A=4 B=4 C=5",
            "alignments A=256 B=8 C=4 D=4 bytes",
            "epilogue Bias",
            "cuBLASLt 120803",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        assert!(!line.contains('\n'), "one line: {line}");
    }
}
