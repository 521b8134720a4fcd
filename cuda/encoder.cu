// Token + position embedding (src/backend/cpu/encoder.rs is the reference).
//
//   forward:  out[r, c] = wte[tok[r], c] + wpe[r % T, c]          r < N = B*T
//   backward: dwte[v, c] += sum_{r : tok[r] = v} dout[r, c]        (per token, by bucket)
//             dwpe[t, c] += sum_b dout[b*T + t, c]                 (one thread per (t, c))
//
// Deterministic, no atomics. The wte backward reads a bucket table the host builds from
// the tokens (src/backend/cuda/encoder.rs): bucket k is (token v, start, count) and
// pos[start, start + count) are the positions holding v in increasing order. Within a
// bucket, warp w of 8 sums positions w, w + 8, ... in order, lane l channels
// c0 + l + 32 i (i < 8, a 256-channel tile); then the 8 warps' sums are added in warp
// order. The order of every addition is fixed by the tokens alone.
//
// Launch: forward and dwpe: 1-D grids of 256 threads, grid-stride over N*C or T*C.
// encoder_backward_wte: blocks of 32 x 8 threads, grid (buckets, ceil(C / 256)): a
// block per bucket and 256-channel tile.

extern "C" __global__ void encoder_forward(float* out, const unsigned* tok, const float* wte,
                                           const float* wpe, int N, int T, int C) {
    FOR_EACH(i, (long long)N * C) {
        const long long r = i / C, c = i % C;
        out[i] = wte[(long long)tok[r] * C + c] + wpe[(r % T) * C + c];
    }
}

#define WTE_TILE 256

extern "C" __global__ void encoder_backward_wte(float* dwte, const float* dout,
                                                const unsigned* bucket, const unsigned* pos,
                                                int C) {
    __shared__ float acc[8][WTE_TILE];
    const unsigned* b = bucket + 3 * (long long)blockIdx.x;
    const unsigned v = b[0], start = b[1], count = b[2];
    const int lane = threadIdx.x, warp = threadIdx.y, c0 = blockIdx.y * WTE_TILE;
    float s[WTE_TILE / 32];
#pragma unroll
    for (int i = 0; i < WTE_TILE / 32; i++) s[i] = 0.0f;
    for (unsigned k = warp; k < count; k += 8) {
        const float* row = dout + (long long)pos[start + k] * C;
#pragma unroll
        for (int i = 0; i < WTE_TILE / 32; i++) {
            const int c = c0 + lane + 32 * i;
            if (c < C) s[i] += row[c];
        }
    }
#pragma unroll
    for (int i = 0; i < WTE_TILE / 32; i++) acc[warp][lane + 32 * i] = s[i];
    __syncthreads();
    const int j = warp * 32 + lane, c = c0 + j;
    if (c < C) {
        float t = acc[0][j];
        for (int w = 1; w < 8; w++) t += acc[w][j];
        dwte[(long long)v * C + c] += t;
    }
}

extern "C" __global__ void encoder_backward_wpe(float* dwpe, const float* dout, int B, int T,
                                                int C) {
    FOR_EACH(i, (long long)T * C) {
        float s = 0.0f;
        for (int b = 0; b < B; b++) s += dout[(long long)b * T * C + i];
        dwpe[i] += s;
    }
}
