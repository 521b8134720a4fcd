// cuda/head.cu on the CPU emulator (emu.h) against an f64 reference of docs/DESIGN.md section 3
// (src/head/mod.rs): head_rows in its three modes (logits; loss; loss and G, with the
// bf16 copy of G and rowsum(G)) for the softmax and the harmonic head, at V = 257 (a
// tail after the 256 threads), 1000 and 50257 (GPT-2's vocabulary); row_sq_norms from
// fp32 and from bf16 copies; add_scaled_rows. Launched as src/backend/cuda/head.rs
// launches them. Prints one line per check; exits non-zero if any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/head.cu"

static const double TOL = 1e-4;
static const int C = 64;
static const float EPS = 1e-6f;  // the configs' harmonic_eps

// Relative by norm, with no floor: G's rows are small.
template <class G>
static double rel(const std::vector<double>& want, const G& got) {
    return rel_err(want, got, 0.0);
}

// k/64 for integer |k| <= 64: products and sums of C of them are exact in fp32, as are
// their bf16 copies, so the squared distances s the kernel sees are exactly the
// reference's (no cancellation error) and the check is of the kernel's logic alone.
static float dyadic(std::mt19937& gen) {
    return std::uniform_int_distribution<int>(-64, 64)(gen) / 64.0f;
}

struct Rows {
    int N, V;
    std::vector<float> h, w, dots, h_sq, w_sq;
    std::vector<unsigned> y;
};

// N = 4 rows: h on its target's centre (s_y = 0: clamped, the harmonic head must stay
// finite), h on another class's centre, and two random rows. Targets 0, V - 1 (the tail),
// and two in between.
static Rows make_rows(int V) {
    std::mt19937 gen(V);
    Rows r{4, V, {}, {}, {}, {}, {}, {}};
    r.w.resize((size_t)V * C);
    for (float& x : r.w) x = dyadic(gen);
    r.y = {0, (unsigned)V - 1, (unsigned)V / 2, 7};
    r.h.resize((size_t)r.N * C);
    for (float& x : r.h) x = dyadic(gen);
    std::copy_n(&r.w[0], C, &r.h[0]);                    // row 0 on w_0, its target
    std::copy_n(&r.w[(size_t)3 * C], C, &r.h[(size_t)C]);  // row 1 on w_3, target V - 1
    auto dot = [](const float* a, const float* b) {
        double s = 0;
        for (int c = 0; c < C; c++) s += (double)a[c] * b[c];
        return (float)s;  // exact (see dyadic)
    };
    for (int n = 0; n < r.N; n++) {
        r.h_sq.push_back(dot(&r.h[(size_t)n * C], &r.h[(size_t)n * C]));
        for (int i = 0; i < V; i++) r.dots.push_back(dot(&r.h[(size_t)n * C], &r.w[(size_t)i * C]));
    }
    for (int i = 0; i < V; i++) r.w_sq.push_back(dot(&r.w[(size_t)i * C], &r.w[(size_t)i * C]));
    return r;
}

struct Want {
    std::vector<double> z, loss, g, rowsum, rowabs;
};

// docs/DESIGN.md section 3, in f64 from the kernel's inputs.
static Want reference(const Rows& r, bool harmonic, double half_n, double scale) {
    Want w;
    for (int n = 0; n < r.N; n++) {
        std::vector<double> z(r.V), s(r.V);
        std::vector<bool> clamped(r.V);
        for (int i = 0; i < r.V; i++) {
            const double d = r.dots[(size_t)n * r.V + i];
            const double raw = (double)r.h_sq[n] + r.w_sq[i] - 2 * d;
            clamped[i] = raw <= EPS;
            s[i] = std::max(raw, (double)EPS);
            z[i] = harmonic ? -half_n * log(s[i]) : d;
        }
        const double mx = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double zi : z) sum += exp(zi - mx);
        const double lse = mx + log(sum);
        w.loss.push_back(lse - z[r.y[n]]);
        double rs = 0, ra = 0;
        for (int i = 0; i < r.V; i++) {
            const double q = exp(z[i] - lse) - (i == (int)r.y[n]);
            const double g = !harmonic ? q * scale : clamped[i] ? 0 : -half_n * q / s[i] * scale;
            w.g.push_back(g);
            rs += g;
            ra += fabs(g);
        }
        w.z.insert(w.z.end(), z.begin(), z.end());
        w.rowsum.push_back(rs);
        w.rowabs.push_back(ra);
    }
    return w;
}

static bool report(bool ok, const char* what, emu::Order order, const char* errs) {
    printf("%s head %s %s: %s\n", ok ? "ok  " : "FAIL", what, emu::order_name(order), errs);
    fflush(stdout);
    return ok;
}

