// cuda/adamw.cu on the CPU emulator (emu.h) against an f64 reference: the float4 path
// with its scalar tail and the all-scalar path, with and without the bf16 shadow, on
// one block (grid-stride) and on several. Prints one line per check; exits non-zero if
// any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/adamw.cu"

static bool check(long long n, int vec4, bool shadow, int blocks, emu::Order order) {
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, scale = 0.5f;
    const int step = 3;
    const float c1 = (float)(1 - pow(b1, step)), c2 = (float)(1 - pow(b2, step));
    std::mt19937 gen(n + vec4);
    std::uniform_real_distribution<float> u(-1, 1);
    Buffer<float> p(n, 0), g(n, 0), m(n, 0), v(n, 0);
    Buffer<__nv_bfloat16> p16(n, {0});
    std::vector<double> want_p(n), want_m(n), want_v(n);
    for (long long i = 0; i < n; i++) {
        p[i] = u(gen);
        g[i] = u(gen);
        m[i] = 0.1f * u(gen);
        v[i] = 0.01f * fabsf(u(gen));
        const double gs = (double)g[i] * scale;
        want_m[i] = b1 * (double)m[i] + (1 - (double)b1) * gs;
        want_v[i] = b2 * (double)v[i] + (1 - (double)b2) * gs * gs;
        const double update = (want_m[i] / c1) / (sqrt(want_v[i] / c2) + eps);
        want_p[i] = p[i] - lr * (update + wd * (double)p[i]);
    }
    launch(dim3{(unsigned)blocks, 1, 1}, 256, 0, order, [&] {
        adamw_update(p.data(), shadow ? p16.data() : nullptr, g.data(), m.data(), v.data(), n,
                     lr, b1, b2, c1, c2, eps, wd, scale, vec4);
    });
    // The shadow must be the fp32 result rounded, exactly; untouched without one.
    long long shadow_wrong = 0;
    for (long long i = 0; i < n; i++) {
        const uint16_t want = shadow ? __float2bfloat16_rn(p[i]).bits : 0;
        shadow_wrong += p16[i].bits != want;
    }
    const double e_p = rel_err(want_p, p), e_m = rel_err(want_m, m), e_v = rel_err(want_v, v);
    const bool ok = e_p < 1e-6 && e_m < 1e-6 && e_v < 1e-6 && shadow_wrong == 0 && p.intact() &&
                    m.intact() && v.intact() && p16.intact();
    printf("%s adamw n=%lld%s%s blocks=%d %s: p %.1e m %.1e v %.1e, shadow values wrong %lld\n",
           ok ? "ok  " : "FAIL", n, vec4 ? " vec4" : "", shadow ? " shadow" : "", blocks,
           emu::order_name(order), e_p, e_m, e_v, shadow_wrong);
    fflush(stdout);
    return ok;
}

int main() {
    int failures = 0;
    // n = 1003: 250 float4s and a tail of 3. One block strides over them all; 3 blocks
    // split them.
    for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED})
        for (int vec4 : {0, 1})
            for (bool shadow : {false, true}) {
                failures += !check(1003, vec4, shadow, 1, order);
                failures += !check(1003, vec4, shadow, 3, order);
            }
    return failures != 0;
}
