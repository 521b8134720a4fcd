// Causal flash attention for training (FlashAttention-2, Dao 2023), fp32 SIMT math.
// src/backend/cpu/attention.rs is the reference; this computes the same thing without a
// T x T matrix anywhere: scores live in registers, one 64 x 32 tile at a time.
//
// Layout: qkv [B, T, 3C] (C = NH HS; row (b, t) is q | k | v, head h at columns h HS..),
// y and dy [B, T, C], lse and D [B, NH, T], dqkv [B, T, 3C]; scale = 1/sqrt(HS).
//
// Forward, per (b, h) and query row t, over keys j <= t:
//   s_j = scale q_t.k_j,  m = max_j s_j,  l = sum_j exp(s_j - m)
//   y_t = sum_j exp(s_j - m) v_j / l,  lse_t = m + log l  (the only state saved)
// computed online over tiles of keys: when a tile raises the running max from m to m',
// the partial l and y are rescaled by exp(m - m').
//
// Backward, with P_tj = exp(s_tj - lse_t) recomputed from q, k and lse:
//   D_t = dy_t.y_t  (= sum_j P_tj dP_tj)                 flash_attention_backward_preprocess
//   dP_tj = dy_t.v_j,  dS_tj = P_tj (dP_tj - D_t) scale
//   dv_j = sum_t P_tj dy_t,  dk_j = sum_t dS_tj q_t      flash_attention_backward_dkdv
//   dq_t = sum_j dS_tj k_j                                flash_attention_backward_dq
// dk, dv and dq come from two passes (one block per tile of keys, one per tile of
// queries), so every output is written once, by one thread, with a plain store: no
// atomics, deterministic. The price: S and dP are computed in both passes (7 tile
// products per pair of tiles instead of 5).
//
// Launch of the three tiled kernels: blocks of 256 threads (16 x 16: ty = tid / 16,
// tx = tid % 16), grid (B NH, ceil(T / 64)), heaviest tiles first. A block owns 64
// "rows" (queries; keys in dkdv) and streams "columns" (keys; queries in dkdv) 32 at
// a time. Thread (ty, tx) holds the tile entries of rows ty + 16i (i < 4) and columns
// tx + 16j (j < 2), and accumulates rows ty + 16i over head dims tx + 16k (k < 8, so
// HS <= 128). A row's 16 threads are one half-warp: row max and sum, and the tile
// entries a row's accumulation needs, travel by shuffle. Tiles sit transposed in
// shared memory, [HS][rows + 1]: with the padding, loads (consecutive d), dot products
// (consecutive rows) and accumulations (consecutive d) are all free of bank conflicts.
// Rows past T are loaded as zeros and never written. Dynamic shared memory, floats:
// forward (65 + 2 x 33) HS, backward (2 x 65 + 2 x 33) HS: at HS 64, 33.5 KB and 50 KB
// (the backend opts in past 48 KB); at HS 128, 67 KB and 100 KB.
// preprocess: one warp per (b, t, h), 8 per block of 256 threads.
//
// Floor at GPT-2 124M shapes (B 64, T 1024, NH 12, HS 64), per layer, against an H100
// SXM (67 TFLOP/s fp32 SIMT, 989 bf16 tensor, 3.35 TB/s HBM3). One causal tile product
// (e.g. QK^T) is 2 HS B NH T(T+1)/2 = 51.6 GFLOP.
//   forward: 2 products, 103 GFLOP -> 1.54 ms; reads q, k, v, writes y, lse: 808 MB
//     -> 0.24 ms. Compute-bound (128 FLOP/byte).
//   backward: 7 products, 361 GFLOP -> 5.4 ms; reads y, dy (preprocess), q, k, v, dy,
//     lse, D, writes dqkv: 1.82 GB -> 0.54 ms.
// A good fp32 SIMT kernel reaches 30-50% of that peak: ~3-5 ms forward and ~11-18 ms
// backward per layer, far over issue 7's step budget (109 ms for all 12 layers and the
// rest at 600K tokens/s). bf16 tensor cores (mma.sync) are the next step: their compute
// floor, 0.10 ms forward and 0.37 ms backward, sits at the fp32 activations' byte floor.

