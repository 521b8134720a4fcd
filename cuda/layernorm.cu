// LayerNorm over rows of C channels (src/backend/cpu/layernorm.rs is the reference),
// alone or fused with the residual add before it.
//
//   forward:  mean = sum x / C, rstd = 1 / sqrt(sum (x - mean)^2 / C + eps)
//             out = (x - mean) * rstd * w + b; mean and rstd saved per row
//   residual_layernorm_forward: x = residual = a + b_in (written), then forward on x
//   backward: xhat = (x - mean) rstd, dxhat = dy w
//             dinp += rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))   (adds: residual)
//             dw += sum_rows dy xhat, db += sum_rows dy
//
// The *_bf16 kernels store out in bf16 (round to nearest even), everything else as the
// fp32 kernels: out is then read only by GEMMs, which would have rounded it so anyway.
//
// Launch: one warp per row, blocks of 256 threads (8 rows). The forward kernels take
// vec4 = 1 when C % 4 == 0 and every pointer is 16-byte aligned: each lane then moves
// float4s. The variance is two-pass (mean first, then squares about it), as on the CPU.
// The backward runs a block per LN_BACKWARD_ROWS rows (ceil(N / 32) blocks): its warps
// write dinp row by row, then each thread sums a column's dy xhat and dy over the
// block's rows in row order into part[block, 0:C) and part[block, C:2C); the host adds
// those partials into dw, db with matmul.cu's column sums. Deterministic: no atomics,
// every sum in an order fixed by N and C alone.
//
// Byte floor per row, fp32: forward reads x and writes out, 8C bytes; the fused kernel
// reads a and b_in and writes residual and out, 16C bytes, against 20C for residual_add
// then forward (the extra reads of x in the second and third pass hit L1/L2: a row of
// GPT-2 124M is 3 KiB). The fused kernel at B*T = 64K rows, C = 768: 0.81 GB, 0.24 ms on
// an H100 (3.35 TB/s), 0.17 ms on an H200 (4.8 TB/s).

#define LN_BACKWARD_ROWS 32

// out[0, W) = x, as fp32 (one float4 when W == 4) or rounded to bf16.
template <int W>
__device__ __forceinline__ void store_out(float* p, const Floats<W>& x) {
    store_floats<W>(p, x);
}

template <int W>
__device__ __forceinline__ void store_out(__nv_bfloat16* p, const Floats<W>& x) {
    store_bf16<W>(p, x);
}

// One warp normalises the row x[0, C), W floats per access; out is fp32 or bf16.
template <int W, class T>
__device__ void layernorm_row(T* out, float* mean, float* rstd, const float* x,
                              const float* w, const float* b, long long row, int C,
                              float eps) {
    const int lane = threadIdx.x % 32;
    float s = 0.0f;
    for (int i = lane * W; i < C; i += 32 * W) {
        const Floats<W> xv = load_floats<W>(x + i);
#pragma unroll
        for (int k = 0; k < W; k++) s += xv.v[k];
    }
    const float mu = warp_sum(s) / C;
    float v = 0.0f;
    for (int i = lane * W; i < C; i += 32 * W) {
        const Floats<W> xv = load_floats<W>(x + i);
#pragma unroll
        for (int k = 0; k < W; k++) v += (xv.v[k] - mu) * (xv.v[k] - mu);
    }
    const float rs = 1.0f / sqrtf(warp_sum(v) / C + eps);
    for (int i = lane * W; i < C; i += 32 * W) {
        const Floats<W> xv = load_floats<W>(x + i), wv = load_floats<W>(w + i),
                        bv = load_floats<W>(b + i);
        Floats<W> o;
#pragma unroll
        for (int k = 0; k < W; k++) o.v[k] = (xv.v[k] - mu) * rs * wv.v[k] + bv.v[k];
        store_out<W>(out + i, o);
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// residual[0, C) = a + b_in, then its LayerNorm. Each lane reads back exactly the
// elements it wrote (the same stride), so the warp needs no synchronisation between.
template <int W, class T>
__device__ void residual_layernorm_row(float* residual, T* out, float* mean, float* rstd,
                                       const float* a, const float* b_in, const float* w,
                                       const float* b, long long row, int C, float eps) {
    const int lane = threadIdx.x % 32;
    for (int i = lane * W; i < C; i += 32 * W) {
        const Floats<W> av = load_floats<W>(a + i), bv = load_floats<W>(b_in + i);
        Floats<W> r;
#pragma unroll
        for (int k = 0; k < W; k++) r.v[k] = av.v[k] + bv.v[k];
        store_floats<W>(residual + i, r);
    }
    layernorm_row<W>(out, mean, rstd, residual, w, b, row, C, eps);
}

// The forward kernels' bodies, for an fp32 or a bf16 out.
template <class T>
__device__ void layernorm_forward_rows(T* out, float* mean, float* rstd, const float* inp,
                                       const float* w, const float* b, int N, int C, float eps,
                                       int vec4) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const long long at = row * C;
    if (vec4)
        layernorm_row<4>(out + at, mean, rstd, inp + at, w, b, row, C, eps);
    else
        layernorm_row<1>(out + at, mean, rstd, inp + at, w, b, row, C, eps);
}

template <class T>
__device__ void residual_layernorm_forward_rows(float* residual, T* out, float* mean,
                                                float* rstd, const float* a, const float* b_in,
                                                const float* w, const float* b, int N, int C,
                                                float eps, int vec4) {
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const long long at = row * C;
    if (vec4)
        residual_layernorm_row<4>(residual + at, out + at, mean, rstd, a + at, b_in + at, w, b,
                                  row, C, eps);
    else
        residual_layernorm_row<1>(residual + at, out + at, mean, rstd, a + at, b_in + at, w, b,
                                  row, C, eps);
}

extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd,
                                             const float* inp, const float* w, const float* b,
                                             int N, int C, float eps, int vec4) {
    layernorm_forward_rows(out, mean, rstd, inp, w, b, N, C, eps, vec4);
}

