// cuda/sgld.cu on the CPU emulator (emu.h): the noise must be the numbers the CPU
// backend draws (pinned in tests/llc.rs, sgld_noise_is_pinned), and the update the
// formula, with and without the bf16 shadow, on one block (grid-stride) and on several.
// Prints one line per check; exits non-zero if any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/sgld.cu"

// The same key and draws as PINNED_KEY / PINNED_NOISE in tests/llc.rs.
static const long long KEY = 0x0123456789abcdefll;
static const std::pair<long long, float> PINNED[] = {
    {0, 2.1872323f},  {1, -0.47345328f},  {2, 0.75995743f},
    {3, 0.2917902f},  {1000, 0.8879527f},  {1002, 0.6460418f},
};

static bool check(bool shadow, int blocks, emu::Order order) {
    const long long n = 1003;
    // Pure noise first: w = g = w* = 0, no drift, unit noise, so w_i = xi_i.
    Buffer<float> xi(n, 0), zero(n, 0);
    launch(dim3{(unsigned)blocks, 1, 1}, 256, 0, order, [&] {
        sgld_update(xi.data(), nullptr, zero.data(), zero.data(), n, 0.0f, 0.0f, 0.0f, 1.0f,
                    KEY);
    });
    double pinned_err = 0;
    for (auto [i, want] : PINNED) pinned_err = fmax(pinned_err, fabs(xi[i] - want) / fabs(want));

    // Then a full step, against the formula in f64 with the noise just drawn.
    const float half_eps = 5e-4f, nbeta = 20.0f, gamma = 3.0f, noise_std = 0.0316f;
    std::mt19937 gen(blocks);
    std::uniform_real_distribution<float> u(-1, 1);
    Buffer<float> w(n, 0), g(n, 0), anchor(n, 0);
    Buffer<__nv_bfloat16> w16(n, {0});
    std::vector<double> want(n);
    for (long long i = 0; i < n; i++) {
        w[i] = u(gen);
        g[i] = u(gen);
        anchor[i] = u(gen);
        want[i] = w[i] - half_eps * (nbeta * (double)g[i] + gamma * ((double)w[i] - anchor[i])) +
                  noise_std * (double)xi[i];
    }
    launch(dim3{(unsigned)blocks, 1, 1}, 256, 0, order, [&] {
        sgld_update(w.data(), shadow ? w16.data() : nullptr, g.data(), anchor.data(), n,
                    half_eps, nbeta, gamma, noise_std, KEY);
    });
    // The shadow must be the fp32 result rounded, exactly; untouched without one.
    long long shadow_wrong = 0;
    for (long long i = 0; i < n; i++) {
        const uint16_t want16 = shadow ? __float2bfloat16_rn(w[i]).bits : 0;
        shadow_wrong += w16[i].bits != want16;
    }
    const double e_w = rel_err(want, w);
    const bool ok = pinned_err < 1e-6 && e_w < 1e-6 && shadow_wrong == 0 && xi.intact() &&
                    w.intact() && g.intact() && anchor.intact() && w16.intact();
    printf("%s sgld_update n=%lld%s blocks=%d %s: pinned noise %.1e, update %.1e, shadow "
           "values wrong %lld\n",
           ok ? "ok  " : "FAIL", n, shadow ? " shadow" : "", blocks, emu::order_name(order),
           pinned_err, e_w, shadow_wrong);
    fflush(stdout);
    return ok;
}

int main() {
    int failures = 0;
    for (emu::Order order : {emu::FORWARD, emu::SHUFFLED})
        for (bool shadow : {false, true})
            for (int blocks : {1, 3}) failures += !check(shadow, blocks, order);
    return failures != 0;
}
