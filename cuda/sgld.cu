// One SGLD step localised at w* (src/backend/cpu/sgld.rs is the reference, its noise
// src/backend/noise.rs):
//
//   w_i <- w_i - half_eps * (nbeta * g_i + gamma * (w_i - w*_i)) + noise_std * xi_i
//   w16_i = bf16(w_i)   when w16 is not null: the bf16 shadow GEMMs read in bf16 mode
//
// half_eps = eps/2 and noise_std = sqrt(eps) come from the host. xi_i is counter-based
// noise, the same numbers the CPU draws: bits = SplitMix64 draw i of the stream `key`
// (mix64(key + (i + 1) * golden)), u1 = (bits[40..64] + 1) / 2^24 in (0, 1],
// u2 = bits[16..40] / 2^24, xi = sqrt(-2 ln u1) cos(2 pi u2).
// The shadow value is rounded to nearest even, as adamw.cu and to_bf16 round it.
// Launch: 1-D grids of 256 threads, grid-stride over the n parameters.

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float gaussian(unsigned long long key, unsigned long long i) {
    const unsigned long long bits = mix64(key + (i + 1ull) * 0x9e3779b97f4a7c15ull);
    const float unit = 1.0f / 16777216.0f;
    const float u1 = (float)((bits >> 40) + 1ull) * unit;
    const float u2 = (float)((bits >> 16) & 0xffffffull) * unit;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

extern "C" __global__ void sgld_update(float* w, __nv_bfloat16* w16, const float* grad,
                                       const float* anchor, long long n, float half_eps,
                                       float nbeta, float gamma, float noise_std,
                                       long long key) {
    FOR_EACH(i, n) {
        const float xi = gaussian((unsigned long long)key, (unsigned long long)i);
        const float wi = w[i];
        const float next =
            wi - half_eps * (nbeta * grad[i] + gamma * (wi - anchor[i])) + noise_std * xi;
        w[i] = next;
        if (w16 != nullptr) w16[i] = __float2bfloat16_rn(next);
    }
}
