// The small kernel families on the CPU emulator (emu.h) against an f64 reference:
// encoder.cu (forward, backward into wte by token buckets with repeated tokens, backward
// into wpe),
// gelu.cu (gelu_forward_bf16 bit for bit bf16 of gelu_forward's output), residual.cu,
// convert.cu (to_bf16 must round to nearest even, checked bit for
// bit against a rounding worked out from the values) and matmul.cu's non-GEMM kernels
// (bias_broadcast, the column sums on 32 x 8 blocks); the backward sums must give the
// same bits in every block and thread order (deterministic gradients). Launched as
// src/backend/cuda/ launches them (launch_elems: ceil(n / 256) blocks of 256) and
// on 2 blocks, so the grid-stride loops run. Prints one line per check; exits non-zero
// if any fails.
#include "emu.h"
#include "../../cuda/common.cuh"
#include "../../cuda/convert.cu"
#include "../../cuda/encoder.cu"
#include "../../cuda/gelu.cu"
#include "../../cuda/matmul.cu"
#include "../../cuda/residual.cu"

static std::mt19937 gen(1);

static Buffer<float> uniform(unsigned n) {
    std::uniform_real_distribution<float> u(-3, 3);
    Buffer<float> b(n, 0);
    for (unsigned i = 0; i < n; i++) b[i] = u(gen);
    return b;
}

static bool report(bool ok, const char* what, int blocks, emu::Order order, double e) {
    printf("%s %s blocks=%d %s: %.1e\n", ok ? "ok  " : "FAIL", what, blocks,
           emu::order_name(order), e);
    fflush(stdout);
    return ok;
}

static bool report_same(bool same, const char* what) {
    printf("%s %s: %s bits in every block order x thread order\n", same ? "ok  " : "FAIL", what,
           same ? "the same" : "DIFFERENT");
    fflush(stdout);
    return same;
}

template <class G>
static bool compare(const char* what, int blocks, emu::Order order,
                    const std::vector<double>& want, const Buffer<G>& got) {
    const double e = rel_err(want, got, 0.0);
    return report(e < 1e-6 && got.intact(), what, blocks, order, e);
}

// The host's bucket table (src/backend/cuda/encoder.rs `buckets`): positions sorted by
// (token, position), then (token, start, count) per distinct token.
static std::vector<unsigned> buckets(const Buffer<unsigned>& tok, int N) {
    std::vector<unsigned> t(N);
    for (int r = 0; r < N; r++) t[r] = r;
    std::stable_sort(t.begin(), t.end(), [&](unsigned a, unsigned b) { return tok[a] < tok[b]; });
    for (int s = 0, e; s < N; s = e) {
        for (e = s; e < N && tok[t[e]] == tok[t[s]];) e++;
        t.insert(t.end(), {tok[t[s]], (unsigned)s, (unsigned)(e - s)});
    }
    return t;
}

// B = 3, T = 5, V = 4: every token repeats, several times per warp's share of a bucket
// (buckets up to 15 positions over 8 warps). C = 37 leaves most of a 256-channel tile
// idle, C = 300 takes two tiles. The backward must add up the same bits whatever order
// blocks and threads run in, and its launch geometry (the wpe grid) must not matter.
static bool check_encoder(int C, int blocks, emu::Order order) {
    const int B = 3, T = 5, V = 4, N = B * T;
    Buffer<float> wte = uniform(V * C), wpe = uniform(T * C), dout = uniform(N * C),
                  dwte0 = uniform(V * C), dwpe0 = uniform(T * C), out((size_t)N * C, NAN);
    Buffer<unsigned> tok(N, 0);
    for (int r = 0; r < N; r++) tok[r] = gen() % V;
    std::vector<double> want_out((size_t)N * C), want_dwte(dwte0.data(), dwte0.data() + V * C),
        want_dwpe(dwpe0.data(), dwpe0.data() + T * C);
    for (int r = 0; r < N; r++)
        for (int c = 0; c < C; c++) {
            want_out[(size_t)r * C + c] = (double)wte[tok[r] * C + c] + wpe[(r % T) * C + c];
            want_dwte[tok[r] * C + c] += dout[(size_t)r * C + c];
            want_dwpe[(r % T) * C + c] += dout[(size_t)r * C + c];
        }
    launch(dim3(blocks), 256, 0, order,
           [&] { encoder_forward(out.data(), tok.data(), wte.data(), wpe.data(), N, T, C); });
    const std::vector<unsigned> table = buckets(tok, N);
    Buffer<unsigned> dtable(table.size(), 0);
    std::copy(table.begin(), table.end(), dtable.data());
    const unsigned distinct = (table.size() - N) / 3;
    Buffer<float> dwte = dwte0, dwpe = dwpe0;
    int wpe_blocks = 0;
    const bool same = same_bits_in_every_order([&](emu::Order o) {
        dwte = dwte0;
        dwpe = dwpe0;
        // The wpe grid varies between runs: 1 block that strides, up to one per 256.
        wpe_blocks = 1 + gen() % ((T * C + 255) / 256);
        launch(dim3(distinct, (C + 255) / 256), dim3(32, 8), 0, o, [&] {
            encoder_backward_wte(dwte.data(), dout.data(), dtable.data() + N, dtable.data(), C);
        });
        launch(dim3(wpe_blocks), 256, 0, o,
               [&] { encoder_backward_wpe(dwpe.data(), dout.data(), B, T, C); });
        std::vector<float> bits(dwte.mem);
        bits.insert(bits.end(), dwpe.mem.begin(), dwpe.mem.end());
        return bits;
    });
    char what[80];
    snprintf(what, sizeof what, "encoder backward_wte C=%d buckets=%u", C, distinct);
    return compare("encoder forward", blocks, order, want_out, out) &
           compare(what, distinct, order, want_dwte, dwte) &
           compare("encoder backward_wpe", wpe_blocks, order, want_dwpe, dwpe) &
           report_same(same, what);
}

