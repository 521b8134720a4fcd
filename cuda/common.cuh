// common.cuh: helpers prepended to every kernel family before NVRTC compiles it
// (NVRTC sees one translation unit per family, so this is text, not an #include).
//
// Reductions assume blockDim.x is a multiple of 32 and at most 1024; block_* take a
// shared scratch of 32 slots and return the result to every thread of the block.
#include <cuda_bf16.h>

#define FULL_MASK 0xffffffffu

// NVRTC has no <math.h>: its INFINITY, from the bit pattern.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ float block_sum(float v, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // the scratch may still be read by a previous reduction
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? shared[lane] : 0.0f);
}

__device__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    return warp_max(lane < warps ? shared[lane] : -INFINITY);
}

__device__ double block_sum_d(double v, double* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    return warp_sum_d(lane < warps ? shared[lane] : 0.0);
}

// W consecutive floats, moved as one 16-byte access when W == 4 (the address must then
// be 16-byte aligned; the host checks and passes a vec4 flag), else one float at a time.
// A warp of float4 accesses reads 512 contiguous bytes in one instruction.
template <int W>
struct Floats {
    float v[W];
};

template <int W>
__device__ __forceinline__ Floats<W> load_floats(const float* p) {
    Floats<W> x;
    if constexpr (W == 4) {
        const float4 q = *reinterpret_cast<const float4*>(p);
        x.v[0] = q.x;
        x.v[1] = q.y;
        x.v[2] = q.z;
        x.v[3] = q.w;
    } else {
#pragma unroll
        for (int k = 0; k < W; k++) x.v[k] = p[k];
    }
    return x;
}

template <int W>
__device__ __forceinline__ void store_floats(float* p, const Floats<W>& x) {
    if constexpr (W == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
    } else {
#pragma unroll
        for (int k = 0; k < W; k++) p[k] = x.v[k];
    }
}

// W consecutive floats rounded to bf16 (nearest even): one 8-byte store when W == 4
// (the address 8-byte aligned: a float4-aligned row's bf16 copy).
struct alignas(8) Bf16x4 {
    __nv_bfloat162 lo, hi;
};

template <int W>
__device__ __forceinline__ void store_bf16(__nv_bfloat16* p, const Floats<W>& x) {
    if constexpr (W == 4) {
        *reinterpret_cast<Bf16x4*>(p) =
            Bf16x4{__floats2bfloat162_rn(x.v[0], x.v[1]), __floats2bfloat162_rn(x.v[2], x.v[3])};
    } else {
#pragma unroll
        for (int k = 0; k < W; k++) p[k] = __float2bfloat16_rn(x.v[k]);
    }
}

// Grid-stride loop over [0, n) with 64-bit indices.
#define FOR_EACH(i, n)                                                        \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)
