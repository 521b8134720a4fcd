//! Each op's floor for the per-op profile (`hgpt bench`, src/bench.rs): the FLOPs it
//! must do and the fewest bytes it must move, read from its shapes the same way on
//! every backend.
//!
//! FLOPs count multiply-adds as 2 (GEMMs, attention's causal half, the head's
//! products); elementwise arithmetic counts 0, as those ops are bound by memory. Bytes
//! read every input once and write every output once, 4 bytes a float (activations,
//! gradients, parameters and moments are fp32 on both backends; a bf16 GEMM operand
//! is a copy on the side), and both read and write what an op adds into. The floor
//! time of an op is the larger of FLOPs over the GEMM peak and bytes over the copy
//! bandwidth, both measured in the same run.

/// One op call's floor: FLOPs and the fewest bytes moved.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
}

/// `floats` floats moved, no FLOPs.
fn mem(floats: usize) -> Cost {
    Cost {
        flops: 0.0,
        bytes: 4.0 * floats as f64,
    }
}

/// `macs` multiply-adds over `floats` floats moved.
fn gemm(macs: usize, floats: usize) -> Cost {
    Cost {
        flops: 2.0 * macs as f64,
        bytes: 4.0 * floats as f64,
    }
}

/// Reads `n` floats (a reduction to one number).
pub fn reduce(n: usize) -> Cost {
    mem(n)
}

/// Writes `n` floats.
pub fn fill(n: usize) -> Cost {
    mem(n)
}

/// Reads `n` floats and writes them elsewhere.
pub fn copy(n: usize) -> Cost {
    mem(2 * n)
}

/// out[N, C] = wte[tok] + wpe: the tokens, wpe's T rows and out written (wte's rows
/// repeat with the tokens, so how many are read depends on the data: none counted).
pub fn encoder_forward(n: usize, c: usize, t: usize) -> Cost {
    mem(n + n * c + t.min(n) * c)
}

/// dwte, dwpe += from dout[N, C]: the tokens, dout once and wpe's T rows read and
/// written (the touched wte rows depend on the data: none counted).
pub fn encoder_backward(n: usize, c: usize, t: usize) -> Cost {
    mem(n + n * c + 2 * t.min(n) * c)
}

/// x[N, C] in, out[N, C], mean and rstd [N] out, w and b in.
pub fn layernorm_forward(n: usize, c: usize) -> Cost {
    mem(2 * n * c + 2 * n + 2 * c)
}

/// dout and x in, dinp added into, mean, rstd and w in, dw and db added into.
pub fn layernorm_backward(n: usize, c: usize) -> Cost {
    mem(4 * n * c + 2 * n + 5 * c)
}

/// a and b in, residual and out written, then as `layernorm_forward`.
pub fn residual_layernorm_forward(n: usize, c: usize) -> Cost {
    mem(4 * n * c + 2 * n + 2 * c)
}

/// out[N, OC] = inp[N, C] w[OC, C]^T + b.
pub fn matmul_forward(n: usize, c: usize, oc: usize) -> Cost {
    gemm(n * c * oc, n * c + oc * c + oc + n * oc)
}

/// dinp = dout w and dw += dout^T inp: twice the forward's products; dout, inp and w
/// in, dinp out, dw and db added into.
pub fn matmul_backward(n: usize, c: usize, oc: usize) -> Cost {
    gemm(2 * n * c * oc, n * oc + 2 * n * c + 3 * oc * c + 2 * oc)
}

/// `matmul_forward` writing both the pre-activation and its GELU.
pub fn matmul_gelu_forward(n: usize, c: usize, oc: usize) -> Cost {
    let f = matmul_forward(n, c, oc);
    Cost {
        bytes: f.bytes + 4.0 * (n * oc) as f64,
        ..f
    }
}

/// `matmul_backward` whose dinp is multiplied by gelu'(pre): pre read too.
pub fn gelu_matmul_backward(n: usize, c: usize, oc: usize) -> Cost {
    let b = matmul_backward(n, c, oc);
    Cost {
        bytes: b.bytes + 4.0 * (n * c) as f64,
        ..b
    }
}

/// Causal attention over B sequences of T, C channels: q k^T and p v over the causal
/// half (T^2 / 2 each); qkv in, out and the per-row state out.
pub fn attention_forward(b: usize, t: usize, c: usize, nh: usize) -> Cost {
    let n = b * t;
    gemm(b * t * t * c, 4 * n * c + b * nh * t)
}

/// Four products of the causal half (dv, dp, dq, dk); dout, qkv, out and the state
/// in, dqkv out.
pub fn attention_backward(b: usize, t: usize, c: usize, nh: usize) -> Cost {
    let n = b * t;
    gemm(2 * b * t * t * c, 8 * n * c + b * nh * t)
}

/// One query against T cached keys and values.
pub fn attention_decode(t: usize, c: usize) -> Cost {
    gemm(2 * t * c, 2 * t * c + 2 * c)
}

/// gelu: in, out.
pub fn gelu_forward(n: usize) -> Cost {
    mem(2 * n)
}

/// gelu': inp and dout in, dinp out.
pub fn gelu_backward(n: usize) -> Cost {
    mem(3 * n)
}

/// out = a + b.
pub fn add(n: usize) -> Cost {
    mem(3 * n)
}

/// The head over h[N, C] and w[V, C]: one product for the loss, two more for dh and
/// dw with gradients; h, w and the targets in, the losses out, dh and dw added into.
pub fn head_loss(n: usize, c: usize, v: usize, grads: bool) -> Cost {
    let (products, grad_floats) = if grads {
        (3, 2 * n * c + 2 * v * c)
    } else {
        (1, 0)
    };
    gemm(products * n * c * v, n * c + v * c + 2 * n + grad_floats)
}

/// Parts of ops on the GPU, profiled apart (src/backend/cuda/profile.rs), whose
/// floors count the bytes the part itself moves:
///
/// the bf16 copy of `n` fp32 activations before a GEMM: n floats read, n bf16 written.
pub fn to_bf16(n: usize) -> Cost {
    Cost {
        flops: 0.0,
        bytes: 6.0 * n as f64,
    }
}

/// The head's row pass over `rows` x `v` dot products (cuda/head.cu): D read for the
/// loss, and with gradients read again and G written (`g_bytes` a value: 2 as bf16,
/// 4 as fp32).
pub fn head_row_pass(rows: usize, v: usize, grads: bool, g_bytes: usize) -> Cost {
    let per = if grads { 8 + g_bytes } else { 4 };
    Cost {
        flops: 0.0,
        bytes: (per * rows * v) as f64,
    }
}

/// logits[N, V] from h[N, C] and w[V, C].
pub fn head_logits(n: usize, c: usize, v: usize) -> Cost {
    gemm(n * c * v, n * c + v * c + n * v)
}

/// AdamW over `n` parameters: p, grad, m, v in; p, m, v out.
pub fn adamw(n: usize) -> Cost {
    mem(7 * n)
}

/// SGLD over `n` parameters: w, grad, anchor in; w out.
pub fn sgld(n: usize) -> Cost {
    mem(4 * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dense_layers_backward_does_twice_its_forwards_products() {
        let (f, b) = (matmul_forward(64, 32, 96), matmul_backward(64, 32, 96));
        assert_eq!(f.flops, 2.0 * 64.0 * 32.0 * 96.0);
        assert_eq!(b.flops, 2.0 * f.flops);
        assert!(b.bytes > f.bytes);
    }
}
