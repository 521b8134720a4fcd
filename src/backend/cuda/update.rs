//! Parameter updates on the GPU, the host half of cuda/adamw.cu and cuda/sgld.cu:
//! each writes the fp32 parameters and, in the same pass, their bf16 shadow where one
//! is fresh (`shadow::update_in_place`).
//!
//! AdamW runs once per step, not once per tensor: `adamw_update` queues its tensor
//! while it continues the queued ones (the next range of the same four buffers, the
//! same hyperparameters but for weight decay, which is on or off per tensor), and the
//! queue runs as one launch over a table of tensor starts and decay flags in device
//! memory before any other op (`CudaBackend::op`). The table is copied to the GPU only
//! when it changes (the optimizer's tensors are the same every step).

use cudarc::driver::result as drv;

use super::kernels::Arg::{F32, I32, I64, Ptr};
use super::{CudaBackend, Slot, aligned16};
use crate::backend::cost;
use crate::backend::{AdamW, SgldStep, Span};

/// Queued AdamW updates: spans covering every queued tensor, consecutive.
pub(super) struct AdamwBatch {
    spans: [Span; 4],
    /// The hyperparameters; weight_decay is the decayed tensors' (0 until one decays).
    hp: AdamW,
    /// Each tensor's start within the spans, then their total length.
    starts: Vec<i64>,
    decay: Vec<i64>,
}

impl AdamwBatch {
    fn new(spans: [Span; 4], hp: AdamW) -> AdamwBatch {
        AdamwBatch {
            spans,
            hp,
            starts: vec![0, spans[0].len as i64],
            decay: vec![(hp.weight_decay != 0.0) as i64],
        }
    }

    /// Queues the next tensor if it continues the batch; false if it does not.
    fn push(&mut self, next: [Span; 4], hp: AdamW) -> bool {
        let continues = self
            .spans
            .iter()
            .zip(&next)
            .all(|(s, n)| n.buf == s.buf && n.off == s.off + s.len && n.len == next[0].len);
        let (a, b) = (self.hp, hp);
        let same_hp = (a.lr, a.beta1, a.beta2, a.eps, a.step, a.grad_scale)
            == (b.lr, b.beta1, b.beta2, b.eps, b.step, b.grad_scale);
        let decays = hp.weight_decay != 0.0;
        let same_decay = !decays || a.weight_decay == 0.0 || a.weight_decay == hp.weight_decay;
        if !(continues && same_hp && same_decay) {
            return false;
        }
        for (s, n) in self.spans.iter_mut().zip(&next) {
            s.len += n.len;
        }
        if decays {
            self.hp.weight_decay = hp.weight_decay;
        }
        self.starts.push(self.spans[0].len as i64);
        self.decay.push(decays as i64);
        true
    }

    /// The table as the kernel reads it: the starts, then the decay flags.
    fn table(&self) -> Vec<i64> {
        [self.starts.as_slice(), self.decay.as_slice()].concat()
    }
}

/// Bytes of the AdamW table for `tensors` tensors.
pub(super) fn adamw_table_bytes(tensors: usize) -> usize {
    8 * (2 * tensors + 1)
}

pub(super) fn adamw_update(
    be: &CudaBackend,
    params: Span,
    grads: Span,
    m: Span,
    v: Span,
    hp: AdamW,
) {
    let spans = [params, grads, m, v];
    let queued = match be.adamw_pending.borrow_mut().as_mut() {
        Some(batch) => batch.push(spans, hp),
        None => false,
    };
    if !queued {
        be.flush_updates();
        *be.adamw_pending.borrow_mut() = Some(AdamwBatch::new(spans, hp));
    }
}

impl CudaBackend {
    /// Runs the queued AdamW updates, if any, as one launch.
    pub(super) fn flush_updates(&self) {
        let Some(batch) = self.adamw_pending.borrow_mut().take() else {
            return;
        };
        let n = batch.spans[0].len;
        self.profiled("adamw", cost::adamw(n), || self.adamw_launch(&batch));
    }

    fn adamw_launch(&self, batch: &AdamwBatch) {
        let hp = batch.hp;
        let tensors = batch.decay.len();
        let table = batch.table();
        let at = self.scratch(Slot::AdamwTable, adamw_table_bytes(tensors));
        if *self.adamw_table.borrow() != table {
            // SAFETY: the table's 8 (2 tensors + 1) bytes fit the slot; synchronous.
            unsafe { drv::memcpy_htod_sync(at, &table) }
                .unwrap_or_else(|e| panic!("CUDA error copying the AdamW table: {e}"));
            *self.adamw_table.borrow_mut() = table;
        }
        // Bias corrections in f64 on the host, as the CPU backend computes them.
        let c1 = (1.0 - (hp.beta1 as f64).powi(hp.step as i32)) as f32;
        let c2 = (1.0 - (hp.beta2 as f64).powi(hp.step as i32)) as f32;
        let fp32 = batch.spans.map(|s| self.ptr(s));
        let vec4 = aligned16(&fp32);
        let [p, g, m, v] = fp32;
        let n = batch.spans[0].len;
        self.update_in_place(batch.spans[0], |p16| {
            // Threads for the float4 quads and the scalar tail (cuda/adamw.cu).
            self.launch_elems(
                "adamw_update",
                if vec4 { n / 4 + n % 4 } else { n },
                &[
                    Ptr(p),
                    Ptr(p16),
                    Ptr(g),
                    Ptr(m),
                    Ptr(v),
                    Ptr(at),
                    Ptr(at + 8 * (tensors as u64 + 1)),
                    I32(tensors as i32),
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
