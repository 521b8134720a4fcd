// cuda/head.cu on the CPU emulator (emu.h) against an f64 reference of docs/DESIGN.md section 3
// (src/head/mod.rs), launched as src/backend/cuda/head.rs launches it:
//   - head_lse alone: the logits (z in place) and the losses, softmax and harmonic (n = 8
//     and 2C), float4 and scalar, and harmonic rows whose hidden state is NaN;
//   - the training pass over chunks of rows: head_lse, head_grad, and the harmonic head's
//     partial sums added by column_partials_add (cuda/matmul.cu) into rowsum(G) and
//     colsum(G) (over chunks, in order): the losses, G in each precision's layout (fp32
//     in place of D; bf16 alone with D left as it was, its bits the fp32 G's rounded),
//     rowsum and colsum, and the same bits of all of them in every block and thread order;
//   - row_sq_norms from fp32 and from bf16 copies; add_scaled_rows.
// V = 257 (scalar, a tail after a 32-column tile), 1000 (float4 and scalar, a part tile)
// and GPT-2's 50257 and 50304. Prints one line per check; exits non-zero if any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/head.cu"
#include "../../cuda/matmul.cu"

static const double TOL = 1e-4;
static const int C = 64;
static const float EPS = 1e-6f;  // the configs' harmonic_eps

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

// N >= 4 rows: h on its target's centre (s_y = 0: clamped, the harmonic head must stay
// finite), h on another class's centre, and random rows. Targets 0, V - 1 (the tail),
// V / 2, 7, then random.
static Rows make_rows(int V, int N) {
    std::mt19937 gen(V + N);
    Rows r{N, V, {}, {}, {}, {}, {}, {}};
    r.w.resize((size_t)V * C);
    for (float& x : r.w) x = dyadic(gen);
    r.y = {0, (unsigned)V - 1, (unsigned)V / 2, 7};
    while ((int)r.y.size() < N) r.y.push_back(gen() % V);
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
    std::vector<double> z, loss, g, rowsum, rowabs, colsum, colabs;
};

// docs/DESIGN.md section 3, in f64 from the kernel's inputs.
static Want reference(const Rows& r, bool harmonic, double half_n, double scale) {
    Want w;
    w.colsum.assign(r.V, 0.0);
    w.colabs.assign(r.V, 0.0);
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
            w.colsum[i] += g;
            w.colabs[i] += fabs(g);
        }
        w.z.insert(w.z.end(), z.begin(), z.end());
        w.rowsum.push_back(rs);
        w.rowabs.push_back(ra);
    }
    return w;
}

// The largest |got - want| / scale over a sum that nearly cancels (rowsum, colsum),
// measured against the sum of the terms' sizes.
template <class G>
static double cancelling_err(const std::vector<double>& want, const std::vector<double>& abs,
                             const G& got) {
    double e = 0;
    for (size_t i = 0; i < want.size(); i++)
        e = std::max(e, isfinite(got[i]) ? fabs(got[i] - want[i]) / std::max(abs[i], 1e-30)
                                         : INFINITY);
    return e;
}

static bool report(bool ok, const char* what, const char* order, const char* errs) {
    printf("%s head %s %s: %s\n", ok ? "ok  " : "FAIL", what, order, errs);
    fflush(stdout);
    return ok;
}

template <class T>
static Buffer<T> device(const std::vector<T>& v) {
    Buffer<T> b(v.size(), T{});
    std::copy(v.begin(), v.end(), b.data());
    return b;
}

// One head: its kind, the gradient scale (1/N for softmax, the mean; 1 for harmonic,
// whose G is small already), and how head.rs launches it.
struct Head {
    bool harmonic;
    float n_exp;
    bool vec4;
    float half_n() const { return harmonic ? n_exp / 2 : 0.0f; }
    float scale(const Rows& r) const { return harmonic ? 1.0f : 1.0f / r.N; }
    void name(char* out, size_t n, const Rows& r) const {
        const int len = harmonic ? snprintf(out, n, "harmonic n=%g", n_exp)
                                 : snprintf(out, n, "softmax");
        snprintf(out + len, n - len, " V=%d%s", r.V, vec4 ? " vec4" : "");
    }
};

