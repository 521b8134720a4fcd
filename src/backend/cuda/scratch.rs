//! The CUDA backend's scratch slots and the bytes each grows to over a training
//! step, and the backend's whole step memory beyond the model's buffers (slots, the
//! bf16 weight shadow, the cuBLASLt workspace) for the memory plan (src/memory.rs).

use super::encoder::bucket_bytes;
use super::head::grad_tiles;
use super::layernorm::norm_partial_bytes;
use super::linear::column_splits;
use super::update::adamw_table_bytes;
use super::{CudaBackend, GpuPrecision, HEAD_CHUNK_FLOATS, weight_shadow_bytes, workspace_bytes};
use crate::backend::{ScratchItem, ScratchKind, StepShape};

/// Scratch memory the ops keep between calls, grown on demand.
#[derive(Clone, Copy, Debug)]
pub(super) enum Slot {
    /// bf16 copies of a GEMM's activation operands (weights have their shadows).
    OperandA,
    OperandB,
    /// Flash attention's backward: D = rowsum(dy * y) per row, [B, NH, T].
    AttRowDots,
    /// The head: a chunk of dot products (fp32 G in their place in fp32 mode), G's
    /// bf16 copy, and each chunk row's lse.
    HeadRows,
    HeadG16,
    HeadLse,
    /// The bf16 copy of the head's input h [N, C] (w comes from its shadow).
    HeadH16,
    /// |h|^2, |w|^2, rowsum(G), colsum(G), and head_grad's partial sums of G per
    /// (column tile, row) and per (row tile, column).
    HeadHsq,
    HeadWsq,
    HeadRowsum,
    HeadColsum,
    HeadRowPartials,
    HeadColPartials,
    /// f64 partial sums of a reduction and its result.
    Partials,
    Scalar,
    /// Deterministic gradient sums: column sums' partials per row range, LayerNorm's
    /// backward per-block dw, db, the wte backward's bucket table.
    ColumnPartials,
    NormPartials,
    EncoderBuckets,
    /// The multi-tensor AdamW's table of tensor starts and decay flags.
    AdamwTable,
}
pub(super) const SLOTS: usize = Slot::AdamwTable as usize + 1;

impl Slot {
    /// Every slot, in order (the length check makes a new slot a compile error here).
    pub(super) const ALL: [Slot; SLOTS] = [
        Slot::OperandA,
        Slot::OperandB,
        Slot::AttRowDots,
        Slot::HeadRows,
        Slot::HeadG16,
        Slot::HeadLse,
        Slot::HeadH16,
        Slot::HeadHsq,
        Slot::HeadWsq,
        Slot::HeadRowsum,
        Slot::HeadColsum,
        Slot::HeadRowPartials,
        Slot::HeadColPartials,
        Slot::Partials,
        Slot::Scalar,
        Slot::ColumnPartials,
        Slot::NormPartials,
        Slot::EncoderBuckets,
        Slot::AdamwTable,
    ];

