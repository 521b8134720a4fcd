// The non-GEMM parts of dense layers (the GEMMs themselves go through cuBLASLt):
//
//   bias_broadcast:  out[r, j] = bias[j]            (then the GEMM accumulates into out)
//                    Only where cuBLASLt has no bias epilogue for a GEMM: normally the
//                    GEMM adds the bias itself and out is written once, not three times.
//   column_sums_add: dst[j] += sum_r src[r, j]      (dbias; the harmonic head's colsum(G))
//
// Launch: bias_broadcast: 1-D grid of 256 threads, grid-stride over rows*cols.
// column_sums_add: blocks of 32 x 8 threads; blockIdx.x picks 32 columns (one per lane,
// so reads are coalesced along rows), blockIdx.y a contiguous range of rows; the 8 rows of
// threads stride through that range, meet in shared memory, and add into dst atomically.

extern "C" __global__ void bias_broadcast(float* out, const float* bias, int rows, int cols) {
    FOR_EACH(i, (long long)rows * cols) out[i] = bias[i % cols];
}

extern "C" __global__ void column_sums_add(float* dst, const float* src, int rows, int cols) {
    __shared__ float part[8][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int per = (rows + gridDim.y - 1) / gridDim.y;
    const int r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
    float s = 0.0f;
    if (col < cols)
        for (int r = r0 + threadIdx.y; r < r1; r += 8) s += src[(long long)r * cols + col];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        for (int y = 1; y < 8; y++) s += part[y][threadIdx.x];
        atomicAdd(&dst[col], s);
    }
}