// head_lse alone (head.rs: a block of 256 threads per row): z in place with `logits`,
// else the losses (no lse: head_loss without gradients).
static bool check_lse(const Rows& r, const Head& k, bool logits, emu::Order order) {
    const Want w = reference(r, k.harmonic, k.half_n(), 1.0);
    Buffer<float> rows = device(r.dots), losses(r.N, NAN), h_sq = device(r.h_sq),
                  w_sq = device(r.w_sq);
    Buffer<unsigned> targets = device(r.y);
    launch(dim3(r.N), 256, 0, order, [&] {
        head_lse(rows.data(), nullptr, logits ? nullptr : losses.data(),
                 k.harmonic ? h_sq.data() : nullptr, k.harmonic ? w_sq.data() : nullptr,
                 logits ? nullptr : targets.data(), r.V, k.harmonic, k.half_n(), EPS, logits,
                 k.vec4);
    });
    bool ok = rows.intact() && losses.intact();
    char errs[64], what[96], name[48];
    if (logits) {
        const double e = rel_err(w.z, rows, 0.0);
        for (int n = 0; n < r.N; n++) ok &= isnan(losses[n]);  // untouched
        ok &= e < TOL;
        snprintf(errs, sizeof errs, "z %.1e", e);
    } else {
        const double e = rel_err(w.loss, losses, 0.0);
        ok &= e < TOL && memcmp(rows.data(), r.dots.data(), 4 * r.dots.size()) == 0;
        snprintf(errs, sizeof errs, "loss %.1e", e);
    }
    k.name(name, sizeof name, r);
    snprintf(what, sizeof what, "head_lse %s %s", logits ? "logits" : "loss", name);
    return report(ok, what, emu::order_name(order), errs);
}

// What the training pass leaves: D or fp32 G, G's bf16 copy, the losses, rowsum, colsum.
struct Pass {
    Buffer<float> rows, losses, rowsum, colsum;
    Buffer<__nv_bfloat16> g16;
    bool intact() const {
        return rows.intact() && losses.intact() && rowsum.intact() && colsum.intact() &&
               g16.intact();
    }
    // Every byte, for the same-bits check.
    std::vector<uint32_t> bits() const {
        std::vector<uint32_t> b;
        for (const Buffer<float>* x : {&rows, &losses, &rowsum, &colsum})
            for (size_t i = 0; i < x->n; i++) {
                uint32_t u;
                memcpy(&u, &(*x)[i], 4);
                b.push_back(u);
            }
        for (size_t i = 0; i < g16.n; i++) b.push_back(g16[i].bits);
        return b;
    }
};

