//! The output head on the GPU, the host half of cuda/head.cu: the steps of the chunked
//! head (crate::head::chunked) with cuBLASLt GEMMs, the row pass in two kernels
//! (`head_lse`: each row's lse and loss, or the logits; `head_grad`: G where the GEMMs
//! read it, and the harmonic head's partial sums of G), and the harmonic corrections
//! (`add_scaled_rows`, with rowsum(G) and colsum(G) folded from the partials by
//! `column_partials_add`).

use cudarc::driver::sys as cu;

use super::gemm::Operand;
use super::kernels::Arg::{F32, I32, Ptr};
use super::linear::product;
use super::{CudaBackend, GpuPrecision, Slot, aligned16};
use crate::backend::cost;
use crate::backend::{HeadGrads, Mat, Span, TokenSpan};
use crate::head::HeadKind;
use crate::head::chunked::{self, HeadSteps};

/// Rows of one `head_grad` tile (GRAD_TILE_ROWS in cuda/head.cu).
const GRAD_TILE_ROWS: usize = 32;

/// `head_grad`'s tiles over a chunk of `rows` rows and `v` columns, as (row tiles,
/// column tiles), when it moves float4s (`vec4`) or single floats: 32 lanes of 4 or 1
/// columns. The harmonic head's partial sums hold one float per (column tile, row) and
/// per (row tile, column).
pub(super) fn grad_tiles(rows: usize, v: usize, vec4: bool) -> (usize, usize) {
    let width = if vec4 { 4 } else { 1 };
    (rows.div_ceil(GRAD_TILE_ROWS), v.div_ceil(32 * width))
}

/// Whether the head's kernels may move float4s over rows of `v` floats (or bf16s)
/// starting at `ptrs`: every row then starts 16-byte aligned (8 for bf16).
fn vec4(v: usize, ptrs: &[u64]) -> bool {
    v.is_multiple_of(4) && aligned16(ptrs)
}

/// The chunk's buffers for `head_grad`, rows from row 0 of the chunk: the dot products,
/// G's bf16 copy (0 in fp32 mode, where G goes in place of the dot products), each
/// row's lse, and the harmonic head's partial sums (0 for softmax).
#[derive(Clone, Copy)]
struct Chunk {
    dots: u64,
    g16: u64,
    lse: u64,
    rowpart: u64,
    colpart: u64,
}

impl Chunk {
    /// Whether `head_grad` moves float4s over the chunk's rows of `v`, and so how it
    /// tiles them (`grad_tiles`).
    fn vec4(&self, v: usize) -> bool {
        vec4(v, &[self.dots, self.g16])
    }
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

    /// `head_lse` over `rows` rows of dot products at `dots`, which are rows r0.. of
    /// the head: with `losses` (indexed from row 0 of the head, as `targets` are) each
    /// row's loss, and its lse into `lse` (0: not wanted); with `losses` 0, the logits
    /// in place of the dot products.
    fn head_lse(
        &self,
        x: &HeadInputs,
        (dots, r0, rows): (u64, usize, usize),
        lse: u64,
        losses: u64,
        targets: u64,
        v: usize,
    ) {
        self.launch(
            "head_lse",
            (rows as u32, 1),
            (256, 1),
            0,
            &[
                Ptr(dots),
                Ptr(lse),
                Ptr(offset(losses, 4 * r0)),
                Ptr(offset(x.h_sq, 4 * r0)),
                Ptr(x.w_sq),
                Ptr(offset(targets, 4 * r0)),
                I32(v as i32),
                I32(x.harmonic as i32),
                F32(x.half_n),
                F32(x.eps),
                I32((losses == 0) as i32),
                I32(vec4(v, &[dots]) as i32),
            ],
        );
    }

    /// `head_grad` over the chunk's `rows` rows (rows r0.. of the head): G of `scale`
    /// times the loss into the bf16 copy, or in place of the dot products without
    /// one, and the harmonic head's partial sums.
    fn head_grad(
        &self,
        x: &HeadInputs,
        chunk: Chunk,
        (r0, rows): (usize, usize),
        targets: u64,
        v: usize,
        scale: f32,
    ) {
        let Chunk {
            dots,
            g16,
            lse,
            rowpart,
            colpart,
        } = chunk;
        let vec4 = chunk.vec4(v);
        let (rtiles, ctiles) = grad_tiles(rows, v, vec4);
        let g32 = if g16 == 0 { dots } else { 0 };
        self.launch(
            "head_grad",
            (rtiles as u32, ctiles as u32),
            (32, 8),
            0,
            &[
                Ptr(dots),
                Ptr(g32),
                Ptr(g16),
                Ptr(rowpart),
                Ptr(colpart),
                Ptr(lse),
                Ptr(offset(x.h_sq, 4 * r0)),
                Ptr(x.w_sq),
                Ptr(offset(targets, 4 * r0)),
                I32(rows as i32),
                I32(v as i32),
                I32(x.harmonic as i32),
                F32(x.half_n),
                F32(x.eps),
                F32(scale),
                I32(vec4 as i32),
            ],
        );
    }