#define FA_ROWS 64     // rows a block owns
#define FA_COLS 32     // columns streamed per step
#define FA_MAX_DIMS 8  // head dims per thread: HS <= 16 x 8 = 128

// dst[d][r] = src[(row0 + r) stride + d] for r < rows, d < HS, with dst rows rows + 1
// floats apart; rows at or past T are zeros.
__device__ void load_transposed(float* dst, int rows, const float* src, long long stride,
                                int row0, int T, int HS) {
    for (int i = threadIdx.x; i < rows * HS; i += blockDim.x) {
        const int r = i / HS, d = i % HS, t = row0 + r;
        dst[d * (rows + 1) + r] = t < T ? src[(long long)t * stride + d] : 0.0f;
    }
}

// s[i][j] = rows[., ty + 16i] . cols[., tx + 16j]: the thread's 4 x 2 entries of the
// 64 x 32 tile of dot products between the block's rows and the streamed columns.
__device__ __forceinline__ void tile_dots(float s[4][2], const float* rows,
                                          const float* cols, int HS) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 2; j++) s[i][j] = 0.0f;
    }
#pragma unroll 4
    for (int d = 0; d < HS; d++) {
        float a[4], c[2];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = rows[d * (FA_ROWS + 1) + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < 2; j++) c[j] = cols[d * (FA_COLS + 1) + tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int j = 0; j < 2; j++) s[i][j] = fmaf(a[i], c[j], s[i][j]);
        }
    }
}

// acc[i][k] += sum over the 32 columns c of p(row ty + 16i, c) cols[tx + 16k][c]: the
// 64 x HS accumulator tile plus the 64 x 32 tile p times the streamed 32 x HS tile.
// Entry (row, c) of p is p[i][c / 16] of lane c % 16 of the row's half-warp.
__device__ __forceinline__ void tile_accumulate(float acc[4][FA_MAX_DIMS], const float p[4][2],
                                                const float* cols, int HS) {
    const int tx = threadIdx.x % 16, half = threadIdx.x & 16;
#pragma unroll
    for (int c = 0; c < FA_COLS; c++) {
        float pc[4];
#pragma unroll
        for (int i = 0; i < 4; i++) pc[i] = __shfl_sync(FULL_MASK, p[i][c / 16], half | (c % 16));
#pragma unroll
        for (int k = 0; k < FA_MAX_DIMS; k++) {
            const int d = tx + 16 * k;
            if (d < HS) {
                const float x = cols[d * (FA_COLS + 1) + c];
#pragma unroll
                for (int i = 0; i < 4; i++) acc[i][k] = fmaf(pc[i], x, acc[i][k]);
            }
        }
    }
}

// Reductions over the 16 lanes of a half-warp (one tile row).
__device__ __forceinline__ float half_warp_max(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ float half_warp_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Writes the thread's accumulator rows ty + 16i below T, times factor[i], to
// dst[row * stride + d].
__device__ void store_rows(float* dst, long long stride, const float acc[4][FA_MAX_DIMS],
                           const float factor[4], int row0, int T, int HS) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int t = row0 + ty + 16 * i;
        if (t >= T) continue;
#pragma unroll
        for (int k = 0; k < FA_MAX_DIMS; k++) {
            const int d = tx + 16 * k;
            if (d < HS) dst[t * stride + d] = acc[i][k] * factor[i];
        }
    }
}

