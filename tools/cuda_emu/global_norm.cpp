// cuda/global_norm.cu on the CPU emulator (emu.h) against an f64 reference: sum_partials
// (sums and sums of squares, float4 and scalar paths) then sum_final, launched as
// src/backend/cuda/reduce.rs launches them, including a buffer longer than the
// 1024 blocks x 256 threads of the largest grid. Prints one line per check; exits
// non-zero if any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/global_norm.cu"

static bool check(long long n, bool squares, int vec4, emu::Order order) {
    std::mt19937 gen(n + squares);
    std::uniform_real_distribution<float> u(-1, 1);
    Buffer<float> x(n, 0);
    double want = 0;
    for (long long i = 0; i < n; i++) {
        x[i] = u(gen);
        want += squares ? (double)x[i] * x[i] : x[i];
    }
    // reduce.rs: blocks = ceil(n / 256), at most 1024; partials in a 1024-slot scratch.
    const int blocks = (int)std::min<long long>((n + 255) / 256, 1024);
    Buffer<double> partial(1024, NAN), out(1, NAN);
    launch(dim3(blocks), 256, 0, order,
           [&] { sum_partials(partial.data(), x.data(), n, squares, vec4); });
    launch(dim3(1), 1024, 0, order, [&] { sum_final(out.data(), partial.data(), blocks); });
    // f64 all the way: only the order of the additions differs.
    const double e = isfinite(out[0]) ? fabs(out[0] - want) / std::max(fabs(want), 1.0) : INFINITY;
    const bool ok = e < 1e-12 && partial.intact() && out.intact();
    printf("%s global_norm %s n=%lld%s blocks=%d %s: %.1e\n", ok ? "ok  " : "FAIL",
           squares ? "sum_squares" : "sum", n, vec4 ? " vec4" : "", blocks,
           emu::order_name(order), e);
    fflush(stdout);
    return ok;
}

int main() {
    int failures = 0;
    // n = 1: one thread busy; 1003: 250 float4s and a tail of 3 over 4 blocks.
    for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED})
        for (bool squares : {false, true})
            for (int vec4 : {0, 1}) {
                failures += !check(1, squares, vec4, order);
                failures += !check(1003, squares, vec4, order);
            }
    // Past 1024 x 256 the grid-strides; 1024 partials fill sum_final's threads.
    failures += !check(1024 * 256 * 2 + 5, true, 1, emu::SHUFFLED);
    failures += !check(1024 * 256 + 77, false, 0, emu::FORWARD);
    return failures != 0;
}
