// The reference cuBLASLt of the emulated device (device/cublaslt.cpp, compiled in here)
// through its C API, as a client calls it, against an f64 reference:
//   - products D = epilogue(alpha op(A) op(B) + beta C [+ bias]) for all four transposes,
//     fp32 and bf16 operands with fp32 and bf16 outputs, every epilogue emulated (DEFAULT,
//     BIAS, GELU, GELU_BIAS, GELU_AUX, GELU_AUX_BIAS, DGELU), odd and even shapes, padded
//     leading dimensions. "exact" inputs are multiples of 1/8 with sums exact in fp32: D
//     must equal the reference (bf16: within its rounding), aux must hold pre exactly.
//     "random" inputs: the error must stay within the fp32 accumulation bound
//     (k + 4) 2^-24 (|alpha| sum|a b| + |beta c| + |bias|), which TF32 inputs would exceed;
//   - bf16 stores round to nearest even (two ties, one rounding up, one down);
//   - the refusals the documentation names, each with its status, D left as it was;
//   - hgpt's own calls, made as src/backend/cuda/gemm.rs makes them (row-major products as
//     column-major ones, alignments declared from the pointers, the epilogue attributes it
//     sets): which the documentation accepts (their values checked) and which it refuses.
// Prints one line per check; exits non-zero if any fails.
#include "device/cublaslt.cpp"

#include <algorithm>
#include <random>
#include <string>

static std::mt19937 gen(7);
static cublasLtHandle_t handle;
static const double U = 1.0 / (1 << 24);  // fp32 unit roundoff

// Device memory of the emulated device: 256-byte aligned storage, `offset` bytes in.
struct Buf {
    std::vector<unsigned char> raw;
    size_t offset;
    explicit Buf(size_t bytes, size_t offset = 0) : raw(bytes + 512), offset(offset) {}
    Buf(const Buf&) = delete;
    char* ptr() { return (char*)(((uintptr_t)raw.data() + 255) & ~(uintptr_t)255) + offset; }
};

// A column-major matrix of `type` and the values it holds, as doubles.
struct Mat {
    int32_t type;
    uint64_t rows, cols;
    int64_t ld;
    Buf buf;
    std::vector<double> v;
    Mat(int32_t type, uint64_t rows, uint64_t cols, int64_t ld, size_t offset = 0)
        : type(type), rows(rows), cols(cols), ld(ld),
          buf(elem_bytes(type) * (ld ? ld : 1) * (cols ? cols : 1), offset),
          v((ld ? ld : 1) * (cols ? cols : 1), 0.0) {}
    // Stores x, which the type must represent exactly.
    void set(size_t i, float x) {
        v[i] = x;
        if (type == CUDA_R_32F) {
            ((float*)buf.ptr())[i] = x;
        } else {
            uint32_t u;
            memcpy(&u, &x, 4);
            ((uint16_t*)buf.ptr())[i] = (uint16_t)(u >> 16);
        }
    }
    double get(size_t i) {
        return type == CUDA_R_32F ? ((float*)buf.ptr())[i]
                                  : bf16_to_float(((uint16_t*)buf.ptr())[i]);
    }
    // Fills every element: exact: k/8 for integer |k| <= 8; random: uniform in
    // [-scale, scale], cut to the type's precision (bf16: the top 16 bits).
    void fill(bool exact, float scale = 1.0f) {
        for (size_t i = 0; i < v.size(); i++) {
            float x = exact ? std::uniform_int_distribution<int>(-8, 8)(gen) / 8.0f
                            : std::uniform_real_distribution<float>(-scale, scale)(gen);
            if (type == CUDA_R_16BF) {
                uint32_t u;
                memcpy(&u, &x, 4);
                u &= 0xffff0000u;
                memcpy(&x, &u, 4);
            }
            set(i, x);
        }
    }
};

static const char* type_tag(int32_t t) { return t == CUDA_R_32F ? "f32" : "bf16"; }

static const char* epi_name(uint32_t e) {
    switch (e) {
        case EPI_DEFAULT: return "DEFAULT";
        case EPI_BIAS: return "BIAS";
        case EPI_GELU: return "GELU";
        case EPI_GELU_BIAS: return "GELU_BIAS";
        case EPI_GELU_AUX: return "GELU_AUX";
        case EPI_GELU_AUX_BIAS: return "GELU_AUX_BIAS";
        case EPI_DGELU: return "DGELU";
    }
    return "?";
}

