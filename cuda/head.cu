// The output heads' row pass and epilogues (src/head/mod.rs and src/backend/cpu/head.rs
// are the reference). For a chunk of R rows, D = H W^T arrives from a GEMM (fp32); per
// row with |h|^2 = h_sq, |w_i|^2 = w_sq[i] and target y:
//
//   harmonic: s_i = max(h_sq + w_sq_i - 2 D_i, eps) (NaN stays NaN),  z_i = -(n/2) ln s_i
//   softmax:  z_i = D_i
//   lse = logsumexp(z) (online: one running max and sum per thread, merged across the
//   block);  loss = lse - z_y;  q_i = exp(z_i - lse) - [i = y]
//   G_i = scale q_i (softmax), or scale dL/ds_i = -(n/2) q_i / s_i * scale (harmonic, 0
//   where s was clamped, i.e. where the unclamped distance was <= eps). s is the
//   distance computed for z, in a register (the CPU reference, which keeps one row,
//   recovers it from z; the two agree to a few ulps).
//
// Two kernels, neither storing z or probabilities in the loss and gradient modes:
//
//   head_lse:  reads D once, computes z on the fly, writes the row's lse (when asked)
//              and its loss lse - z_y. With `logits` set it writes z in place of D
//              instead (head_logits) and nothing else.
//   head_grad: reads D again, recomputes z, and writes G only where it is consumed: the
//              bf16 copy alone in bf16 mode (the GEMMs read it; no fp32 G is stored),
//              fp32 G in place of D in fp32 mode. Harmonic: it also writes partial sums
//              of the fp32 G, per (column tile, row) into rowpart[tile * R + row] and
//              per (row tile, column) into colpart[tile * V + column], each in a fixed
//              order; column_partials_add (cuda/matmul.cu) adds them in tile order into
//              rowsum(G) and colsum(G) (accumulated over the chunks in chunk order).
//              No atomics: the same inputs give the same bits on every run.
//
// rowsum and colsum are sums of the fp32 G, never of its bf16 copy: rowsum(G) nearly
// cancels (q sums to 0) and 2 rowsum(G) h multiplies its error by |h|, far larger than
// |w| at init: summed from bf16-rounded G it puts ~10% error into dH (GPT-2 init,
// simulated), from fp32 G ~0.3%.
//
// Bytes per element of the chunk's R x V dot products, bf16 mode: the GEMM writes D (4),
// head_lse reads it (4), head_grad reads it (4) and writes the bf16 G (2), the two GEMMs
// read that (2 + 2): 18 for both heads, plus about 0.3 for the harmonic partials (8
// bytes per column per 32 rows, 8 per row per 128 columns). Storing z and an fp32 G
// besides, as one kernel per row would, costs 30 harmonic and 22 softmax. fp32 mode:
// 4 + 4 + 4 + 4 (G over D) + 4 + 4 = 24.
// (A 200 KB row of D rarely survives in L2 between the two kernels at GPT-2's sizes, so
// its second read counts as DRAM traffic.)
//
//   row_sq_norms:    out[r] = sum_c x[r, c]^2 (from the bf16 copy when given, so s uses the
//                    exact values the GEMM used)
//   add_scaled_rows: out[r, c] += factor * coef[r] * x[r, c]; the harmonic corrections
//                    dH += 2 rowsum(G) H and dW += 2 colsum(G) W
//
// Launch: head_lse: one block of 256 threads per row. head_grad: blocks of 32 x 8
// threads over tiles of GRAD_TILE_ROWS = 32 rows by 32 W columns (blockIdx.x the row tile,
// blockIdx.y the column tile): lane x moves W consecutive columns (W = 4, float4 loads,
// with vec4 = 1: V % 4 == 0 and D, G 16- and 8-byte aligned; else W = 1), warp y the
// tile's rows y, y + 8, y + 16, y + 24. row_sq_norms: one warp per row, blocks of 256
// threads. add_scaled_rows: 1-D grid of 256 threads, grid-stride.

#define GRAD_TILE_ROWS 32

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

// Adds one logit z to the running state (m, s): one exponential per element. A NaN z
// makes s NaN (so the loss is NaN); a z of -inf adds nothing.
__device__ __forceinline__ void lse_add(float& m, float& s, float z) {
    if (z > m) {
        s = s * expf(m - z) + 1.0f;
        m = z;
    } else if (z != -INFINITY) {
        s += expf(z - m);
    }
}

// One dot product d = h.w_i as the heads see it: the logit z, and for the harmonic head
// the clamped squared distance s and whether it was clamped.
struct Logit {
    float z, s;
    bool clamped;
};

__device__ __forceinline__ Logit head_logit(float d, float hh, float ww, int harmonic,
                                            float half_n, float eps) {
    if (!harmonic) return {d, 1.0f, false};
    // Not fmaxf, which would turn a NaN distance into eps (the CPU reference keeps NaN,
    // so non-finite activations surface as a NaN loss).
    const float raw = hh + ww - (d + d);
    const bool clamped = raw <= eps;
    const float s = clamped ? eps : raw;
    return {-half_n * logf(s), s, clamped};
}

