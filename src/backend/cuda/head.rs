//! The output head on the GPU, the host half of cuda/head.cu: the chunked algorithm
//! of src/backend/cpu/head.rs with cuBLASLt GEMMs. Per chunk of rows: D = H W^T, the
//! row pass (`head_rows`: logits z, the loss, G in place of z), then dH = coef G W and
//! dW += coef G^T H (coef -2 harmonic, 1 softmax) and the harmonic corrections
//! (`add_scaled_rows` with rowsum(G), `column_sums_add` for colsum(G)).

use cudarc::driver::sys as cu;

use super::gemm::Operand;
use super::kernels::Arg::{F32, I32, Ptr};
use super::linear::product;
use super::{CudaBackend, GpuPrecision, Slot};
use crate::backend::{HeadGrads, Mat, Span, TokenSpan};
use crate::head::HeadKind;

/// What `head_rows` writes over a chunk of dot products.
#[derive(Clone, Copy)]
enum RowPass {
    /// The logits z, in place of the dot products.
    Logits,
    /// z and each row's loss.
    Loss,
    /// The loss, and G (of `scale` times the loss) in place of z, with its bf16 copy
    /// and row sums where the chunk has room for them.
    LossAndGrad { scale: f32 },
}

impl RowPass {
    /// The kernel's `mode` and `scale` arguments.
    fn mode_and_scale(self) -> (i32, f32) {
        match self {
            RowPass::Logits => (0, 1.0),
            RowPass::Loss => (1, 1.0),
            RowPass::LossAndGrad { scale } => (2, scale),
        }
    }
}

/// Rows `r0..r0 + rows` of the head's dot products at `dots` (row 0 is row r0), with
/// G's bf16 copy `g16` and per-row sums `rowsum` of G (0 where not wanted).
#[derive(Clone, Copy)]
struct Chunk {
    dots: u64,
    g16: u64,
    rowsum: u64,
    r0: usize,
    rows: usize,
}

/// `p + bytes`, keeping a null pointer null (optional kernel inputs).
fn offset(p: u64, bytes: usize) -> u64 {
    if p == 0 { 0 } else { p + bytes as u64 }
}

/// The head's inputs as the kernels and GEMMs read them.
struct HeadInputs {
    /// GEMM operands: bf16 copies in bf16 mode, else the fp32 data.
    h_op: u64,
    w_op: u64,
    /// bf16 copies (0 in fp32 mode) for the norms and the harmonic corrections.
    h16: u64,
    w16: u64,
    /// |h|^2 and |w|^2 (0 for the softmax head).
    h_sq: u64,
    w_sq: u64,
    harmonic: bool,
    half_n: f32,
    eps: f32,
}

impl CudaBackend {
    fn head_inputs(
        &self,
        h: Span,
        w: Span,
        n: usize,
        c: usize,
        v: usize,
        kind: HeadKind,
    ) -> HeadInputs {
        let (hp, wp) = (self.ptr(h), self.ptr(w));
        let (h16, w16) = match self.precision {
            GpuPrecision::Fp32 => (0, 0),
            GpuPrecision::Bf16 => (self.bf16_copy(hp, n * c, Slot::HeadH16), self.weight16(w)),
        };
        let (harmonic, half_n, eps) = match kind {
            HeadKind::Softmax => (false, 0.0, 0.0),
            HeadKind::Harmonic { exponent, eps } => (true, exponent / 2.0, eps),
        };
        let (mut h_sq, mut w_sq) = (0, 0);
        if harmonic {
            // |h|^2 and |w|^2 of the exact values the GEMM multiplies.
            h_sq = self.scratch(Slot::HeadHsq, 4 * n);
            w_sq = self.scratch(Slot::HeadWsq, 4 * v);
            self.row_sq_norms(h_sq, hp, h16, n, c);
            self.row_sq_norms(w_sq, wp, w16, v, c);
        }
        let pick = |bf: u64, f: u64| if bf != 0 { bf } else { f };
        HeadInputs {
            h_op: pick(h16, hp),
            w_op: pick(w16, wp),
            h16,
            w16,
            h_sq,
            w_sq,
            harmonic,
            half_n,
            eps,
        }
    }

    /// The head's row pass over one chunk (see cuda/head.cu); `losses` and `targets`
    /// are indexed from row 0 of the whole head (0: none).
    fn head_rows(
        &self,
        x: &HeadInputs,
        chunk: Chunk,
        losses: u64,
        targets: u64,
        v: usize,
        pass: RowPass,
    ) {
        let Chunk {
            dots,
            g16,
            rowsum,
            r0,
            rows,
        } = chunk;
        let (mode, scale) = pass.mode_and_scale();
        self.launch(
            "head_rows",
            (rows as u32, 1),
            (256, 1),
            0,
            &[
                Ptr(dots),
                Ptr(g16),
                Ptr(offset(losses, 4 * r0)),
                Ptr(rowsum),
                Ptr(offset(x.h_sq, 4 * r0)),
                Ptr(x.w_sq),
                Ptr(offset(targets, 4 * r0)),
                I32(v as i32),
                I32(x.harmonic as i32),
                F32(x.half_n),
                F32(x.eps),
                I32(mode),
                F32(scale),
            ],
        );
    }

    fn row_sq_norms(&self, out: u64, x: u64, x16: u64, rows: usize, c: usize) {
        self.launch_rows(
            "row_sq_norms",
            rows,
            &[Ptr(out), Ptr(x), Ptr(x16), I32(rows as i32), I32(c as i32)],
        );
    }

