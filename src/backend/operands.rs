//! Shaped operands of the Backend's ops. A matrix carries its rows and columns, and
//! the spans a layer owns together (a LayerNorm's weight and bias, its output and
//! statistics, a dense layer's weight and bias) travel as one named value. So an op
//! reads its shapes from its operands, and a swapped pair of arguments of different
//! roles does not compile.

use super::Span;

/// A row-major matrix: `rows` x `cols` floats of `span`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mat {
    pub span: Span,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    /// `span` viewed as a `rows` x `cols` matrix (its length must be rows * cols).
    pub fn new(span: Span, rows: usize, cols: usize) -> Mat {
        assert_eq!(
            span.len,
            rows * cols,
            "a {rows} x {cols} matrix over a span of {} floats",
            span.len
        );
        Mat { span, rows, cols }
    }

    /// Rows `r0..r0 + rows`.
    pub fn rows(self, r0: usize, rows: usize) -> Mat {
        Mat::new(
            self.span.slice(r0 * self.cols, rows * self.cols),
            rows,
            self.cols,
        )
    }

    /// Row `r` as a span.
    pub fn row(self, r: usize) -> Span {
        self.span.piece(r, self.cols)
    }
}

/// A LayerNorm's weight and bias, (C) each, or their gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Norm {
    pub w: Span,
    pub b: Span,
}

/// A LayerNorm's output (N, C) with the per-row mean and 1/std (N) that its
/// backward pass reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normed {
    pub out: Mat,
    pub mean: Span,
    pub rstd: Span,
}

/// A dense layer's weight (OC, C) and optional bias (OC), or their gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub w: Mat,
    pub b: Option<Span>,
}

/// A GELU's input and output, or their gradients; same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gelu {
    pub pre: Mat,
    pub out: Mat,
}

/// Causal self-attention's shape: B sequences of T positions, NH heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
}

/// Where the output head writes its gradients of `scale` times the summed loss:
/// dh (N, C) is overwritten, dw (V, C) accumulated into.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadGrads {
    pub dh: Mat,
    pub dw: Mat,
    pub scale: f32,
}
