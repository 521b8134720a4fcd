// GELU, tanh approximation, as GPT-2 (src/backend/cpu/gelu.rs is the reference):
//
//   forward:  y = x/2 (1 + tanh(k (x + a x^3))),  k = sqrt(2/pi), a = 0.044715
//   backward: dinp = dout * (1/2 (1 + th) + x/2 (1 - th^2) k (1 + 3 a x^2)),  th = tanh(...)
//
// gelu_forward_bf16 stores y rounded to bf16 (nearest even): GELU's output stored for
// the GEMMs that alone read it, the same values they would have rounded it to.
//
// Launch: 1-D grids of 256 threads, grid-stride over the n elements.
//
// In the model GELU normally runs inside the GEMMs next to it (src/backend/cuda/ops.rs):
// the MLP's first matmul writes gelu(x W^T + b) and the pre-activation through cuBLASLt's
// GELU_AUX_BIAS epilogue, and the backward multiplies by gelu'(pre) in the DGELU epilogue
// of the GEMM that computes dout W. cuBLASLt's GELU is the same tanh form (the parity
// tests hold it to this file's math). These kernels serve the plain gelu ops and the
// fallback where cuBLASLt has no epilogue kernel (a width not a multiple of 8).
//
// Byte floor: forward 8 bytes an element, backward 12. GPT-2 124M at B*T = 64K, one layer
// (4C = 3072 wide): 1.6 GB forward, 2.4 GB backward: 0.48 and 0.72 ms on an H100
// (3.35 TB/s), 0.34 and 0.50 ms on an H200 (4.8 TB/s), which the epilogues save.

#define GELU_K 0.7978845608028654f
#define GELU_A 0.044715f

__device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_A * x * x * x)));
}

extern "C" __global__ void gelu_forward(float* out, const float* inp, long long n) {
    FOR_EACH(i, n) out[i] = gelu(inp[i]);
}

extern "C" __global__ void gelu_forward_bf16(__nv_bfloat16* out, const float* inp, long long n) {
    FOR_EACH(i, n) out[i] = __float2bfloat16_rn(gelu(inp[i]));
}

extern "C" __global__ void gelu_backward(float* dinp, const float* inp, const float* dout,
                                         long long n) {
    FOR_EACH(i, n) {
        const float x = inp[i];
        const float th = tanhf(GELU_K * (x + GELU_A * x * x * x));
        const float local = 0.5f * (1.0f + th) +
                            0.5f * x * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * GELU_A * x * x);
        dinp[i] = local * dout[i];
    }
}