    /// Bytes this slot grows to over one training step of shape `s` (forward with
    /// the head's gradients, backward, gradient norm): the largest request the ops
    /// make of it. The match is exhaustive, so a new slot cannot be left out of the
    /// memory plan; tests/cuda_parity/ checks every figure against the backend.
    /// The head's chunk is the default, `HEAD_CHUNK_FLOATS`.
    fn training_bytes(self, s: &StepShape, precision: GpuPrecision) -> usize {
        let (n, c, v) = (s.b * s.t, s.c, s.v);
        let btc = n * c;
        let bf16 = precision == GpuPrecision::Bf16;
        let rows = (HEAD_CHUNK_FLOATS / v).clamp(1, n);
        let bf16_only = |bytes: usize| if bf16 { bytes } else { 0 };
        let harmonic_only = |bytes: usize| if s.harmonic { bytes } else { 0 };
        // The chunk's scratch comes from cuMemAlloc, aligned for float4s.
        let (row_tiles, col_tiles) = grad_tiles(rows, v, v.is_multiple_of(4));
        match self {
            // The widest fp32 activation operands (weights come from their shadows;
            // ln_1's, ln_2's and GELU's outputs are stored in bf16, read in place):
            // fc's output gradient [N, 4C] as A, attention's output [N, C] as B (the
            // only activation a weight gradient reads in fp32).
            Slot::OperandA => bf16_only(2 * 4 * btc),
            Slot::OperandB => bf16_only(2 * btc),
            Slot::AttRowDots => 4 * s.b * s.nh * s.t,
            Slot::HeadRows => 4 * rows * v,
            Slot::HeadG16 => bf16_only(2 * rows * v),
            Slot::HeadLse => 4 * rows,
            Slot::HeadH16 => bf16_only(2 * btc),
            Slot::HeadHsq => harmonic_only(4 * n),
            Slot::HeadWsq | Slot::HeadColsum => harmonic_only(4 * v),
            Slot::HeadRowsum => harmonic_only(4 * rows),
            Slot::HeadRowPartials => harmonic_only(4 * col_tiles * rows),
            Slot::HeadColPartials => harmonic_only(4 * row_tiles * v),
            Slot::Partials => 1024 * 8,
            Slot::Scalar => 8,
            // The widest bias (the MLP's 4C, over N rows); LayerNorm's 2C over N / 32
            // rows is never wider.
            Slot::ColumnPartials => 4 * column_splits(n) * 4 * c,
            Slot::NormPartials => norm_partial_bytes(n, c),
            Slot::EncoderBuckets => bucket_bytes(n, v),
            Slot::AdamwTable => adamw_table_bytes(s.tensors),
        }
    }
}

impl Slot {
    /// What the slot is for, as the memory plan groups it.
    fn kind(self) -> ScratchKind {
        match self {
            Slot::OperandA | Slot::OperandB => ScratchKind::GemmOperands,
            Slot::AttRowDots => ScratchKind::Attention,
            Slot::HeadRows
            | Slot::HeadG16
            | Slot::HeadLse
            | Slot::HeadRowsum
            | Slot::HeadRowPartials
            | Slot::HeadColPartials => ScratchKind::HeadChunk,
            Slot::HeadH16 | Slot::HeadHsq | Slot::HeadWsq | Slot::HeadColsum => {
                ScratchKind::HeadInputs
            }
            Slot::Partials | Slot::Scalar => ScratchKind::Reductions,
            Slot::ColumnPartials | Slot::NormPartials | Slot::EncoderBuckets => {
                ScratchKind::GradReductions
            }
            Slot::AdamwTable => ScratchKind::OptimizerTable,
        }
    }
}

/// Every scratch slot's bytes after a training step of shape `s` in `precision`
/// (0: never used), named as `CudaBackend::scratch_bytes` names them.
pub fn training_slot_bytes(s: &StepShape, precision: GpuPrecision) -> Vec<(String, usize)> {
    Slot::ALL
        .iter()
        .map(|&slot| (format!("{slot:?}"), slot.training_bytes(s, precision)))
        .collect()
}

/// What the backend holds over a training step of shape `s` beyond the model's
/// buffers, on a GPU of compute capability `cc_major`: every scratch slot, the bf16
/// weight shadow and the cuBLASLt workspace.
pub fn step_scratch(s: &StepShape, precision: GpuPrecision, cc_major: i32) -> Vec<ScratchItem> {
    let item = |kind, bytes| ScratchItem {
        kind,
        bytes,
        host: false,
    };
    let slots = Slot::ALL
        .iter()
        .map(|&slot| item(slot.kind(), slot.training_bytes(s, precision)));
    slots
        .chain([
            item(
                ScratchKind::WeightShadow,
                weight_shadow_bytes(s.params, precision),
            ),
            item(ScratchKind::GemmWorkspace, workspace_bytes(cc_major)),
        ])
        .collect()
}

impl CudaBackend {
    /// Every scratch slot's bytes now (0: not allocated), named by slot.
    pub fn scratch_bytes(&self) -> Vec<(String, usize)> {
        let slots = self.scratch.borrow();
        Slot::ALL
            .iter()
            .map(|&slot| {
                let bytes = slots[slot as usize].as_ref().map_or(0, |m| m.bytes);
                (format!("{slot:?}"), bytes)
            })
            .collect()
    }
}