extern "C" __launch_bounds__(256) __global__ void flash_attention_forward(
    float* y, float* lse, const float* qkv, int T, int NH, int HS, float scale) {
    extern __shared__ float smem[];
    float* q_tile = smem;                            // [HS][65] the block's queries
    float* k_tile = q_tile + HS * (FA_ROWS + 1);     // [HS][33] a tile of keys
    float* v_tile = k_tile + HS * (FA_COLS + 1);     // [HS][33] and their values
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FA_ROWS;  // the last queries see most keys
    const long long C = (long long)NH * HS;
    const float* q = qkv + (long long)b * T * 3 * C + h * HS;
    load_transposed(q_tile, FA_ROWS, q, 3 * C, q0, T, HS);

    float m[4], l[4], o[4][FA_MAX_DIMS];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int k = 0; k < FA_MAX_DIMS; k++) o[i][k] = 0.0f;
    }
    // Causal: keys up to the block's last query. The first tile holds key 0, which
    // every row sees, so m is finite from then on.
    const int k_end = min(q0 + FA_ROWS, T);
    for (int k0 = 0; k0 < k_end; k0 += FA_COLS) {
        __syncthreads();  // every thread is done with the previous tile
        load_transposed(k_tile, FA_COLS, q + C, 3 * C, k0, T, HS);
        load_transposed(v_tile, FA_COLS, q + 2 * C, 3 * C, k0, T, HS);
        __syncthreads();
        float s[4][2];
        tile_dots(s, q_tile, k_tile, HS);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int t = q0 + ty + 16 * i;
            float tile_max = -INFINITY;
#pragma unroll
            for (int j = 0; j < 2; j++) {
                s[i][j] = k0 + tx + 16 * j <= t ? s[i][j] * scale : -INFINITY;
                tile_max = fmaxf(tile_max, s[i][j]);
            }
            const float m_new = fmaxf(m[i], half_warp_max(tile_max));
            const float rescale = expf(m[i] - m_new);  // 0 on the first tile
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < 2; j++) {
                s[i][j] = expf(s[i][j] - m_new);  // masked: exp(-inf) = 0
                sum += s[i][j];
            }
            l[i] = l[i] * rescale + half_warp_sum(sum);
            m[i] = m_new;
#pragma unroll
            for (int k = 0; k < FA_MAX_DIMS; k++) o[i][k] *= rescale;
        }
        tile_accumulate(o, s, v_tile, HS);
    }

    float inv_l[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        inv_l[i] = 1.0f / l[i];
        const int t = q0 + ty + 16 * i;
        if (tx == 0 && t < T) lse[(long long)bh * T + t] = m[i] + logf(l[i]);
    }
    store_rows(y + (long long)b * T * C + h * HS, C, o, inv_l, q0, T, HS);
}

// D[b, h, t] = dy[b, t, h].y[b, t, h] over the HS dims of head h.
extern "C" __global__ void flash_attention_backward_preprocess(float* D, const float* dy,
                                                               const float* y, long long rows,
                                                               int T, int NH, int HS) {
    const int lane = threadIdx.x % 32;
    // row = (b T + t) NH + h, whose HS values start at row HS in y and dy.
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    float s = 0.0f;
    for (int d = lane; d < HS; d += 32) s += dy[row * HS + d] * y[row * HS + d];
    s = warp_sum(s);
    const long long bt = row / NH, b = bt / T, t = bt % T, h = row % NH;
    if (lane == 0) D[(b * NH + h) * T + t] = s;
}

// One tile entry of the backward pass, for query t and key `key`, in place: p holds
// q.k on entry and P on exit, ds holds dy.v (= dP) on entry and dS on exit.
__device__ __forceinline__ void tile_grads(float& p, float& ds, int t, int key, float lse_t,
                                           float d_t, float scale) {
    p = key <= t ? expf(p * scale - lse_t) : 0.0f;  // causal mask
    ds = p * (ds - d_t) * scale;
}