static bool check_pointwise(long long n, int blocks, emu::Order order) {
    const double k = sqrt(2 / M_PI), a = 0.044715;
    Buffer<float> x = uniform(n), y = uniform(n), dout = uniform(n), out(n, NAN), dinp(n, NAN),
                  sum(n, NAN);
    std::vector<double> want_out(n), want_dinp(n), want_sum(n);
    for (long long i = 0; i < n; i++) {
        const double v = x[i], th = tanh(k * (v + a * v * v * v));
        want_out[i] = 0.5 * v * (1 + th);
        want_dinp[i] =
            dout[i] * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * k * (1 + 3 * a * v * v));
        want_sum[i] = (double)x[i] + y[i];
    }
    launch(dim3(blocks), 256, 0, order, [&] { gelu_forward(out.data(), x.data(), n); });
    launch(dim3(blocks), 256, 0, order,
           [&] { gelu_backward(dinp.data(), x.data(), dout.data(), n); });
    launch(dim3(blocks), 256, 0, order,
           [&] { residual_add(sum.data(), x.data(), y.data(), n); });
    Buffer<__nv_bfloat16> out16(n, {0});
    launch(dim3(blocks), 256, 0, order, [&] { gelu_forward_bf16(out16.data(), x.data(), n); });
    long long wrong = 0;
    for (long long i = 0; i < n; i++) wrong += out16[i].bits != __float2bfloat16_rn(out[i]).bits;
    const bool ok16 = wrong == 0 && out16.intact();
    printf("%s gelu forward_bf16 blocks=%d %s: values not bf16(fp32 out) %lld\n",
           ok16 ? "ok  " : "FAIL", blocks, emu::order_name(order), wrong);
    fflush(stdout);
    return ok16 & compare("gelu forward", blocks, order, want_out, out) &
           compare("gelu backward", blocks, order, want_dinp, dinp) &
           compare("residual add", blocks, order, want_sum, sum);
}

// The bf16 nearest to f (ties to the even one), from the two candidates' values: an
// independent check of the bit arithmetic that emu.h's __float2bfloat16_rn does for
// the GPU's intrinsic. Past the largest bf16 it rounds to infinity, as IEEE does.
static uint16_t nearest_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t down = u >> 16, up = down + 1;  // toward zero, away from zero
    auto value = [](uint16_t b) {  // |b| as if the exponent had no top (0x7f80 = 2^128)
        const int e = (b >> 7) & 0xff, m = b & 0x7f;
        return e ? ldexp(128 + m, e - 134) : ldexp(m, -133);
    };
    const double x = fabs((double)f), dd = x - value(down), du = value(up) - x;
    return dd < du || (dd == du && !(down & 1)) ? down : up;
}

