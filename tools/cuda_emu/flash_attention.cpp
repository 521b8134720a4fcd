// cuda/flash_attention.cu on the CPU emulator (emu.h) against an f64 reference: the
// forward pass (y, lse), the backward preprocess (D) and the dkdv and dq passes, in the
// fp32 SIMT and the bf16 tensor-core versions (both instantiations, hp64 for HS <= 64 and
// hp128 above), launched as src/backend/cuda/attention.rs launches them. Prints one line
// per check; exits non-zero if any fails.
#include "emu.h"
EMU_DYNAMIC_SHARED(smem);
#include "../../cuda/common.cuh"
#include "../../cuda/flash_attention.cu"

struct Shape {
    int B, T, NH, HS;
};

struct Reference {
    std::vector<double> y, lse, D, dq, dk, dv;
};

// Causal attention and its gradients, straight from the definitions, in f64.
// qkv [B, T, 3C], dy [B, T, C]; dq, dk, dv [B, T, C]; lse and D [B, NH, T].
static Reference reference(Shape s, const std::vector<float>& qkv, const std::vector<float>& dy) {
    const int T = s.T, HS = s.HS, C = s.NH * HS;
    const double scale = 1.0 / sqrt((double)HS);
    Reference r;
    const size_t n = (size_t)s.B * T * C;
    r.y.assign(n, 0);
    r.dq.assign(n, 0);
    r.dk.assign(n, 0);
    r.dv.assign(n, 0);
    r.lse.assign((size_t)s.B * s.NH * T, 0);
    r.D.assign((size_t)s.B * s.NH * T, 0);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++) {
            // Element d of head h of part 0 (q), 1 (k) or 2 (v) at position t.
            auto in = [&](int t, int part, int d) {
                return (double)qkv[(size_t)(b * T + t) * 3 * C + part * C + h * HS + d];
            };
            auto at = [&](int t, int d) { return (size_t)(b * T + t) * C + h * HS + d; };
            const size_t bh = (size_t)(b * s.NH + h) * T;
            for (int t = 0; t < T; t++) {
                std::vector<double> p(t + 1), dp(t + 1);
                double m = -INFINITY, l = 0, dot = 0;
                for (int j = 0; j <= t; j++) {
                    double qk = 0;
                    for (int d = 0; d < HS; d++) qk += in(t, 0, d) * in(j, 1, d);
                    p[j] = qk * scale;
                    m = std::max(m, p[j]);
                }
                for (int j = 0; j <= t; j++) l += (p[j] = exp(p[j] - m));
                for (int j = 0; j <= t; j++) p[j] /= l;
                r.lse[bh + t] = m + log(l);
                for (int d = 0; d < HS; d++) {
                    double o = 0;
                    for (int j = 0; j <= t; j++) o += p[j] * in(j, 2, d);
                    r.y[at(t, d)] = o;
                    r.D[bh + t] += dy[at(t, d)] * o;
                }
                for (int j = 0; j <= t; j++) {
                    for (int d = 0; d < HS; d++) dp[j] += dy[at(t, d)] * in(j, 2, d);
                    dot += p[j] * dp[j];
                }
                for (int j = 0; j <= t; j++) {
                    const double ds = p[j] * (dp[j] - dot) * scale;
                    for (int d = 0; d < HS; d++) {
                        r.dq[at(t, d)] += ds * in(j, 1, d);
                        r.dk[at(j, d)] += ds * in(t, 0, d);
                        r.dv[at(j, d)] += p[j] * dy[at(t, d)];
                    }
                }
            }
        }
    return r;
}

typedef void (*Forward)(float*, float*, const float*, int, int, int, float);
typedef void (*Backward)(float*, const float*, const float*, const float*, const float*, int,
                         int, int, float);

// One set of kernels, the head sizes attention.rs runs it for (min_hs < HS <= max_hs),
// its threads per block and shared memory (as attention.rs has them).
struct Kernels {
    const char* name;
    Forward forward;
    Backward dkdv, dq;
    int min_hs, max_hs;
    int threads;
    size_t (*forward_smem)(int HS);
    size_t (*backward_smem)(int HS);
    double tol;
};

static const Kernels FP32 = {
    "fp32", flash_attention_forward, flash_attention_backward_dkdv, flash_attention_backward_dq,
    0, 128, 256, [](int hs) { return (size_t)4 * hs * (65 + 2 * 33); },
    [](int hs) { return (size_t)4 * hs * (2 * 65 + 2 * 33); }, 1e-4};

static size_t bf16_padded(int hs) { return (hs + 15) / 16 * 16; }
static size_t bf16_forward_smem(int hs) {
    return 2 * (128 * (bf16_padded(hs) + 8) + 72 * bf16_padded(hs));
}
static size_t bf16_backward_smem(int hs) {
    return 2 * (192 * (bf16_padded(hs) + 8) + 80 * bf16_padded(hs)) + 256;
}
static const Kernels BF16_HP64 = {"bf16 hp64",
                                  flash_attention_forward_bf16_hp64,
                                  flash_attention_backward_dkdv_bf16_hp64,
                                  flash_attention_backward_dq_bf16_hp64,
                                  0,
                                  64,
                                  128,
                                  bf16_forward_smem,
                                  bf16_backward_smem,
                                  2e-2};
