//! The Backend trait on the GPU: each op launches the kernels of its cuda/ family and
//! the cuBLASLt GEMMs around them, all on one stream. Kernel arguments must match the
//! kernel signatures in cuda/*.cu exactly (pointer, int, long long, float).

use cudarc::cublaslt::sys::cublasStatus_t as Status;
use cudarc::driver::result as drv;
use cudarc::driver::sys as cu;

use super::gemm::{DType, Epilogue, Operand, Product};
use super::kernels::Arg;
use super::kernels::Arg::{F32, I32, I64, Ptr};
use super::{CudaBackend, DeviceMem, GpuPrecision, MAX_HEAD_SIZE, Slot};
use crate::backend::{AdamW, Backend, SgldStep, Span, Target, TokenSpan};
use crate::head::HeadKind;

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
    /// A weight span: read from its buffer's bf16 shadow in bf16 mode.
    Weight(Span),
}

fn mat(ptr: u64, len: usize, trans: bool) -> Mat {
    Mat {
        src: Src::Act { ptr, len },
        trans,
    }
}

fn weight_mat(span: Span, trans: bool) -> Mat {
    Mat {
        src: Src::Weight(span),
        trans,
    }
}

fn product(m: usize, n: usize, k: usize, alpha: f32, beta: f32) -> Product {
    Product {
        m,
        n,
        k,
        alpha,
        beta,
        epilogue: Epilogue::None,
    }
}

/// Whether kernels may move float4s at all these addresses (16-byte aligned; see
/// `load_floats` in cuda/common.cuh).
fn aligned16(ptrs: &[u64]) -> bool {
    ptrs.iter().all(|p| p.is_multiple_of(16))
}

/// Rows a flash attention block owns (FA_ROWS and FB_ROWS in cuda/flash_attention.cu).
const FLASH_ROWS: usize = 64;

/// The flash attention kernels of one precision, with their threads per block and
/// bytes of shared memory (cuda/flash_attention.cu gives the tiles behind the sizes).
struct Flash {
    forward: &'static str,
    dkdv: &'static str,
    dq: &'static str,
    threads: u32,
    forward_smem: usize,
    backward_smem: usize,
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
    fn dtype(&self) -> DType {
        match self.precision {
            GpuPrecision::Fp32 => DType::F32,
            GpuPrecision::Bf16 => DType::Bf16,
        }
    }

    fn bf16_copy(&self, src: u64, n: usize, slot: Slot) -> u64 {
        let dst = self.scratch(slot, 2 * n);
        self.launch_elems("to_bf16", n, &[Ptr(dst), Ptr(src), I64(n as i64)]);
        dst
    }

    /// A GEMM on fp32 data (in bf16 mode, on bf16 forms of the operands).
    fn gemm(&self, c: u64, a: Mat, b: Mat, p: Product) {
        let (a, b) = self.operands(a, b);
        self.gemm_typed(self.dtype(), c, a, b, p)
    }