static double gelu_ref(double x) {
    return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

static double gelu_grad_ref(double x) {
    const double c = 0.7978845608028654, t = tanh(c * (x + 0.044715 * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
}

// err / bound, where a bound of 0 admits no error.
static double ratio(double err, double bound) {
    return bound > 0 ? err / bound : (err > 0 ? INFINITY : 0);
}

static uint32_t declared_alignment(const void* p) { return (uint32_t)alignment_of(p); }

template <typename T>
static void set_desc(cublasLtMatmulDesc_t d, int32_t attr, T value) {
    if (cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof value)) {
        printf("FAIL setup: matmul descriptor attribute %d refused: %s\n", attr,
               last_reason_text);
        exit(1);
    }
}

template <typename T>
static void set_pref(cublasLtMatmulPreference_t p, int32_t attr, T value) {
    if (cublasLtMatmulPreferenceSetAttribute(p, attr, &value, sizeof value)) {
        printf("FAIL setup: preference attribute %d refused: %s\n", attr, last_reason_text);
        exit(1);
    }
}

// One call: its matrices, its descriptor and preference built from the knobs, the
// heuristic, then cublasLtMatmul, recording both statuses and whether D changed.
struct Call {
    // Problem.
    int32_t ab = CUDA_R_32F, cd = CUDA_R_32F, compute = CUBLAS_COMPUTE_32F;
    uint64_t m = 16, n = 8, k = 24, k_of_b = 0;  // k_of_b: B's k where it is not k
    bool ta = false, tb = false;
    int64_t lda = -1;  // -1: rows of A plus 3
    float alpha = 1, beta = 0;
    uint32_t epi = EPI_DEFAULT;
    int32_t bias_type = -2, aux_type = -2;  // -2: attribute not set
    int64_t aux_ld = -1;                    // -1: m rounded up to 8, plus 8
    bool null_bias = false, null_aux = false;
    // Memory and alignment.
    size_t a_offset = 0, bias_offset = 0, bias_offset_at_matmul = 0;
    int64_t declared_a = -1;  // -1: A's actual alignment
    bool null_workspace = false;
    size_t workspace_offset = 0;
    int32_t c_type = -1;       // -1: in place, C = D; else an out-of-place C of this type
    int64_t c_ld = -1;         // in place: Cdesc's ld (-1: D's)
    // The algorithm: found by the heuristic, NULL (implicit), or found for the BIAS epilogue.
    enum { FOUND, NONE, FOR_BIAS } algo = FOUND;
    int requested = 1;
    bool null_handle = false;

    // Results.
    cublasStatus_t heuristic = CUBLAS_STATUS_SUCCESS, matmul = CUBLAS_STATUS_SUCCESS;
    int returned = 0;
    bool d_unchanged = true;
    double worst = 0;  // largest error / bound over D (and aux)
    std::string what;

    void run(bool exact);
};

void Call::run(bool exact) {
    const uint64_t kb = k_of_b ? k_of_b : k;
    const uint64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : kb, bc = tb ? kb : n;
    const int64_t ld_a = lda >= 0 ? lda : (int64_t)ar + 3;
    Mat A(ab, ar, ac, std::max<int64_t>(ld_a, (int64_t)ar), a_offset);
    Mat B(ab, br, bc, br + 2);
    Mat D(cd, m, n, m + 1);
    Mat C(c_type < 0 ? cd : c_type, m, n, m + 1);
    A.fill(exact);
    B.fill(exact);
    D.fill(exact);
    C.fill(exact);
    const int64_t xld = aux_ld >= 0 ? aux_ld : (int64_t)((m + 7) / 8 * 8 + 8);
    Mat bias(cd == CUDA_R_32F || bias_type == CUDA_R_32F ? CUDA_R_32F : cd, m, 1, m,
             bias_offset);
    Mat aux(cd == CUDA_R_32F || aux_type == CUDA_R_32F ? CUDA_R_32F : cd, m, n,
            std::max<int64_t>(xld, 1));
    bias.fill(exact);
    aux.fill(exact, 3.0f);  // DGELU's input: GELU's input, over its curved part
    const bool in_place = c_type < 0;
    std::vector<unsigned char> d_before(D.buf.raw);

    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F);
    set_desc<int32_t>(desc, DESC_TRANSA, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
    set_desc<int32_t>(desc, DESC_TRANSB, tb ? CUBLAS_OP_T : CUBLAS_OP_N);
    set_desc<uint32_t>(desc, DESC_EPILOGUE, epi);
    set_desc<const void*>(desc, DESC_BIAS_POINTER, null_bias ? nullptr : bias.buf.ptr());
    set_desc<void*>(desc, DESC_EPILOGUE_AUX_POINTER, null_aux ? nullptr : aux.buf.ptr());
    set_desc<int64_t>(desc, DESC_EPILOGUE_AUX_LD, xld);
    if (bias_type != -2) set_desc<int32_t>(desc, DESC_BIAS_DATA_TYPE, bias_type);
    if (aux_type != -2) set_desc<int32_t>(desc, DESC_EPILOGUE_AUX_DATA_TYPE, aux_type);
    cublasLtMatrixLayout_t la, lb, lc, lcd, ld;
    cublasLtMatrixLayoutCreate(&la, ab, A.rows, A.cols, ld_a);
    cublasLtMatrixLayoutCreate(&lb, ab, B.rows, B.cols, B.ld);
    cublasLtMatrixLayoutCreate(&ld, cd, m, n, D.ld);
    cublasLtMatrixLayoutCreate(&lcd, cd, m, n, c_ld >= 0 ? c_ld : D.ld);
    cublasLtMatrixLayoutCreate(&lc, C.type, m, n, C.ld);
    cublasLtMatrixLayout_t c_layout = in_place ? lcd : lc;
    void* c_ptr = in_place ? (void*)D.buf.ptr() : (void*)C.buf.ptr();

    Buf ws(1 << 16, workspace_offset);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    set_pref<uint64_t>(pref, PREF_MAX_WORKSPACE_BYTES, 1 << 16);
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_A_BYTES,
                       declared_a >= 0 ? (uint32_t)declared_a : declared_alignment(A.buf.ptr()));
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_B_BYTES, declared_alignment(B.buf.ptr()));
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_C_BYTES, declared_alignment(c_ptr));
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_D_BYTES, declared_alignment(D.buf.ptr()));

    cublasLtMatmulHeuristicResult_t result[2];
    cublasLtMatmulDesc_t found_for = desc;
    if (algo == FOR_BIAS) {
        cublasLtMatmulDescCreate(&found_for, compute, CUDA_R_32F);
        set_desc<int32_t>(found_for, DESC_TRANSA, ta ? CUBLAS_OP_T : CUBLAS_OP_N);
        set_desc<int32_t>(found_for, DESC_TRANSB, tb ? CUBLAS_OP_T : CUBLAS_OP_N);
        set_desc<uint32_t>(found_for, DESC_EPILOGUE, EPI_BIAS);
        set_desc<const void*>(found_for, DESC_BIAS_POINTER, bias.buf.ptr());
    }
    // No algorithm: cublasLtMatmul's implicit query alone (returned 1 marks the call made).
    if (algo == NONE) {
        returned = 1;
    } else {
        heuristic = cublasLtMatmulAlgoGetHeuristic(null_handle ? nullptr : handle, found_for,
                                                   la, lb, c_layout, ld, pref, requested,
                                                   result, &returned);
    }
    if (heuristic == CUBLAS_STATUS_SUCCESS && returned == 1) {
        if (bias_offset_at_matmul != bias_offset) {
            Mat moved(bias.type, m, 1, m, bias_offset_at_matmul);
            for (size_t i = 0; i < m; i++) moved.set(i, (float)bias.v[i]);
            std::swap(bias.buf.raw, moved.buf.raw);
            bias.buf.offset = bias_offset_at_matmul;
            set_desc<const void*>(desc, DESC_BIAS_POINTER, bias.buf.ptr());
        }
        matmul = cublasLtMatmul(null_handle ? nullptr : handle, desc, &alpha, A.buf.ptr(), la,
                                B.buf.ptr(), lb, &beta, c_ptr, c_layout, D.buf.ptr(), ld,
                                algo == NONE ? nullptr : &result[0].algo,
                                null_workspace ? nullptr : ws.ptr(), 1 << 16, nullptr);
    }
    d_unchanged = d_before == D.buf.raw;

    if (heuristic == CUBLAS_STATUS_SUCCESS && matmul == CUBLAS_STATUS_SUCCESS && returned == 1) {
        const bool gelu_like = applies_gelu(epi), with_bias = adds_bias(epi);
        for (uint64_t j = 0; j < n; j++) {
            for (uint64_t i = 0; i < m; i++) {
                double s = 0, sabs = 0;
                for (uint64_t l = 0; l < k; l++) {
                    const double x = ta ? A.v[l + i * A.ld] : A.v[i + l * A.ld];
                    const double y = tb ? B.v[j + l * B.ld] : B.v[l + j * B.ld];
                    s += x * y;
                    sabs += fabs(x * y);
                }
                const double c = in_place ? D.v[i + j * D.ld] : C.v[i + j * C.ld];
                const double b = with_bias ? bias.v[i] : 0;
                const double pre = alpha * s + beta * c + b;
                const double pre_bound =
                    exact ? 0 : (k + 4) * U * (fabs(alpha) * sabs + fabs(beta * c) + fabs(b));
                double want = pre, bound = pre_bound;
                if (gelu_like) {
                    want = gelu_ref(pre);
                    bound = 1.13 * pre_bound + 2 * U * fabs(want) + 1e-37;
                    if (uses_aux(epi)) {
                        const double got_pre = aux.get(i + j * aux.ld);
                        const double aux_bound =
                            pre_bound +
                            (aux.type == CUDA_R_16BF ? (fabs(pre) + pre_bound) / 256 : 0);
                        worst = std::max(worst, ratio(fabs(got_pre - pre), aux_bound));
                    }
                } else if (epi == EPI_DGELU) {
                    const double g = gelu_grad_ref(aux.v[i + j * aux.ld]);
                    want = pre * g;
                    bound = fabs(g) * pre_bound + 3 * U * fabs(want) + 1e-37;
                }
                if (cd == CUDA_R_16BF) bound += (fabs(want) + bound) / 256;
                worst = std::max(worst, ratio(fabs(D.get(i + j * D.ld) - want), bound));
            }
        }
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (found_for != desc) cublasLtMatmulDescDestroy(found_for);
    cublasLtMatmulDescDestroy(desc);
    for (cublasLtMatrixLayout_t l : {la, lb, lc, lcd, ld}) cublasLtMatrixLayoutDestroy(l);
}

