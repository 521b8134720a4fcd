//! The CPU backend: the f32 reference every other backend is checked against.
//!
//! Each op is a plain function over slices in its own file, generic over the float
//! type so gradient checks can run the very same code in f64. Work is spread over
//! threads with rayon; GEMMs go through the `gemm` crate. Reductions use fixed
//! blocks summed in a fixed order, so results are bit-identical run to run.

pub mod adamw;
pub mod attention;
pub mod attention_decode;
pub mod encoder;
pub mod gelu;
pub mod head;
pub mod layernorm;
pub mod matmul;
pub mod sgld;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use num_traits::{Float, FromPrimitive};
use rayon::prelude::*;

use super::cost::{self, Cost};
use super::{
    AdamW, AttnShape, Backend, HeadGrads, Linear, Mat, Norm, Normed, OpStats, ScratchItem,
    ScratchKind, SgldStep, Span, StepShape, Target, TokenSpan,
};
use crate::head::HeadKind;

/// Float types the CPU ops run in: f32 for training, f64 for gradient checks.
pub trait Real: Float + FromPrimitive + Send + Sync + Default + std::fmt::Debug + 'static {}
impl Real for f32 {}
impl Real for f64 {}

/// A constant in the op's float type.
pub(crate) fn real<F: Real>(x: f64) -> F {
    F::from_f64(x).expect("representable constant")
}

/// Rows per block in blocked reductions (fixed, so sums do not depend on threads).
pub(crate) const ROW_BLOCK: usize = 64;

/// dst += sum of the partial vectors, in order.
pub(crate) fn sum_row_blocks<F: Real>(dst: &mut [F], partial: &[Vec<F>]) {
    for p in partial {
        for (d, &x) in dst.iter_mut().zip(p) {
            *d = *d + x;
        }
    }
}

/// A raw pointer that may cross threads; users promise disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// Heap buffers handed out by index. Each is allocated once and freed with the
/// store, so slices into it stay valid while the store lives.
struct Store<T> {
    bufs: RefCell<Vec<(*mut T, usize)>>,
}

impl<T: Copy + Default> Store<T> {
    fn new() -> Self {
        Store {
            bufs: RefCell::new(Vec::new()),
        }
    }

    fn alloc(&self, len: usize) -> usize {
        let b: Box<[T]> = vec![T::default(); len].into_boxed_slice();
        let mut bufs = self.bufs.borrow_mut();
        bufs.push((Box::into_raw(b) as *mut T, len));
        bufs.len() - 1
    }

    /// Frees buffer `buf`; returns its length (0 if it was already freed).
    fn free(&self, buf: usize) -> usize {
        let mut bufs = self.bufs.borrow_mut();
        let (p, len) = std::mem::replace(&mut bufs[buf], (std::ptr::null_mut(), 0));
        if !p.is_null() {
            // SAFETY: the pointer came from Box::into_raw of a slice of this length.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, len)) });
        }
        len
    }

    fn ptr(&self, buf: usize, off: usize, len: usize) -> *mut T {
        let (p, cap) = self.bufs.borrow()[buf];
        assert!(off + len <= cap, "span {off}+{len} outside buffer of {cap}");
        // SAFETY: in bounds, checked above.
        unsafe { p.add(off) }
    }

    fn get(&self, buf: usize, off: usize, len: usize) -> &[T] {
        // SAFETY: the allocation lives as long as the store; the trait's contract
        // (outputs never overlap other spans of a call) rules out aliasing writes.
        unsafe { std::slice::from_raw_parts(self.ptr(buf, off, len), len) }
    }

    #[allow(clippy::mut_from_ref)]
    fn get_mut(&self, buf: usize, off: usize, len: usize) -> &mut [T] {
        // SAFETY: as for `get`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(buf, off, len), len) }
    }
}

impl<T> Drop for Store<T> {
    fn drop(&mut self) {
        for &(p, len) in self.bufs.borrow().iter().filter(|(p, _)| !p.is_null()) {
            // SAFETY: each pointer came from Box::into_raw of a slice of this length.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, len)) });
        }
    }
}

pub struct CpuBackend<F: Real = f32> {
    floats: Store<F>,
    tokens: Store<u32>,
    /// Bytes of buffers held now and at most (what the memory planner predicts).
    held: Cell<usize>,
    peak: Cell<usize>,
    profile: RefCell<Option<BTreeMap<&'static str, OpStats>>>,
}

