//! The parity harness: the GPU backend (a test that runs without one fails), the same
//! buffers on both backends, and checks that collect every mismatch before failing,
//! so one wrong op does not hide the others.

use std::cell::RefCell;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use hgpt::backend::GpuPrecision;
use hgpt::backend::cpu::CpuBackend;
use hgpt::backend::cuda::CudaBackend;
use hgpt::backend::{Backend, HeadGrads, Mat, Normed, Span, TokenSpan};
use hgpt::config::Config;
use hgpt::head::HeadKind;

/// Each precision with its tolerance: relative error by norm, per tensor.
pub const MODES: [(GpuPrecision, f64); 2] =
    [(GpuPrecision::Fp32, 1e-4), (GpuPrecision::Bf16, 2e-2)];

/// The GPU backend. These tests run only when asked (`--include-ignored`), so a GPU
/// that does not open is a failure, never a skip.
pub fn open_gpu(p: GpuPrecision) -> CudaBackend {
    CudaBackend::new(p).unwrap_or_else(|e| panic!("no CUDA GPU opened ({p:?}): {e:#}"))
}

/// `s` as a matrix of `cols` columns.
pub fn mat(s: Span, cols: usize) -> Mat {
    Mat::new(s, s.len / cols, cols)
}

/// A LayerNorm's output `out` of `cols` columns with its statistics.
pub fn normed(out: Span, mean: Span, rstd: Span, cols: usize) -> Normed {
    Normed {
        out: mat(out, cols),
        mean,
        rstd,
    }
}

/// The head's (dh, dw, scale) for hidden states of `c` channels.
pub fn head_grads(g: Option<(Span, Span, f32)>, c: usize) -> Option<HeadGrads> {
    g.map(|(dh, dw, scale)| HeadGrads {
        dh: mat(dh, c),
        dw: mat(dw, c),
        scale,
    })
}

/// ||gpu - cpu|| / ||cpu||; infinite when the GPU result is not finite.
pub fn rel_err(cpu: &[f32], gpu: &[f32]) -> f64 {
    assert_eq!(cpu.len(), gpu.len());
    if gpu.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut d, mut r) = (0f64, 0f64);
    for (&c, &g) in cpu.iter().zip(gpu) {
        d += (g as f64 - c as f64).powi(2);
        r += (c as f64).powi(2);
    }
    d.sqrt() / r.sqrt().max(1e-30)
}

/// The same float buffer on both backends.
#[derive(Clone, Copy)]
pub struct Pair {
    pub c: Span,
    pub g: Span,
}

/// The same token buffer on both backends.
#[derive(Clone, Copy)]
pub struct TokenPair {
    pub c: TokenSpan,
    pub g: TokenSpan,
}

/// Both backends, a seeded source of inputs, the tolerance of this precision, and the
/// mismatches found so far.
pub struct Both {
    pub cpu: CpuBackend,
    pub gpu: CudaBackend,
    rng: ChaCha8Rng,
    pub tol: f64,
    mismatches: RefCell<Vec<String>>,
}

impl Both {
    pub fn new(gpu: CudaBackend, tol: f64, seed: u64) -> Both {
        Both {
            cpu: CpuBackend::new(),
            gpu,
            rng: ChaCha8Rng::seed_from_u64(seed),
            tol,
            mismatches: RefCell::new(Vec::new()),
        }
    }

