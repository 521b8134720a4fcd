// cuda/attention_decode.cu on the CPU emulator (emu.h) against an f64 reference: one new
// position attending over T cached ones (T = 1; 300, more than the block's 256 threads),
// head sizes 5 and 64, launched as src/backend/cuda/attention.rs launches it (a block of 256
// threads per head, T floats of dynamic shared memory). Prints one line per check; exits
// non-zero if any fails.
#include "emu.h"
EMU_DYNAMIC_SHARED(a);
#include "../../cuda/common.cuh"
#include "../../cuda/attention_decode.cu"

static bool check(int T, int NH, int HS, emu::Order order) {
    const int C = NH * HS;
    std::mt19937 gen(T * 100 + HS);
    std::uniform_real_distribution<float> u(-2, 2);
    Buffer<float> q(C, 0), k((size_t)T * C, 0), v((size_t)T * C, 0), out(C, NAN);
    for (size_t i = 0; i < q.n; i++) q[i] = u(gen);
    for (size_t i = 0; i < k.n; i++) k[i] = u(gen);
    for (size_t i = 0; i < v.n; i++) v[i] = u(gen);
    const double scale = 1 / sqrt((double)HS);
    std::vector<double> want(C, 0);
    for (int h = 0; h < NH; h++) {
        std::vector<double> s(T);
        for (int j = 0; j < T; j++) {
            s[j] = 0;
            for (int d = 0; d < HS; d++)
                s[j] += (double)q[h * HS + d] * k[(size_t)j * C + h * HS + d];
            s[j] *= scale;
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& x : s) sum += x = exp(x - mx);
        for (int j = 0; j < T; j++)
            for (int d = 0; d < HS; d++)
                want[h * HS + d] += s[j] / sum * v[(size_t)j * C + h * HS + d];
    }
    launch(dim3(NH), 256, 4 * T, order, [&] {
        attention_decode(out.data(), q.data(), k.data(), v.data(), T, C, HS, (float)scale);
    });
    const double e = rel_err(want, out, 0.0);
    const bool ok = e < 1e-5 && out.intact();
    printf("%s attention_decode T=%d NH=%d HS=%d %s: out %.1e\n", ok ? "ok  " : "FAIL", T, NH,
           HS, emu::order_name(order), e);
    fflush(stdout);
    return ok;
}

int main() {
    int failures = 0;
    for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED})
        for (int T : {1, 300}) {
            failures += !check(T, 3, 5, order);
            failures += !check(T, 2, 64, order);
        }
    return failures != 0;
}
