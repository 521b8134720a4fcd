//! One SGLD step localised at w* (the sampler is src/llc/sampler.rs):
//!
//! ```text
//! w_i <- w_i - (eps/2) (nbeta g_i + gamma (w_i - w*_i)) + sqrt(eps) xi_i
//! ```
//!
//! xi_i is the shared counter-based noise (src/backend/noise.rs), so the result does
//! not depend on how the work is split over threads. cuda/sgld.cu is the same
//! arithmetic.

use rayon::prelude::*;

use super::{Real, real};
use crate::backend::SgldStep;
use crate::backend::noise::gaussian;

const CHUNK: usize = 4096;

pub fn sgld_update<F: Real>(w: &mut [F], grad: &[F], anchor: &[F], step: SgldStep) {
    let (half_eps, noise_std): (F, F) =
        (real(step.half_eps() as f64), real(step.noise_std() as f64));
    let (nbeta, gamma): (F, F) = (real(step.nbeta as f64), real(step.gamma as f64));
    w.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(anchor.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(k, ((w, grad), anchor))| {
            for (j, ((w, &g), &w0)) in w.iter_mut().zip(grad).zip(anchor).enumerate() {
                let xi: F = real(gaussian(step.noise_key, (k * CHUNK + j) as u64) as f64);
                *w = *w - half_eps * (nbeta * g + gamma * (*w - w0)) + noise_std * xi;
            }
        });
}
