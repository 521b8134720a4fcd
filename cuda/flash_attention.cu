// Causal flash attention for training (FlashAttention-2, Dao 2023): fp32 SIMT kernels
// (the fp32 mode) and, at the end of the file, bf16 tensor-core versions of the three
// tiled kernels (the bf16 mode). src/backend/cpu/attention.rs is the reference; this computes
// the same thing without a T x T matrix anywhere: scores live in registers, one tile
// at a time.
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
//     -> 0.24 ms. 128 FLOP/byte: compute-bound in fp32 SIMT (balance at 20), close to
//     memory-bound on tensor cores (balance at 295).
//   backward: 7 products, 361 GFLOP -> 5.4 ms; reads y, dy (preprocess), q, k, v, dy,
//     lse, D, writes dqkv: 1.82 GB -> 0.54 ms.
// A good fp32 SIMT kernel reaches 30-50% of that peak: ~3-5 ms forward and ~11-18 ms
// backward per layer, far over issue 7's step budget (109 ms for all 12 layers and the
// rest at 600K tokens/s): hence the bf16 tensor-core kernels, whose compute floor,
// 0.10 ms forward and 0.37 ms backward, sits at the fp32 activations' byte floor above.
// What bounds these simple ones (no ldmatrix, no double-buffered loads) is more likely
// the L2 traffic of streaming fp32 tiles: each (64-row, 64- or 32-column) tile pair reads
// its column tiles again, 3.4 GB forward and 6.8 GB backward per layer. At ~7 TB/s of
// L2 that is ~0.5 ms forward and ~1-2 ms backward: the estimate to measure against.
// bf16 activations (half the bytes) or 128-row tiles would cut it.

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

// ---- bf16 tensor cores: the backend's bf16 mode ----
//
// The same algorithm with every tile product on mma.sync m16n8k16 (bf16 operands, fp32
// accumulation): q, k, v and dy are rounded to bf16 as they enter shared memory, P and
// dS as they enter a product; softmax statistics, lse, D and accumulators stay fp32.
//
// Launch: blocks of 128 threads (4 warps), grid (B NH, ceil(T / 64)), heaviest tiles
// first. A block owns 64 rows, 16 per warp, and streams columns 64 (forward) or 32
// (backward) at a time. In the PTX fragment layout of m16n8k16, lane 4g + c holds the
// accumulator entries (rows g and g + 8; columns 2c and 2c + 1) of each 16 x 8 slice,
// so a row's statistics are reduced over the 4 lanes of a quad, and an accumulator tile
// becomes the A operand of the next product without leaving registers. Head dims are
// zero-padded to HP, a multiple of 16 (HS <= 128). Each kernel is a template on HPMAX,
// the most head dims it holds: its accumulators (o, dk and dv, dq) are HPMAX / 8 slices
// and its products at most HPMAX / 16 steps, so registers are sized for the head, not
// for the largest one. The host runs the hp64 kernels for HS <= 64 (GPT-2) and the
// hp128 ones above; tests/cuda_compile.rs holds the hp64 ones to their occupancy on
// sm_90 (forward and dq 4 blocks per SM, dkdv 3). Tiles sit in shared memory as bf16,
// [rows][HP + 8], or [HP][cols + 8] where a product needs the other index fastest; the
// padding keeps fragment loads free of bank conflicts. Dynamic shared memory, bytes,
// with L = HP + 8: forward 2 (128 L + 72 HP), backward 2 (192 L + 80 HP) + 256; at
// HS 64, 27.6 KB and 38.1 KB; at HS 128, 53 KB and 73 KB.

#define FB_ROWS 64  // rows a block owns, 16 per warp

typedef __nv_bfloat16 bf16;

// c += a b: a 16 x 16 bf16 (row-major fragment), b 16 x 8 bf16 (column-major), c fp32.
// The CPU emulator (tools/cuda_emu) brings its own.
#ifndef HGPT_EMULATE
__device__ __forceinline__ void mma_bf16_16x8x16(float c[4], const unsigned a[4],
                                                 const unsigned b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// lo and hi as the two bf16 halves of one fragment register (lo first in memory order).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
}

// Two consecutive bf16 of shared memory as one fragment register.
__device__ __forceinline__ unsigned bf16_pair(const bf16* p) {
    return *reinterpret_cast<const unsigned*>(p);
}

