//! The Backend trait on the GPU, one line per op: each op is the launcher in the file
//! named after its kernel family (`layernorm` for cuda/layernorm.cu, ...), as the CPU
//! backend's are in src/backend/cpu/. Everything runs on the backend's one stream.
//! Every op goes through `CudaBackend::op`, which first runs any queued AdamW updates
//! (they may touch what the op reads or writes) and times the op when profiling.

use std::collections::BTreeMap;

use super::gemm::DType;
use super::{
    CudaBackend, GpuPrecision, attention, elementwise, encoder, head, layernorm, linear, memory,
    reduce, update,
};
use crate::backend::cost;
use crate::backend::{
    AdamW, AttnShape, Backend, Gelu, HeadGrads, Linear, Mat, Norm, Normed, OpStats, SgldStep, Span,
    Target, TokenSpan,
};
use crate::head::HeadKind;

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
        self.flush_updates();
        if let Err(e) = self.ctx.synchronize() {
            panic!("CUDA error while waiting for the GPU: {e}");
        }
    }

    /// The most device memory this backend has held at once: buffers, scratch,
    /// shadows and the GEMM workspace.
    fn peak_memory_bytes(&self) -> usize {
        self.peak.get()
    }

    /// What the driver reports free on the device (None if it cannot say).
    fn free_memory_bytes(&self) -> Option<usize> {
        self.ctx.mem_get_info().ok().map(|(free, _total)| free)
    }

    /// How many bias/GELU epilogue GEMMs cuBLASLt had no kernel for (they ran as
    /// separate kernels instead): 0 when every fusion ran fused. fp32 mode asks for
    /// no GELU epilogue, so its GELU GEMMs are not counted.
    fn epilogue_fallbacks(&self) -> usize {
        self.epilogue_fallbacks.get()
    }

    fn max_decode_positions(&self) -> Option<usize> {
        Some(attention::MAX_DECODE_POSITIONS)
    }

    /// Events around every op from here on (see `profile`).
    fn start_profile(&self) {
        self.start_profiling()
    }

    fn take_profile(&self) -> BTreeMap<&'static str, OpStats> {
        self.take_profiling()
    }

    fn alloc(&self, len: usize) -> Span {
        memory::alloc(self, len, DType::F32)
    }

    /// bf16 in bf16 mode, the GEMMs' operand type: they read these values directly
    /// instead of a bf16 copy made per GEMM.
    fn alloc_gemm_operands(&self, len: usize) -> Span {
        memory::alloc(self, len, self.dtype())
    }

    fn alloc_tokens(&self, len: usize) -> TokenSpan {
        memory::alloc_tokens(self, len)
    }

    fn free(&self, span: Span) {
        self.flush_updates();
        memory::free(self, span)
    }

    fn free_tokens(&self, span: TokenSpan) {
        self.flush_updates();
        memory::free_tokens(self, span)
    }

    fn write(&self, dst: Span, src: &[f32]) {
        self.op("write", cost::fill(dst.len), || {
            memory::write(self, dst, src)
        })
    }

    fn read(&self, src: Span) -> Vec<f32> {
        self.op("read", cost::fill(src.len), || memory::read(self, src))
    }

    fn write_tokens(&self, dst: TokenSpan, src: &[u32]) {
        let cost = cost::fill(dst.len);
        self.op("write_tokens", cost, || {
            memory::write_tokens(self, dst, src)
        })
    }

    fn fill(&self, dst: Span, value: f32) {
        self.op("fill", cost::fill(dst.len), || {
            memory::fill(self, dst, value)
        })
    }

    fn copy(&self, dst: Span, src: Span) {
        self.op("copy", cost::copy(dst.len), || memory::copy(self, dst, src))
    }

    fn device_ptr(&self, span: Span, written: bool) -> Option<u64> {
        // The caller (NCCL) enqueues work on this stream that reads or writes the
        // span, so the queued AdamW updates must be launched before it.
        self.flush_updates();
        let ptr = self.ptr(span);
        if written {
            self.written(ptr);
        }
        Some(ptr)
    }

    fn mean(&self, src: Span) -> f64 {
        self.op("reduce", cost::reduce(src.len), || reduce::mean(self, src))
    }

    fn sum_squares(&self, src: Span) -> f64 {
        self.op("reduce", cost::reduce(src.len), || {
            reduce::sum_squares(self, src)
        })
    }

    fn encoder_forward(&self, out: Mat, tokens: TokenSpan, wte: Mat, wpe: Mat, t: usize) {
        self.op(
            "encoder_forward",
            cost::encoder_forward(out.rows, out.cols, t),
            || encoder::encoder_forward(self, out, tokens, wte, wpe, t),
        )
    }

    fn encoder_backward(&self, dwte: Mat, dwpe: Mat, dout: Mat, tokens: TokenSpan, t: usize) {
        let cost = cost::encoder_backward(dout.rows, dout.cols, t);
        self.op("encoder_backward", cost, || {
            encoder::encoder_backward(self, dwte, dwpe, dout, tokens, t)
        })
    }

    fn layernorm_forward(&self, y: Normed, inp: Mat, p: Norm, eps: f32) {
        let cost = cost::layernorm_forward(inp.rows, inp.cols);
        self.op("layernorm_forward", cost, || {
            layernorm::layernorm_forward(self, y, inp, p, eps)
        })
    }

    fn layernorm_backward(
        &self,
        dinp: Mat,
        dp: Norm,
        dout: Mat,
        inp: Mat,
        weight: Span,
        saved: Normed,
    ) {
        let cost = cost::layernorm_backward(inp.rows, inp.cols);
        self.op("layernorm_backward", cost, || {
            layernorm::layernorm_backward(self, dinp, dp, dout, inp, weight, saved)
        })
    }

    fn matmul_forward(&self, out: Mat, inp: Mat, layer: Linear) {
        let cost = cost::matmul_forward(inp.rows, inp.cols, layer.w.rows);
        self.op("matmul_forward", cost, || {
            linear::matmul_forward(self, out, inp, layer)
        })
    }

    fn matmul_backward(&self, dinp: Mat, dlayer: Linear, dout: Mat, inp: Mat, w: Mat) {
        let cost = cost::matmul_backward(inp.rows, inp.cols, w.rows);
        self.op("matmul_backward", cost, || {
            linear::matmul_backward(self, dinp, dlayer, dout, inp, w)
        })
    }

    fn attention_state_len(&self, shape: AttnShape) -> usize {
        attention::attention_state_len(shape.b, shape.t, shape.nh)
    }

    fn attention_forward(&self, out: Mat, state: Span, qkv: Mat, shape: AttnShape) {
        let cost = cost::attention_forward(shape.b, shape.t, out.cols, shape.nh);
        self.op("attention_forward", cost, || {
            attention::attention_forward(self, out, state, qkv, shape)
        })
    }

    fn attention_backward(
        &self,
        dqkv: Mat,
        dout: Mat,
        qkv: Mat,
        out: Mat,
        state: Span,
        shape: AttnShape,
    ) {
        let cost = cost::attention_backward(shape.b, shape.t, dout.cols, shape.nh);
        self.op("attention_backward", cost, || {
            attention::attention_backward(self, dqkv, dout, qkv, out, state, shape)
        })
    }

    fn attention_decode(&self, out: Span, q: Span, k: Mat, v: Mat, nh: usize) {
        self.op(
            "attention_decode",
            cost::attention_decode(k.rows, k.cols),
            || attention::attention_decode(self, out, q, k, v, nh),
        )
    }

    fn gelu_forward(&self, out: Span, inp: Span) {
        self.op("gelu_forward", cost::gelu_forward(out.len), || {
            elementwise::gelu_forward(self, out, inp)
        })
    }

    fn gelu_backward(&self, dinp: Span, inp: Span, dout: Span) {
        self.op("gelu_backward", cost::gelu_backward(dinp.len), || {
            elementwise::gelu_backward(self, dinp, inp, dout)
        })
    }

    fn add(&self, out: Span, a: Span, b: Span) {
        self.op("residual_add", cost::add(out.len), || {
            elementwise::add(self, out, a, b)
        })
    }

    fn residual_layernorm_forward(
        &self,
        residual: Mat,
        y: Normed,
        a: Mat,
        b: Mat,
        p: Norm,
        eps: f32,
    ) {
        let cost = cost::residual_layernorm_forward(a.rows, a.cols);
        self.op("residual_layernorm_forward", cost, || {
            layernorm::residual_layernorm_forward(self, residual, y, a, b, p, eps)
        })
    }

    fn matmul_gelu_forward(&self, y: Gelu, inp: Mat, layer: Linear) {
        let cost = cost::matmul_gelu_forward(inp.rows, inp.cols, layer.w.rows);
        self.op("matmul_gelu_forward", cost, || {
            linear::matmul_gelu_forward(self, y, inp, layer)
        })
    }

    fn gelu_matmul_backward(&self, d: Gelu, dlayer: Linear, dout: Mat, act: Gelu, w: Mat) {
        let cost = cost::gelu_matmul_backward(act.out.rows, act.out.cols, w.rows);
        self.op("gelu_matmul_backward", cost, || {
            linear::gelu_matmul_backward(self, d, dlayer, dout, act, w)
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
        self.op("head", cost, || {
            head::head_loss(self, losses, grads, h, w, targets, kind)
        })
    }

    fn head_logits(&self, out: Mat, h: Mat, w: Mat, kind: HeadKind) {
        self.op(
            "head_logits",
            cost::head_logits(h.rows, h.cols, w.rows),
            || head::head_logits(self, out, h, w, kind),
        )
    }

    /// Queued, to run with the next tensors' updates as one launch (see `update`).
    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW) {
        update::adamw_update(self, params, grads, m, v, hp)
    }

    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep) {
        self.op("sgld", cost::sgld(params.len), || {
            update::sgld_update(self, params, grads, anchor, step)
        })
    }
}