static const Kernels BF16_HP128 = {"bf16 hp128",
                                   flash_attention_forward_bf16_hp128,
                                   flash_attention_backward_dkdv_bf16_hp128,
                                   flash_attention_backward_dq_bf16_hp128,
                                   64,
                                   128,
                                   128,
                                   bf16_forward_smem,
                                   bf16_backward_smem,
                                   2e-2};

// Runs the four kernels on random inputs and compares every output with the reference.
static bool check(const Kernels& k, Shape s, emu::Order order) {
    const int B = s.B, T = s.T, NH = s.NH, HS = s.HS, C = NH * HS;
    std::mt19937 gen(1000 * T + HS);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> qkv_in((size_t)B * T * 3 * C), dy_in((size_t)B * T * C);
    for (float& x : qkv_in) x = u(gen);
    for (float& x : dy_in) x = u(gen);
    const Reference want = reference(s, qkv_in, dy_in);

    Buffer<float> qkv(qkv_in.size(), 0), dy(dy_in.size(), 0), y(dy_in.size(), NAN),
        lse(want.lse.size(), NAN), D(want.D.size(), NAN), dqkv(qkv_in.size(), NAN);
    std::copy(qkv_in.begin(), qkv_in.end(), qkv.data());
    std::copy(dy_in.begin(), dy_in.end(), dy.data());
    const float scale = 1.0f / sqrtf((float)HS);
    const dim3 grid{(unsigned)(B * NH), (unsigned)((T + 63) / 64), 1};
    const long long rows = (long long)B * T * NH;
    launch(grid, k.threads, k.forward_smem(HS), order,
           [&] { k.forward(y.data(), lse.data(), qkv.data(), T, NH, HS, scale); });
    launch(dim3{(unsigned)((rows + 7) / 8), 1, 1}, 256, 0, order, [&] {
        flash_attention_backward_preprocess(D.data(), dy.data(), y.data(), rows, T, NH, HS);
    });
    launch(grid, k.threads, k.backward_smem(HS), order, [&] {
        k.dkdv(dqkv.data(), dy.data(), qkv.data(), lse.data(), D.data(), T, NH, HS, scale);
    });
    launch(grid, k.threads, k.backward_smem(HS), order, [&] {
        k.dq(dqkv.data(), dy.data(), qkv.data(), lse.data(), D.data(), T, NH, HS, scale);
    });

    // Part 0 (dq), 1 (dk) or 2 (dv) of dqkv, laid out as [B, T, C].
    auto part = [&](int p) {
        std::vector<float> out((size_t)B * T * C);
        for (size_t r = 0; r < (size_t)B * T; r++)
            for (int c = 0; c < C; c++) out[r * C + c] = dqkv[r * 3 * C + p * C + c];
        return out;
    };
    const double errs[6] = {rel_err(want.y, y),        rel_err(want.lse, lse),
                            rel_err(want.D, D),        rel_err(want.dq, part(0)),
                            rel_err(want.dk, part(1)), rel_err(want.dv, part(2))};
    const bool guards = qkv.intact() && dy.intact() && y.intact() && lse.intact() &&
                        D.intact() && dqkv.intact();
    bool ok = guards;
    for (double e : errs) ok = ok && e < k.tol;
    printf("%s flash_attention %s B=%d T=%d NH=%d HS=%d %s: y %.1e lse %.1e D %.1e dq %.1e "
           "dk %.1e dv %.1e%s\n",
           ok ? "ok  " : "FAIL", k.name, B, T, NH, HS, emu::order_name(order), errs[0],
           errs[1], errs[2], errs[3], errs[4], errs[5],
           guards ? "" : " (a write outside a buffer)");
    fflush(stdout);
    return ok;
}

int main() {
    // T across the 64-row and 32-column tile edges; HS odd, one mma step, padded to the
    // next step, short of 64 (hp64, padded), 64 (hp64, full), past 64 (hp128, padded),
    // the maximum.
    const Shape shapes[] = {{2, 1, 2, 16},  {1, 63, 1, 64},  {1, 64, 2, 5},  {1, 65, 1, 64},
                            {1, 100, 1, 16}, {1, 130, 2, 24}, {1, 97, 1, 40}, {1, 70, 1, 80},
                            {1, 40, 1, 128}};
    int failures = 0;
    for (const Kernels* k : {&FP32, &BF16_HP64, &BF16_HP128})
        for (Shape s : shapes)
            if (k->min_hs < s.HS && s.HS <= k->max_hs)
                for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED})
                    failures += !check(*k, s, order);
    return failures != 0;
}