    /// Values of magnitude in [lo, hi) with random signs: never zero.
    pub fn values(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let m = self.rng.random_range(lo..hi);
                if self.rng.random_bool(0.5) { m } else { -m }
            })
            .collect()
    }

    pub fn from(&self, v: &[f32]) -> Pair {
        let (c, g) = (self.cpu.alloc(v.len()), self.gpu.alloc(v.len()));
        self.cpu.write(c, v);
        self.gpu.write(g, v);
        Pair { c, g }
    }

    pub fn input(&mut self, len: usize) -> Pair {
        let v = self.values(len, 0.1, 1.0);
        self.from(&v)
    }

    /// An input that starts `off` floats into its buffer (off = 1: not 16-byte aligned).
    pub fn input_at(&mut self, len: usize, off: usize) -> Pair {
        let p = self.input(len + off);
        Pair {
            c: p.c.slice(off, len),
            g: p.g.slice(off, len),
        }
    }

    pub fn poisoned_at(&self, len: usize, off: usize) -> Pair {
        let p = self.poisoned(len + off);
        Pair {
            c: p.c.slice(off, len),
            g: p.g.slice(off, len),
        }
    }

    /// An output the op must overwrite entirely.
    pub fn poisoned(&self, len: usize) -> Pair {
        let (c, g) = (self.cpu.alloc(len), self.gpu.alloc(len));
        self.cpu.fill(c, f32::NAN);
        self.gpu.fill(g, f32::NAN);
        Pair { c, g }
    }

    pub fn tokens(&mut self, len: usize, vocab: usize) -> TokenPair {
        let v: Vec<u32> = (0..len)
            .map(|_| self.rng.random_range(0..vocab as u32))
            .collect();
        self.tokens_from(&v)
    }

    pub fn tokens_from(&self, v: &[u32]) -> TokenPair {
        let (c, g) = (
            self.cpu.alloc_tokens(v.len()),
            self.gpu.alloc_tokens(v.len()),
        );
        self.cpu.write_tokens(c, v);
        self.gpu.write_tokens(g, v);
        TokenPair { c, g }
    }

    /// The GPU's `p` within the tolerance of the CPU's (recorded, not asserted).
    pub fn check(&self, what: &str, p: Pair) {
        let err = rel_err(&self.cpu.read(p.c), &self.gpu.read(p.g));
        println!("{what}: relative error {err:.2e}");
        self.expect(
            err < self.tol,
            format!("{what}: relative error {err:.2e} >= {:.0e}", self.tol),
        );
    }

    /// Records `failure` unless `ok`.
    pub fn expect(&self, ok: bool, failure: String) {
        if !ok {
            self.mismatches.borrow_mut().push(failure);
        }
    }

    /// Fails with every mismatch recorded, one per line (dropping a `Both` does the
    /// same, so a test cannot lose its mismatches by returning early).
    pub fn finish(self) {}
}

impl Drop for Both {
    fn drop(&mut self) {
        let m = self.mismatches.take();
        if !m.is_empty() && !std::thread::panicking() {
            panic!("{} mismatches:\n{}", m.len(), m.join("\n"));
        }
    }
}

/// One step's input tokens and the next one (batch_size x seq_len + 1), uniform over
/// the model's vocabulary, drawn from `seed`: `tokens[..b t]` in, `tokens[1..]` targets.
pub fn random_step_tokens(config: &Config, seed: u64) -> Vec<u32> {
    let (b, t) = (config.train.batch_size, config.train.seq_len);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b * t + 1)
        .map(|_| rng.random_range(0..config.model.vocab_size as u32))
        .collect()
}

/// A small model: 2 layers, 4 heads, 64 channels, vocabulary 261 (odd, so tensor
/// offsets in the flat buffers are not multiples of 4; above the built-in corpus's 257
/// tokens, which training on it needs).
pub fn small_config(head: &str, tie: bool) -> Config {
    let mut c = Config::tiny();
    for o in [
        "model.n_layer=2",
        "model.n_embd=64",
        "model.block_size=32",
        "model.vocab_size=261",
        &format!("model.head={head}"),
        &format!("model.tie_embeddings={tie}"),
        "train.batch_size=4",
        "train.seq_len=32",
        "train.warmup_steps=5",
        "train.max_steps=50",
        "data.builtin_train_bytes=200000",
        "data.builtin_val_bytes=20000",
    ] {
        c = c.with_override(o).unwrap();
    }
    c
}

// Shapes chosen off the kernels' natural sizes: C not a multiple of 32, T odd, V odd.
pub const B: usize = 3;
pub const TT: usize = 17;
pub const C: usize = 48;
pub const NH: usize = 4;
pub const V: usize = 101;
pub const N: usize = B * TT;

/// The harmonic head at the shapes above, exponent sqrt(C).
pub fn harmonic() -> HeadKind {
    HeadKind::Harmonic {
        exponent: (C as f32).sqrt(),
        eps: 1e-6,
    }
}
