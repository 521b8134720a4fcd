//! Output heads: the usual softmax over dot products, and the harmonic head.
//!
//! Harmonic head (docs/DESIGN.md section 3), per position with hidden state h and class
//! centres w_i:
//!
//! ```text
//! s_i = max(|h|^2 + |w_i|^2 - 2 h.w_i, eps)     squared distance (NaN stays NaN)
//! z_i = -(n/2) ln s_i                            harmonic logit, p = softmax(z)
//! g_i = dL/ds_i = -(n/2) q_i / s_i               q = p - onehot(y); 0 where clamped
//! dL/dh   = 2 (h sum_i g_i - sum_i g_i w_i)
//! dL/dw_i = 2 (w_i sum_t g_ti - sum_t g_ti h_t)
//! ```
//!
//! Both heads reduce to one shape of computation: a GEMM of dot products, a per-row
//! pass that turns them into logits, loss and a gradient matrix G, and two GEMMs with
//! G. The per-row pass lives here, generic over the float type, so every backend's
//! head is checked against this one function; the chunked algorithm around it is
//! [`chunked`].

pub mod chunked;

use num_traits::Float;

/// Which output head the model uses, with the harmonic head's parameters resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeadKind {
    Softmax,
    /// `exponent` is n (applied to the distance d, p_i proportional to d_i^-n).
    Harmonic {
        exponent: f32,
        eps: f32,
    },
}

/// Turns one row of dot products `dots[i] = h.w_i` into logits, in place.
/// `h_sq` is |h|^2 and `w_sq[i]` is |w_i|^2 (unused by the softmax head).
pub fn logits_from_dots<F: Float>(kind: HeadKind, dots: &mut [F], h_sq: F, w_sq: &[F]) {
    if let HeadKind::Harmonic { exponent, eps } = kind {
        let half_n = F::from(exponent).unwrap() / F::from(2.0).unwrap();
        let eps = F::from(eps).unwrap();
        for (d, &ww) in dots.iter_mut().zip(w_sq) {
            // Not Float::max, which would turn a NaN distance into eps (a model whose
            // activations are NaN would then score exactly ln V).
            let s = h_sq + ww - (*d + *d);
            let s = if s < eps { eps } else { s };
            *d = -half_n * s.ln();
        }
    }
}

/// Numerically stable log-sum-exp of a row.
pub fn logsumexp<F: Float>(row: &[F]) -> F {
    let max = row.iter().fold(F::neg_infinity(), |m, &x| m.max(x));
    let sum = row.iter().fold(F::zero(), |s, &x| s + (x - max).exp());
    max + sum.ln()
}

/// One row of the fused head: `dots` holds h.w_i on entry. Returns the loss
/// -log p_target. With `grad_scale = Some(k)`, leaves in `dots` the row of G that
/// the GEMMs of the backward pass consume, times k: dL/dlogit_i (softmax) or
/// dL/ds_i (harmonic).
pub fn row_loss_and_grad<F: Float>(
    kind: HeadKind,
    dots: &mut [F],
    h_sq: F,
    w_sq: &[F],
    target: usize,
    grad_scale: Option<F>,
) -> F {
    // The harmonic gradient needs s_i; it is recovered from z_i = -(n/2) ln s_i
    // rather than kept in a second row.
    logits_from_dots(kind, dots, h_sq, w_sq);
    let lse = logsumexp(dots);
    let loss = lse - dots[target];
    let Some(scale) = grad_scale else {
        return loss;
    };
    match kind {
        HeadKind::Softmax => {
            for (i, z) in dots.iter_mut().enumerate() {
                let q = (*z - lse).exp() - if i == target { F::one() } else { F::zero() };
                *z = q * scale;
            }
        }
        HeadKind::Harmonic { exponent, eps } => {
            let half_n = F::from(exponent).unwrap() / F::from(2.0).unwrap();
            let eps = F::from(eps).unwrap();
            // A clamped entry has exactly the largest possible logit, computed by the
            // same expression as in logits_from_dots; it gets no gradient.
            let z_clamped = -half_n * eps.ln();
            for (i, z) in dots.iter_mut().enumerate() {
                let q = (*z - lse).exp() - if i == target { F::one() } else { F::zero() };
                let s = (-*z / half_n).exp();
                *z = if *z >= z_clamped {
                    F::zero()
                } else {
                    -half_n * q / s * scale
                };
            }
        }
    }
    loss
}