static bool check_to_bf16(int blocks, emu::Order order) {
    std::vector<float> v;
    std::uniform_int_distribution<uint32_t> bits;
    for (int i = 0; i < 500; i++) {  // any finite float, including subnormals
        uint32_t u = bits(gen);
        if ((u & 0x7f800000) == 0x7f800000) u ^= 0x40000000;
        float f;
        memcpy(&f, &u, 4);
        v.push_back(f);
    }
    // Ties to even (down and up), just either side of a tie, and the largest floats
    // (round to infinity); then infinities and a NaN.
    for (uint32_t u : {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x3f807fffu, 0x3f808001u,
                       0x7f7fffffu, 0x7f7f7fffu, 0x00008000u, 0x00018000u, 0x7f800000u,
                       0xff800000u, 0x7fc00001u}) {
        float f;
        memcpy(&f, &u, 4);
        v.push_back(f);
    }
    const long long n = v.size();
    Buffer<float> x(n, 0);
    std::copy(v.begin(), v.end(), x.data());
    Buffer<__nv_bfloat16> out(n, {0x7fc2});
    launch(dim3(blocks), 256, 0, order, [&] { to_bf16(out.data(), x.data(), n); });
    long long wrong = 0;
    for (long long i = 0; i < n; i++) {
        if (isnan(x[i])) wrong += !isnan(__bfloat162float(out[i]));
        else if (isinf(x[i])) wrong += __bfloat162float(out[i]) != x[i];
        else wrong += out[i].bits != ((nearest_bf16(x[i]) & 0x7fff) | (v[i] < 0 ? 0x8000 : 0));
    }
    const bool ok = wrong == 0 && out.intact();
    printf("%s convert to_bf16 n=%lld blocks=%d %s: values wrong %lld\n", ok ? "ok  " : "FAIL",
           n, blocks, emu::order_name(order), wrong);
    fflush(stdout);
    return ok;
}

// bias_broadcast as launch_elems; the column sums as linear.rs launches them:
// column_partials on 32 x 8 blocks, a column of blocks per 32 columns, ceil(rows / 512)
// row ranges (1 to 64), then column_partials_add into `parts` destinations (LayerNorm's
// dw, db take the two halves of 2C columns) on a varying grid. The sums must come out
// the same bits in every block and thread order, with or without the bf16 copy of src
// column_partials writes for a layer's GEMMs, which must be bf16 of src exactly.
static bool check_matmul(int rows, int cols, int parts, int blocks, emu::Order order) {
    Buffer<float> bias = uniform(cols), out((size_t)rows * cols, NAN), src = uniform(rows * cols),
                  dst0 = uniform(cols);
    std::vector<double> want_out((size_t)rows * cols), want_dst(dst0.data(), dst0.data() + cols);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            want_out[(size_t)r * cols + j] = bias[j];
            want_dst[j] += src[(size_t)r * cols + j];
        }
    launch(dim3(blocks), 256, 0, order,
           [&] { bias_broadcast(out.data(), bias.data(), rows, cols); });
    const unsigned splits = std::clamp((rows + 511) / 512, 1, 64);
    const int w = cols / parts;
    Buffer<float> dst = dst0;
    Buffer<__nv_bfloat16> copy16((size_t)rows * cols, {0x7fc2});
    int run = 0;
    const bool same = same_bits_in_every_order([&](emu::Order o) {
        dst = dst0;
        Buffer<float> part((size_t)splits * cols, NAN);
        __nv_bfloat16* copy = run++ % 2 ? copy16.data() : nullptr;
        launch(dim3((cols + 31) / 32, splits), dim3(32, 8), 0, o,
               [&] { column_partials(part.data(), copy, src.data(), rows, cols); });
        for (int k = 0; k < parts; k++)
            launch(dim3(1 + gen() % ((w + 255) / 256)), 256, 0, o, [&] {
                column_partials_add(dst.data() + k * w, part.data() + k * w, splits, w, cols);
            });
        return dst.mem;
    });
    long long wrong = 0;
    for (long long i = 0; i < (long long)rows * cols; i++)
        wrong += copy16[i].bits != __float2bfloat16_rn(src[i]).bits;
    char what[80];
    snprintf(what, sizeof what, "matmul column sums rows=%d cols=%d splits=%u parts=%d", rows,
             cols, splits, parts);
    const bool copied = wrong == 0 && copy16.intact();
    printf("%s matmul column_partials bf16 copy rows=%d cols=%d: values wrong %lld\n",
           copied ? "ok  " : "FAIL", rows, cols, wrong);
    return compare("matmul bias_broadcast", blocks, order, want_out, out) &
           compare(what, (cols + 31) / 32 * splits, order, want_dst, dst) &
           report_same(same, what) & copied;
}

int main() {
    int failures = 0;
    for (emu::Order order : {emu::FORWARD, emu::REVERSE, emu::SHUFFLED})
        for (int two : {0, 1}) {
            // 555 = T * C of the encoder: 3 blocks of 256 (encoder.rs) or 2 that stride.
            failures += !check_encoder(two ? 300 : 37, two ? 2 : 3, order);
            failures += !check_pointwise(1003, two ? 2 : 4, order);
            failures += !check_to_bf16(two ? 1 : 2, order);
            // 5 rows: most of the 8 rows of threads have none; 1100: 3 row ranges.
            failures += !check_matmul(5, 70, 1, two ? 1 : 2, order);
            failures += !check_matmul(1100, 33, 1, two ? 2 : (1100 * 33 + 255) / 256, order);
            failures += !check_matmul(1100, 600, 2, 1, order);
        }
    return failures != 0;
}