// dst[r row_step + d dim_step] = bf16(src[(row0 + r) stride + d]) for r < rows, d < HP;
// zero at rows at or past T and dims at or past HS. (ld, 1) stores [rows][ld],
// (1, ld) stores [HP][ld].
__device__ void load_bf16(bf16* dst, int row_step, int dim_step, int rows, const float* src,
                          long long stride, int row0, int T, int HS, int HP) {
    for (int i = threadIdx.x; i < rows * HP; i += blockDim.x) {
        const int r = i / HP, d = i % HP, t = row0 + r;
        const float x = t < T && d < HS ? src[(long long)t * stride + d] : 0.0f;
        dst[r * row_step + d * dim_step] = __float2bfloat16(x);
    }
}

// acc[n] += the n-th 16 x 8 slice of A B, over k_steps <= KMAX steps of 16: A is the
// warp's 16 rows from r0 of a [rows][lda] tile, B is read from a tile holding B^T as
// [N 8][ldb].
template <int KMAX, int N>
__device__ __forceinline__ void mma_tile_tile(float (&acc)[N][4], const bf16* a_tile, int lda,
                                              int r0, const bf16* bt_tile, int ldb,
                                              int k_steps) {
    const int g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int kk = 0; kk < KMAX; kk++) {
        if (kk >= k_steps) break;
        const bf16* pa = a_tile + (r0 + g) * lda + 16 * kk + 2 * c;
        const unsigned a[4] = {bf16_pair(pa), bf16_pair(pa + 8 * lda), bf16_pair(pa + 8),
                               bf16_pair(pa + 8 * lda + 8)};
#pragma unroll
        for (int n = 0; n < N; n++) {
            const bf16* pb = bt_tile + (8 * n + g) * ldb + 16 * kk + 2 * c;
            const unsigned b[2] = {bf16_pair(pb), bf16_pair(pb + 8)};
            mma_bf16_16x8x16(acc[n], a, b);
        }
    }
}

// acc[n] += the n-th 16 x 8 slice of A B for n < slices <= S: A from registers (K steps
// of 16, see to_a_operand), B read from a tile holding B^T as [slices 8][ldb].
template <int S, int K>
__device__ __forceinline__ void mma_regs_tile(float (&acc)[S][4], int slices,
                                              const unsigned (&a)[K][4], const bf16* bt_tile,
                                              int ldb) {
    const int g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4;
#pragma unroll
    for (int n = 0; n < S; n++) {
        if (n >= slices) break;
#pragma unroll
        for (int kk = 0; kk < K; kk++) {
            const bf16* pb = bt_tile + (8 * n + g) * ldb + 16 * kk + 2 * c;
            const unsigned b[2] = {bf16_pair(pb), bf16_pair(pb + 8)};
            mma_bf16_16x8x16(acc[n], a[kk], b);
        }
    }
}

