//! The SGLD noise every backend draws: counter-based, so any backend produces the
//! same xi_i for the same step without sharing generator state, and the result does
//! not depend on how the work is split over threads or blocks.
//!
//! xi_i is SplitMix64's draw number i from the step's key, split into two 24-bit
//! uniforms and sent through Box-Muller (cosine branch). cuda/sgld.cu is the same
//! arithmetic; src/backend/cpu/sgld.rs calls [`gaussian`].

/// SplitMix64's increment, 2^64 / golden ratio.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of one step's noise stream.
pub fn noise_key(seed: u64, chain: u64, step: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ chain) ^ step)
}

/// Standard normal number `index` of stream `key`. The uniforms have 24 bits (exact
/// in f32); u1 lies in (0, 1], so the logarithm is finite and |xi| <= 5.77.
pub fn gaussian(key: u64, index: u64) -> f32 {
    let bits = mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)));
    let unit = 1.0 / (1u32 << 24) as f32;
    let u1 = ((bits >> 40) + 1) as f32 * unit;
    let u2 = ((bits >> 16) & 0xff_ffff) as f32 * unit;
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}