impl<F: Real> Default for CpuBackend<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Real> CpuBackend<F> {
    pub fn new() -> Self {
        CpuBackend {
            floats: Store::new(),
            tokens: Store::new(),
            held: Cell::new(0),
            peak: Cell::new(0),
            profile: RefCell::new(None),
        }
    }

    fn track(&self, delta: isize) {
        let held = (self.held.get() as isize + delta) as usize;
        self.held.set(held);
        self.peak.set(self.peak.get().max(held));
    }

    /// The span's values in the backend's own precision (for f64 gradient checks).
    pub fn slice(&self, s: Span) -> &[F] {
        self.floats.get(s.buf, s.off, s.len)
    }

    #[allow(clippy::mut_from_ref)]
    pub fn slice_mut(&self, s: Span) -> &mut [F] {
        self.floats.get_mut(s.buf, s.off, s.len)
    }

    fn toks(&self, s: TokenSpan) -> &[u32] {
        self.tokens.get(s.buf, s.off, s.len)
    }

    fn timed<R>(&self, op: &'static str, cost: Cost, f: impl FnOnce() -> R) -> R {
        if self.profile.borrow().is_none() {
            return f();
        }
        let t0 = Instant::now();
        let r = f();
        if let Some(p) = self.profile.borrow_mut().as_mut() {
            p.entry(op).or_default().add(t0.elapsed(), cost);
        }
        r
    }
}

/// What the backend holds over a training step of shape `s` beyond the model's
/// buffers: the head's chunk, host scratch of `head_loss` outside the byte count.
pub fn step_scratch(s: &StepShape) -> Vec<ScratchItem> {
    vec![ScratchItem {
        kind: ScratchKind::HeadChunk,
        bytes: size_of::<f32>() * head::scratch_floats(s.b * s.t, s.v),
        host: true,
    }]
}

/// Sum of f(x) in f64 over fixed-size blocks, added in order.
fn blocked_sum<F: Real>(xs: &[F], f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let partial: Vec<f64> = xs
        .par_chunks(4096)
        .map(|c| c.iter().map(|x| f(x.to_f64().unwrap())).sum())
        .collect();
    partial.iter().sum()
}

impl<F: Real> Backend for CpuBackend<F> {
    fn describe(&self) -> String {
        format!(
            "cpu ({} threads, {})",
            rayon::current_num_threads(),
            std::any::type_name::<F>()
        )
    }

    fn target(&self) -> Target {
        Target::Cpu
    }

    /// The most bytes of buffers (`alloc`, `alloc_tokens`) held at once. Op-internal
    /// scratch (the head's chunk of dot products) is host memory outside this count.
    fn peak_memory_bytes(&self) -> usize {
        self.peak.get()
    }

    /// Ops return finished on the CPU, so timing each costs nothing beside it.
    fn start_profile(&self) {
        *self.profile.borrow_mut() = Some(BTreeMap::new());
    }

