//! Dense layers on the GPU, the host half of cuda/matmul.cu (bias broadcast, column
//! sums) and cuda/convert.cu (fp32 -> bf16 operand copies) around cuBLASLt's GEMMs
//! (`gemm`): out[n, oc] = inp[n, c] W[oc, c]^T + b, its backward pass, and the fused
//! forms with GELU in cuBLASLt's epilogues.
//!
//! Operands: weights are read from their buffer's bf16 shadow in bf16 mode (see
//! `shadow`), activations are copied to bf16 scratch per GEMM, except those stored in
//! bf16 already (`alloc_gemm_operands`), which the GEMM reads where they are. fp32 mode is the
//! exactness mode: its GEMMs take no GELU or DGELU epilogue (cuBLASLt does not say how
//! closely its GELU follows the tanh form the CPU computes), only the bias one.

use cudarc::cublaslt::sys::cublasStatus_t as Status;

use super::gemm::{self, DType, Epilogue, Operand, Product};
use super::gemm_shape::failure;
use super::kernels::Arg::{I32, I64, Ptr};
use super::{CudaBackend, GpuPrecision, Slot};
use crate::backend::cost;
use crate::backend::operands as op;
use crate::backend::{Backend, Gelu, Linear, Span};

/// A GEMM operand before precision handling (`trans`: its transpose is used).
#[derive(Clone, Copy)]
struct Mat {
    src: Src,
    trans: bool,
}

#[derive(Clone, Copy)]
enum Src {
    /// fp32 activations, `len` floats: copied to bf16 scratch per GEMM in bf16 mode.
    Act { ptr: u64, len: usize },
    /// bf16 activations (bf16 mode only): read as they are.
    Act16(u64),
    /// A weight span: read from its buffer's bf16 shadow in bf16 mode.
    Weight(Span),
}

/// The first `len` activations of `span` as an operand, fp32 or bf16 as its buffer holds.
fn act_mat(be: &CudaBackend, span: Span, len: usize, trans: bool) -> Mat {
    let src = match be.dtype_of(span) {
        DType::F32 => Src::Act {
            ptr: be.ptr(span),
            len,
        },
        DType::Bf16 => Src::Act16(be.ptr16(span)),
    };
    Mat { src, trans }
}

fn weight_mat(span: Span, trans: bool) -> Mat {
    Mat {
        src: Src::Weight(span),
        trans,
    }
}

