//! The CUDA backend's scratch slots and the bytes each grows to over a training
//! step, for the memory plan (src/memory.rs).

use super::{CudaBackend, GpuPrecision};

/// Scratch memory the ops keep between calls, grown on demand.
#[derive(Clone, Copy, Debug)]
pub(super) enum Slot {
    /// bf16 copies of a GEMM's activation operands (weights have their shadows).
    OperandA,
    OperandB,
    /// Flash attention's backward: D = rowsum(dy * y) per row, [B, NH, T].
    AttRowDots,
    /// The head: a chunk of dot products / G, and its bf16 copy.
    HeadRows,
    HeadG16,
    /// The bf16 copy of the head's input h [N, C] (w comes from its shadow).
    HeadH16,
    /// |h|^2, |w|^2, rowsum(G), colsum(G).
    HeadHsq,
    HeadWsq,
    HeadRowsum,
    HeadColsum,
    /// f64 partial sums of a reduction and its result.
    Partials,
    Scalar,
}
pub(super) const SLOTS: usize = Slot::Scalar as usize + 1;

impl Slot {
    /// Every slot, in order (the length check makes a new slot a compile error here).
    pub(super) const ALL: [Slot; SLOTS] = [
        Slot::OperandA,
        Slot::OperandB,
        Slot::AttRowDots,
        Slot::HeadRows,
        Slot::HeadG16,
        Slot::HeadH16,
        Slot::HeadHsq,
        Slot::HeadWsq,
        Slot::HeadRowsum,
        Slot::HeadColsum,
        Slot::Partials,
        Slot::Scalar,
    ];

    /// Bytes this slot grows to over one training step of shape `s` (forward with
    /// the head's gradients, backward, gradient norm): the largest request the ops
    /// make of it. The match is exhaustive, so a new slot cannot be left out of the
    /// memory plan; tests/cuda_parity/ checks every figure against the backend.
    fn training_bytes(self, s: &StepShape) -> usize {
        let (n, c, v) = (s.b * s.t, s.c, s.v);
        let btc = n * c;
        let bf16 = s.precision == GpuPrecision::Bf16;
        let rows = (s.head_chunk_floats / v).clamp(1, n);
        let bf16_only = |bytes: usize| if bf16 { bytes } else { 0 };
        let harmonic_only = |bytes: usize| if s.harmonic { bytes } else { 0 };
        match self {
            // The widest activation operands (weights come from their shadows): the
            // MLP's [N, 4C] as A (fc_proj's input, fc's output gradient) and as B.
            Slot::OperandA | Slot::OperandB => bf16_only(2 * 4 * btc),
            Slot::AttRowDots => 4 * s.b * s.nh * s.t,
            Slot::HeadRows => 4 * rows * v,
            Slot::HeadG16 => bf16_only(2 * rows * v),
            Slot::HeadH16 => bf16_only(2 * btc),
            Slot::HeadHsq => harmonic_only(4 * n),
            Slot::HeadWsq | Slot::HeadColsum => harmonic_only(4 * v),
            Slot::HeadRowsum => harmonic_only(4 * rows),
            Slot::Partials => 1024 * 8,
            Slot::Scalar => 8,
        }
    }
}

impl Slot {
    /// What the slot is for, as the memory plan groups it.
    fn role(self) -> &'static str {
        match self {
            Slot::OperandA | Slot::OperandB => "GEMM bf16 operand copies",
            Slot::AttRowDots => "attention scratch",
            Slot::HeadRows | Slot::HeadG16 | Slot::HeadRowsum => "head chunk",
            Slot::HeadH16 | Slot::HeadHsq | Slot::HeadWsq | Slot::HeadColsum => {
                "head inputs (bf16 copy of h, norms)"
            }
            Slot::Partials | Slot::Scalar => "reductions",
        }
    }
}

/// The shape of a training step, for the scratch plan.
#[derive(Clone, Copy, Debug)]
pub struct StepShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    pub v: usize,
    pub harmonic: bool,
    pub precision: GpuPrecision,
    /// The head's chunk of positions x vocabulary (`HEAD_CHUNK_FLOATS` by default).
    pub head_chunk_floats: usize,
}

/// One scratch slot in the memory plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotBytes {
    /// As `CudaBackend::scratch_bytes` names it ("HeadRows").
    pub name: String,
    /// What it is for ("head chunk").
    pub role: &'static str,
    pub bytes: usize,
}

/// Every scratch slot's bytes after a training step of shape `s` (0: never used).
pub fn training_scratch_bytes(s: &StepShape) -> Vec<SlotBytes> {
    Slot::ALL
        .iter()
        .map(|&slot| SlotBytes {
            name: format!("{slot:?}"),
            role: slot.role(),
            bytes: slot.training_bytes(s),
        })
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
