// emu.h: runs the real kernels of cuda/*.cu on the CPU, one CUDA block at a time, so
// that a machine with no GPU still checks their logic (tools/cuda_emu.sh builds and runs
// the harnesses; each includes this header, cuda/common.cuh and one or more kernel
// families).
//
// Every CUDA thread of a block is a coroutine on its own stack. A thread runs until it
// reaches a barrier, then the next one runs:
//   - __syncthreads waits for every live thread of the block;
//   - a warp shuffle, and the emulated mma.sync, wait for the 32 lanes of the warp
//     (all of them must be live: the kernels only use full-warp masks).
// Among the threads that may run, the one first in the block's priority order runs.
// The order is forward (warp 0 runs as far as it can before warp 1 moves), reverse, or
// shuffled, so a missing __syncthreads lets one warp read a tile another has not yet
// written, or overwrite one it is still reading, and the results come out wrong.
// Blocks may be 1-D or 2-D (x fastest, warps of 32 consecutive threads, as in CUDA).
//
// Shared memory: `__shared__` is `thread_local`. All coroutines run on one OS thread, so
// every thread of the block sees the same variable, which is CUDA's semantics, and both
// `__shared__ float s[32];` and `extern __shared__ float s[];` stay valid C++. Dynamic
// shared memory is one buffer, emu_smem, which a kernel's `extern __shared__` array
// names once the harness has written EMU_DYNAMIC_SHARED(NAME). Neither emu.h nor the
// harnesses (or the emulated device, device/libcuda.cpp, a shared library of its own)
// declare any other thread_local, so the TLS segment holding emu_smem is exactly the
// shared memory: it is filled with NaN before each block, so reading a slot no thread of
// the block wrote shows up as NaN in the output (a static array never carries values
// over from the previous block), and a write past the dynamic size the launch asked
// for is caught.
//
// The tensor-core instruction mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 is emulated
// as a warp collective from PTX's documented fragment layouts; flash_attention.cu
// leaves out its inline-asm version when HGPT_EMULATE is defined.
//
// What this cannot check: timing and performance; the hardware's own mma layout (only
// our reading of the PTX manual, the same one the kernel was written from); memory
// ordering beyond barrier order (a thread's writes are seen at once by all others);
// races between blocks (blocks run one after another, so atomics are plain adds, though
// `emu::block_order` runs them reversed or shuffled, so that sums that depend on the
// order blocks finish in show up as different bits: `same_bits_in_every_order`); and
// device-only limits such as shared memory size, registers and alignment faults. Math
// functions are the host's (expf, logf, ...), a few ulps from CUDA's.
//
// Not supported: 3-D blocks, partial-warp masks.
#pragma once

#include <math.h>
#include <link.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

#define HGPT_EMULATE 1

// ---- CUDA's language, as plain C++

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ thread_local

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};
static dim3 threadIdx, blockIdx, blockDim, gridDim;

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// Blocks run one at a time on one OS thread, so a plain add is atomic.
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}

// Dynamic shared memory: one buffer, which a kernel's `extern __shared__ float NAME[]`
// refers to once the harness has written EMU_DYNAMIC_SHARED(NAME) before including it.
static const size_t EMU_SMEM_BYTES = 228 * 1024;  // an H100's most per block
extern "C" {
alignas(16) thread_local float emu_smem[EMU_SMEM_BYTES / 4];
}
#define EMU_DYNAMIC_SHARED(name) \
    extern "C" thread_local float name[] __attribute__((alias("emu_smem")))

// ---- bf16: round to nearest even, as __float2bfloat16 does