template <int W>
__device__ void head_lse_row(float* z, float* lse, float* losses, float hh, const float* w_sq,
                             const unsigned* targets, int V, int harmonic, float half_n,
                             float eps, int logits) {
    __shared__ float red_m[32], red_s[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const long long r = blockIdx.x;
    float m = -INFINITY, s = 0.0f;
    for (int i = W * threadIdx.x; i < V; i += W * blockDim.x) {
        Floats<W> d = load_floats<W>(z + i);
        Floats<W> ws{};
        if (harmonic) ws = load_floats<W>(w_sq + i);
#pragma unroll
        for (int k = 0; k < W; k++) {
            d.v[k] = head_logit(d.v[k], hh, ws.v[k], harmonic, half_n, eps).z;
            lse_add(m, s, d.v[k]);
        }
        if (logits) store_floats<W>(z + i, d);
    }
    if (logits) return;
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
            const float l = m + logf(s);
            const unsigned y = targets[r];
            const float zy = head_logit(z[y], hh, harmonic ? w_sq[y] : 0.0f, harmonic, half_n, eps).z;
            losses[r] = l - zy;
            if (lse) lse[r] = l;
        }
    }
}

extern "C" __global__ void head_lse(float* rows, float* lse, float* losses, const float* h_sq,
                                    const float* w_sq, const unsigned* targets, int V,
                                    int harmonic, float half_n, float eps, int logits,
                                    int vec4) {
    float* z = rows + (long long)blockIdx.x * V;
    const float hh = harmonic ? h_sq[blockIdx.x] : 0.0f;
    if (vec4)
        head_lse_row<4>(z, lse, losses, hh, w_sq, targets, V, harmonic, half_n, eps, logits);
    else
        head_lse_row<1>(z, lse, losses, hh, w_sq, targets, V, harmonic, half_n, eps, logits);
}

template <int W>
__device__ void head_grad_tile(const float* rows, float* g32, __nv_bfloat16* g16,
                               float* rowpart, float* colpart, const float* lse,
                               const float* h_sq, const float* w_sq, const unsigned* targets,
                               int R, int V, int harmonic, float half_n, float eps,
                               float scale) {
    __shared__ float col_acc[8][32 * 4];
    const int lane = threadIdx.x, wy = threadIdx.y;
    const int c0 = (blockIdx.y * 32 + lane) * W;  // W divides V: all W columns or none
    const bool cols_in = c0 < V;
    Floats<W> ws{}, csum{};
    if (harmonic && cols_in) ws = load_floats<W>(w_sq + c0);
    for (int k = 0; k < GRAD_TILE_ROWS / 8; k++) {
        const int r = blockIdx.x * GRAD_TILE_ROWS + wy + 8 * k;
        if (r >= R) break;  // the same r for the whole warp
        float rs = 0.0f;
        if (cols_in) {
            const float l = lse[r], hh = harmonic ? h_sq[r] : 0.0f;
            const int y = (int)targets[r];
            const long long at = (long long)r * V + c0;
            Floats<W> g = load_floats<W>(rows + at);
#pragma unroll
            for (int j = 0; j < W; j++) {
                const Logit x = head_logit(g.v[j], hh, ws.v[j], harmonic, half_n, eps);
                const float q = expf(x.z - l) - (c0 + j == y ? 1.0f : 0.0f);
                g.v[j] = !harmonic ? q * scale : x.clamped ? 0.0f : -half_n * q / x.s * scale;
                rs += g.v[j];
                csum.v[j] += g.v[j];
            }
            if (g32) store_floats<W>(g32 + at, g);
            if (g16) store_bf16<W>(g16 + at, g);
        }
        if (rowpart) {
            rs = warp_sum(rs);
            if (lane == 0) rowpart[(long long)blockIdx.y * R + r] = rs;
        }
    }
    if (!colpart) return;
#pragma unroll
    for (int j = 0; j < W; j++) col_acc[wy][lane * W + j] = csum.v[j];
    __syncthreads();
    if (wy == 0 && cols_in) {
#pragma unroll
        for (int j = 0; j < W; j++) {
            float c = col_acc[0][lane * W + j];
            for (int t = 1; t < 8; t++) c += col_acc[t][lane * W + j];
            colpart[(long long)blockIdx.x * V + c0 + j] = c;
        }
    }
}

extern "C" __global__ void head_grad(const float* rows, float* g32, __nv_bfloat16* g16,
                                     float* rowpart, float* colpart, const float* lse,
                                     const float* h_sq, const float* w_sq,
                                     const unsigned* targets, int R, int V, int harmonic,
                                     float half_n, float eps, float scale, int vec4) {
    if (vec4)
        head_grad_tile<4>(rows, g32, g16, rowpart, colpart, lse, h_sq, w_sq, targets, R, V,
                          harmonic, half_n, eps, scale);
    else
        head_grad_tile<1>(rows, g32, g16, rowpart, colpart, lse, h_sq, w_sq, targets, R, V,
                          harmonic, half_n, eps, scale);
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