static int failures = 0;

static void report(bool ok, const std::string& line) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", line.c_str());
    failures += !ok;
}

// A product that must run: its error within its bound (exact: none).
static void check_product(int32_t ab, int32_t cd, bool ta, bool tb, uint64_t m, uint64_t n,
                          uint64_t k, float alpha, float beta, uint32_t epi, bool exact) {
    Call c;
    c.ab = ab, c.cd = cd, c.ta = ta, c.tb = tb, c.m = m, c.n = n, c.k = k;
    c.alpha = alpha, c.beta = beta, c.epi = epi;
    c.run(exact);
    const bool ran = c.heuristic == 0 && c.returned == 1 && c.matmul == 0;
    char line[256];
    snprintf(line, sizeof line,
             "product %s x %s -> %s %c%c m=%llu n=%llu k=%llu alpha=%g beta=%g %s %s: ",
             type_tag(ab), type_tag(ab), type_tag(cd), ta ? 'T' : 'N', tb ? 'T' : 'N',
             (unsigned long long)m, (unsigned long long)n, (unsigned long long)k, alpha, beta,
             epi_name(epi), exact ? "exact" : "random");
    std::string s = line;
    if (!ran) {
        s += "refused: " + std::string(last_reason_text);
    } else {
        char e[64];
        snprintf(e, sizeof e, "worst error / bound %.2f", c.worst);
        s += e;
    }
    report(ran && c.worst <= 1, s);
}

