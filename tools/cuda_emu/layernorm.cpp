// cuda/layernorm.cu on the CPU emulator (emu.h) against an f64 reference: the forward
// pass alone and fused with the residual add (scalar and float4 paths), and the backward
// pass (a block per 32 rows, per-block dw, db partials added by matmul.cu's column sums),
// which must give the same bits in every block and thread order. The bf16-output forward
// kernels must store exactly bf16(the fp32 kernel's out), with the same residual, mean and
// rstd bits, in every thread order.
// Prints one line per check; exits non-zero if any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/layernorm.cu"
#include "../../cuda/matmul.cu"

static const float EPS = 1e-5f;
static const double TOL = 1e-5;

static std::vector<float> uniform(size_t n, std::mt19937& gen) {
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> v(n);
    for (float& x : v) x = u(gen);
    return v;
}

static Buffer<float> device(const std::vector<float>& v) {
    Buffer<float> b(v.size(), 0);
    std::copy(v.begin(), v.end(), b.data());
    return b;
}

static bool report(bool ok, const char* what, int N, int C, const char* extra, emu::Order order,
                   const char* errs) {
    printf("%s layernorm %s N=%d C=%d%s %s: %s\n", ok ? "ok  " : "FAIL", what, N, C, extra,
           emu::order_name(order), errs);
    fflush(stdout);
    return ok;
}

// layernorm_forward, or residual_layernorm_forward on x = a + b_in when fused.
static bool check_forward(bool fused, int N, int C, int vec4, emu::Order order) {
    std::mt19937 gen(N * 1000 + C);
    const std::vector<float> a = uniform((size_t)N * C, gen), b_in = uniform((size_t)N * C, gen),
                             w = uniform(C, gen), b = uniform(C, gen);
    std::vector<double> x((size_t)N * C), out((size_t)N * C), mean(N), rstd(N);
    for (size_t i = 0; i < x.size(); i++) x[i] = fused ? (double)(a[i] + b_in[i]) : a[i];
    for (int r = 0; r < N; r++) {
        double s = 0, v = 0;
        for (int c = 0; c < C; c++) s += x[(size_t)r * C + c];
        mean[r] = s / C;
        for (int c = 0; c < C; c++) v += pow(x[(size_t)r * C + c] - mean[r], 2);
        rstd[r] = 1 / sqrt(v / C + EPS);
        for (int c = 0; c < C; c++)
            out[(size_t)r * C + c] = (x[(size_t)r * C + c] - mean[r]) * rstd[r] * w[c] + b[c];
    }

    Buffer<float> da = device(a), db_in = device(b_in), dw = device(w), db = device(b);
    Buffer<float> dres((size_t)N * C, NAN), dout((size_t)N * C, NAN), dmean(N, NAN), drstd(N, NAN);
    launch(dim3{(unsigned)(N + 7) / 8, 1, 1}, 256, 0, order, [&] {
        if (fused)
            residual_layernorm_forward(dres.data(), dout.data(), dmean.data(), drstd.data(),
                                       da.data(), db_in.data(), dw.data(), db.data(), N, C, EPS,
                                       vec4);
        else
            layernorm_forward(dout.data(), dmean.data(), drstd.data(), da.data(), dw.data(),
                              db.data(), N, C, EPS, vec4);
    });
    const double e_out = rel_err(out, dout), e_mean = rel_err(mean, dmean),
                 e_rstd = rel_err(rstd, drstd), e_res = fused ? rel_err(x, dres) : 0;
    const bool ok = e_out < TOL && e_mean < TOL && e_rstd < TOL && e_res < TOL && da.intact() &&
                    db_in.intact() && dres.intact() && dout.intact() && dmean.intact() &&
                    drstd.intact();
    char errs[160];
    const int n =
        snprintf(errs, sizeof errs, "out %.1e mean %.1e rstd %.1e", e_out, e_mean, e_rstd);
    if (fused) snprintf(errs + n, sizeof errs - n, " residual %.1e", e_res);
    return report(ok, fused ? "residual_forward" : "forward", N, C, vec4 ? " vec4" : "", order,
                  errs);
}