struct __nv_bfloat16 {
    uint16_t bits;
};
// 4-byte aligned, as CUDA declares it: a misaligned pair access faults on a GPU, and the
// emulated device's alignment sanitizer reports it here.
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f)) return {0x7fc0};
    u += 0x7fff + ((u >> 16) & 1);
    return {(uint16_t)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) {
    const uint32_t u = (uint32_t)b.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// ---- the scheduler

namespace emu {

enum State { READY, AT_WARP_BARRIER, AT_BLOCK_BARRIER, DONE };

const int MAX_THREADS = 1024;
const size_t STACK_BYTES = 256 * 1024;

enum Order { FORWARD, REVERSE, SHUFFLED };
inline const char* order_name(Order o) {
    return o == FORWARD ? "forward" : o == REVERSE ? "reverse" : "shuffled";
}

struct Thread {
    State state;
    bool started;
    ucontext_t start;  // only to enter the thread on its stack the first time
    jmp_buf resume;    // every later switch: _setjmp/_longjmp make no system call
    char* stack;
    uint64_t slot[4];  // what the thread offers the warp in a shuffle or an mma
};

inline Thread threads[MAX_THREADS];
inline int nthreads = 0, cur = -1;
inline jmp_buf scheduler;
inline const std::function<void()>* body = nullptr;

// The kernel running now, for failure messages (set by launchers that know it).
inline const char* kernel_name = "a kernel";

[[noreturn]] inline void fail(const char* what) {
    fprintf(stderr, "cuda_emu: %s in %s (block %u,%u; thread %d ran last)\n", what, kernel_name,
            blockIdx.x, blockIdx.y, cur);
    exit(2);
}

inline void yield(State s) {
    threads[cur].state = s;
    if (!_setjmp(threads[cur].resume)) _longjmp(scheduler, 1);
}

inline void entry() {
    (*body)();
    threads[cur].state = DONE;
    _longjmp(scheduler, 1);
}

// A guard page under each stack turns an overflow into a crash instead of corruption.
inline char* new_stack() {
    void* p = mmap(nullptr, STACK_BYTES + 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("cannot map a thread stack");
    mprotect(p, 4096, PROT_NONE);
    return (char*)p + 4096;
}

inline void resume(int t) {
    cur = t;
    threadIdx = dim3(t % blockDim.x, t / blockDim.x);
    if (_setjmp(scheduler)) return;
    if (threads[t].started) _longjmp(threads[t].resume, 1);
    threads[t].started = true;
    setcontext(&threads[t].start);
}

// Releases the barrier thread t waits at if every thread it waits for has arrived;
// returns the lowest priority position among the released threads, or -1.
inline int release(int t, const std::vector<int>& pos) {
    if (threads[t].state == AT_WARP_BARRIER) {
        const int base = t & ~31;
        for (int l = base; l < base + 32; l++) {
            if (l >= nthreads || threads[l].state == DONE)
                fail("a warp collective with a lane that has exited");
            if (threads[l].state != AT_WARP_BARRIER) return -1;
        }
        int first = nthreads;
        for (int l = base; l < base + 32; l++) {
            threads[l].state = READY;
            first = std::min(first, pos[l]);
        }
        return first;
    }
    // A thread at __syncthreads, or one that exited: maybe the last one the block awaited.
    bool any = false;
    for (int l = 0; l < nthreads; l++) {
        if (threads[l].state == AT_BLOCK_BARRIER) any = true;
        else if (threads[l].state != DONE) return -1;
    }
    if (!any) return -1;
    for (int l = 0; l < nthreads; l++)
        if (threads[l].state == AT_BLOCK_BARRIER) threads[l].state = READY;
    return 0;
}

inline void run_block(const std::vector<int>& order) {
    std::vector<int> pos(nthreads);
    for (int i = 0; i < nthreads; i++) pos[order[i]] = i;
    for (int t = 0; t < nthreads; t++) {
        Thread& th = threads[t];
        if (!th.stack) th.stack = new_stack();
        getcontext(&th.start);
        th.start.uc_stack.ss_sp = th.stack;
        th.start.uc_stack.ss_size = STACK_BYTES;
        th.start.uc_link = nullptr;
        makecontext(&th.start, entry, 0);
        th.state = READY;
        th.started = false;
    }
    // Run the first ready thread in priority order until it blocks; after a barrier
    // opens, look again from the first thread it released.
    int i = 0;
    while (i < nthreads) {
        const int t = order[i];
        if (threads[t].state != READY) {
            i++;
            continue;
        }
        resume(t);
        const int first = release(t, pos);
        if (first >= 0) i = std::min(i, first);
    }
    for (int t = 0; t < nthreads; t++)
        if (threads[t].state != DONE) fail("deadlock: threads wait at barriers that never open");
}

inline std::mt19937 rng(1);

// The calling thread's instance of the TLS segment that holds emu_smem (the program's,
// or the emulated device's shared library's), which holds exactly the shared memory (see
// the opening comment), and its size in floats.
inline float* shared_segment(size_t* floats) {
    struct Found {
        float* at = nullptr;
        size_t floats = 0;
    } found;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) {
            for (int i = 0; i < info->dlpi_phnum; i++) {
                if (info->dlpi_phdr[i].p_type != PT_TLS || info->dlpi_tls_data == nullptr)
                    continue;
                float* at = (float*)info->dlpi_tls_data;
                const size_t n = info->dlpi_phdr[i].p_memsz / 4;
                if (at <= emu_smem && emu_smem < at + n) {
                    *(Found*)out = {at, n};
                    return 1;
                }
            }
            return 0;
        },
        &found);
    if (found.at == nullptr || emu_smem + EMU_SMEM_BYTES / 4 > found.at + found.floats)
        fail("shared memory is not a TLS segment of its own");
    *floats = found.floats;
    return found.at;
}

}  // namespace emu

