//! `Box<dyn Backend>` is a Backend: the door (`device::open`) hands out boxes, and the
//! model, trainer and commands are generic over `B: Backend`, so the same code runs a
//! concrete backend (tests, f64 gradient checks) or a boxed one. Every method
//! forwards, the defaulted ones too, so a backend's fused overrides stay in force.

use std::collections::BTreeMap;

use super::{AdamW, Backend, OpStats, SgldStep, Span, Target, TokenSpan};
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
    fn start_profile(&self) {
        (**self).start_profile()
    }
    fn take_profile(&self) -> BTreeMap<&'static str, OpStats> {
        (**self).take_profile()
    }
    fn alloc(&self, len: usize) -> Span {
        (**self).alloc(len)
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
    fn copy(&self, dst: Span, src: Span) {
        (**self).copy(dst, src)
    }
    fn mean(&self, src: Span) -> f64 {
        (**self).mean(src)
    }
    fn sum_squares(&self, src: Span) -> f64 {
        (**self).sum_squares(src)
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
        (**self).encoder_forward(out, tokens, wte, wpe, b, t, c)
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
        (**self).encoder_backward(dwte, dwpe, dout, tokens, b, t, c)
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
        (**self).layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, eps)
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
        (**self).layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c)
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
        (**self).matmul_forward(out, inp, weight, bias, n, c, oc)
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
        (**self).matmul_backward(dinp, dweight, dbias, dout, inp, weight, n, c, oc)
    }
    fn attention_state_len(&self, b: usize, t: usize, nh: usize) -> usize {
        (**self).attention_state_len(b, t, nh)
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
        (**self).attention_forward(out, state, qkv, b, t, c, nh)
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
        (**self).attention_backward(dqkv, dout, qkv, out, state, b, t, c, nh)
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
        (**self).attention_decode(out, q, k, v, t, c, nh)
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
        (**self)
            .residual_layernorm_forward(residual, out, mean, rstd, a, b, weight, bias, n, c, eps)
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
        (**self).matmul_gelu_forward(pre, out, inp, weight, bias, n, c, oc)
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
        (**self).gelu_matmul_backward(dpre, dact, dweight, dbias, dout, act, pre, weight, n, c, oc)
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
        (**self).head_loss(losses, grads, h, w, targets, n, c, v, kind)
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
        (**self).head_logits(out, h, w, n, c, v, kind)
    }
    fn adamw_update(&self, params: Span, grads: Span, m: Span, v: Span, hp: AdamW) {
        (**self).adamw_update(params, grads, m, v, hp)
    }
    fn sgld_update(&self, params: Span, grads: Span, anchor: Span, step: SgldStep) {
        (**self).sgld_update(params, grads, anchor, step)
    }
}
