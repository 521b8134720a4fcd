// attention_decode, for generation with a KV cache: one new position whose query is
// q[C], over the keys k[T, C] and values v[T, C] of positions 0..T (its own last). Per
// head h, with scale = 1/sqrt(HS):
//   a[j] = softmax_j(scale q[h].k[j, h]),  out[h] = sum_j a[j] v[j, h]
// i.e. row T-1 of causal attention (training runs cuda/flash_attention.cu).
//
// Launch: one block of 256 threads per head, T floats of dynamic shared memory.

extern "C" __global__ void attention_decode(float* out, const float* q, const float* k,
                                            const float* v, int T, int C, int HS, float scale) {
    extern __shared__ float a[];  // scores, then exp(score - max)
    __shared__ float scratch[32];
    const long long h = blockIdx.x;
    const float* qh = q + h * HS;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        const float* kj = k + (long long)j * C + h * HS;
        float s = 0.0f;
        for (int d = 0; d < HS; d++) s += qh[d] * kj[d];
        s *= scale;
        a[j] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        const float e = expf(a[j] - m);
        a[j] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);  // its barriers also publish every a[j]
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < T; j++) o += a[j] / sum * v[(long long)j * C + h * HS + d];
        out[h * HS + d] = o;
    }
}