// head.rs's training pass over chunks of `chunk` rows: per chunk head_lse (into a chunk's
// lse), head_grad on 32 x 8 blocks over (row tiles, column tiles), and for the harmonic
// head rowsum = 0 then column_partials_add of the row partials (ld = the chunk's rows)
// and of the column partials into colsum (kept over the chunks), on small grids.
static Pass run_pass(const Rows& r, const Head& k, bool bf16, int chunk, emu::Order order) {
    const int V = r.V, width = k.vec4 ? 4 : 1, ctiles = (V + 32 * width - 1) / (32 * width);
    Pass p{device(r.dots), Buffer<float>(r.N, NAN), Buffer<float>(r.N, NAN),
           Buffer<float>(V, 0.0f), Buffer<__nv_bfloat16>((size_t)r.N * V, {0x7fc2})};
    Buffer<float> h_sq = device(r.h_sq), w_sq = device(r.w_sq);
    Buffer<unsigned> targets = device(r.y);
    for (int r0 = 0; r0 < r.N; r0 += chunk) {
        const int R = std::min(chunk, r.N - r0), rtiles = (R + GRAD_TILE_ROWS - 1) / GRAD_TILE_ROWS;
        Buffer<float> lse(R, NAN), rowpart((size_t)ctiles * R, NAN), colpart((size_t)rtiles * V, NAN);
        float* rows = p.rows.data() + (size_t)r0 * V;
        const float* hs = k.harmonic ? h_sq.data() + r0 : nullptr;
        launch(dim3(R), 256, 0, order, [&] {
            head_lse(rows, lse.data(), p.losses.data() + r0, hs, k.harmonic ? w_sq.data() : nullptr,
                     targets.data() + r0, V, k.harmonic, k.half_n(), EPS, 0, k.vec4);
        });
        launch(dim3(rtiles, ctiles), dim3(32, 8), 0, order, [&] {
            head_grad(rows, bf16 ? nullptr : rows, bf16 ? p.g16.data() + (size_t)r0 * V : nullptr,
                      k.harmonic ? rowpart.data() : nullptr, k.harmonic ? colpart.data() : nullptr,
                      lse.data(), hs, k.harmonic ? w_sq.data() : nullptr, targets.data() + r0, R,
                      V, k.harmonic, k.half_n(), EPS, k.scale(r), k.vec4);
        });
        if (!k.harmonic) continue;
        std::fill_n(p.rowsum.data() + r0, R, 0.0f);
        launch(dim3(1 + R / 256), 256, 0, order, [&] {
            column_partials_add(p.rowsum.data() + r0, rowpart.data(), ctiles, R, R);
        });
        launch(dim3(2), 256, 0, order,
               [&] { column_partials_add(p.colsum.data(), colpart.data(), rtiles, V, V); });
        if (!rowpart.intact() || !colpart.intact()) p.losses[0] = -1;  // caught as wrong
    }
    return p;
}

// The training pass in fp32 and in bf16 against the reference, and (with `orders`)
// giving the same bits in every block and thread order.
static bool check_pass(const Rows& r, const Head& k, int chunk, bool orders) {
    const Want w = reference(r, k.harmonic, k.half_n(), k.scale(r));
    bool ok = true;
    char errs[200], what[96], name[48];
    int len = 0;
    Pass f = run_pass(r, k, false, chunk, emu::SHUFFLED);
    Pass b = run_pass(r, k, true, chunk, emu::SHUFFLED);
    ok &= f.intact() && b.intact();
    const double eg = rel_err(w.g, f.rows, 0.0), el = rel_err(w.loss, f.losses, 0.0);
    ok &= eg < TOL && el < TOL;
    len += snprintf(errs + len, sizeof errs - len, "G %.1e loss %.1e", eg, el);
    if (k.harmonic) {
        const double er = cancelling_err(w.rowsum, w.rowabs, f.rowsum),
                     ec = cancelling_err(w.colsum, w.colabs, f.colsum);
        ok &= er < TOL && ec < TOL;
        len += snprintf(errs + len, sizeof errs - len, " rowsum %.1e colsum %.1e", er, ec);
    }
    // bf16 mode: G's bf16 copy alone, the fp32 G rounded; D, losses and the sums as fp32's.
    long long g16_wrong = 0;
    for (size_t i = 0; i < b.g16.n; i++)
        g16_wrong += b.g16[i].bits != __float2bfloat16_rn(f.rows[i]).bits;
    const bool d_kept = memcmp(b.rows.data(), r.dots.data(), 4 * r.dots.size()) == 0;
    const bool sums_same = memcmp(b.losses.data(), f.losses.data(), 4 * r.N) == 0 &&
                           memcmp(b.rowsum.data(), f.rowsum.data(), 4 * r.N) == 0 &&
                           memcmp(b.colsum.data(), f.colsum.data(), 4 * r.V) == 0;
    ok &= g16_wrong == 0 && d_kept && sums_same;
    len += snprintf(errs + len, sizeof errs - len, ", bf16: G wrong %lld%s%s", g16_wrong,
                    d_kept ? "" : ", D overwritten", sums_same ? "" : ", sums differ");
    if (orders) {
        // fp32's: bf16's G is fp32's rounded and its sums are fp32's (checked above).
        const bool same = same_bits_in_every_order(
            [&](emu::Order o) { return run_pass(r, k, false, chunk, o).bits(); });
        ok &= same;
        snprintf(errs + len, sizeof errs - len, ", %s bits in every order",
                 same ? "same" : "DIFFERENT");
    }
    k.name(name, sizeof name, r);
    snprintf(what, sizeof what, "pass %s N=%d chunk=%d", name, r.N, chunk);
    return report(ok, what, orders ? "all orders" : "shuffled", errs);
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
    const double e = rel_err(want, out, 0.0);
    char what[64], errs[32];
    snprintf(what, sizeof what, "row_sq_norms rows=%d C=%d%s", rows, c, bf16 ? " bf16" : "");
    snprintf(errs, sizeof errs, "%.1e", e);
    return report(e < 1e-6 && out.intact(), what, emu::order_name(order), errs);
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
    const double e = rel_err(want, out, 0.0);
    char what[80], errs[32];
    snprintf(what, sizeof what, "add_scaled_rows rows=%d C=%d%s blocks=%d", rows, c,
             bf16 ? " bf16" : "", blocks);
    snprintf(errs, sizeof errs, "%.1e", e);
    return report(e < 1e-6 && out.intact(), what, emu::order_name(order), errs);
}

