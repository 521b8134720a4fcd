//! CUDA against the CPU reference. Every test needs a GPU, so each is ignored by a
//! plain `cargo test`; a GPU machine runs them with `--include-ignored`, and there a
//! GPU that does not open fails the test rather than skipping it.
//!
//! - `ops`: every op, on fresh random inputs (never zeros) with poisoned (NaN)
//!   outputs, or random starting values for the outputs an op adds into; sizes past
//!   the launch caps; the SGLD step, its noise included (within 1e-5);
//! - `attention`: flash attention at T = 1, around and past its tiles, head sizes 5
//!   to 128, with its saved row log-sum-exps (fp32 SIMT kernels in fp32 mode, tensor
//!   cores in bf16), and at GPT-2 124M's shape, timed;
//! - `head`: both heads over several chunks; the harmonic head with h exactly on a
//!   class centre;
//! - `fused`: residual + LayerNorm, matmul + GELU and its backward on both of their
//!   paths (float4 rows and scalar ones, cuBLASLt's epilogues and the unfused
//!   fallback); AdamW and the norm over float4s with a tail and misaligned;
//! - `gemm_operands`: ln_1's and ln_2's outputs stored in bf16 in bf16 mode give
//!   the same bits as fp32 storage (LayerNorm outputs bf16(fp32 out); GEMMs equal),
//!   and an op not adapted to them refuses them;
//! - `shadow`: bf16 weight shadows after AdamW and SGLD steps and after writes into
//!   the parameters equal a fresh backend's conversion;
//! - `memory`: the memory plan (src/memory.rs) against the backend's slots and peak;
//! - `training`: a small model's loss and every gradient, and 50 training steps
//!   tracking the CPU loss curve; two runs of 20 steps bit-identical (deterministic
//!   backward); AdamW's multi-tensor launch bit-identical to one launch per tensor;
//! - `nccl`: 20 data-parallel steps through NCCL at world size 1 against the
//!   single-process run.
//!
//! Errors are relative, by norm, per tensor: below 1e-4 in fp32 mode and 2e-2 in bf16
//! mode (the training curve: 1e-3 and 5e-2 per step). Checks within a test collect
//! every mismatch before failing (`harness::Both::finish`).

mod attention;
mod fused;
mod gemm_operands;
mod harness;
mod head;
mod memory;
mod nccl;
mod ops;
mod shadow;
mod training;