// The *_bf16 forward kernels against the fp32 ones: out is bf16(fp32 out) bit for bit,
// residual, mean and rstd the same bits.
static bool check_forward_bf16(bool fused, int N, int C, int vec4, emu::Order order) {
    std::mt19937 gen(N * 1000 + C + 3);
    const size_t n = (size_t)N * C;
    Buffer<float> da = device(uniform(n, gen)), db_in = device(uniform(n, gen)),
                  dw = device(uniform(C, gen)), db = device(uniform(C, gen));
    Buffer<float> res32(n, NAN), out32(n, NAN), mean32(N, NAN), rstd32(N, NAN);
    Buffer<float> res16(n, NAN), mean16(N, NAN), rstd16(N, NAN);
    Buffer<__nv_bfloat16> out16(n, {0});
    const dim3 grid{(unsigned)(N + 7) / 8, 1, 1};
    launch(grid, 256, 0, emu::FORWARD, [&] {
        if (fused)
            residual_layernorm_forward(res32.data(), out32.data(), mean32.data(), rstd32.data(),
                                       da.data(), db_in.data(), dw.data(), db.data(), N, C, EPS,
                                       vec4);
        else
            layernorm_forward(out32.data(), mean32.data(), rstd32.data(), da.data(), dw.data(),
                              db.data(), N, C, EPS, vec4);
    });
    launch(grid, 256, 0, order, [&] {
        if (fused)
            residual_layernorm_forward_bf16(res16.data(), out16.data(), mean16.data(),
                                            rstd16.data(), da.data(), db_in.data(), dw.data(),
                                            db.data(), N, C, EPS, vec4);
        else
            layernorm_forward_bf16(out16.data(), mean16.data(), rstd16.data(), da.data(),
                                   dw.data(), db.data(), N, C, EPS, vec4);
    });
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += out16[i].bits != __float2bfloat16_rn(out32[i]).bits;
    const auto same = [](Buffer<float>& x, Buffer<float>& y) {
        return memcmp(x.data(), y.data(), sizeof(float) * x.n) == 0;
    };
    const bool stats = same(mean16, mean32) && same(rstd16, rstd32) && (!fused || same(res16, res32));
    const bool ok = differ == 0 && stats && out16.intact() && res16.intact() && mean16.intact() &&
                    rstd16.intact();
    char errs[160];
    snprintf(errs, sizeof errs, "out values not bf16(fp32 out): %zu, residual/mean/rstd same: %s",
             differ, stats ? "yes" : "NO");
    return report(ok, fused ? "residual_forward_bf16" : "forward_bf16", N, C,
                  vec4 ? " vec4" : "", order, errs);
}