namespace emu {
// The order blocks run in (forward by default). Blocks of a real grid run in any order
// and at once, so a deterministic kernel's results must not change with this; atomics
// between blocks are plain adds here, so an order-dependent sum shows up as different
// bits under a different block order.
inline Order block_order = FORWARD;
}  // namespace emu

// Runs kernel (a call with its arguments bound) over grid x block, blocks in
// emu::block_order, each block's threads in the given priority order. `block` may be a
// thread count.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, emu::Order order,
                   const std::function<void()>& kernel) {
    const int threads = block.x * block.y * block.z;
    if (block.z != 1) emu::fail("3-D blocks are not emulated");
    if (threads % 32 != 0 || threads > emu::MAX_THREADS) emu::fail("blocks must be whole warps");
    if (smem_bytes > EMU_SMEM_BYTES) emu::fail("too much shared memory for one block");
    size_t shared_floats;
    float* shared = emu::shared_segment(&shared_floats);
    gridDim = grid;
    blockDim = block;
    emu::nthreads = threads;
    emu::body = &kernel;
    std::vector<dim3> blocks;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) blocks.push_back(dim3{x, y, z});
    if (emu::block_order == emu::REVERSE) std::reverse(blocks.begin(), blocks.end());
    if (emu::block_order == emu::SHUFFLED) std::shuffle(blocks.begin(), blocks.end(), emu::rng);
    std::vector<int> prio(threads);
    for (const dim3& b : blocks) {
        blockIdx = b;
        std::fill(shared, shared + shared_floats, NAN);
        for (int t = 0; t < threads; t++) prio[t] = order == emu::REVERSE ? threads - 1 - t : t;
        if (order == emu::SHUFFLED) std::shuffle(prio.begin(), prio.end(), emu::rng);
        emu::run_block(prio);
        // Past the bytes the launch asked for, dynamic shared memory must still be NaN.
        const float nan = NAN;
        for (size_t i = (smem_bytes + 3) / 4; i < EMU_SMEM_BYTES / 4; i++)
            if (memcmp(&emu_smem[i], &nan, 4)) emu::fail("a write past the block's shared memory");
    }
}

// ---- what the kernels call

inline void __syncthreads() { emu::yield(emu::AT_BLOCK_BARRIER); }

