//! Attention on the GPU, the host half of cuda/flash_attention.cu (training) and
//! cuda/attention_decode.cu (one new position over a KV cache): launch shapes, shared
//! memory sizes and the row scratch of the backward pass.

use super::kernels::Arg;
use super::kernels::Arg::{F32, I32, I64, Ptr};
use super::{CudaBackend, GpuPrecision, MAX_HEAD_SIZE, Slot};
use crate::backend::{AttnShape, Mat, Span};

/// Rows a flash attention block owns (FA_ROWS and FB_ROWS in cuda/flash_attention.cu).
const FLASH_ROWS: usize = 64;

/// The flash attention kernels for one precision and head size, with their threads
/// per block and bytes of dynamic shared memory (cuda/flash_attention.cu gives the
/// tiles behind the sizes).
pub struct FlashKernels {
    pub forward: &'static str,
    pub dkdv: &'static str,
    pub dq: &'static str,
    pub threads: u32,
    pub forward_smem: usize,
    pub backward_smem: usize,
}

/// Floats of attention state kept per layer for the backward pass: each row's
/// log-sum-exp of scores, [B, NH, T] (flash attention keeps nothing else).
pub fn attention_state_len(b: usize, t: usize, nh: usize) -> usize {
    b * nh * t
}

/// The flash attention kernels for head size `hs`: fp32 SIMT math in fp32 mode, bf16
/// tensor cores in bf16 mode.
pub fn flash_kernels(precision: GpuPrecision, hs: usize) -> FlashKernels {
    assert!(
        hs <= MAX_HEAD_SIZE,
        "flash attention supports head sizes up to {MAX_HEAD_SIZE}, not {hs}"
    );
    match precision {
        // fp32 tiles [HS][rows + 1]: the block's 64 rows of one tensor (forward) or
        // two (backward), and 32 streamed rows of two.
        GpuPrecision::Fp32 => FlashKernels {
            forward: "flash_attention_forward",
            dkdv: "flash_attention_backward_dkdv",
            dq: "flash_attention_backward_dq",
            threads: 256,
            forward_smem: 4 * hs * (65 + 2 * 33),
            backward_smem: 4 * hs * (2 * 65 + 2 * 33),
        },
        // bf16 tiles with head dims padded to hp: [rows][hp + 8] or [hp][cols + 8].
        // The kernels' accumulators hold 64 dims (hp64) or 128 (hp128).
        GpuPrecision::Bf16 => {
            let hp = hs.next_multiple_of(16);
            let l = hp + 8;
            let (forward, dkdv, dq) = if hs <= 64 {
                (
                    "flash_attention_forward_bf16_hp64",
                    "flash_attention_backward_dkdv_bf16_hp64",
                    "flash_attention_backward_dq_bf16_hp64",
                )
            } else {
                (
                    "flash_attention_forward_bf16_hp128",
                    "flash_attention_backward_dkdv_bf16_hp128",
                    "flash_attention_backward_dq_bf16_hp128",
                )
            };
            FlashKernels {
                forward,
                dkdv,
                dq,
                threads: 128,
                forward_smem: 2 * (128 * l + 72 * hp),
                backward_smem: 2 * (192 * l + 80 * hp) + 256,
            }
        }
    }
}

impl CudaBackend {
    /// One launch of a tiled flash attention kernel: a block per (batch row, head) of
    /// the `bh` and tile of 64 rows of the `t`.
    fn flash_launch(
        &self,
        name: &str,
        bh: usize,
        t: usize,
        threads: u32,
        smem: usize,
        args: &[Arg],
    ) {
        if bh * t > 0 {
            let grid = (bh as u32, t.div_ceil(FLASH_ROWS) as u32);
            self.launch(name, grid, (threads, 1), smem as u32, args)
        }
    }
}

pub(super) fn attention_forward(
    be: &CudaBackend,
    out: Mat,
    state: Span,
    qkv: Mat,
    shape: AttnShape,
) {
    let AttnShape { b, t, nh } = shape;
    let c = out.cols;
    let (out, qkv) = (out.span, qkv.span);
    let hs = c / nh;
    assert_eq!(state.len, b * nh * t, "attention state size");
    let flash = flash_kernels(be.precision, hs);
    be.flash_launch(
        flash.forward,
        b * nh,
        t,
        flash.threads,
        flash.forward_smem,
        &[
            Ptr(be.ptr(out)),
            Ptr(be.ptr(state)),
            Ptr(be.ptr(qkv)),
            I32(t as i32),
            I32(nh as i32),
            I32(hs as i32),
            F32(1.0 / (hs as f32).sqrt()),
        ],
    );
}

pub(super) fn attention_backward(
    be: &CudaBackend,
    dqkv: Mat,
    dout: Mat,
    qkv: Mat,
    out: Mat,
    state: Span,
    shape: AttnShape,
) {
    let AttnShape { b, t, nh } = shape;
    let c = out.cols;
    let (dqkv, dout, qkv, out) = (dqkv.span, dout.span, qkv.span, out.span);
    let hs = c / nh;
    let rows = b * t * nh;
    assert_eq!(state.len, rows, "attention state size");
    let flash = flash_kernels(be.precision, hs);
    let row_dots = be.scratch(Slot::AttRowDots, 4 * rows);
    let dy = be.ptr(dout);
    be.launch_rows(
        "flash_attention_backward_preprocess",
        rows,
        &[
            Ptr(row_dots),
            Ptr(dy),
            Ptr(be.ptr(out)),
            I64(rows as i64),
            I32(t as i32),
            I32(nh as i32),
            I32(hs as i32),
        ],
    );
    let args = [
        Ptr(be.ptr(dqkv)),
        Ptr(dy),
        Ptr(be.ptr(qkv)),
        Ptr(be.ptr(state)),
        Ptr(row_dots),
        I32(t as i32),
        I32(nh as i32),
        I32(hs as i32),
        F32(1.0 / (hs as f32).sqrt()),
    ];
    for kernel in [flash.dkdv, flash.dq] {
        let smem = flash.backward_smem;
        be.flash_launch(kernel, b * nh, t, flash.threads, smem, &args);
    }
}

/// The most cached positions `attention_decode` takes: its t scores sit in shared
/// memory next to the kernel's 32-float static scratch, all within the 48 KiB
/// default, (49152 - 128) / 4 floats.
pub(super) const MAX_DECODE_POSITIONS: usize = 12256;

pub(super) fn attention_decode(be: &CudaBackend, out: Span, q: Span, k: Mat, v: Mat, nh: usize) {
    let (t, c) = (k.rows, k.cols);
    let (k, v) = (k.span, v.span);
    assert_eq!(
        (q.len, k.len, v.len),
        (c, t * c, t * c),
        "attention_decode shapes"
    );
    assert!(
        t <= MAX_DECODE_POSITIONS,
        "attention_decode supports at most {MAX_DECODE_POSITIONS} cached positions"
    );
    let hs = c / nh;
    be.launch(
        "attention_decode",
        (nh as u32, 1),
        (256, 1),
        (4 * t) as u32,
        &[
            Ptr(be.ptr(out)),
            Ptr(be.ptr(q)),
            Ptr(be.ptr(k)),
            Ptr(be.ptr(v)),
            I32(t as i32),
            I32(c as i32),
            I32(hs as i32),
            F32(1.0 / (hs as f32).sqrt()),
        ],
    );
}