// bf16 stores round to nearest even: 1 + 2^-8 (a tie) to 1, 1 + 3 2^-8 (a tie) to
// 1 + 2^-6; truncation or rounding half away from zero would miss one of them.
static void check_bf16_ties() {
    Call c;
    c.ab = CUDA_R_16BF, c.cd = CUDA_R_16BF, c.m = 1, c.n = 2, c.k = 2;
    // A = [1, 2^-4], B columns [1, 2^-4] and [1, 3 2^-4]: D = [1 + 2^-8, 1 + 3 2^-8].
    Mat A(CUDA_R_16BF, 1, 2, 1), B(CUDA_R_16BF, 2, 2, 2), D(CUDA_R_16BF, 1, 2, 1);
    A.set(0, 1), A.set(1, 1.0f / 16);
    B.set(0, 1), B.set(1, 1.0f / 16), B.set(2, 1), B.set(3, 3.0f / 16);
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, 1, 2, 1);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, 2, 2, 2);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, 1, 2, 1);
    const float one = 1, zero = 0;
    const cublasStatus_t s = cublasLtMatmul(handle, desc, &one, A.buf.ptr(), la, B.buf.ptr(),
                                            lb, &zero, D.buf.ptr(), ld, D.buf.ptr(), ld,
                                            nullptr, nullptr, 0, nullptr);
    const double d0 = D.get(0), d1 = D.get(1);
    char line[160];
    snprintf(line, sizeof line,
             "bf16 D rounds ties to even: 1+2^-8 -> %.8f (want 1), 1+3*2^-8 -> %.8f (want "
             "1.015625), status %d",
             d0, d1, (int)s);
    report(s == 0 && d0 == 1.0 && d1 == 1.015625, line);
    for (cublasLtMatrixLayout_t l : {la, lb, ld}) cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulDescDestroy(desc);
}

