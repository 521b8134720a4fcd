// cuda/adamw.cu on the CPU emulator (emu.h): one launch over four consecutive tensors
// (lengths 5, 300, 1, 697: boundaries inside float4s; weight decay on the first and
// third) against an f64 reference, on the float4 path with its scalar tail and the
// all-scalar path, with and without the bf16 shadow, on one block (grid-stride) and on
// several; and bit for bit against one launch per tensor (what the multi-tensor launch
// replaces). Prints one line per check; exits non-zero if any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/adamw.cu"

static const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, scale = 0.5f;
static const int step = 3;
static const float c1 = (float)(1 - pow(b1, step)), c2 = (float)(1 - pow(b2, step));

struct State {
    Buffer<float> p, g, m, v;
    Buffer<__nv_bfloat16> p16;
    explicit State(long long n) : p(n, 0), g(n, 0), m(n, 0), v(n, 0), p16(n, {0}) {}
};

// One launch over [0, n) of the state shifted by `off` parameters, with its table.
static void run(State& s, long long off, long long n, const std::vector<long long>& starts,
                const std::vector<long long>& decay, int vec4, bool shadow, int blocks,
                emu::Order order) {
    Buffer<long long> dstarts(starts.size(), 0), ddecay(decay.size(), 0);
    std::copy(starts.begin(), starts.end(), dstarts.data());
    std::copy(decay.begin(), decay.end(), ddecay.data());
    launch(dim3{(unsigned)blocks, 1, 1}, 256, 0, order, [&] {
        adamw_update(s.p.data() + off, shadow ? s.p16.data() + off : nullptr, s.g.data() + off,
                     s.m.data() + off, s.v.data() + off, dstarts.data(), ddecay.data(),
                     (int)decay.size(), n, lr, b1, b2, c1, c2, eps, wd, scale, vec4);
    });
}

static bool check(int vec4, bool shadow, int blocks, emu::Order order) {
    const std::vector<long long> lens = {5, 300, 1, 697}, decay = {1, 0, 1, 0};
    std::vector<long long> starts = {0};
    for (long long l : lens) starts.push_back(starts.back() + l);
    const long long n = starts.back();
    std::mt19937 gen(n + vec4);
    std::uniform_real_distribution<float> u(-1, 1);
    State s(n);
    std::vector<double> want_p(n), want_m(n), want_v(n);
    for (size_t k = 0; k < lens.size(); k++)
        for (long long i = starts[k]; i < starts[k + 1]; i++) {
            s.p[i] = u(gen);
            s.g[i] = u(gen);
            s.m[i] = 0.1f * u(gen);
            s.v[i] = 0.01f * fabsf(u(gen));
            const double gs = (double)s.g[i] * scale;
            want_m[i] = b1 * (double)s.m[i] + (1 - (double)b1) * gs;
            want_v[i] = b2 * (double)s.v[i] + (1 - (double)b2) * gs * gs;
            const double update = (want_m[i] / c1) / (sqrt(want_v[i] / c2) + eps);
            want_p[i] = s.p[i] - lr * (update + (decay[k] ? wd : 0) * (double)s.p[i]);
        }
    State each = s;
    run(s, 0, n, starts, decay, vec4, shadow, blocks, order);
    // One launch per tensor, as before the table: float4s only where the tensor starts
    // 16-byte aligned (update.rs asks the same).
    for (size_t k = 0; k < lens.size(); k++)
        run(each, starts[k], lens[k], {0, lens[k]}, {decay[k]}, vec4 && starts[k] % 4 == 0,
            shadow, blocks, order);
    // The shadow must be the fp32 result rounded, exactly; untouched without one.
    long long shadow_wrong = 0, differ = 0;
    for (long long i = 0; i < n; i++) {
        const uint16_t want = shadow ? __float2bfloat16_rn(s.p[i]).bits : 0;
        shadow_wrong += s.p16[i].bits != want;
        differ += memcmp(&s.p[i], &each.p[i], 4) || memcmp(&s.m[i], &each.m[i], 4) ||
                  memcmp(&s.v[i], &each.v[i], 4) || s.p16[i].bits != each.p16[i].bits;
    }
    const double e_p = rel_err(want_p, s.p), e_m = rel_err(want_m, s.m),
                 e_v = rel_err(want_v, s.v);
    const bool ok = e_p < 1e-6 && e_m < 1e-6 && e_v < 1e-6 && shadow_wrong == 0 && differ == 0 &&
                    s.p.intact() && s.m.intact() && s.v.intact() && s.p16.intact();
    printf("%s adamw 4 tensors n=%lld%s%s blocks=%d %s: p %.1e m %.1e v %.1e, shadow values "
           "wrong %lld, values unlike one launch per tensor %lld\n",
           ok ? "ok  " : "FAIL", n, vec4 ? " vec4" : "", shadow ? " shadow" : "", blocks,
           emu::order_name(order), e_p, e_m, e_v, shadow_wrong, differ);
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
                failures += !check(vec4, shadow, 1, order);
                failures += !check(vec4, shadow, 3, order);
            }
    return failures != 0;
}