// Rows whose hidden state is NaN (|h|^2 and the dots NaN, as a NaN weight makes them):
// the harmonic loss must be NaN, not ln V (a clamp to eps would make every s equal).
static bool check_nan_rows(const Rows& r, emu::Order order) {
    Buffer<float> rows((size_t)r.N * r.V, NAN), losses(r.N, 0.0f), h_sq(r.N, NAN),
        w_sq = device(r.w_sq);
    Buffer<unsigned> targets = device(r.y);
    launch(dim3(r.N), 256, 0, order, [&] {
        head_lse(rows.data(), nullptr, losses.data(), h_sq.data(), w_sq.data(), targets.data(),
                 r.V, 1, 4.0f, EPS, 0, r.V % 4 == 0);
    });
    int finite = 0;
    for (int n = 0; n < r.N; n++) finite += !isnan(losses[n]);
    char errs[64];
    snprintf(errs, sizeof errs, "%d of %d losses not NaN", finite, r.N);
    return report(finite == 0, "head_lse harmonic NaN rows", emu::order_name(order), errs);
}

int main() {
    int failures = 0;
    // 45 rows: in chunks of 36, two row tiles (the second part-filled), then one of 9.
    const Rows small = make_rows(257, 45), mid = make_rows(1000, 45);
    // n = sqrt(C) (the paper) and 2C (its released code: very peaked).
    const float exps[] = {8, 2 * C};
    for (const Rows* r : {&small, &mid})
        for (bool vec4 : {false, true}) {
            if (vec4 && r->V % 4) continue;
            for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED})
                for (bool logits : {true, false}) {
                    failures += !check_lse(*r, {false, 0, vec4}, logits, order);
                    for (float n : exps) failures += !check_lse(*r, {true, n, vec4}, logits, order);
                }
            // The same bits in every order where there are sums across threads and
            // blocks: the harmonic head's (softmax's G is one value per element).
            failures += !check_pass(*r, {false, 0, vec4}, 36, false);
            for (float n : exps) failures += !check_pass(*r, {true, n, vec4}, 36, n == 8);
        }
    // One chunk of all rows, and chunks of one row.
    failures += !check_pass(mid, {true, 8, true}, 45, false);
    failures += !check_pass(small, {true, 8, false}, 1, false);
    for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED}) {
        failures += !check_nan_rows(small, order);
        failures += !check_nan_rows(mid, order);
        failures += !check_sq_norms(13, 100, false, order);
        failures += !check_sq_norms(13, 100, true, order);
        failures += !check_add_scaled(13, 100, false, 6, order);
        failures += !check_add_scaled(13, 100, true, 2, order);
    }
    // GPT-2's vocabulary, unpadded and padded to a multiple of 64: many strides per
    // thread, many column tiles; one order and one head each keep it quick.
    for (int V : {50257, 50304}) {
        const Rows large = make_rows(V, 4);
        const bool vec4 = V % 4 == 0;
        failures += !check_lse(large, {true, 8, vec4}, false, emu::SHUFFLED);
        failures += !check_pass(large, {!vec4, 8, vec4}, 4, false);
    }
    return failures != 0;
}
