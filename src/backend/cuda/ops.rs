//! The Backend trait on the GPU, one line per op: each op is the launcher in the file
//! named after its kernel family (`layernorm` for cuda/layernorm.cu, ...), as the CPU
//! backend's are in src/backend/cpu/. Everything runs on the backend's one stream.

use super::{
    CudaBackend, GpuPrecision, attention, elementwise, encoder, head, layernorm, linear, memory,
    reduce, update,
};
use crate::backend::{AdamW, Backend, SgldStep, Span, Target, TokenSpan};
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
        if let Err(e) = self.ctx.synchronize() {
            panic!("CUDA error while waiting for the GPU: {e}");
        }
    }

    /// The most device memory this backend has held at once: buffers, scratch,
    /// shadows and the GEMM workspace.
    fn peak_memory_bytes(&self) -> usize {
        self.peak.get()
    }

    /// How many bias/GELU epilogue GEMMs cuBLASLt had no kernel for (they ran as
    /// separate kernels instead): 0 when every fusion ran fused. fp32 mode asks for
    /// no GELU epilogue, so its GELU GEMMs are not counted.
    fn epilogue_fallbacks(&self) -> usize {
        self.epilogue_fallbacks.get()
    }

    fn alloc(&self, len: usize) -> Span {
        memory::alloc(self, len)
    }

    fn alloc_tokens(&self, len: usize) -> TokenSpan {
        memory::alloc_tokens(self, len)
    }

    fn free(&self, span: Span) {
        memory::free(self, span)
    }

    fn free_tokens(&self, span: TokenSpan) {
        memory::free_tokens(self, span)
    }

    fn write(&self, dst: Span, src: &[f32]) {
        memory::write(self, dst, src)
    }

    fn read(&self, src: Span) -> Vec<f32> {
        memory::read(self, src)
    }

    fn write_tokens(&self, dst: TokenSpan, src: &[u32]) {
        memory::write_tokens(self, dst, src)
    }

    fn fill(&self, dst: Span, value: f32) {
        memory::fill(self, dst, value)
    }

    fn copy(&self, dst: Span, src: Span) {
        memory::copy(self, dst, src)
    }

    fn mean(&self, src: Span) -> f64 {
        reduce::mean(self, src)
    }

    fn sum_squares(&self, src: Span) -> f64 {
        reduce::sum_squares(self, src)
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
        encoder::encoder_forward(self, out, tokens, wte, wpe, b, t, c)
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
        encoder::encoder_backward(self, dwte, dwpe, dout, tokens, b, t, c)
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
        layernorm::layernorm_forward(self, out, mean, rstd, inp, weight, bias, n, c, eps)
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
        layernorm::layernorm_backward(
            self, dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c,
        )
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
        linear::matmul_forward(self, out, inp, weight, bias, n, c, oc)
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
        linear::matmul_backward(self, dinp, dweight, dbias, dout, inp, weight, n, c, oc)
    }

    fn attention_state_len(&self, b: usize, t: usize, nh: usize) -> usize {
        attention::attention_state_len(b, t, nh)
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
        attention::attention_forward(self, out, state, qkv, b, t, c, nh)
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
        attention::attention_backward(self, dqkv, dout, qkv, out, state, b, t, c, nh)
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
        attention::attention_decode(self, out, q, k, v, t, c, nh)
    }

    fn gelu_forward(&self, out: Span, inp: Span) {
        elementwise::gelu_forward(self, out, inp)
    }

    fn gelu_backward(&self, dinp: Span, inp: Span, dout: Span) {
        elementwise::gelu_backward(self, dinp, inp, dout)
    }

    fn add(&self, out: Span, a: Span, b: Span) {
        elementwise::add(self, out, a, b)
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
        layernorm::residual_layernorm_forward(
            self, residual, out, mean, rstd, a, b, weight, bias, n, c, eps,
        )
    }

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
        linear::matmul_gelu_forward(self, pre, out, inp, weight, bias, n, c, oc)
    }

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
        linear::gelu_matmul_backward(
            self, dpre, dact, dweight, dbias, dout, act, pre, weight, n, c, oc,
        )
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
        head::head_loss(self, losses, grads, h, w, targets, n, c, v, kind)
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
        head::head_logits(self, out, h, w, n, c, v, kind)
    }

    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW) {
        update::adamw_update(self, params, grads, m, v, hp)
    }

    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep) {
        update::sgld_update(self, params, grads, anchor, step)
    }
}
