// The output heads' row pass and epilogues (src/head/mod.rs and src/backend/cpu/head.rs
// are the reference). For a chunk of rows, D = H W^T arrives from a GEMM (fp32); per row
// with |h|^2 = h_sq, |w_i|^2 = w_sq[i] and target y:
//
//   harmonic: s_i = max(h_sq + w_sq_i - 2 D_i, eps) (NaN stays NaN),  z_i = -(n/2) ln s_i
//   softmax:  z_i = D_i
//   lse = logsumexp(z) (online: one running max and sum per thread, merged across the
//   block);  loss = lse - z_y;  q_i = exp(z_i - lse) - [i = y]
//   G_i = scale q_i (softmax), or scale dL/ds_i = -(n/2) q_i / s_i * scale (harmonic, 0
//   where s was clamped; s is recovered from z, as the CPU reference does)
//
// head_rows overwrites D with z (mode 0: logits), then writes the loss (mode >= 1) and G
// in place of z (mode 2), never storing probabilities. With g16 set (bf16 mode) a bf16
// copy of G is stored there for the GEMMs, while the fp32 G (in place of z), rowsum(G)
// and colsum(G) keep full precision. rowsum(G) nearly cancels (q sums to 0) and
// 2 rowsum(G) h multiplies its error by |h|, far larger than |w| at init: summed from
// bf16-rounded G it puts ~10% error into dH (GPT-2 init, simulated), from fp32 G ~0.3%.
//
//   row_sq_norms:    out[r] = sum_c x[r, c]^2 (from the bf16 copy when given, so s uses the
//                    exact values the GEMM used)
//   add_scaled_rows: out[r, c] += factor * coef[r] * x[r, c]; the harmonic corrections
//                    dH += 2 rowsum(G) H and dW += 2 colsum(G) W
//
// Launch: head_rows: one block of 256 threads per row. row_sq_norms: one warp per row,
// blocks of 256 threads. add_scaled_rows: 1-D grid of 256 threads, grid-stride.

// Merges the running log-sum-exp state (m2, s2) into (m, s), s = sum exp(z - m); an
// empty state is (-inf, 0).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) {
        m = m2;
        s = s2;
        return;
    }
    const float mx = fmaxf(m, m2);
    s = s * expf(m - mx) + s2 * expf(m2 - mx);
    m = mx;
}

extern "C" __global__ void head_rows(float* rows, __nv_bfloat16* g16, float* losses,
                                     float* rowsum, const float* h_sq, const float* w_sq,
                                     const unsigned* targets, int V, int harmonic,
                                     float half_n, float eps, int mode, float scale) {
    __shared__ float red_m[32], red_s[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const long long r = blockIdx.x;
    float* z = rows + r * V;
    const float hh = harmonic ? h_sq[r] : 0.0f;

    float m = -INFINITY, s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float zi = z[i];
        if (harmonic) {
            // Not fmaxf, which would turn a NaN distance into eps (the CPU reference
            // keeps NaN, so non-finite activations surface as a NaN loss).
            const float si = hh + w_sq[i] - (zi + zi);
            zi = -half_n * logf(si < eps ? eps : si);
            z[i] = zi;
        }
        lse_merge(m, s, zi, 1.0f);
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(FULL_MASK, m, o), s2 = __shfl_xor_sync(FULL_MASK, s, o);
        lse_merge(m, s, m2, s2);
    }
    if (lane == 0) {
        red_m[warp] = m;
        red_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? red_m[lane] : -INFINITY;
        s = lane < warps ? red_s[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(FULL_MASK, m, o),
                        s2 = __shfl_xor_sync(FULL_MASK, s, o);
            lse_merge(m, s, m2, s2);
        }
        if (lane == 0) {
            red_m[0] = m;
            red_s[0] = s;
        }
    }
    __syncthreads();  // also makes every z written above visible to the whole block
    if (mode == 0) return;
    const float lse = red_m[0] + logf(red_s[0]);
    const unsigned y = targets[r];
    if (threadIdx.x == 0) losses[r] = lse - z[y];
    if (mode == 1) return;
    __syncthreads();  // z[y] is read above before any thread overwrites it with G

    const float z_clamped = -half_n * logf(eps);
    float gsum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float zi = z[i];
        const float q = expf(zi - lse) - (i == y ? 1.0f : 0.0f);
        float g;
        if (!harmonic) {
            g = q * scale;
        } else if (zi >= z_clamped) {
            g = 0.0f;
        } else {
            const float si = expf(-zi / half_n);
            g = -half_n * q / si * scale;
        }
        if (g16) g16[r * V + i] = __float2bfloat16_rn(g);
        z[i] = g;
        gsum += g;
    }
    if (rowsum) {
        gsum = block_sum(gsum, red_s);
        if (threadIdx.x == 0) rowsum[r] = gsum;
    }
}

extern "C" __global__ void row_sq_norms(float* out, const float* x, const __nv_bfloat16* x16,
                                        int rows, int C) {
    const int lane = threadIdx.x % 32;
    const long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float v = x16 ? __bfloat162float(x16[r * C + c]) : x[r * C + c];
        s += v * v;
    }
    s = warp_sum(s);
    if (lane == 0) out[r] = s;
}

extern "C" __global__ void add_scaled_rows(float* out, const float* coef, const float* x,
                                           const __nv_bfloat16* x16, int rows, int C,
                                           float factor) {
    FOR_EACH(i, (long long)rows * C) {
        const float v = x16 ? __bfloat162float(x16[i]) : x[i];
        out[i] += factor * coef[i / C] * v;
    }
}
