//! Parameter updates on the GPU, the host half of cuda/adamw.cu and cuda/sgld.cu:
//! each writes the fp32 parameters and, in the same pass, their bf16 shadow where one
//! is fresh (`shadow::update_in_place`).

use super::kernels::Arg::{F32, I32, I64, Ptr};
use super::{CudaBackend, aligned16};
use crate::backend::{AdamW, SgldStep, Span};

pub(super) fn adamw_update(
    be: &CudaBackend,
    params: Span,
    grads: Span,
    m: Span,
    v: Span,
    hp: AdamW,
) {
    // Bias corrections in f64 on the host, as the CPU backend computes them.
    let c1 = (1.0 - (hp.beta1 as f64).powi(hp.step as i32)) as f32;
    let c2 = (1.0 - (hp.beta2 as f64).powi(hp.step as i32)) as f32;
    let fp32 = [params, grads, m, v].map(|s| be.ptr(s));
    let vec4 = aligned16(&fp32);
    let [p, g, m, v] = fp32;
    let n = params.len;
    be.update_in_place(params, |p16| {
        // Threads for the float4 quads and the scalar tail (cuda/adamw.cu).
        be.launch_elems(
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

pub(super) fn sgld_update(
    be: &CudaBackend,
    params: Span,
    grads: Span,
    anchor: Span,
    step: SgldStep,
) {
    assert!(
        grads.len == params.len && anchor.len == params.len,
        "sgld_update lengths"
    );
    let [w, g, anchor] = [params, grads, anchor].map(|s| be.ptr(s));
    be.update_in_place(params, |w16| {
        be.launch_elems(
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