// An accumulator tile of N slices (16 x 8N, fp32) as the A operand of a product over its
// 8N columns: step kk covers slices 2kk and 2kk + 1, rounded to bf16.
template <int N>
__device__ __forceinline__ void to_a_operand(unsigned (&a)[N / 2][4], const float (&s)[N][4]) {
#pragma unroll
    for (int kk = 0; kk < N / 2; kk++) {
        a[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        a[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        a[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
}

// Writes the warp's accumulator rows (r0 + g, r0 + g + 8 from row0) below T, dims below
// HS, times factor[0] and factor[1], to dst[row stride + d].
template <int S>
__device__ void store_slices(float* dst, long long stride, const float (&acc)[S][4],
                             const float factor[2], int row0, int T, int HS) {
    const int g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4;
    const int r0 = row0 + 16 * (threadIdx.x / 32);
#pragma unroll
    for (int n = 0; n < S; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int t = r0 + g + 8 * (e / 2), d = 8 * n + 2 * c + e % 2;
            if (t < T && d < HS) dst[t * stride + d] = acc[n][e] * factor[e / 2];
        }
    }
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

template <int HPMAX>
__device__ __forceinline__ void forward_bf16(float* smem, float* y, float* lse,
                                             const float* qkv, int T, int NH, int HS,
                                             float scale) {
    constexpr int SLICES = HPMAX / 8, KSTEPS = HPMAX / 16;
    const int HP = (HS + 15) / 16 * 16, ld = HP + 8;
    bf16* q_tile = reinterpret_cast<bf16*>(smem);  // [64][ld] the block's queries
    bf16* k_tile = q_tile + FB_ROWS * ld;          // [64][ld] a tile of keys
    bf16* vt_tile = k_tile + FB_ROWS * ld;         // [HP][72] their values, transposed
    const int g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4, r0 = 16 * (threadIdx.x / 32);
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FB_ROWS;  // the last queries see most keys
    const long long C = (long long)NH * HS;
    const float* q = qkv + (long long)b * T * 3 * C + h * HS;
    load_bf16(q_tile, ld, 1, FB_ROWS, q, 3 * C, q0, T, HS, HP);

    const int t_row[2] = {q0 + r0 + g, q0 + r0 + g + 8};  // this lane's two query rows
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, o[SLICES][4];
#pragma unroll
    for (int n = 0; n < SLICES; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    }
    const int k_end = min(q0 + FB_ROWS, T);  // causal: keys up to the block's last query
    for (int k0 = 0; k0 < k_end; k0 += 64) {
        __syncthreads();  // every warp is done with the previous tile
        load_bf16(k_tile, ld, 1, 64, q + C, 3 * C, k0, T, HS, HP);
        load_bf16(vt_tile, 1, 72, 64, q + 2 * C, 3 * C, k0, T, HS, HP);
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = 0.0f;
        }
        mma_tile_tile<KSTEPS>(s, q_tile, ld, r0, k_tile, ld, HP / 16);
        // Online softmax. l keeps this lane's share of each row sum (the quad adds them
        // at the end); m is the row's max over the quad.
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + 8 * n + 2 * c + e % 2;
                s[n][e] = key <= t_row[e / 2] ? s[n][e] * scale : -INFINITY;
                tile_max[e / 2] = fmaxf(tile_max[e / 2], s[n][e]);
            }
        }
        float rescale[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const float m_new = fmaxf(m[i], quad_max(tile_max[i]));
            rescale[i] = expf(m[i] - m_new);  // 0 on the first tile
            l[i] *= rescale[i];
            m[i] = m_new;
        }
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] = expf(s[n][e] - m[e / 2]);  // masked: exp(-inf) = 0
                l[e / 2] += s[n][e];
            }
        }
#pragma unroll
        for (int n = 0; n < SLICES; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) o[n][e] *= rescale[e / 2];
        }
        unsigned p[4][4];
        to_a_operand(p, s);
        mma_regs_tile(o, HP / 8, p, vt_tile, 72);
    }

    float inv_l[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] = quad_sum(l[i]);
        inv_l[i] = 1.0f / l[i];
        if (c == 0 && t_row[i] < T) lse[(long long)bh * T + t_row[i]] = m[i] + logf(l[i]);
    }
    store_slices(y + (long long)b * T * C + h * HS, C, o, inv_l, q0, T, HS);
}