template <class T>
static Buffer<T> device(const std::vector<T>& v) {
    Buffer<T> b(v.size(), T{});
    std::copy(v.begin(), v.end(), b.data());
    return b;
}

// One head_rows launch in `mode` over all rows (head.rs: a block of 256 threads per row).
// With bf16, G's bf16 copy must be the fp32 G rounded, bit for bit.
static bool check_rows(const Rows& r, bool harmonic, float n_exp, int mode, bool bf16,
                       emu::Order order) {
    // Scale 1/N (the mean) for softmax, 1 for harmonic, whose G is small already.
    const float half_n = harmonic ? n_exp / 2 : 0.0f, scale = harmonic ? 1.0f : 1.0f / r.N;
    const Want w = reference(r, harmonic, half_n, scale);
    Buffer<float> rows = device(r.dots), losses(r.N, NAN), rowsum(r.N, NAN),
                  h_sq = device(r.h_sq), w_sq = device(r.w_sq);
    Buffer<unsigned> targets = device(r.y);
    Buffer<__nv_bfloat16> g16((size_t)r.N * r.V, {0x7fc2});
    const bool want_rowsum = harmonic && mode == 2;  // as head.rs passes it
    launch(dim3(r.N), 256, 0, order, [&] {
        head_rows(rows.data(), bf16 ? g16.data() : nullptr, mode ? losses.data() : nullptr,
                  want_rowsum ? rowsum.data() : nullptr, harmonic ? h_sq.data() : nullptr,
                  harmonic ? w_sq.data() : nullptr, mode ? targets.data() : nullptr, r.V,
                  harmonic, half_n, EPS, mode, scale);
    });
    char errs[200];
    int len = 0;
    bool ok = rows.intact() && losses.intact() && rowsum.intact() && g16.intact();
    if (mode < 2) {
        const double e = rel(w.z, rows);
        ok &= e < TOL;
        len += snprintf(errs + len, sizeof errs - len, "z %.1e", e);
    } else {
        const double e = rel(w.g, rows);
        ok &= e < TOL;
        len += snprintf(errs + len, sizeof errs - len, "G %.1e", e);
    }
    if (mode >= 1) {
        const double e = rel(w.loss, losses);
        ok &= e < TOL;
        len += snprintf(errs + len, sizeof errs - len, " loss %.1e", e);
    } else {
        for (int n = 0; n < r.N; n++) ok &= isnan(losses[n]);  // untouched
    }
    if (want_rowsum) {
        // rowsum nearly cancels: its error is measured against sum |G| of the row.
        double e = 0;
        for (int n = 0; n < r.N; n++)
            e = std::max(e, isfinite(rowsum[n]) ? fabs(rowsum[n] - w.rowsum[n]) / w.rowabs[n]
                                                : INFINITY);
        ok &= e < TOL;
        len += snprintf(errs + len, sizeof errs - len, " rowsum %.1e", e);
    }
    long long g16_wrong = 0;
    for (size_t i = 0; i < g16.n; i++) {
        const uint16_t want16 = bf16 && mode == 2 ? __float2bfloat16_rn(rows[i]).bits : 0x7fc2;
        g16_wrong += g16[i].bits != want16;
    }
    ok &= g16_wrong == 0;
    if (bf16) snprintf(errs + len, sizeof errs - len, ", bf16 G wrong %lld", g16_wrong);
    char what[96], head[32];
    snprintf(head, sizeof head, harmonic ? "harmonic n=%g" : "softmax", n_exp);
    snprintf(what, sizeof what, "head_rows %s mode=%d V=%d%s", head, mode, r.V,
             bf16 ? " bf16" : "");
    return report(ok, what, order, errs);
}

// row_sq_norms over `rows` rows of random floats, from x or from its bf16 copy (whose
// values differ: the sums must be of the copy's), launched as mod.rs's launch_rows:
// blocks of 256 threads, a warp per row.
static bool check_sq_norms(int rows, int c, bool bf16, emu::Order order) {
    std::mt19937 gen(rows + c);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> x((size_t)rows * c);
    std::vector<__nv_bfloat16> x16;
    for (float& v : x) {
        v = u(gen);
        x16.push_back(__float2bfloat16_rn(v));
    }
    std::vector<double> want(rows, 0);
    for (size_t i = 0; i < x.size(); i++) {
        const double v = bf16 ? __bfloat162float(x16[i]) : x[i];
        want[i / c] += v * v;
    }
    Buffer<float> dx = device(x), out(rows, NAN);
    Buffer<__nv_bfloat16> dx16 = device(x16);
    launch(dim3((rows + 7) / 8), 256, 0, order, [&] {
        row_sq_norms(out.data(), dx.data(), bf16 ? dx16.data() : nullptr, rows, c);
    });
    const double e = rel(want, out);
    char what[64], errs[32];
    snprintf(what, sizeof what, "row_sq_norms rows=%d C=%d%s", rows, c, bf16 ? " bf16" : "");
    snprintf(errs, sizeof errs, "%.1e", e);
    return report(e < 1e-6 && out.intact(), what, order, errs);
}