// Out of place with C's leading dimension 0: every column of C is its first.
static void check_broadcast_c() {
    const uint64_t m = 5, n = 3, k = 4;
    Mat A(CUDA_R_32F, m, k, m), B(CUDA_R_32F, k, n, k), C(CUDA_R_32F, m, 1, m),
        D(CUDA_R_32F, m, n, m);
    A.fill(true), B.fill(true), C.fill(true), D.fill(true);
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, m, k, m);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, k, n, k);
    cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, m, n, 0);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, m);
    const float one = 1;
    const cublasStatus_t s = cublasLtMatmul(handle, desc, &one, A.buf.ptr(), la, B.buf.ptr(),
                                            lb, &one, C.buf.ptr(), lc, D.buf.ptr(), ld,
                                            nullptr, nullptr, 0, nullptr);
    double worst = 0;
    for (uint64_t j = 0; j < n; j++) {
        for (uint64_t i = 0; i < m; i++) {
            double want = C.v[i];
            for (uint64_t l = 0; l < k; l++) want += A.v[i + l * m] * B.v[l + j * k];
            worst = std::max(worst, fabs(D.get(i + j * m) - want));
        }
    }
    char line[128];
    snprintf(line, sizeof line,
             "out of place, C's ld 0 broadcasts its column: status %d, worst error %g", (int)s,
             worst);
    report(s == 0 && worst == 0, line);
    for (cublasLtMatrixLayout_t l : {la, lb, lc, ld}) cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulDescDestroy(desc);
}

// A call the documentation refuses: the heuristic's status (and count), or cublasLtMatmul's
// after a heuristic that found an algorithm; D must be as it was.
static void check_refused(const char* what, Call c, cublasStatus_t heuristic,
                          cublasStatus_t matmul) {
    c.run(true);
    const bool ok = c.heuristic == heuristic &&
                    (heuristic != 0 ? c.returned == 0 : c.returned == 1) &&
                    c.matmul == matmul && c.d_unchanged;
    char line[320];
    snprintf(line, sizeof line,
             "refuses %s: heuristic %s (want %s, %d found), matmul %s (want %s), D %s", what,
             cublasLtGetStatusName(c.heuristic), cublasLtGetStatusName(heuristic), c.returned,
             cublasLtGetStatusName(c.matmul), cublasLtGetStatusName(matmul),
             c.d_unchanged ? "unchanged" : "WRITTEN");
    report(ok, line + std::string(" [") + last_reason_text + "]");
}