extern "C" __launch_bounds__(256) __global__ void flash_attention_backward_dkdv(
    float* dqkv, const float* dy, const float* qkv, const float* lse, const float* D, int T,
    int NH, int HS, float scale) {
    extern __shared__ float smem[];
    float* k_tile = smem;                             // [HS][65] the block's keys
    float* v_tile = k_tile + HS * (FA_ROWS + 1);      // [HS][65] and values
    float* q_tile = v_tile + HS * (FA_ROWS + 1);      // [HS][33] a tile of queries
    float* dy_tile = q_tile + HS * (FA_COLS + 1);     // [HS][33] and their dy
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int k0 = blockIdx.y * FA_ROWS;  // the first keys are seen by most queries
    const long long C = (long long)NH * HS;
    const float* q = qkv + (long long)b * T * 3 * C + h * HS;
    const float* dy_h = dy + (long long)b * T * C + h * HS;
    const float *lse_h = lse + (long long)bh * T, *D_h = D + (long long)bh * T;
    load_transposed(k_tile, FA_ROWS, q + C, 3 * C, k0, T, HS);
    load_transposed(v_tile, FA_ROWS, q + 2 * C, 3 * C, k0, T, HS);

    float dk[4][FA_MAX_DIMS], dv[4][FA_MAX_DIMS];
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int k = 0; k < FA_MAX_DIMS; k++) dk[i][k] = dv[i][k] = 0.0f;
    }
    // Causal: queries from the block's first key on.
    for (int q0 = k0; q0 < T; q0 += FA_COLS) {
        __syncthreads();  // every thread is done with the previous tile
        load_transposed(q_tile, FA_COLS, q, 3 * C, q0, T, HS);
        load_transposed(dy_tile, FA_COLS, dy_h, C, q0, T, HS);
        __syncthreads();
        float p[4][2], ds[4][2];
        tile_dots(p, k_tile, q_tile, HS);
        tile_dots(ds, v_tile, dy_tile, HS);
#pragma unroll
        for (int j = 0; j < 2; j++) {
            // A query past T sees no key (as query -1), and its lse and D are not read.
            const int t = q0 + tx + 16 * j, seen = t < T ? t : -1;
            const float lse_t = t < T ? lse_h[t] : 0.0f, d_t = t < T ? D_h[t] : 0.0f;
#pragma unroll
            for (int i = 0; i < 4; i++)
                tile_grads(p[i][j], ds[i][j], seen, k0 + ty + 16 * i, lse_t, d_t, scale);
        }
        tile_accumulate(dv, p, dy_tile, HS);
        tile_accumulate(dk, ds, q_tile, HS);
    }

    const float one[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    float* dk_out = dqkv + (long long)b * T * 3 * C + C + h * HS;
    store_rows(dk_out, 3 * C, dk, one, k0, T, HS);
    store_rows(dk_out + C, 3 * C, dv, one, k0, T, HS);
}

extern "C" __launch_bounds__(256) __global__ void flash_attention_backward_dq(
    float* dqkv, const float* dy, const float* qkv, const float* lse, const float* D, int T,
    int NH, int HS, float scale) {
    extern __shared__ float smem[];
    float* q_tile = smem;                             // [HS][65] the block's queries
    float* dy_tile = q_tile + HS * (FA_ROWS + 1);     // [HS][65] and their dy
    float* k_tile = dy_tile + HS * (FA_ROWS + 1);     // [HS][33] a tile of keys
    float* v_tile = k_tile + HS * (FA_COLS + 1);      // [HS][33] and their values
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FA_ROWS;  // the last queries see most keys
    const long long C = (long long)NH * HS;
    const float* q = qkv + (long long)b * T * 3 * C + h * HS;
    load_transposed(q_tile, FA_ROWS, q, 3 * C, q0, T, HS);
    load_transposed(dy_tile, FA_ROWS, dy + (long long)b * T * C + h * HS, C, q0, T, HS);

    float lse_t[4], d_t[4], dq[4][FA_MAX_DIMS];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int t = q0 + ty + 16 * i;
        lse_t[i] = t < T ? lse[(long long)bh * T + t] : 0.0f;
        d_t[i] = t < T ? D[(long long)bh * T + t] : 0.0f;
#pragma unroll
        for (int k = 0; k < FA_MAX_DIMS; k++) dq[i][k] = 0.0f;
    }
    const int k_end = min(q0 + FA_ROWS, T);  // causal: keys up to the block's last query
    for (int k0 = 0; k0 < k_end; k0 += FA_COLS) {
        __syncthreads();  // every thread is done with the previous tile
        load_transposed(k_tile, FA_COLS, q + C, 3 * C, k0, T, HS);
        load_transposed(v_tile, FA_COLS, q + 2 * C, 3 * C, k0, T, HS);
        __syncthreads();
        float p[4][2], ds[4][2];
        tile_dots(p, q_tile, k_tile, HS);
        tile_dots(ds, dy_tile, v_tile, HS);
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int j = 0; j < 2; j++)
                tile_grads(p[i][j], ds[i][j], q0 + ty + 16 * i, k0 + tx + 16 * j, lse_t[i],
                           d_t[i], scale);
        }
        tile_accumulate(dq, ds, k_tile, HS);
    }

    const float one[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    store_rows(dqkv + (long long)b * T * 3 * C + h * HS, 3 * C, dq, one, q0, T, HS);
}
