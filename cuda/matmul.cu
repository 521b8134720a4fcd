// The non-GEMM parts of dense layers (the GEMMs themselves go through cuBLASLt):
//
//   bias_broadcast:      out[r, j] = bias[j]        (then the GEMM accumulates into out)
//                        Only where cuBLASLt has no bias epilogue for a GEMM: normally the
//                        GEMM adds the bias itself and out is written once, not three times.
//   column_partials:     part[s, j] = sum_{r in range s} src[r, j], and where copy16 is
//                        not null copy16[r, j] = bf16(src[r, j]) (round to nearest even,
//                        as to_bf16): a layer's output gradient is read once for its
//                        bias sum and its bf16 GEMM operand together.
//   column_partials_add: dst[j] += sum_s part[s * ld + j], s = 0, 1, ... in order
//   Together: dst[j] += sum_r src[r, j] (dbias; the harmonic head's colsum(G); LayerNorm's
//   dw, db from its per-block partials).
//
// Deterministic: no atomics. Every sum runs in an order fixed by (rows, cols) and the
// grid the host derives from them alone (never from the GPU's SM count), so the same
// inputs give the same bits on every run and every GPU.
//
// Launch: bias_broadcast: 1-D grid of 256 threads, grid-stride over rows*cols.
// column_partials: blocks of 32 x 8 threads; blockIdx.x picks 32 columns (one per lane,
// so reads are coalesced along rows), blockIdx.y the row range s (gridDim.y ranges of
// ceil(rows / gridDim.y) rows); the 8 rows of threads stride through the range, then
// row 0 of threads adds the 8 in order and writes part[s, j].
// column_partials_add: 1-D grid of 256 threads, grid-stride over cols.

extern "C" __global__ void bias_broadcast(float* out, const float* bias, int rows, int cols) {
    FOR_EACH(i, (long long)rows * cols) out[i] = bias[i % cols];
}

extern "C" __global__ void column_partials(float* part, __nv_bfloat16* copy16, const float* src,
                                           int rows, int cols) {
    __shared__ float acc[8][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int per = (rows + gridDim.y - 1) / gridDim.y;
    const int r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
    float s = 0.0f;
    if (col < cols)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            const long long i = (long long)r * cols + col;
            const float v = src[i];
            s += v;
            if (copy16) copy16[i] = __float2bfloat16_rn(v);
        }
    acc[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        for (int y = 1; y < 8; y++) s += acc[y][threadIdx.x];
        part[(long long)blockIdx.y * cols + col] = s;
    }
}

extern "C" __global__ void column_partials_add(float* dst, const float* part, int splits,
                                               int cols, int ld) {
    FOR_EACH(j, (long long)cols) {
        float s = 0.0f;
        for (int k = 0; k < splits; k++) s += part[(long long)k * ld + j];
        dst[j] += s;
    }
}
