//! The chunked head, written once for every backend. The logits of all N positions
//! would take N x V floats, so the head runs over chunks of rows, and per chunk:
//!
//! ```text
//! D = H W^T                                     GEMM (the chunk's dot products)
//! row pass: D -> loss, and G in place of D      (crate::head::row_loss_and_grad)
//! softmax:  dH = G W,                 dW += G^T H
//! harmonic: dH = -2 G W + 2 rowsum(G) H,   dW += -2 G^T H, colsum += colsum(G)
//! ```
//!
//! and after the last chunk the harmonic head adds dW += 2 colsum W. A backend
//! provides the steps as [`HeadSteps`]; their order, the coefficients and the
//! chunking are decided here.

use super::HeadKind;

/// One backend's steps of the chunked head over its own buffers (the hidden states H,
/// the class centres W, the losses, the gradients and its chunk scratch).
pub trait HeadSteps {
    /// D = H[r0..r0 + rows] W^T into the chunk's scratch.
    fn dots(&mut self, r0: usize, rows: usize);
    /// The row pass over the chunk: each row's loss into the losses at r0, and with
    /// `grads`, G (of the backend's gradient scale times the loss) in place of D.
    fn rows(&mut self, r0: usize, rows: usize, grads: bool);
    /// dH[r0..r0 + rows] = coef G W (overwritten).
    fn grad_h(&mut self, r0: usize, rows: usize, coef: f32);
    /// dW += coef G^T H[r0..r0 + rows].
    fn grad_w(&mut self, r0: usize, rows: usize, coef: f32);
    /// Harmonic: dH[r] += 2 rowsum(G)[r] H[r] for the chunk's rows, and
    /// colsum += the column sums of G.
    fn harmonic_chunk(&mut self, r0: usize, rows: usize);
    /// Harmonic, after the last chunk: dW[i] += 2 colsum[i] W[i].
    fn harmonic_end(&mut self);
}

/// Runs the head over `n` rows in chunks of `chunk` rows: the losses, and with
/// `grads` the gradients.
pub fn head_loss(steps: &mut impl HeadSteps, kind: HeadKind, n: usize, chunk: usize, grads: bool) {
    let harmonic = matches!(kind, HeadKind::Harmonic { .. });
    // The harmonic head's dL/dh and dL/dw carry -2 G W and -2 G^T H.
    let coef = if harmonic { -2.0 } else { 1.0 };
    for r0 in (0..n).step_by(chunk.max(1)) {
        let rows = chunk.min(n - r0);
        steps.dots(r0, rows);
        steps.rows(r0, rows, grads);
        if !grads {
            continue;
        }
        steps.grad_h(r0, rows, coef);
        steps.grad_w(r0, rows, coef);
        if harmonic {
            steps.harmonic_chunk(r0, rows);
        }
    }
    if harmonic && grads {
        steps.harmonic_end();
    }
}