// add_scaled_rows, as mod.rs's launch_elems (blocks of 256 threads), and on 2 blocks
// so the grid-stride loop runs.
static bool check_add_scaled(int rows, int c, bool bf16, int blocks, emu::Order order) {
    std::mt19937 gen(rows * c + bf16);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> out0((size_t)rows * c), coef(rows), x((size_t)rows * c);
    std::vector<__nv_bfloat16> x16;
    for (float& v : out0) v = u(gen);
    for (float& v : coef) v = u(gen);
    for (float& v : x) {
        v = u(gen);
        x16.push_back(__float2bfloat16_rn(v));
    }
    const float factor = 2.0f;
    std::vector<double> want(out0.size());
    for (size_t i = 0; i < want.size(); i++)
        want[i] = out0[i] + factor * (double)coef[i / c] *
                                (bf16 ? (double)__bfloat162float(x16[i]) : (double)x[i]);
    Buffer<float> out = device(out0), dcoef = device(coef), dx = device(x);
    Buffer<__nv_bfloat16> dx16 = device(x16);
    launch(dim3(blocks), 256, 0, order, [&] {
        add_scaled_rows(out.data(), dcoef.data(), dx.data(), bf16 ? dx16.data() : nullptr,
                        rows, c, factor);
    });
    const double e = rel(want, out);
    char what[80], errs[32];
    snprintf(what, sizeof what, "add_scaled_rows rows=%d C=%d%s blocks=%d", rows, c,
             bf16 ? " bf16" : "", blocks);
    snprintf(errs, sizeof errs, "%.1e", e);
    return report(e < 1e-6 && out.intact(), what, order, errs);
}

// Rows whose hidden state is NaN (|h|^2 and the dots NaN, as a NaN weight makes them):
// the harmonic loss must be NaN, not ln V (a clamp to eps would make every s equal).
static bool check_nan_rows(const Rows& r, emu::Order order) {
    Buffer<float> rows((size_t)r.N * r.V, NAN), losses(r.N, 0.0f), h_sq(r.N, NAN),
        w_sq = device(r.w_sq);
    Buffer<unsigned> targets = device(r.y);
    launch(dim3(r.N), 256, 0, order, [&] {
        head_rows(rows.data(), nullptr, losses.data(), nullptr, h_sq.data(), w_sq.data(),
                  targets.data(), r.V, 1, 4.0f, EPS, 1, 1.0f);
    });
    int finite = 0;
    for (int n = 0; n < r.N; n++) finite += !isnan(losses[n]);
    char errs[64];
    snprintf(errs, sizeof errs, "%d of %d losses not NaN", finite, r.N);
    return report(finite == 0, "head_rows harmonic NaN rows", order, errs);
}

int main() {
    int failures = 0;
    const Rows small = make_rows(257), mid = make_rows(1000), large = make_rows(50257);
    for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED}) {
        for (const Rows* r : {&small, &mid})
            for (int mode : {0, 1, 2}) {
                failures += !check_rows(*r, false, 0, mode, false, order);
                // n = sqrt(C) (the paper) and 2C (its released code: very peaked).
                failures += !check_rows(*r, true, 8, mode, false, order);
                failures += !check_rows(*r, true, 2 * C, mode, false, order);
            }
        failures += !check_rows(small, false, 0, 2, true, order);
        failures += !check_rows(small, true, 8, 2, true, order);
        failures += !check_nan_rows(small, order);
        failures += !check_sq_norms(13, 100, false, order);
        failures += !check_sq_norms(13, 100, true, order);
        failures += !check_add_scaled(13, 100, false, 6, order);
        failures += !check_add_scaled(13, 100, true, 2, order);
    }
    // GPT-2's vocabulary: many strides per thread; one order keeps it quick.
    for (int mode : {1, 2}) {
        failures += !check_rows(large, false, 0, mode, false, emu::SHUFFLED);
        failures += !check_rows(large, true, 8, mode, mode == 2, emu::SHUFFLED);
    }
    return failures != 0;
}