    /// out[r, :] += f * coef[r] * x[r, :], x given as (fp32, bf16 copy): read from
    /// the copy when it is not 0.
    fn add_scaled_rows(
        &self,
        out: u64,
        coef: u64,
        (x, x16): (u64, u64),
        rows: usize,
        c: usize,
        f: f32,
    ) {
        self.launch_elems(
            "add_scaled_rows",
            rows * c,
            &[
                Ptr(out),
                Ptr(coef),
                Ptr(x),
                Ptr(x16),
                I32(rows as i32),
                I32(c as i32),
                F32(f),
            ],
        );
    }
}

pub(super) fn head_loss(
    be: &CudaBackend,
    losses: Span,
    grads: Option<HeadGrads>,
    h: Mat,
    w: Mat,
    targets: TokenSpan,
    kind: HeadKind,
) {
    let (n, c, v) = (h.rows, h.cols, w.rows);
    let (h, w) = (h.span, w.span);
    let grads = grads.map(|g| (g.dh.span, g.dw.span, g.scale));
    if n == 0 {
        return;
    }
    let x = be.head_inputs(h, w, n, c, v, kind);
    let dtype = be.dtype();
    let es = dtype.bytes();
    let ch = (be.head_chunk_floats.get() / v).clamp(1, n);
    let dots = be.scratch(Slot::HeadRows, 4 * ch * v);
    let g16 = match (be.precision, grads) {
        (GpuPrecision::Bf16, Some(_)) => be.scratch(Slot::HeadG16, 2 * ch * v),
        _ => 0,
    };
    let harmonic_grads = x.harmonic && grads.is_some();
    let (rowsum, colsum) = if harmonic_grads {
        let cs = be.scratch(Slot::HeadColsum, 4 * v);
        // SAFETY: v words of the scratch buffer.
        unsafe { cu::cuMemsetD32Async(cs, 0, v, be.stream.cu_stream()) }
            .result()
            .unwrap_or_else(|e| panic!("CUDA error clearing a buffer: {e}"));
        (be.scratch(Slot::HeadRowsum, 4 * ch), cs)
    } else {
        (0, 0)
    };
    let (hp, lp, tp) = (be.ptr(h), be.ptr(losses), be.tptr(targets));
    // G's GEMMs: dH = coef G W, dW += coef G^T H (coef -2 harmonic, 1 softmax).
    let coef = if x.harmonic { -2.0 } else { 1.0 };
    for r0 in (0..n).step_by(ch) {
        let rows = ch.min(n - r0);
        let h_chunk = Operand {
            ptr: x.h_op + (r0 * c * es) as u64,
            trans: false,
        };
        let w_t = Operand {
            ptr: x.w_op,
            trans: true,
        };
        be.gemm_typed(dtype, dots, h_chunk, w_t, product(rows, v, c, 1.0, 0.0));
        let pass = match grads {
            Some((_, _, scale)) => RowPass::LossAndGrad { scale },
            None => RowPass::Loss,
        };
        let chunk = Chunk {
            dots,
            g16,
            rowsum,
            r0,
            rows,
        };
        be.head_rows(&x, chunk, lp, tp, v, pass);
        let Some((dh, dw, _)) = grads else {
            continue;
        };
        let g = Operand {
            ptr: if g16 != 0 { g16 } else { dots },
            trans: false,
        };
        let dh_chunk = be.ptr(dh) + (4 * r0 * c) as u64;
        let w_op = Operand {
            ptr: x.w_op,
            trans: false,
        };
        be.gemm_typed(dtype, dh_chunk, g, w_op, product(rows, c, v, coef, 0.0));
        let g_t = Operand { trans: true, ..g };
        be.gemm_typed(
            dtype,
            be.ptr(dw),
            g_t,
            h_chunk,
            product(v, c, rows, coef, 1.0),
        );
        if x.harmonic {
            let h16 = offset(x.h16, 2 * r0 * c);
            let h32 = hp + (4 * r0 * c) as u64;
            be.add_scaled_rows(dh_chunk, rowsum, (h32, h16), rows, c, 2.0);
            be.column_sums_add(colsum, dots, rows, v);
        }
    }
    if let (true, Some((_, dw, _))) = (harmonic_grads, grads) {
        be.add_scaled_rows(be.ptr(dw), colsum, (be.ptr(w), x.w16), v, c, 2.0);
    }
}

pub(super) fn head_logits(be: &CudaBackend, out: Mat, h: Mat, w: Mat, kind: HeadKind) {
    let (n, c, v) = (h.rows, h.cols, w.rows);
    let (out, h, w) = (out.span, h.span, w.span);
    if n == 0 {
        return;
    }
    let x = be.head_inputs(h, w, n, c, v, kind);
    let o = be.ptr(out);
    let (hm, wm) = (
        Operand {
            ptr: x.h_op,
            trans: false,
        },
        Operand {
            ptr: x.w_op,
            trans: true,
        },
    );
    be.gemm_typed(be.dtype(), o, hm, wm, product(n, v, c, 1.0, 0.0));
    let chunk = Chunk {
        dots: o,
        g16: 0,
        rowsum: 0,
        r0: 0,
        rows: n,
    };
    be.head_rows(&x, chunk, 0, 0, v, RowPass::Logits);
}