extern "C" __global__ void layernorm_forward_bf16(__nv_bfloat16* out, float* mean, float* rstd,
                                                  const float* inp, const float* w,
                                                  const float* b, int N, int C, float eps,
                                                  int vec4) {
    layernorm_forward_rows(out, mean, rstd, inp, w, b, N, C, eps, vec4);
}

extern "C" __global__ void residual_layernorm_forward(float* residual, float* out, float* mean,
                                                      float* rstd, const float* a,
                                                      const float* b_in, const float* w,
                                                      const float* b, int N, int C, float eps,
                                                      int vec4) {
    residual_layernorm_forward_rows(residual, out, mean, rstd, a, b_in, w, b, N, C, eps, vec4);
}

extern "C" __global__ void residual_layernorm_forward_bf16(float* residual, __nv_bfloat16* out,
                                                           float* mean, float* rstd,
                                                           const float* a, const float* b_in,
                                                           const float* w, const float* b,
                                                           int N, int C, float eps, int vec4) {
    residual_layernorm_forward_rows(residual, out, mean, rstd, a, b_in, w, b, N, C, eps, vec4);
}

extern "C" __global__ void layernorm_backward(float* dinp, float* part, const float* dout,
                                              const float* inp, const float* w,
                                              const float* mean, const float* rstd, int N,
                                              int C) {
    const long long r0 = (long long)blockIdx.x * LN_BACKWARD_ROWS;
    const long long r1 = r0 + LN_BACKWARD_ROWS < N ? r0 + LN_BACKWARD_ROWS : N;
    const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (long long row = r0 + threadIdx.x / 32; row < r1; row += warps) {
        const float* dy = dout + row * C;
        const float* x = inp + row * C;
        const float mu = mean[row], rs = rstd[row];
        float s1 = 0.0f, s2 = 0.0f;
        for (int i = lane; i < C; i += 32) {
            const float xhat = (x[i] - mu) * rs, dxhat = dy[i] * w[i];
            s1 += dxhat;
            s2 += dxhat * xhat;
        }
        const float m1 = warp_sum(s1) / C, m2 = warp_sum(s2) / C;
        float* dx = dinp + row * C;
        for (int i = lane; i < C; i += 32) {
            const float xhat = (x[i] - mu) * rs;
            dx[i] += rs * (dy[i] * w[i] - m1 - xhat * m2);
        }
    }
    // The block's rows again, now a column per thread, rows in order (from L2: the block
    // has just read them).
    float* out = part + (long long)blockIdx.x * 2 * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float sw = 0.0f, sb = 0.0f;
        for (long long row = r0; row < r1; row++) {
            const float dy = dout[row * C + i];
            sw += dy * ((inp[row * C + i] - mean[row]) * rstd[row]);
            sb += dy;
        }
        out[i] = sw;
        out[C + i] = sb;
    }
}
