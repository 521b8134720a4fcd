//! `Box<dyn Backend>` is a Backend: the door (`device::open`) hands out boxes, and the
//! model, trainer and commands are generic over `B: Backend`, so the same code runs a
//! concrete backend (tests, f64 gradient checks) or a boxed one. Every method
//! forwards, the defaulted ones too, so a backend's fused overrides stay in force.

use std::collections::BTreeMap;

use super::{
    AdamW, AttnShape, Backend, Gelu, HeadGrads, Linear, Mat, Norm, Normed, OpStats, SgldStep, Span,
    Target, TokenSpan,
};
use crate::head::HeadKind;

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn describe(&self) -> String {
        (**self).describe()
    }

    fn target(&self) -> Target {
        (**self).target()
    }

    fn synchronize(&self) {
        (**self).synchronize()
    }

    fn peak_memory_bytes(&self) -> usize {
        (**self).peak_memory_bytes()
    }

    fn free_memory_bytes(&self) -> Option<usize> {
        (**self).free_memory_bytes()
    }

    fn epilogue_fallbacks(&self) -> usize {
        (**self).epilogue_fallbacks()
    }

    fn max_decode_positions(&self) -> Option<usize> {
        (**self).max_decode_positions()
    }

    fn start_profile(&self) {
        (**self).start_profile()
    }

    fn take_profile(&self) -> BTreeMap<&'static str, OpStats> {
        (**self).take_profile()
    }

    fn alloc(&self, len: usize) -> Span {
        (**self).alloc(len)
    }

    fn alloc_gemm_operands(&self, len: usize) -> Span {
        (**self).alloc_gemm_operands(len)
    }

    fn alloc_tokens(&self, len: usize) -> TokenSpan {
        (**self).alloc_tokens(len)
    }

    fn free(&self, span: Span) {
        (**self).free(span)
    }

    fn free_tokens(&self, span: TokenSpan) {
        (**self).free_tokens(span)
    }

    fn write(&self, dst: Span, src: &[f32]) {
        (**self).write(dst, src)
    }

    fn read(&self, src: Span) -> Vec<f32> {
        (**self).read(src)
    }

    fn write_tokens(&self, dst: TokenSpan, src: &[u32]) {
        (**self).write_tokens(dst, src)
    }

    fn fill(&self, dst: Span, value: f32) {
        (**self).fill(dst, value)
    }

    fn device_ptr(&self, span: Span, written: bool) -> Option<u64> {
        (**self).device_ptr(span, written)
    }

    fn copy(&self, dst: Span, src: Span) {
        (**self).copy(dst, src)
    }

    fn mean(&self, src: Span) -> f64 {
        (**self).mean(src)
    }

    fn sum_squares(&self, src: Span) -> f64 {
        (**self).sum_squares(src)
    }

    fn encoder_forward(&self, out: Mat, tokens: TokenSpan, wte: Mat, wpe: Mat, t: usize) {
        (**self).encoder_forward(out, tokens, wte, wpe, t)
    }

    fn encoder_backward(&self, dwte: Mat, dwpe: Mat, dout: Mat, tokens: TokenSpan, t: usize) {
        (**self).encoder_backward(dwte, dwpe, dout, tokens, t)
    }

    fn layernorm_forward(&self, out: Normed, inp: Mat, p: Norm, eps: f32) {
        (**self).layernorm_forward(out, inp, p, eps)
    }

    fn layernorm_backward(&self, dinp: Mat, dp: Norm, dout: Mat, inp: Mat, w: Span, saved: Normed) {
        (**self).layernorm_backward(dinp, dp, dout, inp, w, saved)
    }

    fn matmul_forward(&self, out: Mat, inp: Mat, layer: Linear) {
        (**self).matmul_forward(out, inp, layer)
    }

    fn matmul_backward(&self, dinp: Mat, dlayer: Linear, dout: Mat, inp: Mat, w: Mat) {
        (**self).matmul_backward(dinp, dlayer, dout, inp, w)
    }

    fn attention_state_len(&self, shape: AttnShape) -> usize {
        (**self).attention_state_len(shape)
    }

    fn attention_forward(&self, out: Mat, state: Span, qkv: Mat, shape: AttnShape) {
        (**self).attention_forward(out, state, qkv, shape)
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
        (**self).attention_backward(dqkv, dout, qkv, out, state, shape)
    }

    fn attention_decode(&self, out: Span, q: Span, k: Mat, v: Mat, nh: usize) {
        (**self).attention_decode(out, q, k, v, nh)
    }

    fn gelu_forward(&self, out: Span, inp: Span) {
        (**self).gelu_forward(out, inp)
    }

    fn gelu_backward(&self, dinp: Span, inp: Span, dout: Span) {
        (**self).gelu_backward(dinp, inp, dout)
    }

    fn add(&self, out: Span, a: Span, b: Span) {
        (**self).add(out, a, b)
    }

    fn residual_layernorm_forward(
        &self,
        residual: Mat,
        out: Normed,
        a: Mat,
        b: Mat,
        p: Norm,
        eps: f32,
    ) {
        (**self).residual_layernorm_forward(residual, out, a, b, p, eps)
    }

    fn matmul_gelu_forward(&self, out: Gelu, inp: Mat, layer: Linear) {
        (**self).matmul_gelu_forward(out, inp, layer)
    }

    fn gelu_matmul_backward(&self, d: Gelu, dlayer: Linear, dout: Mat, act: Gelu, w: Mat) {
        (**self).gelu_matmul_backward(d, dlayer, dout, act, w)
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
        (**self).head_loss(losses, grads, h, w, targets, kind)
    }

    fn head_logits(&self, out: Mat, h: Mat, w: Mat, kind: HeadKind) {
        (**self).head_logits(out, h, w, kind)
    }

    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW) {
        (**self).adamw_update(params, grads, m, v, hp)
    }

    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep) {
        (**self).sgld_update(params, grads, anchor, step)
    }
}
