//! The output head on the GPU, the host half of cuda/head.cu: the steps of the chunked
//! head (crate::head::chunked) with cuBLASLt GEMMs, the row pass `head_rows` (logits z,
//! the loss, G in place of z, rowsum(G)), and the harmonic corrections
//! (`add_scaled_rows`, `column_sums_add`).

use cudarc::driver::sys as cu;

use super::gemm::Operand;
use super::kernels::Arg::{F32, I32, Ptr};
use super::linear::product;
use super::{CudaBackend, GpuPrecision, Slot};
use crate::backend::{HeadGrads, Mat, Span, TokenSpan};
use crate::head::HeadKind;
use crate::head::chunked::{self, HeadSteps};

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
    if n == 0 {
        return;
    }
    let x = be.head_inputs(h.span, w.span, n, c, v, kind);
    let ch = (be.head_chunk_floats.get() / v).clamp(1, n);
    let dots = be.scratch(Slot::HeadRows, 4 * ch * v);
    let g16 = match (be.precision, grads) {
        (GpuPrecision::Bf16, Some(_)) => be.scratch(Slot::HeadG16, 2 * ch * v),
        _ => 0,
    };
    let (rowsum, colsum) = if x.harmonic && grads.is_some() {
        let cs = be.scratch(Slot::HeadColsum, 4 * v);
        // SAFETY: v words of the scratch buffer.
        unsafe { cu::cuMemsetD32Async(cs, 0, v, be.stream.cu_stream()) }
            .result()
            .unwrap_or_else(|e| panic!("CUDA error clearing a buffer: {e}"));
        (be.scratch(Slot::HeadRowsum, 4 * ch), cs)
    } else {
        (0, 0)
    };
    let mut steps = Steps {
        be,
        x,
        c,
        v,
        dots,
        g16,
        rowsum,
        colsum,
        h: be.ptr(h.span),
        w: be.ptr(w.span),
        losses: be.ptr(losses),
        targets: be.tptr(targets),
        grads: grads.map(|g| (be.ptr(g.dh.span), be.ptr(g.dw.span), g.scale)),
    };
    chunked::head_loss(&mut steps, kind, n, ch, grads.is_some());
}

/// The chunked head's steps on the GPU (crate::head::chunked): cuBLASLt GEMMs on the
/// head's operands, G read from its bf16 copy where there is one, and the harmonic
/// corrections with the row sums `head_rows` leaves in `rowsum`.
struct Steps<'a> {
    be: &'a CudaBackend,
    x: HeadInputs,
    c: usize,
    v: usize,
    /// The chunk's dot products, G after the row pass; its bf16 copy (0: none).
    dots: u64,
    g16: u64,
    /// Harmonic gradients: rowsum(G) of the chunk and colsum(G) over all chunks.
    rowsum: u64,
    colsum: u64,
    /// fp32 H, W, losses and targets.
    h: u64,
    w: u64,
    losses: u64,
    targets: u64,
    /// (dH, dW, scale).
    grads: Option<(u64, u64, f32)>,
}

impl Steps<'_> {
    /// Rows r0.. of H as a GEMM operand.
    fn h_chunk(&self, r0: usize) -> Operand {
        let es = self.be.dtype().bytes();
        Operand {
            ptr: self.x.h_op + (r0 * self.c * es) as u64,
            trans: false,
        }
    }

    /// G as a GEMM operand (its transpose with `trans`).
    fn g(&self, trans: bool) -> Operand {
        Operand {
            ptr: if self.g16 != 0 { self.g16 } else { self.dots },
            trans,
        }
    }

    /// (dH rows r0.., dW).
    fn dh_dw(&self, r0: usize) -> (u64, u64) {
        let (dh, dw, _) = self.grads.expect("gradient steps need grads");
        (dh + (4 * r0 * self.c) as u64, dw)
    }
}

impl HeadSteps for Steps<'_> {
    fn dots(&mut self, r0: usize, rows: usize) {
        let w_t = Operand {
            ptr: self.x.w_op,
            trans: true,
        };
        let p = product(rows, self.v, self.c, 1.0, 0.0);
        let be = self.be;
        be.gemm_typed(be.dtype(), self.dots, self.h_chunk(r0), w_t, p);
    }

    fn rows(&mut self, r0: usize, rows: usize, grads: bool) {
        let pass = match self.grads.filter(|_| grads) {
            Some((_, _, scale)) => RowPass::LossAndGrad { scale },
            None => RowPass::Loss,
        };
        let chunk = Chunk {
            dots: self.dots,
            g16: self.g16,
            rowsum: self.rowsum,
            r0,
            rows,
        };
        self.be
            .head_rows(&self.x, chunk, self.losses, self.targets, self.v, pass);
    }

    fn grad_h(&mut self, r0: usize, rows: usize, coef: f32) {
        let w = Operand {
            ptr: self.x.w_op,
            trans: false,
        };
        let p = product(rows, self.c, self.v, coef, 0.0);
        let be = self.be;
        be.gemm_typed(be.dtype(), self.dh_dw(r0).0, self.g(false), w, p);
    }

    fn grad_w(&mut self, r0: usize, rows: usize, coef: f32) {
        let p = product(self.v, self.c, rows, coef, 1.0);
        let be = self.be;
        be.gemm_typed(
            be.dtype(),
            self.dh_dw(r0).1,
            self.g(true),
            self.h_chunk(r0),
            p,
        );
    }

    fn harmonic_chunk(&mut self, r0: usize, rows: usize) {
        let c = self.c;
        let h16 = offset(self.x.h16, 2 * r0 * c);
        let h32 = self.h + (4 * r0 * c) as u64;
        let be = self.be;
        be.add_scaled_rows(self.dh_dw(r0).0, self.rowsum, (h32, h16), rows, c, 2.0);
        be.column_sums_add(&[self.colsum], self.dots, rows, self.v);
    }

    fn harmonic_end(&mut self) {
        let (w, w16) = (self.w, self.x.w16);
        let be = self.be;
        be.add_scaled_rows(self.dh_dw(0).1, self.colsum, (w, w16), self.v, self.c, 2.0);
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