    /// The operands as cuBLASLt reads them. In bf16 mode activations are copied to
    /// bf16 scratch (a's into OperandA, b's into OperandB) and weights come from their
    /// buffers' shadows.
    fn operands(&self, a: Mat, b: Mat) -> (Operand, Operand) {
        let prepare = |m: Mat, slot: Slot| {
            let ptr = match (self.precision, m.src) {
                (GpuPrecision::Fp32, Src::Act { ptr, .. }) => ptr,
                (GpuPrecision::Fp32, Src::Weight(s)) => self.ptr(s),
                (GpuPrecision::Bf16, Src::Act { ptr, len }) => self.bf16_copy(ptr, len, slot),
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
    fn gemm_typed(&self, dtype: DType, c: u64, a: Operand, b: Operand, p: Product) {
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
            Err(e) => panic!(
                "cuBLASLt GEMM with epilogue {:?} failed (m={} n={} k={}): {e:?}",
                p.epilogue, p.m, p.n, p.k
            ),
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
        n: usize,
        c: usize,
        oc: usize,
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

    /// The parameter half of a dense layer's backward pass: dweight += dout^T inp,
    /// dbias += column sums of dout.
    fn weight_grads(
        &self,
        dweight: Span,
        dbias: Option<Span>,
        dout: u64,
        inp: Span,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        self.gemm(
            self.ptr(dweight),
            mat(dout, n * oc, true),
            mat(self.ptr(inp), n * c, false),
            product(oc, c, n, 1.0, 1.0),
        );
        if let Some(db) = dbias {
            self.column_sums_add(self.ptr(db), dout, n, oc);
        }
    }

    /// dst[j] += sum over rows of src[rows, cols].
    fn column_sums_add(&self, dst: u64, src: u64, rows: usize, cols: usize) {
        if rows == 0 || cols == 0 {
            return;
        }
        let splits = rows.div_ceil(512).clamp(1, 64) as u32;
        self.launch(
            "column_sums_add",
            (cols.div_ceil(32) as u32, splits),
            (32, 8),
            0,
            &[Ptr(dst), Ptr(src), I32(rows as i32), I32(cols as i32)],
        );
    }

    /// One launch of a warp-per-row kernel over `rows` rows (8 rows per block).
    fn launch_rows(&self, name: &str, rows: usize, args: &[super::kernels::Arg]) {
        if rows > 0 {
            self.launch(name, (rows.div_ceil(8) as u32, 1), (256, 1), 0, args);
        }
    }

    fn row_sq_norms(&self, out: u64, x: u64, x16: u64, rows: usize, c: usize) {
        self.launch_rows(
            "row_sq_norms",
            rows,
            &[Ptr(out), Ptr(x), Ptr(x16), I32(rows as i32), I32(c as i32)],
        );
    }

    /// out[r, :] += factor * coef[r] * x[r, :] (x from its bf16 copy when x16 != 0).
    #[allow(clippy::too_many_arguments)]
    fn add_scaled_rows(
        &self,
        out: u64,
        coef: u64,
        x: u64,
        x16: u64,
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

    /// The flash attention kernels for head size `hs`: fp32 SIMT math in fp32 mode,
    /// bf16 tensor cores in bf16 mode.
    fn flash(&self, hs: usize) -> Flash {
        assert!(
            hs <= MAX_HEAD_SIZE,
            "flash attention supports head sizes up to {MAX_HEAD_SIZE}, not {hs}"
        );
        match self.precision {
            // fp32 tiles [HS][rows + 1]: the block's 64 rows of one tensor (forward) or
            // two (backward), and 32 streamed rows of two.
            GpuPrecision::Fp32 => Flash {
                forward: "flash_attention_forward",
                dkdv: "flash_attention_backward_dkdv",
                dq: "flash_attention_backward_dq",
                threads: 256,
                forward_smem: 4 * hs * (65 + 2 * 33),
                backward_smem: 4 * hs * (2 * 65 + 2 * 33),
            },
            // bf16 tiles with head dims padded to hp: [rows][hp + 8] or [hp][cols + 8].
            GpuPrecision::Bf16 => {
                let hp = hs.next_multiple_of(16);
                let l = hp + 8;
                Flash {
                    forward: "flash_attention_forward_bf16",
                    dkdv: "flash_attention_backward_dkdv_bf16",
                    dq: "flash_attention_backward_dq_bf16",
                    threads: 128,
                    forward_smem: 2 * (128 * l + 72 * hp),
                    backward_smem: 2 * (192 * l + 80 * hp) + 256,
                }
            }
        }
    }

    /// One launch of a tiled flash attention kernel: a block per (batch row, head) of
    /// the `bh` and tile of 64 rows of the `t`.
    fn flash_launch(
        &self,
        name: &str,
        bh: usize,
        t: usize,
        threads: u32,
        smem: usize,
        args: &[Arg],
    ) {
        if bh * t > 0 {
            let grid = (bh as u32, t.div_ceil(FLASH_ROWS) as u32);
            self.launch(name, grid, (threads, 1), smem as u32, args)
        }
    }

    fn reduce(&self, src: Span, squares: bool) -> f64 {
        if src.len == 0 {
            return 0.0;
        }
        let blocks = src.len.div_ceil(256).min(1024);
        let partial = self.scratch(Slot::Partials, 1024 * 8);
        let out = self.scratch(Slot::Scalar, 8);
        self.launch(
            "sum_partials",
            (blocks as u32, 1),
            (256, 1),
            0,
            &[
                Ptr(partial),
                Ptr(self.ptr(src)),
                I64(src.len as i64),
                I32(squares as i32),
                I32(aligned16(&[self.ptr(src)]) as i32),
            ],
        );
        self.launch(
            "sum_final",
            (1, 1),
            (1024, 1),
            0,
            &[Ptr(out), Ptr(partial), I32(blocks as i32)],
        );
        let mut r = [0f64];
        // SAFETY: 8 bytes from a live scratch buffer; the copy waits for the kernels.
        unsafe { drv::memcpy_dtoh_sync(&mut r, out) }
            .unwrap_or_else(|e| panic!("CUDA error reading a reduction: {e}"));
        r[0]
    }

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

    /// The head's row pass over `rows` rows of dot products at `dots` (see cuda/head.cu).
    #[allow(clippy::too_many_arguments)]
    fn head_rows(
        &self,
        x: &HeadInputs,
        dots: u64,
        g16: u64,
        losses: u64,
        rowsum: u64,
        targets: u64,
        r0: usize,
        rows: usize,
        v: usize,
        mode: i32,
        scale: f32,
    ) {
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
}

impl Backend for CudaBackend {
    fn describe(&self) -> String {
        let p = match self.precision {
            GpuPrecision::Fp32 => "fp32",
            GpuPrecision::Bf16 => "bf16 GEMMs, fp32 master weights",
        };
        format!("cuda ({}, {}, {p})", self.name, self.arch)
    }

    fn target(&self) -> Target {
        Target::Cuda {
            precision: self.precision,
            cc_major: self.cc_major,
        }
    }

    fn synchronize(&self) {
        if let Err(e) = self.ctx.synchronize() {
            panic!("CUDA error while waiting for the GPU: {e}");
        }
    }

    /// The most device memory this backend has held at once: buffers, scratch,
    /// shadows and the GEMM workspace.
    fn peak_memory_bytes(&self) -> usize {
        self.peak.get()
    }

    fn alloc(&self, len: usize) -> Span {
        let m = self.new_mem(4 * len);
        let mut bufs = self.floats.borrow_mut();
        bufs.push(Some(m));
        Span {
            buf: bufs.len() - 1,
            off: 0,
            len,
        }
    }

    fn alloc_tokens(&self, len: usize) -> TokenSpan {
        let m = self.new_mem(4 * len);
        let mut bufs = self.tokens.borrow_mut();
        bufs.push(Some(m));
        TokenSpan {
            buf: bufs.len() - 1,
            off: 0,
            len,
        }
    }

    fn free(&self, span: Span) {
        assert_eq!(span.off, 0, "free takes whole buffers");
        self.drop_shadow(span.buf);
        let m: Option<DeviceMem> = self.floats.borrow_mut()[span.buf].take();
        if let Some(m) = m {
            self.drop_mem(m);
        }
    }

    fn free_tokens(&self, span: TokenSpan) {
        assert_eq!(span.off, 0, "free takes whole buffers");
        let m: Option<DeviceMem> = self.tokens.borrow_mut()[span.buf].take();
        if let Some(m) = m {
            self.drop_mem(m);
        }
    }

    fn write(&self, dst: Span, src: &[f32]) {
        assert_eq!(dst.len, src.len(), "write length");
        self.written(self.ptr(dst));
        // SAFETY: the span is in bounds (ptr checks); the copy is synchronous.
        unsafe { drv::memcpy_htod_sync(self.ptr(dst), src) }
            .unwrap_or_else(|e| panic!("CUDA error copying to the GPU: {e}"));
    }

    fn read(&self, src: Span) -> Vec<f32> {
        let mut out = vec![0f32; src.len];
        // SAFETY: as for `write`; the copy waits for queued kernels.
        unsafe { drv::memcpy_dtoh_sync(&mut out, self.ptr(src)) }
            .unwrap_or_else(|e| panic!("CUDA error copying from the GPU: {e}"));
        out
    }

    fn write_tokens(&self, dst: TokenSpan, src: &[u32]) {
        assert_eq!(dst.len, src.len(), "write_tokens length");
        // SAFETY: as for `write`.
        unsafe { drv::memcpy_htod_sync(self.tptr(dst), src) }
            .unwrap_or_else(|e| panic!("CUDA error copying tokens to the GPU: {e}"));
    }

    fn fill(&self, dst: Span, value: f32) {
        self.written(self.ptr(dst));
        // SAFETY: dst.len 32-bit words inside the span's buffer.
        unsafe {
            cu::cuMemsetD32Async(
                self.ptr(dst),
                value.to_bits(),
                dst.len,
                self.stream.cu_stream(),
            )
        }
        .result()
        .unwrap_or_else(|e| panic!("CUDA error filling a buffer: {e}"));
    }

    fn copy(&self, dst: Span, src: Span) {
        assert_eq!(dst.len, src.len, "copy length");
        self.written(self.ptr(dst));
        // SAFETY: both spans are in bounds and do not overlap (trait contract).
        unsafe {
            drv::memcpy_dtod_async(
                self.ptr(dst),
                self.ptr(src),
                4 * dst.len,
                self.stream.cu_stream(),
            )
        }
        .unwrap_or_else(|e| panic!("CUDA error copying on the GPU: {e}"));
    }

    fn mean(&self, src: Span) -> f64 {
        self.reduce(src, false) / src.len as f64
    }

    fn sum_squares(&self, src: Span) -> f64 {
        self.reduce(src, true)
    }

    fn encoder_forward(
        &self,
        out: Span,
        tokens: TokenSpan,
        wte: Span,
        wpe: Span,
        b: usize,
        t: usize,
        c: usize,
    ) {
        self.launch_elems(
            "encoder_forward",
            b * t * c,
            &[
                Ptr(self.ptr(out)),
                Ptr(self.tptr(tokens)),
                Ptr(self.ptr(wte)),
                Ptr(self.ptr(wpe)),
                I32((b * t) as i32),
                I32(t as i32),
                I32(c as i32),
            ],
        );
    }

    fn encoder_backward(
        &self,
        dwte: Span,
        dwpe: Span,
        dout: Span,
        tokens: TokenSpan,
        b: usize,
        t: usize,
        c: usize,
    ) {
        self.launch_elems(
            "encoder_backward_wte",
            b * t * c,
            &[
                Ptr(self.ptr(dwte)),
                Ptr(self.ptr(dout)),
                Ptr(self.tptr(tokens)),
                I32((b * t) as i32),
                I32(c as i32),
            ],
        );
        self.launch_elems(
            "encoder_backward_wpe",
            t * c,
            &[
                Ptr(self.ptr(dwpe)),
                Ptr(self.ptr(dout)),
                I32(b as i32),
                I32(t as i32),
                I32(c as i32),
            ],
        );
    }

    fn layernorm_forward(
        &self,
        out: Span,
        mean: Span,
        rstd: Span,
        inp: Span,
        weight: Span,
        bias: Span,
        n: usize,
        c: usize,
        eps: f32,
    ) {
        let rows = [out, inp, weight, bias].map(|s| self.ptr(s));
        let vec4 = c.is_multiple_of(4) && aligned16(&rows);
        let [out, inp, weight, bias] = rows;
        self.launch_rows(
            "layernorm_forward",
            n,
            &[
                Ptr(out),
                Ptr(self.ptr(mean)),
                Ptr(self.ptr(rstd)),
                Ptr(inp),
                Ptr(weight),
                Ptr(bias),
                I32(n as i32),
                I32(c as i32),
                F32(eps),
                I32(vec4 as i32),
            ],
        );
    }

    fn layernorm_backward(
        &self,
        dinp: Span,
        dweight: Span,
        dbias: Span,
        dout: Span,
        inp: Span,
        weight: Span,
        mean: Span,
        rstd: Span,
        n: usize,
        c: usize,
    ) {
        if n == 0 {
            return;
        }
        // dw and db partials live in shared memory: 2*C floats within the 48 KiB default.
        assert!(
            c <= 6144,
            "layernorm_backward supports at most 6144 channels"
        );
        let blocks = n.div_ceil(8).min(4 * self.sms as usize) as u32;
        self.launch(
            "layernorm_backward",
            (blocks, 1),
            (256, 1),
            (8 * c) as u32,
            &[
                Ptr(self.ptr(dinp)),
                Ptr(self.ptr(dweight)),
                Ptr(self.ptr(dbias)),
                Ptr(self.ptr(dout)),
                Ptr(self.ptr(inp)),
                Ptr(self.ptr(weight)),
                Ptr(self.ptr(mean)),
                Ptr(self.ptr(rstd)),
                I32(n as i32),
                I32(c as i32),
            ],
        );
    }

    fn matmul_forward(
        &self,
        out: Span,
        inp: Span,
        weight: Span,
        bias: Option<Span>,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let (x, w) = self.operands(mat(self.ptr(inp), n * c, false), weight_mat(weight, true));
        self.linear(self.ptr(out), x, w, bias.map(|b| self.ptr(b)), n, c, oc);
    }

    fn matmul_backward(
        &self,
        dinp: Span,
        dweight: Span,
        dbias: Option<Span>,
        dout: Span,
        inp: Span,
        weight: Span,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let d = self.ptr(dout);
        // dinp[n, c] = dout[n, oc] W[oc, c]
        self.gemm(
            self.ptr(dinp),
            mat(d, n * oc, false),
            weight_mat(weight, false),
            product(n, c, oc, 1.0, 0.0),
        );
        self.weight_grads(dweight, dbias, d, inp, n, c, oc);
    }

    fn attention_state_len(&self, b: usize, t: usize, nh: usize) -> usize {
        super::attention_state_len(b, t, nh)
    }

    fn attention_forward(
        &self,
        out: Span,
        state: Span,
        qkv: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) {
        let hs = c / nh;
        assert_eq!(state.len, b * nh * t, "attention state size");
        let flash = self.flash(hs);
        self.flash_launch(
            flash.forward,
            b * nh,
            t,
            flash.threads,
            flash.forward_smem,
            &[
                Ptr(self.ptr(out)),
                Ptr(self.ptr(state)),
                Ptr(self.ptr(qkv)),
                I32(t as i32),
                I32(nh as i32),
                I32(hs as i32),
                F32(1.0 / (hs as f32).sqrt()),
            ],
        );
    }

    fn attention_decode(
        &self,
        out: Span,
        q: Span,
        k: Span,
        v: Span,
        t: usize,
        c: usize,
        nh: usize,
    ) {
        assert_eq!(
            (q.len, k.len, v.len),
            (c, t * c, t * c),
            "attention_decode shapes"
        );
        // The t scores sit in shared memory next to the kernel's 32-float static scratch,
        // all within the 48 KiB default: (49152 - 128) / 4 floats.
        assert!(
            t <= 12256,
            "attention_decode supports at most 12256 cached positions"
        );
        let hs = c / nh;
        self.launch(
            "attention_decode",
            (nh as u32, 1),
            (256, 1),
            (4 * t) as u32,
            &[
                Ptr(self.ptr(out)),
                Ptr(self.ptr(q)),
                Ptr(self.ptr(k)),
                Ptr(self.ptr(v)),
                I32(t as i32),
                I32(c as i32),
                I32(hs as i32),
                F32(1.0 / (hs as f32).sqrt()),
            ],
        );
    }

    fn attention_backward(
        &self,
        dqkv: Span,
        dout: Span,
        qkv: Span,
        out: Span,
        state: Span,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) {
        let hs = c / nh;
        let rows = b * t * nh;
        assert_eq!(state.len, rows, "attention state size");
        let flash = self.flash(hs);
        let row_dots = self.scratch(Slot::AttRowDots, 4 * rows);
        let dy = self.ptr(dout);
        self.launch_rows(
            "flash_attention_backward_preprocess",
            rows,
            &[
                Ptr(row_dots),
                Ptr(dy),
                Ptr(self.ptr(out)),
                I64(rows as i64),
                I32(t as i32),
                I32(nh as i32),
                I32(hs as i32),
            ],
        );
        let args = [
            Ptr(self.ptr(dqkv)),
            Ptr(dy),
            Ptr(self.ptr(qkv)),
            Ptr(self.ptr(state)),
            Ptr(row_dots),
            I32(t as i32),
            I32(nh as i32),
            I32(hs as i32),
            F32(1.0 / (hs as f32).sqrt()),
        ];
        for kernel in [flash.dkdv, flash.dq] {
            let smem = flash.backward_smem;
            self.flash_launch(kernel, b * nh, t, flash.threads, smem, &args);
        }
    }

    fn gelu_forward(&self, out: Span, inp: Span) {
        self.launch_elems(
            "gelu_forward",
            out.len,
            &[Ptr(self.ptr(out)), Ptr(self.ptr(inp)), I64(out.len as i64)],
        );
    }

    fn gelu_backward(&self, dinp: Span, inp: Span, dout: Span) {
        self.launch_elems(
            "gelu_backward",
            dinp.len,
            &[
                Ptr(self.ptr(dinp)),
                Ptr(self.ptr(inp)),
                Ptr(self.ptr(dout)),
                I64(dinp.len as i64),
            ],
        );
    }

    fn add(&self, out: Span, a: Span, b: Span) {
        self.launch_elems(
            "residual_add",
            out.len,
            &[
                Ptr(self.ptr(out)),
                Ptr(self.ptr(a)),
                Ptr(self.ptr(b)),
                I64(out.len as i64),
            ],
        );
    }

    fn residual_layernorm_forward(
        &self,
        residual: Span,
        out: Span,
        mean: Span,
        rstd: Span,
        a: Span,
        b: Span,
        weight: Span,
        bias: Span,
        n: usize,
        c: usize,
        eps: f32,
    ) {
        let rows = [residual, out, a, b, weight, bias].map(|s| self.ptr(s));
        let vec4 = c.is_multiple_of(4) && aligned16(&rows);
        let [residual, out, a, b, weight, bias] = rows;
        self.launch_rows(
            "residual_layernorm_forward",
            n,
            &[
                Ptr(residual),
                Ptr(out),
                Ptr(self.ptr(mean)),
                Ptr(self.ptr(rstd)),
                Ptr(a),
                Ptr(b),
                Ptr(weight),
                Ptr(bias),
                I32(n as i32),
                I32(c as i32),
                F32(eps),
                I32(vec4 as i32),
            ],
        );
    }

    /// One GEMM: cuBLASLt's GELU_AUX_BIAS epilogue adds the bias and writes both
    /// gelu(x W^T + b) and the pre-activation, so no kernel broadcasts the bias first
    /// or reads pre back to apply GELU.
    fn matmul_gelu_forward(
        &self,
        pre: Span,
        out: Span,
        inp: Span,
        weight: Span,
        bias: Option<Span>,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let (x, w) = self.operands(mat(self.ptr(inp), n * c, false), weight_mat(weight, true));
        let bias = bias.map(|b| self.ptr(b));
        let epilogue = Epilogue::GeluAux {
            bias: bias.unwrap_or(0),
            pre: self.ptr(pre),
        };
        let p = product(n, oc, c, 1.0, 0.0);
        if !self.gemm_epilogue(self.ptr(out), x, w, p, epilogue) {
            self.linear(self.ptr(pre), x, w, bias, n, c, oc);
            self.gelu_forward(out, pre);
        }
    }

    /// dpre = gelu'(pre) * (dout W) in one GEMM, through cuBLASLt's DGELU epilogue
    /// (which reads pre): dact = dout W is never written and read back, and
    /// gelu_backward's launch goes. The bias gradient stays a column-sum kernel:
    /// cuBLASLt's BGRAD epilogues overwrite it, while the trait accumulates it.
    fn gelu_matmul_backward(
        &self,
        dpre: Span,
        dact: Span,
        dweight: Span,
        dbias: Option<Span>,
        dout: Span,
        act: Span,
        pre: Span,
        weight: Span,
        n: usize,
        c: usize,
        oc: usize,
    ) {
        let d = self.ptr(dout);
        let (dy, w) = self.operands(mat(d, n * oc, false), weight_mat(weight, false));
        let p = product(n, c, oc, 1.0, 0.0);
        let epilogue = Epilogue::DGelu { pre: self.ptr(pre) };
        if !self.gemm_epilogue(self.ptr(dpre), dy, w, p, epilogue) {
            self.gemm_typed(self.dtype(), self.ptr(dact), dy, w, p);
            self.gelu_backward(dpre, pre, dact);
        }
        self.weight_grads(dweight, dbias, d, act, n, c, oc);
    }

    fn head_loss(
        &self,
        losses: Span,
        grads: Option<(Span, Span, f32)>,
        h: Span,
        w: Span,
        targets: TokenSpan,
        n: usize,
        c: usize,
        v: usize,
        kind: HeadKind,
    ) {
        if n == 0 {
            return;
        }
        let x = self.head_inputs(h, w, n, c, v, kind);
        let dtype = self.dtype();
        let es = dtype.bytes();
        let ch = (self.head_chunk_floats.get() / v).clamp(1, n);
        let dots = self.scratch(Slot::HeadRows, 4 * ch * v);
        let g16 = match (self.precision, grads) {
            (GpuPrecision::Bf16, Some(_)) => self.scratch(Slot::HeadG16, 2 * ch * v),
            _ => 0,
        };
        let harmonic_grads = x.harmonic && grads.is_some();
        let (rowsum, colsum) = if harmonic_grads {
            let cs = self.scratch(Slot::HeadColsum, 4 * v);
            // SAFETY: v words of the scratch buffer.
            unsafe { cu::cuMemsetD32Async(cs, 0, v, self.stream.cu_stream()) }
                .result()
                .unwrap_or_else(|e| panic!("CUDA error clearing a buffer: {e}"));
            (self.scratch(Slot::HeadRowsum, 4 * ch), cs)
        } else {
            (0, 0)
        };
        let (hp, lp, tp) = (self.ptr(h), self.ptr(losses), self.tptr(targets));
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
            self.gemm_typed(dtype, dots, h_chunk, w_t, product(rows, v, c, 1.0, 0.0));
            let mode = if grads.is_some() { 2 } else { 1 };
            let scale = grads.map_or(1.0, |g| g.2);
            self.head_rows(&x, dots, g16, lp, rowsum, tp, r0, rows, v, mode, scale);
            let Some((dh, dw, _)) = grads else {
                continue;
            };
            let g = Operand {
                ptr: if g16 != 0 { g16 } else { dots },
                trans: false,
            };
            let dh_chunk = self.ptr(dh) + (4 * r0 * c) as u64;
            let w_op = Operand {
                ptr: x.w_op,
                trans: false,
            };
            self.gemm_typed(dtype, dh_chunk, g, w_op, product(rows, c, v, coef, 0.0));
            let g_t = Operand { trans: true, ..g };
            self.gemm_typed(
                dtype,
                self.ptr(dw),
                g_t,
                h_chunk,
                product(v, c, rows, coef, 1.0),
            );
            if x.harmonic {
                let h16 = offset(x.h16, 2 * r0 * c);
                let h32 = hp + (4 * r0 * c) as u64;
                self.add_scaled_rows(dh_chunk, rowsum, h32, h16, rows, c, 2.0);
                self.column_sums_add(colsum, dots, rows, v);
            }
        }
        if let (true, Some((_, dw, _))) = (harmonic_grads, grads) {
            self.add_scaled_rows(self.ptr(dw), colsum, self.ptr(w), x.w16, v, c, 2.0);
        }
    }

    fn head_logits(
        &self,
        out: Span,
        h: Span,
        w: Span,
        n: usize,
        c: usize,
        v: usize,
        kind: HeadKind,
    ) {
        if n == 0 {
            return;
        }
        let x = self.head_inputs(h, w, n, c, v, kind);
        let o = self.ptr(out);
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
        self.gemm_typed(self.dtype(), o, hm, wm, product(n, v, c, 1.0, 0.0));
        self.head_rows(&x, o, 0, 0, 0, 0, 0, n, v, 0, 1.0);
    }

    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW) {
        // Bias corrections in f64 on the host, as the CPU backend computes them.
        let c1 = (1.0 - (hp.beta1 as f64).powi(hp.step as i32)) as f32;
        let c2 = (1.0 - (hp.beta2 as f64).powi(hp.step as i32)) as f32;
        let fp32 = [params, grads, m, v].map(|s| self.ptr(s));
        let vec4 = aligned16(&fp32);
        let [p, g, m, v] = fp32;
        let n = params.len;
        self.update_in_place(params, |p16| {
            // Threads for the float4 quads and the scalar tail (cuda/adamw.cu).
            self.launch_elems(
                "adamw_update",
                if vec4 { n / 4 + n % 4 } else { n },
                &[
                    Ptr(p),
                    Ptr(p16),
                    Ptr(g),
                    Ptr(m),
                    Ptr(v),
                    I64(n as i64),
                    F32(hp.lr),
                    F32(hp.beta1),
                    F32(hp.beta2),
                    F32(c1),
                    F32(c2),
                    F32(hp.eps),
                    F32(hp.weight_decay),
                    F32(hp.grad_scale),
                    I32(vec4 as i32),
                ],
            )
        });
    }

    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep) {
        assert!(
            grads.len == params.len && anchor.len == params.len,
            "sgld_update lengths"
        );
        let [w, g, anchor] = [params, grads, anchor].map(|s| self.ptr(s));
        self.update_in_place(params, |w16| {
            self.launch_elems(
                "sgld_update",
                params.len,
                &[
                    Ptr(w),
                    Ptr(w16),
                    Ptr(g),
                    Ptr(anchor),
                    I64(params.len as i64),
                    F32(step.half_eps()),
                    F32(step.nbeta),
                    F32(step.gamma),
                    F32(step.noise_std()),
                    I64(step.noise_key as i64),
                ],
            )
        });
    }
}