pub(super) fn product(m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> Product {
    Product {
        m,
        n,
        k,
        alpha,
        beta,
        epilogue: Epilogue::None,
        out: DType::F32,
    }
}

/// Whether the GELU and DGELU epilogues may finish a GEMM: in bf16 mode only, so that
/// fp32 mode runs the same tanh GELU kernels as the CPU reference.
fn gelu_epilogues(precision: GpuPrecision) -> bool {
    precision == GpuPrecision::Bf16
}

impl CudaBackend {
    pub(super) fn dtype(&self) -> DType {
        match self.precision {
            GpuPrecision::Fp32 => DType::F32,
            GpuPrecision::Bf16 => DType::Bf16,
        }
    }

    /// A bf16 copy of the `n` floats at `src`, in scratch `slot` (cuda/convert.cu).
    pub(super) fn bf16_copy(&self, src: u64, n: usize, slot: Slot) -> u64 {
        let dst = self.scratch(slot, 2 * n);
        self.part("to_bf16 operands", cost::to_bf16(n), || {
            self.launch_elems("to_bf16", n, &[Ptr(dst), Ptr(src), I64(n as i64)])
        });
        dst
    }

    /// A GEMM on fp32 data (in bf16 mode, on bf16 forms of the operands).
    fn gemm(&self, c: u64, a: Mat, b: Mat, p: Product) {
        let (a, b) = self.operands(a, b);
        self.gemm_typed(self.dtype(), c, a, b, p)
    }

    /// The operands as cuBLASLt reads them. In bf16 mode fp32 activations are copied to
    /// bf16 scratch (a's into OperandA, b's into OperandB), bf16 ones are read in
    /// place, and weights come from their buffers' shadows.
    fn operands(&self, a: Mat, b: Mat) -> (Operand, Operand) {
        let prepare = |m: Mat, slot: Slot| {
            let ptr = match (self.precision, m.src) {
                (GpuPrecision::Fp32, Src::Act { ptr, .. }) => ptr,
                (GpuPrecision::Fp32, Src::Weight(s)) => self.ptr(s),
                (GpuPrecision::Bf16, Src::Act { ptr, len }) => self.bf16_copy(ptr, len, slot),
                (GpuPrecision::Bf16, Src::Act16(ptr)) => ptr,
                (GpuPrecision::Fp32, Src::Act16(_)) => {
                    unreachable!("bf16 activations exist in bf16 mode only")
                }
                (GpuPrecision::Bf16, Src::Weight(s)) => self.weight16(s),
            };
            Operand {
                ptr,
                trans: m.trans,
            }
        };
        (prepare(a, Slot::OperandA), prepare(b, Slot::OperandB))
    }

    /// A GEMM on operands already in `dtype`.
    pub(super) fn gemm_typed(&self, dtype: DType, c: u64, a: Operand, b: Operand, p: Product) {
        self.written(c);
        self.gemm
            .run(self.stream.cu_stream() as _, dtype, c, a, b, p)
    }

    /// `p` finished by `epilogue` in cuBLASLt, on prepared operands; false, having run
    /// nothing, where cuBLASLt has no kernel for it (the caller then runs the unfused
    /// kernels, and `epilogue_fallbacks` counts it).
    fn gemm_epilogue(&self, c: u64, a: Operand, b: Operand, p: Product, e: Epilogue) -> bool {
        let p = Product {
            beta: 0.0,
            epilogue: e,
            ..p
        };
        let stream = self.stream.cu_stream() as _;
        match self.gemm.try_run(stream, self.dtype(), c, a, b, p) {
            Ok(()) => {}
            // No kernel for this epilogue (or these attributes) here: fall back.
            Err(e)
                if matches!(
                    e.0,
                    Status::CUBLAS_STATUS_NOT_SUPPORTED | Status::CUBLAS_STATUS_INVALID_VALUE
                ) =>
            {
                self.epilogue_fallbacks
                    .set(self.epilogue_fallbacks.get() + 1);
                return false;
            }
            // Anything else is a failure a fallback would only hide.
            Err(e) => panic!("{}", failure(self.dtype(), c, a, b, p, gemm::version(), &e)),
        }
        self.written(c);
        if let Epilogue::GeluAux { pre, .. } = e {
            self.written(pre);
        }
        true
    }

    /// out[n, oc] = x[n, c] w[oc, c]^T + bias, on prepared operands: the bias added in
    /// cuBLASLt's epilogue, or, where it has none, broadcast into out and accumulated
    /// onto by the GEMM.
    fn linear(
        &self,
        out: u64,
        x: Operand,
        w: Operand,
        bias: Option<u64>,
        (n, c, oc): (usize, usize, usize),
    ) {
        let p = product(n, oc, c, 1.0, 0.0);
        let dtype = self.dtype();
        let Some(bias) = bias else {
            return self.gemm_typed(dtype, out, x, w, p);
        };
        if !self.gemm_epilogue(out, x, w, p, Epilogue::Bias { bias }) {
            self.launch_elems(
                "bias_broadcast",
                n * oc,
                &[Ptr(out), Ptr(bias), I32(n as i32), I32(oc as i32)],
            );
            self.gemm_typed(dtype, out, x, w, Product { beta: 1.0, ..p });
        }
    }

    /// A layer's output gradient dout[n, oc] as the operand of its two backward GEMMs,
    /// with dbias += its column sums on the way. In bf16 mode one bf16 copy (in
    /// OperandA, which neither GEMM's other operand uses) serves both GEMMs, and where
    /// there is a bias it is written by the pass that sums it: dout is read once, not
    /// three times (bias sum, and a copy per GEMM). fp32 mode reads dout itself.
    fn output_grad(&self, dout: u64, dbias: Option<Span>, (n, oc): (usize, usize)) -> Src {
        let len = n * oc;
        match (self.precision, dbias) {
            (GpuPrecision::Fp32, Some(db)) => {
                self.column_sums_add(&[self.ptr(db)], dout, n, oc, None);
                Src::Act { ptr: dout, len }
            }
            (GpuPrecision::Fp32, None) => Src::Act { ptr: dout, len },
            (GpuPrecision::Bf16, Some(db)) => {
                let copy = self.scratch(Slot::OperandA, 2 * len);
                self.column_sums_add(&[self.ptr(db)], dout, n, oc, Some(copy));
                Src::Act16(copy)
            }
            (GpuPrecision::Bf16, None) => Src::Act16(self.bf16_copy(dout, len, Slot::OperandA)),
        }
    }

    /// The weight half of a dense layer's backward pass: dweight += dout^T inp, dout as
    /// `output_grad` made it.
    fn weight_grads(&self, dweight: Span, dout: Src, inp: Span, (n, c, oc): (usize, usize, usize)) {
        let dout = Mat {
            src: dout,
            trans: true,
        };
        let inp = act_mat(self, inp, n * c, false);
        self.gemm(self.ptr(dweight), dout, inp, product(oc, c, n, 1.0, 1.0));
    }

    /// Column sums of src[rows, cols] added into `dsts`, which split the columns into
    /// equal consecutive parts: dsts[k][j] += sum_r src[r, k w + j], w = cols / dsts.len(),
    /// and where `copy16` is given, a bf16 copy of src there in the same pass.
    /// Deterministic (cuda/matmul.cu): partial sums over fixed row ranges into scratch,
    /// then added in range order.
    pub(super) fn column_sums_add(
        &self,
        dsts: &[u64],
        src: u64,
        rows: usize,
        cols: usize,
        copy16: Option<u64>,
    ) {
        if rows == 0 || cols == 0 {
            return;
        }
        let splits = column_splits(rows);
        let part = self.scratch(Slot::ColumnPartials, 4 * splits * cols);
        self.launch(
            "column_partials",
            (cols.div_ceil(32) as u32, splits as u32),
            (32, 8),
            0,
            &[
                Ptr(part),
                Ptr(copy16.unwrap_or(0)),
                Ptr(src),
                I32(rows as i32),
                I32(cols as i32),
            ],
        );
        let w = cols / dsts.len();
        for (k, &dst) in dsts.iter().enumerate() {
            self.column_partials_add(dst, part + (4 * k * w) as u64, splits, w, cols);
        }
    }

    /// dst[j] += sum_s part[s ld + j] for j < cols, s = 0, 1, .. splits - 1 in order
    /// (cuda/matmul.cu): partial sums folded in a fixed order.
    pub(super) fn column_partials_add(
        &self,
        dst: u64,
        part: u64,
        splits: usize,
        cols: usize,
        ld: usize,
    ) {
        self.launch_elems(
            "column_partials_add",
            cols,
            &[
                Ptr(dst),
                Ptr(part),
                I32(splits as i32),
                I32(cols as i32),
                I32(ld as i32),
            ],
        );
    }
}

/// Row ranges `column_sums_add` splits `rows` into: about 512 rows each, 1 to 64. A
/// function of `rows` alone, so the order of every addition is too.
pub(super) fn column_splits(rows: usize) -> usize {
    rows.div_ceil(512).clamp(1, 64)
}

pub(super) fn matmul_forward(be: &CudaBackend, out: op::Mat, inp: op::Mat, layer: Linear) {
    let (n, c, oc) = (inp.rows, inp.cols, layer.w.rows);
    let (out, inp, weight, bias) = (out.span, inp.span, layer.w.span, layer.b);
    let (x, w) = be.operands(act_mat(be, inp, n * c, false), weight_mat(weight, true));
    be.linear(be.ptr(out), x, w, bias.map(|b| be.ptr(b)), (n, c, oc));
}

pub(super) fn matmul_backward(
    be: &CudaBackend,
    dinp: op::Mat,
    dlayer: Linear,
    dout: op::Mat,
    inp: op::Mat,
    w: op::Mat,
) {
    let (n, c, oc) = (inp.rows, inp.cols, w.rows);
    let dinp = dinp.span;
    let (dout, inp, weight) = (dout.span, inp.span, w.span);
    let dy = be.output_grad(be.ptr(dout), dlayer.b, (n, oc));
    // dinp[n, c] = dout[n, oc] W[oc, c]
    be.gemm(
        be.ptr(dinp),
        Mat {
            src: dy,
            trans: false,
        },
        weight_mat(weight, false),
        product(n, c, oc, 1.0, 0.0),
    );
    be.weight_grads(dlayer.w.span, dy, inp, (n, c, oc));
}

/// One GEMM: cuBLASLt's GELU_AUX_BIAS epilogue adds the bias and writes both
/// gelu(x W^T + b) and the pre-activation, so no kernel broadcasts the bias first
/// or reads pre back to apply GELU. An out stored in bf16 (for the GEMMs that alone
/// read it) is the epilogue's output type; pre stays fp32.
pub(super) fn matmul_gelu_forward(be: &CudaBackend, y: Gelu, inp: op::Mat, layer: Linear) {
    let (n, c, oc) = (inp.rows, inp.cols, layer.w.rows);
    let (pre, out, inp) = (y.pre.span, y.out.span, inp.span);
    let (weight, bias) = (layer.w.span, layer.b);
    let (x, w) = be.operands(act_mat(be, inp, n * c, false), weight_mat(weight, true));
    let bias = bias.map(|b| be.ptr(b));
    let epilogue = Epilogue::GeluAux {
        bias: bias.unwrap_or(0),
        pre: be.ptr(pre),
    };
    let (out_ptr, out_type) = be.any_ptr(out);
    let p = Product {
        out: out_type,
        ..product(n, oc, c, 1.0, 0.0)
    };
    let fused = gelu_epilogues(be.precision) && be.gemm_epilogue(out_ptr, x, w, p, epilogue);
    if !fused {
        be.linear(be.ptr(pre), x, w, bias, (n, c, oc));
        be.gelu_forward(out, pre);
    }
}

/// dpre = gelu'(pre) * (dout W) in one GEMM, through cuBLASLt's DGELU epilogue
/// (which reads pre): dact = dout W is never written and read back, and
/// gelu_backward's launch goes. The bias gradient stays a column-sum kernel:
/// cuBLASLt's BGRAD epilogues overwrite it, while the trait accumulates it.
pub(super) fn gelu_matmul_backward(
    be: &CudaBackend,
    d: Gelu,
    dlayer: Linear,
    dout: op::Mat,
    act: Gelu,
    w: op::Mat,
) {
    let (n, c, oc) = (dout.rows, w.cols, w.rows);
    let (dpre, dact) = (d.pre.span, d.out.span);
    let (dout, pre, act, weight) = (dout.span, act.pre.span, act.out.span, w.span);
    let dout = be.output_grad(be.ptr(dout), dlayer.b, (n, oc));
    let dy = Mat {
        src: dout,
        trans: false,
    };
    let (dy, w) = be.operands(dy, weight_mat(weight, false));
    let p = product(n, c, oc, 1.0, 0.0);
    let epilogue = Epilogue::DGelu { pre: be.ptr(pre) };
    let fused = gelu_epilogues(be.precision) && be.gemm_epilogue(be.ptr(dpre), dy, w, p, epilogue);
    if !fused {
        be.gemm_typed(be.dtype(), be.ptr(dact), dy, w, p);
        be.gelu_backward(dpre, pre, dact);
    }
    be.weight_grads(dlayer.w.span, dout, act, (n, c, oc));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp32_mode_takes_no_gelu_epilogue() {
        assert!(!gelu_epilogues(GpuPrecision::Fp32));
        assert!(gelu_epilogues(GpuPrecision::Bf16));
    }
}
