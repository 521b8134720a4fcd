//! What a backend holds over a training step beyond the model's own buffers, as each
//! backend describes it for the memory plan (src/memory.rs): typed items, so the plan
//! groups and names them without knowing either backend's internals.

/// The shape of one training step.
#[derive(Clone, Copy, Debug)]
pub struct StepShape {
    /// Sequences per micro-batch and tokens per sequence.
    pub b: usize,
    pub t: usize,
    /// Channels, attention heads, vocabulary.
    pub c: usize,
    pub nh: usize,
    pub v: usize,
    /// The harmonic head (norms and corrections), or softmax.
    pub harmonic: bool,
    /// Parameters of the model, and the tensors they are stored as.
    pub params: usize,
    pub tensors: usize,
}

/// What a piece of a backend's step memory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScratchKind {
    /// The head's chunk of positions x vocabulary (dot products, G and their row
    /// sums): what a naive head would hold as full [B, T, V] logits.
    HeadChunk,
    /// The head's inputs as its GEMMs read them: a bf16 copy of h, squared norms.
    HeadInputs,
    /// bf16 copies of a GEMM's activation operands.
    GemmOperands,
    /// Attention's backward-pass row scratch.
    Attention,
    /// Partial sums of a reduction.
    Reductions,
    /// Deterministic gradient sums' partials and the embedding backward's token buckets.
    GradReductions,
    /// The optimizer's table of tensors (one update launch for all of them).
    OptimizerTable,
    /// bf16 copies of the weights, kept in step with them.
    WeightShadow,
    /// The GEMM library's workspace.
    GemmWorkspace,
}

/// One piece of a backend's step memory. `host` marks memory outside the backend's
/// own byte count (`Backend::peak_memory_bytes`), such as the CPU head's scratch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScratchItem {
    pub kind: ScratchKind,
    pub bytes: usize,
    pub host: bool,
}