    fn take_profile(&self) -> BTreeMap<&'static str, OpStats> {
        self.profile.borrow_mut().take().unwrap_or_default()
    }

    fn alloc(&self, len: usize) -> Span {
        self.track((len * size_of::<F>()) as isize);
        Span {
            buf: self.floats.alloc(len),
            off: 0,
            len,
        }
    }

    fn alloc_tokens(&self, len: usize) -> TokenSpan {
        self.track((len * size_of::<u32>()) as isize);
        TokenSpan {
            buf: self.tokens.alloc(len),
            off: 0,
            len,
        }
    }

    fn free(&self, span: Span) {
        assert_eq!(span.off, 0, "free takes whole buffers");
        let len = self.floats.free(span.buf);
        self.track(-((len * size_of::<F>()) as isize));
    }

    fn free_tokens(&self, span: TokenSpan) {
        assert_eq!(span.off, 0, "free takes whole buffers");
        let len = self.tokens.free(span.buf);
        self.track(-((len * size_of::<u32>()) as isize));
    }

    fn write(&self, dst: Span, src: &[f32]) {
        assert_eq!(dst.len, src.len(), "write length");
        for (d, &s) in self.slice_mut(dst).iter_mut().zip(src) {
            *d = real(s as f64);
        }
    }

    fn read(&self, src: Span) -> Vec<f32> {
        self.slice(src)
            .iter()
            .map(|x| x.to_f32().unwrap())
            .collect()
    }

    fn write_tokens(&self, dst: TokenSpan, src: &[u32]) {
        assert_eq!(dst.len, src.len(), "write_tokens length");
        self.tokens
            .get_mut(dst.buf, dst.off, dst.len)
            .copy_from_slice(src);
    }

    fn fill(&self, dst: Span, value: f32) {
        let v: F = real(value as f64);
        self.timed("fill", cost::fill(dst.len), || {
            self.slice_mut(dst)
                .par_chunks_mut(4096)
                .for_each(|c| c.fill(v))
        })
    }

    fn copy(&self, dst: Span, src: Span) {
        assert_eq!(dst.len, src.len, "copy length");
        self.timed("copy", cost::copy(dst.len), || {
            self.slice_mut(dst).copy_from_slice(self.slice(src))
        })
    }

    fn mean(&self, src: Span) -> f64 {
        self.timed("reduce", cost::reduce(src.len), || {
            blocked_sum(self.slice(src), |x| x) / src.len as f64
        })
    }

    fn sum_squares(&self, src: Span) -> f64 {
        self.timed("reduce", cost::reduce(src.len), || {
            blocked_sum(self.slice(src), |x| x * x)
        })
    }

    fn encoder_forward(&self, out: Mat, tokens: TokenSpan, wte: Mat, wpe: Mat, t: usize) {
        self.timed(
            "encoder_forward",
            cost::encoder_forward(out.rows, out.cols, t),
            || {
                encoder::encoder_forward(
                    self.slice_mut(out.span),
                    self.toks(tokens),
                    self.slice(wte.span),
                    self.slice(wpe.span),
                    t,
                    out.cols,
                )
            },
        )
    }

    fn encoder_backward(&self, dwte: Mat, dwpe: Mat, dout: Mat, tokens: TokenSpan, t: usize) {
        let cost = cost::encoder_backward(dout.rows, dout.cols, t);
        self.timed("encoder_backward", cost, || {
            encoder::encoder_backward(
                self.slice_mut(dwte.span),
                self.slice_mut(dwpe.span),
                self.slice(dout.span),
                self.toks(tokens),
                t,
                dout.cols,
            )
        })
    }

    fn layernorm_forward(&self, out: Normed, inp: Mat, p: Norm, eps: f32) {
        self.timed(
            "layernorm_forward",
            cost::layernorm_forward(inp.rows, inp.cols),
            || {
                layernorm::layernorm_forward(
                    self.slice_mut(out.out.span),
                    self.slice_mut(out.mean),
                    self.slice_mut(out.rstd),
                    self.slice(inp.span),
                    self.slice(p.w),
                    self.slice(p.b),
                    eps,
                )
            },
        )
    }

    fn layernorm_backward(&self, dinp: Mat, dp: Norm, dout: Mat, inp: Mat, w: Span, saved: Normed) {
        self.timed(
            "layernorm_backward",
            cost::layernorm_backward(inp.rows, inp.cols),
            || {
                layernorm::layernorm_backward(
                    self.slice_mut(dinp.span),
                    self.slice_mut(dp.w),
                    self.slice_mut(dp.b),
                    self.slice(dout.span),
                    self.slice(inp.span),
                    self.slice(w),
                    (self.slice(saved.mean), self.slice(saved.rstd)),
                )
            },
        )
    }

    fn matmul_forward(&self, out: Mat, inp: Mat, layer: Linear) {
        let cost = cost::matmul_forward(inp.rows, inp.cols, layer.w.rows);
        self.timed("matmul_forward", cost, || {
            matmul::matmul_forward(
                self.slice_mut(out.span),
                self.slice(inp.span),
                self.slice(layer.w.span),
                layer.b.map(|b| self.slice(b)),
                inp.cols,
            )
        })
    }

    fn matmul_backward(&self, dinp: Mat, dlayer: Linear, dout: Mat, inp: Mat, w: Mat) {
        let cost = cost::matmul_backward(inp.rows, inp.cols, w.rows);
        self.timed("matmul_backward", cost, || {
            matmul::matmul_backward(
                self.slice_mut(dinp.span),
                self.slice_mut(dlayer.w.span),
                dlayer.b.map(|b| self.slice_mut(b)),
                self.slice(dout.span),
                self.slice(inp.span),
                self.slice(w.span),
                inp.cols,
            )
        })
    }

    fn attention_state_len(&self, s: AttnShape) -> usize {
        attention::attention_state_len(s.b, s.t, s.nh)
    }

    fn attention_forward(&self, out: Mat, state: Span, qkv: Mat, s: AttnShape) {
        let cost = cost::attention_forward(s.b, s.t, out.cols, s.nh);
        self.timed("attention_forward", cost, || {
            attention::attention_forward(
                self.slice_mut(out.span),
                self.slice_mut(state),
                self.slice(qkv.span),
                s.t,
                out.cols,
                s.nh,
            )
        })
    }

    fn attention_backward(
        &self,
        dqkv: Mat,
        dout: Mat,
        qkv: Mat,
        _out: Mat,
        state: Span,
        s: AttnShape,
    ) {
        let cost = cost::attention_backward(s.b, s.t, dout.cols, s.nh);
        self.timed("attention_backward", cost, || {
            attention::attention_backward(
                self.slice_mut(dqkv.span),
                self.slice(dout.span),
                self.slice(qkv.span),
                self.slice(state),
                s.t,
                dout.cols,
                s.nh,
            )
        })
    }

    fn attention_decode(&self, out: Span, q: Span, k: Mat, v: Mat, nh: usize) {
        let (t, c) = (k.rows, k.cols);
        assert_eq!(
            (q.len, (v.rows, v.cols)),
            (c, (t, c)),
            "attention_decode shapes"
        );
        self.timed("attention_decode", cost::attention_decode(t, c), || {
            attention_decode::attention_decode(
                self.slice_mut(out),
                self.slice(q),
                self.slice(k.span),
                self.slice(v.span),
                t,
                nh,
            )
        })
    }

    fn gelu_forward(&self, out: Span, inp: Span) {
        self.timed("gelu_forward", cost::gelu_forward(out.len), || {
            gelu::gelu_forward(self.slice_mut(out), self.slice(inp))
        })
    }

    fn gelu_backward(&self, dinp: Span, inp: Span, dout: Span) {
        self.timed("gelu_backward", cost::gelu_backward(dinp.len), || {
            gelu::gelu_backward(self.slice_mut(dinp), self.slice(inp), self.slice(dout))
        })
    }

    fn add(&self, out: Span, a: Span, b: Span) {
        self.timed("residual_add", cost::add(out.len), || {
            let (a, b) = (self.slice(a), self.slice(b));
            self.slice_mut(out)
                .par_chunks_mut(4096)
                .enumerate()
                .for_each(|(i, o)| {
                    for (j, o) in o.iter_mut().enumerate() {
                        *o = a[i * 4096 + j] + b[i * 4096 + j];
                    }
                });
        })
    }

    fn head_loss(
        &self,
        losses: Span,
        grads: Option<HeadGrads>,
        h: Mat,
        w: Mat,
        targets: TokenSpan,
        kind: HeadKind,
    ) {
        let cost = cost::head_loss(h.rows, h.cols, w.rows, grads.is_some());
        self.timed("head", cost, || {
            head::head_loss(
                self.slice_mut(losses),
                grads.map(|g| {
                    let scale = real(g.scale as f64);
                    (self.slice_mut(g.dh.span), self.slice_mut(g.dw.span), scale)
                }),
                self.slice(h.span),
                self.slice(w.span),
                self.toks(targets),
                h.cols,
                kind,
            )
        })
    }

    fn head_logits(&self, out: Mat, h: Mat, w: Mat, kind: HeadKind) {
        let (n, c, v) = (h.rows, h.cols, w.rows);
        self.timed("head_logits", cost::head_logits(n, c, v), || {
            head::head_logits(
                self.slice_mut(out.span),
                self.slice(h.span),
                self.slice(w.span),
                n,
                c,
                v,
                kind,
            )
        })
    }

    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW) {
        self.timed("adamw", cost::adamw(params.len), || {
            adamw::adamw_update(
                self.slice_mut(params),
                self.slice(grads),
                self.slice_mut(m),
                self.slice_mut(v),
                hp,
            )
        })
    }

    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep) {
        assert!(
            grads.len == params.len && anchor.len == params.len,
            "sgld_update lengths"
        );
        self.timed("sgld", cost::sgld(params.len), || {
            sgld::sgld_update(
                self.slice_mut(params),
                self.slice(grads),
                self.slice(anchor),
                step,
            )
        })
    }
}