// The warp's values, by lane, of v: everyone offers v, then reads. The second barrier
// keeps a fast lane's next offer from overwriting a slot before all have read it.
template <class T>
T emu_shuffle(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    if (mask != 0xffffffffu) emu::fail("only full-warp shuffles are emulated");
    const int base = emu::cur & ~31;
    memcpy(emu::threads[emu::cur].slot, &v, sizeof(T));
    emu::yield(emu::AT_WARP_BARRIER);
    T r;
    memcpy(&r, emu::threads[base + (src_lane & 31)].slot, sizeof(T));
    emu::yield(emu::AT_WARP_BARRIER);
    return r;
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane) { return emu_shuffle(mask, v, src_lane); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return emu_shuffle(mask, v, (emu::cur & 31) ^ lane_mask);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: c (16 x 8, fp32) += a (16 x 16)
// b (16 x 8), bf16 operands, as a warp collective. Lane 4g + q holds, two bf16 per
// register with the lower column or row in the low half:
//   a[0] = A[g][2q..], a[1] = A[g + 8][2q..], a[2] = A[g][2q + 8..], a[3] = A[g + 8][2q + 8..]
//   b[0] = B[2q..][g], b[1] = B[2q + 8..][g]
//   c[0..1] = C[g][2q, 2q + 1], c[2..3] = C[g + 8][2q, 2q + 1]
inline void mma_bf16_16x8x16(float c[4], const unsigned a[4], const unsigned b[2]) {
    emu::Thread* lanes = &emu::threads[emu::cur & ~31];
    uint64_t* mine = emu::threads[emu::cur].slot;
    mine[0] = a[0] | (uint64_t)a[1] << 32;
    mine[1] = a[2] | (uint64_t)a[3] << 32;
    mine[2] = b[0] | (uint64_t)b[1] << 32;
    emu::yield(emu::AT_WARP_BARRIER);
    // bf16 number i (0 to 3, low half first) of a slot word.
    auto half = [](uint64_t word, int i) {
        return __bfloat162float({(uint16_t)(word >> (16 * i))});
    };
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, q = lane % 4;
        const uint64_t* s = lanes[lane].slot;
        for (int h = 0; h < 2; h++) {
            A[g][2 * q + h] = half(s[0], h);
            A[g + 8][2 * q + h] = half(s[0], 2 + h);
            A[g][2 * q + 8 + h] = half(s[1], h);
            A[g + 8][2 * q + 8 + h] = half(s[1], 2 + h);
            B[2 * q + h][g] = half(s[2], h);
            B[2 * q + 8 + h][g] = half(s[2], 2 + h);
        }
    }
    const int g = (emu::cur & 31) / 4, q = emu::cur % 4;
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
        for (int k = 0; k < 16; k++) c[e] += A[row][k] * B[k][col];
    }
    emu::yield(emu::AT_WARP_BARRIER);
}

// ---- for the harnesses

// A device buffer: n values between guard zones of NaN, so a kernel that reads past
// either end gets NaN and one that writes there is caught by intact().
template <class T>
struct Buffer {
    static const size_t GUARD = 64;
    std::vector<T> mem;
    size_t n;
    explicit Buffer(size_t n, T fill) : mem(n + 2 * GUARD, guard_value()), n(n) {
        std::fill(data(), data() + n, fill);
    }
    static T guard_value() {
        if constexpr (std::is_same_v<T, __nv_bfloat16>) return {0x7fc1};
        else return (T)NAN;
    }
    T* data() { return mem.data() + GUARD; }
    T& operator[](size_t i) { return data()[i]; }
    const T& operator[](size_t i) const { return mem[GUARD + i]; }
    bool intact() const {
        const T g = guard_value();
        for (size_t i = 0; i < GUARD; i++)
            if (memcmp(&mem[i], &g, sizeof(T)) || memcmp(&mem[GUARD + n + i], &g, sizeof(T)))
                return false;
        return true;
    }
};

// ||got - want|| / max(||want||, floor), infinite when got holds a NaN or an infinity.
// Absolute where ||want|| < floor = 1 by default: some gradients are exactly zero (dq and
// dk of one position).
template <class G>
double rel_err(const std::vector<double>& want, const G& got, double floor = 1.0) {
    double d = 0, w = 0;
    for (size_t i = 0; i < want.size(); i++) {
        const double g = got[i];
        if (!isfinite(g)) return INFINITY;
        d += (g - want[i]) * (g - want[i]);
        w += want[i] * want[i];
    }
    return sqrt(d) / std::max(sqrt(w), floor);
}

// Whether `run` gives the same bytes under every block order and every thread order:
// `run(order)` launches with `order` as the thread order (emu::block_order is set around
// it) and returns what the kernels wrote. A deterministic kernel passes; one whose sums
// depend on which block or thread comes first does not.
template <class F>
bool same_bits_in_every_order(F run) {
    const auto first = run(emu::FORWARD);
    bool same = true;
    for (emu::Order blocks : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED})
        for (emu::Order threads : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED}) {
            emu::block_order = blocks;
            const auto got = run(threads);
            same = same && got.size() == first.size() &&
                   memcmp(got.data(), first.data(), sizeof(first[0]) * first.size()) == 0;
        }
    emu::block_order = emu::FORWARD;
    return same;
}