    /// Sets `n` words at `p` to 0 (on the stream, in order with the kernels).
    fn zero_words(&self, p: u64, n: usize) {
        // SAFETY: n words of a scratch buffer that holds at least that many.
        unsafe { cu::cuMemsetD32Async(p, 0, n, self.stream.cu_stream()) }
            .result()
            .unwrap_or_else(|e| panic!("CUDA error clearing a buffer: {e}"));
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
    let mut chunk = Chunk {
        dots,
        g16: 0,
        lse: 0,
        rowpart: 0,
        colpart: 0,
    };
    let (mut rowsum, mut colsum) = (0, 0);
    if grads.is_some() {
        chunk.lse = be.scratch(Slot::HeadLse, 4 * ch);
        if be.precision == GpuPrecision::Bf16 {
            chunk.g16 = be.scratch(Slot::HeadG16, 2 * ch * v);
        }
        if x.harmonic {
            let (rtiles, ctiles) = grad_tiles(ch, v, chunk.vec4(v));
            chunk.rowpart = be.scratch(Slot::HeadRowPartials, 4 * ctiles * ch);
            chunk.colpart = be.scratch(Slot::HeadColPartials, 4 * rtiles * v);
            rowsum = be.scratch(Slot::HeadRowsum, 4 * ch);
            colsum = be.scratch(Slot::HeadColsum, 4 * v);
            be.zero_words(colsum, v);
        }
    }
    let mut steps = Steps {
        be,
        x,
        c,
        v,
        chunk,
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
/// corrections with rowsum(G) and colsum(G) folded from `head_grad`'s partial sums.
struct Steps<'a> {
    be: &'a CudaBackend,
    x: HeadInputs,
    c: usize,
    v: usize,
    /// The chunk's scratch: the dot products (G in their place in fp32 mode), G's
    /// bf16 copy, each row's lse and the harmonic partial sums.
    chunk: Chunk,
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
            ptr: if self.chunk.g16 != 0 {
                self.chunk.g16
            } else {
                self.chunk.dots
            },
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
        be.gemm_typed(be.dtype(), self.chunk.dots, self.h_chunk(r0), w_t, p);
    }

    fn rows(&mut self, r0: usize, rows: usize, grads: bool) {
        let scale = self.grads.filter(|_| grads).map(|(_, _, scale)| scale);
        let lse = if scale.is_some() { self.chunk.lse } else { 0 };
        let (be, x, v) = (self.be, &self.x, self.v);
        let g_bytes = if self.chunk.g16 != 0 { 2 } else { 4 };
        let floor = cost::head_row_pass(rows, v, scale.is_some(), g_bytes);
        be.part("head row pass", floor, || {
            be.head_lse(
                x,
                (self.chunk.dots, r0, rows),
                lse,
                self.losses,
                self.targets,
                v,
            );
            if let Some(scale) = scale {
                be.head_grad(x, self.chunk, (r0, rows), self.targets, v, scale);
            }
        });
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
        let (c, v) = (self.c, self.v);
        let h16 = offset(self.x.h16, 2 * r0 * c);
        let h32 = self.h + (4 * r0 * c) as u64;
        let (rtiles, ctiles) = grad_tiles(rows, v, self.chunk.vec4(v));
        let be = self.be;
        // rowsum[r] = the row's partials over the column tiles, in tile order.
        be.zero_words(self.rowsum, rows);
        be.column_partials_add(self.rowsum, self.chunk.rowpart, ctiles, rows, rows);
        be.add_scaled_rows(self.dh_dw(r0).0, self.rowsum, (h32, h16), rows, c, 2.0);
        be.column_partials_add(self.colsum, self.chunk.colpart, rtiles, v, v);
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
    be.head_lse(&x, (o, 0, n), 0, 0, 0, v);
}