template <int HPMAX>
__device__ __forceinline__ void backward_dkdv_bf16(float* smem, float* dqkv, const float* dy,
                                                   const float* qkv, const float* lse,
                                                   const float* D, int T, int NH, int HS,
                                                   float scale) {
    constexpr int SLICES = HPMAX / 8, KSTEPS = HPMAX / 16;
    const int HP = (HS + 15) / 16 * 16, ld = HP + 8;
    float* lse_tile = smem;                                 // [32] the queries' lse
    float* d_tile = lse_tile + 32;                          // [32] and D
    bf16* k_tile = reinterpret_cast<bf16*>(d_tile + 32);    // [64][ld] the block's keys
    bf16* v_tile = k_tile + FB_ROWS * ld;                   // [64][ld] and values
    bf16* q_tile = v_tile + FB_ROWS * ld;                   // [32][ld] a tile of queries
    bf16* dy_tile = q_tile + 32 * ld;                       // [32][ld] and their dy
    bf16* qt_tile = dy_tile + 32 * ld;                      // [HP][40] the same, transposed
    bf16* dyt_tile = qt_tile + HP * 40;                     // [HP][40]
    const int g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4, r0 = 16 * (threadIdx.x / 32);
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int k0 = blockIdx.y * FB_ROWS;  // the first keys are seen by most queries
    const long long C = (long long)NH * HS;
    const float* q = qkv + (long long)b * T * 3 * C + h * HS;
    const float* dy_h = dy + (long long)b * T * C + h * HS;
    load_bf16(k_tile, ld, 1, FB_ROWS, q + C, 3 * C, k0, T, HS, HP);
    load_bf16(v_tile, ld, 1, FB_ROWS, q + 2 * C, 3 * C, k0, T, HS, HP);

    const int key[2] = {k0 + r0 + g, k0 + r0 + g + 8};  // this lane's two key rows
    float dk[SLICES][4], dv[SLICES][4];
#pragma unroll
    for (int n = 0; n < SLICES; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;
    }
    // Causal: queries from the block's first key on.
    for (int q0 = k0; q0 < T; q0 += 32) {
        __syncthreads();  // every warp is done with the previous tile
        load_bf16(q_tile, ld, 1, 32, q, 3 * C, q0, T, HS, HP);
        load_bf16(dy_tile, ld, 1, 32, dy_h, C, q0, T, HS, HP);
        load_bf16(qt_tile, 1, 40, 32, q, 3 * C, q0, T, HS, HP);
        load_bf16(dyt_tile, 1, 40, 32, dy_h, C, q0, T, HS, HP);
        for (int i = threadIdx.x; i < 32; i += blockDim.x) {
            const int t = q0 + i;
            lse_tile[i] = t < T ? lse[(long long)bh * T + t] : 0.0f;
            d_tile[i] = t < T ? D[(long long)bh * T + t] : 0.0f;
        }
        __syncthreads();
        // Transposed products: rows are keys, columns queries.
        float p[4][4], ds[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) p[n][e] = ds[n][e] = 0.0f;
        }
        mma_tile_tile<KSTEPS>(p, k_tile, ld, r0, q_tile, ld, HP / 16);    // k.q
        mma_tile_tile<KSTEPS>(ds, v_tile, ld, r0, dy_tile, ld, HP / 16);  // v.dy = dP
#pragma unroll
        for (int n = 0; n < 4; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                // A query past T sees no key, and its lse and D are zeros.
                const int i = 8 * n + 2 * c + e % 2, t = q0 + i, seen = t < T ? t : -1;
                tile_grads(p[n][e], ds[n][e], seen, key[e / 2], lse_tile[i], d_tile[i], scale);
            }
        }
        unsigned pa[2][4], dsa[2][4];
        to_a_operand(pa, p);
        to_a_operand(dsa, ds);
        mma_regs_tile(dv, HP / 8, pa, dyt_tile, 40);
        mma_regs_tile(dk, HP / 8, dsa, qt_tile, 40);
    }

    const float one[2] = {1.0f, 1.0f};
    float* dk_out = dqkv + (long long)b * T * 3 * C + C + h * HS;
    store_slices(dk_out, 3 * C, dk, one, k0, T, HS);
    store_slices(dk_out + C, 3 * C, dv, one, k0, T, HS);
}

template <int HPMAX>
__device__ __forceinline__ void backward_dq_bf16(float* smem, float* dqkv, const float* dy,
                                                 const float* qkv, const float* lse,
                                                 const float* D, int T, int NH, int HS,
                                                 float scale) {
    constexpr int SLICES = HPMAX / 8, KSTEPS = HPMAX / 16;
    const int HP = (HS + 15) / 16 * 16, ld = HP + 8;
    bf16* q_tile = reinterpret_cast<bf16*>(smem);  // [64][ld] the block's queries
    bf16* dy_tile = q_tile + FB_ROWS * ld;         // [64][ld] and their dy
    bf16* k_tile = dy_tile + FB_ROWS * ld;         // [32][ld] a tile of keys
    bf16* v_tile = k_tile + 32 * ld;               // [32][ld] and values
    bf16* kt_tile = v_tile + 32 * ld;              // [HP][40] the keys, transposed
    const int g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4, r0 = 16 * (threadIdx.x / 32);
    const int bh = blockIdx.x, b = bh / NH, h = bh % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * FB_ROWS;  // the last queries see most keys
    const long long C = (long long)NH * HS;
    const float* q = qkv + (long long)b * T * 3 * C + h * HS;
    load_bf16(q_tile, ld, 1, FB_ROWS, q, 3 * C, q0, T, HS, HP);
    load_bf16(dy_tile, ld, 1, FB_ROWS, dy + (long long)b * T * C + h * HS, C, q0, T, HS, HP);

    const int t_row[2] = {q0 + r0 + g, q0 + r0 + g + 8};  // this lane's two query rows
    float lse_t[2], d_t[2], dq[SLICES][4];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        lse_t[i] = t_row[i] < T ? lse[(long long)bh * T + t_row[i]] : 0.0f;
        d_t[i] = t_row[i] < T ? D[(long long)bh * T + t_row[i]] : 0.0f;
    }