// Attribute sizes and values the setters check (cublasLt.h: INVALID_VALUE "if buf is NULL
// or sizeInBytes doesn't match size of internal storage for selected attribute").
static void check_setters() {
    cublasLtMatmulDesc_t d;
    cublasLtMatmulPreference_t p;
    cublasLtMatrixLayout_t l;
    cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulPreferenceCreate(&p);
    cublasLtMatrixLayoutCreate(&l, CUDA_R_32F, 4, 4, 4);
    const int64_t wide = 1;
    const int32_t narrow = 1, bad_op = 5, bad_epi = 3;
    struct {
        const char* what;
        cublasStatus_t got, want;
    } cases[] = {
        {"TRANSA given 8 bytes", cublasLtMatmulDescSetAttribute(d, DESC_TRANSA, &wide, 8),
         CUBLAS_STATUS_INVALID_VALUE},
        {"TRANSA given 4 bytes", cublasLtMatmulDescSetAttribute(d, DESC_TRANSA, &narrow, 4),
         CUBLAS_STATUS_SUCCESS},
        {"TRANSA = 5", cublasLtMatmulDescSetAttribute(d, DESC_TRANSA, &bad_op, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"EPILOGUE given 8 bytes", cublasLtMatmulDescSetAttribute(d, DESC_EPILOGUE, &wide, 8),
         CUBLAS_STATUS_INVALID_VALUE},
        {"EPILOGUE = 3", cublasLtMatmulDescSetAttribute(d, DESC_EPILOGUE, &bad_epi, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"EPILOGUE_AUX_LD given 4 bytes",
         cublasLtMatmulDescSetAttribute(d, DESC_EPILOGUE_AUX_LD, &narrow, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"BIAS_POINTER given 4 bytes",
         cublasLtMatmulDescSetAttribute(d, DESC_BIAS_POINTER, &narrow, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"BIAS_DATA_TYPE given 8 bytes",
         cublasLtMatmulDescSetAttribute(d, DESC_BIAS_DATA_TYPE, &wide, 8),
         CUBLAS_STATUS_INVALID_VALUE},
        {"a NULL buffer", cublasLtMatmulDescSetAttribute(d, DESC_TRANSB, nullptr, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"descriptor attribute 9 (none)", cublasLtMatmulDescSetAttribute(d, 9, &narrow, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"MAX_WORKSPACE_BYTES given 4 bytes",
         cublasLtMatmulPreferenceSetAttribute(p, PREF_MAX_WORKSPACE_BYTES, &narrow, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"MIN_ALIGNMENT_A_BYTES given 8 bytes",
         cublasLtMatmulPreferenceSetAttribute(p, PREF_MIN_ALIGNMENT_A_BYTES, &wide, 8),
         CUBLAS_STATUS_INVALID_VALUE},
        {"LAYOUT_LD given 4 bytes", cublasLtMatrixLayoutSetAttribute(l, LAYOUT_LD, &narrow, 4),
         CUBLAS_STATUS_INVALID_VALUE},
        {"LAYOUT_LD given 8 bytes", cublasLtMatrixLayoutSetAttribute(l, LAYOUT_LD, &wide, 8),
         CUBLAS_STATUS_SUCCESS},
    };
    for (const auto& c : cases) {
        char line[256];
        snprintf(line, sizeof line, "setter: %s: %s (want %s)", c.what,
                 cublasLtGetStatusName(c.got), cublasLtGetStatusName(c.want));
        report(c.got == c.want, line);
    }
    cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulPreferenceDestroy(p);
    cublasLtMatmulDescDestroy(d);
}

static void check_refusals() {
    const cublasStatus_t OK = CUBLAS_STATUS_SUCCESS, INVALID = CUBLAS_STATUS_INVALID_VALUE,
                         NOT_SUPPORTED = CUBLAS_STATUS_NOT_SUPPORTED,
                         FAULT = CUBLAS_STATUS_EXECUTION_FAILED;
    Call c;
    c.k_of_b = 23;
    check_refused("op(A) 16x24 with op(B) 23x8", c, INVALID, OK);
    c = Call();
    c.lda = 10;
    check_refused("A's leading dimension 10 < 16 rows", c, INVALID, OK);
    c = Call();
    c.declared_a = 2;
    check_refused("MIN_ALIGNMENT_A 2 bytes for fp32 A", c, NOT_SUPPORTED, OK);
    c = Call();
    c.a_offset = 16, c.declared_a = 256;
    check_refused("A 16-byte aligned where 256 was declared", c, OK, FAULT);
    c = Call();
    c.epi = EPI_BIAS, c.bias_offset = 16, c.bias_offset_at_matmul = 4;
    check_refused("a bias 4-byte aligned where the heuristic saw 16", c, OK, FAULT);
    c = Call();
    c.epi = EPI_BIAS, c.null_bias = true;
    check_refused("BIAS with a NULL bias pointer", c, INVALID, OK);
    c = Call();
    c.epi = EPI_GELU_AUX, c.m = 5, c.aux_ld = 12;
    check_refused("GELU_AUX with aux ld 12 (not a multiple of 8)", c, INVALID, OK);
    c = Call();
    c.epi = EPI_GELU_AUX_BIAS, c.m = 16, c.aux_ld = 8;
    check_refused("GELU_AUX_BIAS with aux ld 8 < 16 rows", c, INVALID, OK);
    c = Call();
    c.epi = EPI_DGELU, c.null_aux = true;
    check_refused("DGELU with a NULL aux pointer", c, INVALID, OK);
    c = Call();
    c.ab = CUDA_R_16BF, c.cd = CUDA_R_16BF, c.epi = EPI_BIAS, c.bias_type = CUDA_R_32F;
    check_refused("bf16 D with an fp32 bias (the table: bf16)", c, NOT_SUPPORTED, OK);
    c = Call();
    c.ab = CUDA_R_16BF, c.cd = CUDA_R_16BF, c.epi = EPI_GELU_AUX, c.aux_type = CUDA_R_32F;
    check_refused("bf16 D with an fp32 aux, heuristic", c, NOT_SUPPORTED, OK);
    c.algo = Call::NONE;
    check_refused("bf16 D with an fp32 aux, cublasLtMatmul with no algorithm", c, OK, INVALID);
    c = Call();
    c.cd = CUDA_R_16BF;
    check_refused("fp32 A/B with a bf16 D (not in the table)", c, NOT_SUPPORTED, OK);
    c = Call();
    c.compute = 77;  // CUBLAS_COMPUTE_32F_FAST_TF32
    check_refused("CUBLAS_COMPUTE_32F_FAST_TF32 (not emulated)", c, NOT_SUPPORTED, OK);
    c = Call();
    c.workspace_offset = 16;
    check_refused("a workspace 16-byte aligned", c, OK, INVALID);
    c = Call();
    c.null_workspace = true;
    check_refused("a NULL workspace of 64 KiB", c, OK, INVALID);
    c = Call();
    c.requested = 0;
    check_refused("requestedAlgoCount 0", c, INVALID, OK);
    c = Call();
    c.c_type = CUDA_R_16BF, c.beta = 1;
    check_refused("an out-of-place bf16 C with an fp32 D", c, INVALID, OK);
    c = Call();
    c.c_ld = 18;  // D's is m + 1 = 17
    check_refused("C == D with Cdesc's ld 18, Ddesc's 17", c, OK, INVALID);
    c = Call();
    c.algo = Call::FOR_BIAS;
    check_refused("an algorithm found for BIAS, run for DEFAULT", c, OK, INVALID);
    c = Call();
    c.null_handle = true;
    check_refused("a NULL handle", c, CUBLAS_STATUS_NOT_INITIALIZED, OK);
}

// hgpt's product kinds (src/backend/cuda/gemm.rs's Epilogue).
enum HgptEpilogue { H_NONE, H_BIAS, H_GELU_AUX_BIAS, H_GELU_AUX, H_DGELU };

static const char* hgpt_name(HgptEpilogue e) {
    static const char* const names[] = {"None", "Bias", "GeluAux{bias}", "GeluAux{bias: 0}",
                                        "DGelu"};
    return names[e];
}

// One product as gemm.rs's try_run makes it, on row-major matrices: C[m, n] = alpha
// op(A)[m, k] op(B)[k, n] + beta C, operands of `dtype`, C of `out`, an fp32 bias of n and an
// fp32 pre-activation [m, n]. cuBLASLt's A is our B and its B our A (gemm_shape.rs's
// column_major), each MIN_ALIGNMENT is the pointer's, and set_epilogue's attributes are set
// as it sets them: BIAS_DATA_TYPE and EPILOGUE_AUX_DATA_TYPE CUDA_R_32F where out is bf16.
// Checks the documentation's answer (`accepted`) and, where it runs, the values against the
// row-major f64 reference.
static void check_hgpt(int32_t dtype, int32_t out, HgptEpilogue epi, bool a_trans, bool b_trans,
                       bool accepted) {
    const uint64_t m = 6, n = 16, k = 12;
    const float alpha = 1, beta = epi == H_NONE ? 0.5f : 0.0f;
    Mat a(dtype, m * k, 1, m * k), b(dtype, k * n, 1, k * n), c(out, m * n, 1, m * n),
        bias(CUDA_R_32F, n, 1, n), pre(CUDA_R_32F, m * n, 1, m * n);
    a.fill(true), b.fill(true), c.fill(true), bias.fill(true), pre.fill(true);
    const bool has_bias = epi == H_BIAS || epi == H_GELU_AUX_BIAS;
    const bool has_aux = epi == H_GELU_AUX_BIAS || epi == H_GELU_AUX || epi == H_DGELU;
    const uint32_t kind = epi == H_NONE ? EPI_DEFAULT
                          : epi == H_BIAS ? EPI_BIAS
                          : epi == H_GELU_AUX_BIAS ? EPI_GELU_AUX_BIAS
                          : epi == H_GELU_AUX ? EPI_GELU_AUX
                                              : EPI_DGELU;
    // column_major(m, n, k, a_trans, b_trans): (rows, cols, ld) of cuBLASLt's A, B and C.
    const uint64_t la[3] = {b_trans ? k : n, b_trans ? n : k, b_trans ? k : n};
    const uint64_t lb[3] = {a_trans ? m : k, a_trans ? k : m, a_trans ? m : k};
    cublasLtMatrixLayout_t lt_a, lt_b, lt_c;
    cublasLtMatrixLayoutCreate(&lt_a, dtype, la[0], la[1], la[2]);
    cublasLtMatrixLayoutCreate(&lt_b, dtype, lb[0], lb[1], lb[2]);
    cublasLtMatrixLayoutCreate(&lt_c, out, n, m, n);
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    set_desc<int32_t>(desc, DESC_TRANSA, b_trans);
    set_desc<int32_t>(desc, DESC_TRANSB, a_trans);
    if (epi != H_NONE) {
        set_desc<uint32_t>(desc, DESC_EPILOGUE, kind);
        if (has_bias) {
            set_desc<const void*>(desc, DESC_BIAS_POINTER, bias.buf.ptr());
            if (out != CUDA_R_32F) set_desc<int32_t>(desc, DESC_BIAS_DATA_TYPE, CUDA_R_32F);
        }
        if (has_aux) {
            set_desc<void*>(desc, DESC_EPILOGUE_AUX_POINTER, pre.buf.ptr());
            set_desc<int64_t>(desc, DESC_EPILOGUE_AUX_LD, (int64_t)n);
            if (out != CUDA_R_32F) set_desc<int32_t>(desc, DESC_EPILOGUE_AUX_DATA_TYPE, CUDA_R_32F);
        }
    }
    Buf ws(1 << 16);
    set_pref<uint64_t>(pref, PREF_MAX_WORKSPACE_BYTES, 1 << 16);
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_A_BYTES, declared_alignment(b.buf.ptr()));
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_B_BYTES, declared_alignment(a.buf.ptr()));
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_C_BYTES, declared_alignment(c.buf.ptr()));
    set_pref<uint32_t>(pref, PREF_MIN_ALIGNMENT_D_BYTES, declared_alignment(c.buf.ptr()));
    cublasLtMatmulHeuristicResult_t found;
    int count = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle, desc, lt_a, lt_b, lt_c, lt_c, pref,
                                                      1, &found, &count);
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = cublasLtMatmul(handle, desc, &alpha, b.buf.ptr(), lt_a, a.buf.ptr(), lt_b, &beta,
                           c.buf.ptr(), lt_c, c.buf.ptr(), lt_c, &found.algo, ws.ptr(), 1 << 16,
                           nullptr);
    }
    double worst = 0;
    if (s == CUBLAS_STATUS_SUCCESS) {
        for (uint64_t i = 0; i < m; i++) {
            for (uint64_t j = 0; j < n; j++) {
                double p = 0;
                for (uint64_t l = 0; l < k; l++) {
                    p += (a_trans ? a.v[l * m + i] : a.v[i * k + l]) *
                         (b_trans ? b.v[j * k + l] : b.v[l * n + j]);
                }
                p = alpha * p + beta * c.v[i * n + j] + (has_bias ? bias.v[j] : 0);
                double want = p, bound = 0;
                if (epi == H_GELU_AUX_BIAS || epi == H_GELU_AUX) {
                    worst = std::max(worst, ratio(fabs(pre.get(i * n + j) - p), 0));
                    want = gelu_ref(p), bound = 2 * U * fabs(want);
                } else if (epi == H_DGELU) {
                    want = p * gelu_grad_ref(pre.v[i * n + j]), bound = 3 * U * fabs(want);
                }
                if (out == CUDA_R_16BF) bound += (fabs(want) + bound) / 256;
                worst = std::max(worst, ratio(fabs(c.get(i * n + j) - want), bound));
            }
        }
    }
    char line[320];
    snprintf(line, sizeof line,
             "hgpt's %s GEMM, %s operands -> %s, A%s B%s: %s (want %s), worst error / bound "
             "%.2f",
             hgpt_name(epi), type_tag(dtype), type_tag(out), a_trans ? "^T" : "",
             b_trans ? "^T" : "", cublasLtGetStatusName(s),
             accepted ? "CUBLAS_STATUS_SUCCESS" : "a refusal", worst);
    report(accepted ? s == CUBLAS_STATUS_SUCCESS && worst <= 1 : s != CUBLAS_STATUS_SUCCESS,
           line + (s ? std::string(" [") + last_reason_text + "]" : std::string()));
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatmulDescDestroy(desc);
    for (cublasLtMatrixLayout_t l : {lt_a, lt_b, lt_c}) cublasLtMatrixLayoutDestroy(l);
}

// Every product hgpt makes (linear.rs): plain ones in each transpose (forward x W^T,
// dinp = dout W, dweight += dout^T x); x W^T + bias; GELU's forward with and without a
// bias; DGELU's dout W. fp32 mode, and bf16 operands with an fp32 output, run; bf16 mode's
// GELU forward into a bf16 output (matmul_gelu_forward) is refused: the documented bias
// and aux types of a bf16 D are bf16, where hgpt declares fp32.
static void check_hgpt_calls() {
    for (int32_t dtype : {CUDA_R_32F, CUDA_R_16BF}) {
        for (int t = 0; t < 4; t++) check_hgpt(dtype, CUDA_R_32F, H_NONE, t & 1, t & 2, true);
        check_hgpt(dtype, CUDA_R_32F, H_BIAS, false, true, true);
        check_hgpt(dtype, CUDA_R_32F, H_GELU_AUX_BIAS, false, true, true);
        check_hgpt(dtype, CUDA_R_32F, H_GELU_AUX, false, true, true);
        check_hgpt(dtype, CUDA_R_32F, H_DGELU, false, false, true);
    }
    check_hgpt(CUDA_R_16BF, CUDA_R_16BF, H_GELU_AUX_BIAS, false, true, false);
    check_hgpt(CUDA_R_16BF, CUDA_R_16BF, H_GELU_AUX, false, true, false);
}

int main() {
    setenv("CUBLASLT_EMU_QUIET", "1", 1);
    if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 1;
    const int32_t types[3][2] = {{CUDA_R_32F, CUDA_R_32F},
                                 {CUDA_R_16BF, CUDA_R_32F},
                                 {CUDA_R_16BF, CUDA_R_16BF}};
    const uint32_t epis[] = {EPI_DEFAULT,  EPI_BIAS,          EPI_GELU, EPI_GELU_BIAS,
                             EPI_GELU_AUX, EPI_GELU_AUX_BIAS, EPI_DGELU};
    for (const auto& t : types) {
        for (int trans = 0; trans < 4; trans++) {
            for (uint32_t e : epis) {
                check_product(t[0], t[1], trans & 1, trans & 2, 5, 7, 9, 0.5f, 0.25f, e, true);
                check_product(t[0], t[1], trans & 1, trans & 2, 16, 8, 37, 1.0f, 0.0f, e,
                              false);
            }
        }
    }
    check_bf16_ties();
    check_broadcast_c();
    check_setters();
    check_refusals();
    check_hgpt_calls();
    cublasLtDestroy(handle);
    return failures != 0;
}