// layernorm_backward and the column sums of its partials: dinp, dw and db start
// non-zero (it adds).
static bool check_backward(int N, int C, emu::Order order) {
    std::mt19937 gen(N * 1000 + C + 7);
    const std::vector<float> x = uniform((size_t)N * C, gen), dy = uniform((size_t)N * C, gen),
                             w = uniform(C, gen), dx0 = uniform((size_t)N * C, gen),
                             dw0 = uniform(C, gen), db0 = uniform(C, gen);
    std::vector<float> mean(N), rstd(N);
    std::vector<double> dx(dx0.begin(), dx0.end()), dw(dw0.begin(), dw0.end()),
        db(db0.begin(), db0.end());
    for (int r = 0; r < N; r++) {
        const float* xr = &x[(size_t)r * C];
        double s = 0, v = 0;
        for (int c = 0; c < C; c++) s += xr[c];
        mean[r] = s / C;
        for (int c = 0; c < C; c++) v += pow(xr[c] - mean[r], 2);
        rstd[r] = 1 / sqrt(v / C + EPS);
        double m1 = 0, m2 = 0;
        for (int c = 0; c < C; c++) {
            const double xhat = (xr[c] - mean[r]) * (double)rstd[r],
                         dxhat = dy[(size_t)r * C + c] * (double)w[c];
            m1 += dxhat / C;
            m2 += dxhat * xhat / C;
            dw[c] += dy[(size_t)r * C + c] * xhat;
            db[c] += dy[(size_t)r * C + c];
        }
        for (int c = 0; c < C; c++) {
            const double xhat = (xr[c] - mean[r]) * (double)rstd[r];
            const double dxhat = dy[(size_t)r * C + c] * (double)w[c];
            dx[(size_t)r * C + c] += rstd[r] * (dxhat - m1 - xhat * m2);
        }
    }

    // The host's launches (layernorm.rs): a block per 32 rows writes dinp and the
    // block's dw, db partials; column sums add those into dw and db (matmul.cu).
    const int blocks = (N + 31) / 32, splits = std::clamp((blocks + 511) / 512, 1, 64);
    Buffer<float> ddx = device(dx0), ddw = device(dw0), ddb = device(db0);
    Buffer<float> ddy = device(dy), dx_in = device(x), dwt = device(w), dmean = device(mean),
                  drstd = device(rstd);
    const bool same = same_bits_in_every_order([&](emu::Order o) {
        ddx = device(dx0);
        ddw = device(dw0);
        ddb = device(db0);
        Buffer<float> part((size_t)blocks * 2 * C, NAN), sums((size_t)splits * 2 * C, NAN);
        launch(dim3{(unsigned)blocks, 1, 1}, 256, 0, o, [&] {
            layernorm_backward(ddx.data(), part.data(), ddy.data(), dx_in.data(), dwt.data(),
                               dmean.data(), drstd.data(), N, C);
        });
        launch(dim3((2 * C + 31) / 32, splits), dim3(32, 8), 0, o,
               [&] { column_partials(sums.data(), nullptr, part.data(), blocks, 2 * C); });
        launch(dim3(1), 256, 0, o,
               [&] { column_partials_add(ddw.data(), sums.data(), splits, C, 2 * C); });
        launch(dim3(1), 256, 0, o,
               [&] { column_partials_add(ddb.data(), sums.data() + C, splits, C, 2 * C); });
        std::vector<float> bits(ddx.mem);
        bits.insert(bits.end(), ddw.mem.begin(), ddw.mem.end());
        bits.insert(bits.end(), ddb.mem.begin(), ddb.mem.end());
        return bits;
    });
    const double e_dx = rel_err(dx, ddx), e_dw = rel_err(dw, ddw), e_db = rel_err(db, ddb);
    const bool ok = same && e_dx < TOL && e_dw < TOL && e_db < TOL && ddx.intact() &&
                    ddw.intact() && ddb.intact();
    char errs[160], extra[48];
    snprintf(errs, sizeof errs, "dinp %.1e dw %.1e db %.1e, same bits in every order: %s", e_dx,
             e_dw, e_db, same ? "yes" : "NO");
    snprintf(extra, sizeof extra, " blocks=%d", blocks);
    return report(ok, "backward", N, C, extra, order, errs);
}

int main() {
    int failures = 0;
    // N = 13: the second block's last 3 warps have no row. C = 5 and 100: a tail in the
    // lanes' strides; 128: every lane busy.
    for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED}) {
        for (bool fused : {false, true}) {
            failures += !check_forward(fused, 13, 5, 0, order);
            failures += !check_forward(fused, 13, 100, 1, order);
            failures += !check_forward(fused, 13, 128, 1, order);
            failures += !check_forward_bf16(fused, 13, 5, 0, order);
            failures += !check_forward_bf16(fused, 13, 100, 1, order);
            failures += !check_forward_bf16(fused, 13, 128, 1, order);
        }
        // 13 rows: one block, most warps with one row; 70: three blocks, the last short.
        failures += !check_backward(13, 100, order);
        failures += !check_backward(70, 37, order);
    }
    return failures != 0;
}