#pragma unroll
    for (int n = 0; n < SLICES; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) dq[n][e] = 0.0f;
    }
    const int k_end = min(q0 + FB_ROWS, T);  // causal: keys up to the block's last query
    for (int k0 = 0; k0 < k_end; k0 += 32) {
        __syncthreads();  // every warp is done with the previous tile
        load_bf16(k_tile, ld, 1, 32, q + C, 3 * C, k0, T, HS, HP);
        load_bf16(v_tile, ld, 1, 32, q + 2 * C, 3 * C, k0, T, HS, HP);
        load_bf16(kt_tile, 1, 40, 32, q + C, 3 * C, k0, T, HS, HP);
        __syncthreads();
        float p[4][4], ds[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) p[n][e] = ds[n][e] = 0.0f;
        }
        mma_tile_tile<KSTEPS>(p, q_tile, ld, r0, k_tile, ld, HP / 16);    // q.k
        mma_tile_tile<KSTEPS>(ds, dy_tile, ld, r0, v_tile, ld, HP / 16);  // dy.v = dP
#pragma unroll
        for (int n = 0; n < 4; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++)
                tile_grads(p[n][e], ds[n][e], t_row[e / 2], k0 + 8 * n + 2 * c + e % 2,
                           lse_t[e / 2], d_t[e / 2], scale);
        }
        unsigned dsa[2][4];
        to_a_operand(dsa, ds);
        mma_regs_tile(dq, HP / 8, dsa, kt_tile, 40);
    }

    const float one[2] = {1.0f, 1.0f};
    store_slices(dqkv + (long long)b * T * 3 * C + h * HS, 3 * C, dq, one, q0, T, HS);
}

// The kernels, one per padded head size: HS <= 64 runs the hp64 ones, whose
// accumulators hold 64 dims (8 slices of 8), 64 < HS <= 128 the hp128 ones. Written out
// rather than by macro, so their names can be read from the source. Each declares the
// dynamic shared memory (in C linkage, as every kernel here does) and hands it on. The
// hp64 ones ask ptxas for their occupancy targets (4, 3 and 4 blocks of 128 threads per
// SM: at most 128, 168 and 128 registers). ptxas fits them without spilling (checked by
// tests/cuda_compile.rs), so a change that needs more registers shows as spills rather
// than as a silent loss of occupancy.
extern "C" __launch_bounds__(128, 4) __global__ void flash_attention_forward_bf16_hp64(
    float* y, float* lse, const float* qkv, int T, int NH, int HS, float scale) {
    extern __shared__ float smem[];
    forward_bf16<64>(smem, y, lse, qkv, T, NH, HS, scale);
}

extern "C" __launch_bounds__(128) __global__ void flash_attention_forward_bf16_hp128(
    float* y, float* lse, const float* qkv, int T, int NH, int HS, float scale) {
    extern __shared__ float smem[];
    forward_bf16<128>(smem, y, lse, qkv, T, NH, HS, scale);
}

extern "C" __launch_bounds__(128, 3) __global__ void flash_attention_backward_dkdv_bf16_hp64(
    float* dqkv, const float* dy, const float* qkv, const float* lse, const float* D, int T,
    int NH, int HS, float scale) {
    extern __shared__ float smem[];
    backward_dkdv_bf16<64>(smem, dqkv, dy, qkv, lse, D, T, NH, HS, scale);
}

extern "C" __launch_bounds__(128) __global__ void flash_attention_backward_dkdv_bf16_hp128(
    float* dqkv, const float* dy, const float* qkv, const float* lse, const float* D, int T,
    int NH, int HS, float scale) {
    extern __shared__ float smem[];
    backward_dkdv_bf16<128>(smem, dqkv, dy, qkv, lse, D, T, NH, HS, scale);
}

extern "C" __launch_bounds__(128, 4) __global__ void flash_attention_backward_dq_bf16_hp64(
    float* dqkv, const float* dy, const float* qkv, const float* lse, const float* D, int T,
    int NH, int HS, float scale) {
    extern __shared__ float smem[];
    backward_dq_bf16<64>(smem, dqkv, dy, qkv, lse, D, T, NH, HS, scale);
}

extern "C" __launch_bounds__(128) __global__ void flash_attention_backward_dq_bf16_hp128(
    float* dqkv, const float* dy, const float* qkv, const float* lse, const float* D, int T,
    int NH, int HS, float scale) {
    extern __shared__ float smem[];
    backward_dq_bf16<128>(smem, dqkv, dy, qkv, lse, D, T, NH, HS, scale);
}
