// A reference cuBLASLt for the emulated device: the cuBLASLt 13 calls hgpt makes
// (src/backend/cuda/gemm.rs, through cudarc's cublaslt::result wrappers), built as the
// shared library cudarc loads in place of libcublasLt.so.13:
//     g++ -std=c++17 -O2 -shared -fPIC -o libcublasLt.so.13 tools/cuda_emu/device/cublaslt.cpp
// Device pointers of the emulated device are host pointers and every call is synchronous,
// so cublasLtMatmul computes on the CPU, at the call, and ignores the stream.
//
// It is a second reading of NVIDIA's cuBLASLt documentation (the cuBLAS guide's
// cublasLtMatmul section and cublasLt.h's attribute comments), not of what gemm.rs assumes.
// Column-major, with m = rows of D, n = its columns, k the inner dimension:
//     pre[i, j] = alpha sum_l op(A)[i, l] op(B)[l, j] + beta C[i, j] (+ bias[i])
//     D[i, j]   = pre (DEFAULT, BIAS), gelu(pre) (GELU*, and aux[i, j] = pre for *_AUX*),
//                 or pre * gelu'(aux[i, j]) (DGELU: aux holds GELU's input)
// gelu(x) = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). The guide does not give the
// formula; PyTorch's maintainers found the epilogue to be this tanh form (pytorch#104061).
// Compute type CUBLAS_COMPUTE_32F (or _PEDANTIC), scale type fp32. A/B fp32 with C/D fp32,
// or A/B bf16 with C/D fp32 or bf16: the guide's table rows for that compute type
// implemented here. Each dot product is an fp32 accumulator summed k ascending, every
// product and sum rounded to fp32 (no contraction into FMA: ISO C++ builds keep the
// operations apart). fp32 rather than double because CUBLAS_COMPUTE_32F accumulates in
// fp32: a sequential fp32 sum has at least the rounding error of the real kernels' blocked
// sums, so a tolerance that passes here does not lean on precision the GPU lacks. fp32
// inputs are true fp32 (no TF32). The epilogue runs in fp32 (gelu and gelu' from the fp32
// value in double, rounded once); bf16 stores round to nearest even.
//
// What it checks, with the status the guide names (where it names none, the stricter
// reading, said at the check): attribute sizes (CUBLAS_STATUS_INVALID_VALUE), shapes of
// op(A), op(B), C and D, leading dimensions, the type table, the bias and aux data types
// (which default to D's), the aux leading dimension (a multiple of 8, >= rows of D), NULL
// bias and aux pointers, the workspace (256-byte aligned), and alignment: the heuristic
// returns no algorithm when a declared MIN_ALIGNMENT is less than an element, and the
// algorithm it returns assumes the declared alignments of A, B, C, D and the alignments of
// the bias and aux pointers it saw (the guide: the heuristic reads those pointers for their
// alignment); cublasLtMatmul with a pointer less aligned than its algorithm assumes fails
// with CUBLAS_STATUS_EXECUTION_FAILED, the fault a real kernel's wide loads would raise.
// A rejection's reason goes to stderr (unless CUBLASLT_EMU_QUIET is set).
//
// What it cannot: timing; the real kernels' summation order (tiles, split-K) and their use
// of FMA; tensor-core internals (a real bf16 kernel's accumulation may differ from a
// rounded-per-step fp32 sum); the real GELU epilogue's accuracy (its tanh may be an
// approximation). It implements only the attributes and epilogues hgpt could use: others
// (batches, row order, fp16/fp8/int8 types, scale and amax pointers, the ReLU epilogues,
// bias gradients) are refused with CUBLAS_STATUS_NOT_SUPPORTED, where the real library
// would accept them; attributes that only steer the real heuristic's choice (workspace
// limit, SM count, reduction and implementation masks, wave count) are size-checked and
// change nothing.
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

// Enum values as cudarc 0.19's cuBLASLt bindings have them under its cuda-13000 feature.
enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
};

// cudaDataType_t (those used here; any value 0..33 is a known type).
enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14, CUDA_TYPE_LAST = 33 };
// cublasComputeType_t.
enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 };
// cublasOperation_t (CUBLAS_OP_C on real data is the transpose).
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
// cublasLtPointerMode_t, cublasFillMode_t, cublasLtOrder_t.
enum { POINTER_MODE_HOST = 0, POINTER_MODE_DEVICE = 1, POINTER_MODE_LAST = 4 };
enum { FILL_MODE_FULL = 2 };
enum { ORDER_COL = 0, ORDER_LAST = 4 };
// cublasLtEpilogue_t (uint32_t).
enum {
    EPI_DEFAULT = 1,
    EPI_RELU = 2,
    EPI_BIAS = 4,
    EPI_RELU_BIAS = 6,
    EPI_GELU = 32,
    EPI_GELU_BIAS = 36,
    EPI_RELU_AUX = 130,
    EPI_RELU_AUX_BIAS = 134,
    EPI_DRELU = 136,
    EPI_DRELU_BGRAD = 152,
    EPI_GELU_AUX = 160,
    EPI_GELU_AUX_BIAS = 164,
    EPI_DGELU = 192,
    EPI_DGELU_BGRAD = 208,
    EPI_BGRADA = 256,
    EPI_BGRADB = 512,
};
// cublasLtMatmulDescAttributes_t.
enum {
    DESC_COMPUTE_TYPE = 0,
    DESC_SCALE_TYPE = 1,
    DESC_POINTER_MODE = 2,
    DESC_TRANSA = 3,
    DESC_TRANSB = 4,
    DESC_TRANSC = 5,
    DESC_FILL_MODE = 6,
    DESC_EPILOGUE = 7,
    DESC_BIAS_POINTER = 8,
    DESC_BIAS_BATCH_STRIDE = 10,
    DESC_EPILOGUE_AUX_POINTER = 11,
    DESC_EPILOGUE_AUX_LD = 12,
    DESC_EPILOGUE_AUX_BATCH_STRIDE = 13,
    DESC_ALPHA_VECTOR_BATCH_STRIDE = 14,
    DESC_SM_COUNT_TARGET = 15,
    DESC_A_SCALE_POINTER = 17,
    DESC_B_SCALE_POINTER = 18,
    DESC_C_SCALE_POINTER = 19,
    DESC_D_SCALE_POINTER = 20,
    DESC_AMAX_D_POINTER = 21,
    DESC_EPILOGUE_AUX_DATA_TYPE = 22,
    DESC_EPILOGUE_AUX_SCALE_POINTER = 23,
    DESC_EPILOGUE_AUX_AMAX_POINTER = 24,
    DESC_FAST_ACCUM = 25,
    DESC_BIAS_DATA_TYPE = 26,
    DESC_A_SCALE_MODE = 31,
    DESC_B_SCALE_MODE = 32,
    DESC_C_SCALE_MODE = 33,
    DESC_D_SCALE_MODE = 34,
    DESC_EPILOGUE_AUX_SCALE_MODE = 35,
    DESC_D_OUT_SCALE_POINTER = 36,
    DESC_D_OUT_SCALE_MODE = 37,
    DESC_EMULATION_DESCRIPTOR = 38,
};
// cublasLtMatmulPreferenceAttributes_t.
enum {
    PREF_SEARCH_MODE = 0,
    PREF_MAX_WORKSPACE_BYTES = 1,
    PREF_REDUCTION_SCHEME_MASK = 3,
    PREF_MIN_ALIGNMENT_A_BYTES = 5,
    PREF_MIN_ALIGNMENT_B_BYTES = 6,
    PREF_MIN_ALIGNMENT_C_BYTES = 7,
    PREF_MIN_ALIGNMENT_D_BYTES = 8,
    PREF_MAX_WAVES_COUNT = 9,
    PREF_IMPL_MASK = 12,
};
// cublasLtMatrixLayoutAttribute_t.
enum {
    LAYOUT_TYPE = 0,
    LAYOUT_ORDER = 1,
    LAYOUT_ROWS = 2,
    LAYOUT_COLS = 3,
    LAYOUT_LD = 4,
    LAYOUT_BATCH_COUNT = 5,
    LAYOUT_STRIDED_BATCH_OFFSET = 6,
    LAYOUT_PLANE_OFFSET = 7,
    LAYOUT_BATCH_MODE = 8,
};

// The library's objects. Only pointers to them cross the ABI; each fits the opaque size
// cublasLt.h gives it, as a caller-allocated descriptor would need.
struct cublasLtContext {
    int unused;
};
// Attributes with no effect here are checked for size and not kept (see the setters).
struct LtLayout {
    int32_t type, order;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch_count, batch_mode;
    int64_t plane_offset;
};
struct LtDesc {
    int32_t compute, scale, pointer_mode, transa, transb, transc, fill;
    uint32_t epilogue;
    const void* bias;
    void* aux;
    int64_t aux_ld;
    int32_t bias_type, aux_type;
};
struct LtPref {
    uint32_t search_mode;
    uint32_t align[4];  // A, B, C, D
};
static_assert(sizeof(LtLayout) <= 8 * 8, "cublasLtMatrixLayoutOpaque_t is 8 u64");
static_assert(sizeof(LtDesc) <= 32 * 8, "cublasLtMatmulDescOpaque_t is 32 u64");
static_assert(sizeof(LtPref) <= 8 * 8, "cublasLtMatmulPreferenceOpaque_t is 8 u64");

typedef cublasLtContext* cublasLtHandle_t;
typedef LtLayout* cublasLtMatrixLayout_t;
typedef LtDesc* cublasLtMatmulDesc_t;
typedef LtPref* cublasLtMatmulPreference_t;
typedef void* cudaStream_t;

// Semi-opaque: its layout is ABI (cudarc copies it).
struct cublasLtMatmulAlgo_t {
    uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
};
static_assert(sizeof(cublasLtMatmulAlgo_t) == 64, "algo is 8 u64");
static_assert(sizeof(cublasLtMatmulHeuristicResult_t) == 96, "heuristic result ABI");

namespace {

// Why the last call refused or failed.
char last_reason_text[512];

// Returns `status`, having recorded (and unless CUBLASLT_EMU_QUIET is set, printed) why.
__attribute__((format(printf, 2, 3))) cublasStatus_t refuse(cublasStatus_t status,
                                                             const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_reason_text, sizeof last_reason_text, fmt, args);
    va_end(args);
    if (!getenv("CUBLASLT_EMU_QUIET")) {
        fprintf(stderr, "cuBLASLt (emulated device): status %d: %s\n", (int)status,
                last_reason_text);
    }
    return status;
}

// Largest power of two dividing the address, up to 256 (NULL: 256).
uint64_t alignment_of(const void* p) {
    const uint64_t bits = (uint64_t)(uintptr_t)p | 256;
    return bits & (~bits + 1);
}

size_t elem_bytes(int32_t type) { return type == CUDA_R_32F ? 4 : 2; }

float bf16_to_float(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even; a NaN stays a (quiet) NaN of the same sign.
uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float load(const void* p, int32_t type, size_t i) {
    return type == CUDA_R_32F ? ((const float*)p)[i] : bf16_to_float(((const uint16_t*)p)[i]);
}

void store(void* p, int32_t type, size_t i, float v) {
    if (type == CUDA_R_32F) {
        ((float*)p)[i] = v;
    } else {
        ((uint16_t*)p)[i] = float_to_bf16(v);
    }
}

const double SQRT_2_OVER_PI = 0.7978845608028654;
const double GELU_CUBIC = 0.044715;

float gelu(float x) {
    const double xd = x, t = std::tanh(SQRT_2_OVER_PI * (xd + GELU_CUBIC * xd * xd * xd));
    return (float)(0.5 * xd * (1 + t));
}

float gelu_grad(float x) {
    const double xd = x, t = std::tanh(SQRT_2_OVER_PI * (xd + GELU_CUBIC * xd * xd * xd));
    return (float)(0.5 * (1 + t) +
                   0.5 * xd * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * GELU_CUBIC * xd * xd));
}

bool known_type(int32_t t) { return t >= 0 && t <= CUDA_TYPE_LAST; }

bool known_epilogue(uint32_t e) {
    switch (e) {
        case EPI_DEFAULT: case EPI_RELU: case EPI_BIAS: case EPI_RELU_BIAS: case EPI_GELU:
        case EPI_GELU_BIAS: case EPI_RELU_AUX: case EPI_RELU_AUX_BIAS: case EPI_DRELU:
        case EPI_DRELU_BGRAD: case EPI_GELU_AUX: case EPI_GELU_AUX_BIAS: case EPI_DGELU:
        case EPI_DGELU_BGRAD: case EPI_BGRADA: case EPI_BGRADB:
            return true;
        default:
            return false;
    }
}

bool adds_bias(uint32_t e) { return e == EPI_BIAS || e == EPI_GELU_BIAS || e == EPI_GELU_AUX_BIAS; }
bool applies_gelu(uint32_t e) {
    return e == EPI_GELU || e == EPI_GELU_BIAS || e == EPI_GELU_AUX || e == EPI_GELU_AUX_BIAS;
}
bool uses_aux(uint32_t e) { return e == EPI_GELU_AUX || e == EPI_GELU_AUX_BIAS || e == EPI_DGELU; }

// The problem a descriptor and four layouts describe, once they are consistent.
struct Problem {
    uint64_t m, n, k;
    int32_t ab_type, cd_type, bias_type, aux_type;
    bool trans_a, trans_b;
};

const char* type_name(int32_t t) {
    return t == CUDA_R_32F ? "CUDA_R_32F" : t == CUDA_R_16BF ? "CUDA_R_16BF" : "another type";
}

// Checks the layouts' own fields: what this reference implements, and ld >= rows.
cublasStatus_t check_layout(const LtLayout* l, const char* name, bool ld_may_be_zero) {
    if (l->order != ORDER_COL || l->batch_count != 1 || l->batch_mode != 0 ||
        l->plane_offset != 0) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                      "%s: only single column-major matrices are emulated", name);
    }
    if (l->rows > INT32_MAX || l->cols > INT32_MAX) {
        // cublasLt.h: "usually only values that can be expressed as int32_t are supported".
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s: a dimension beyond int32", name);
    }
    if (l->ld < 0 || (!(ld_may_be_zero && l->ld == 0) && (uint64_t)l->ld < l->rows)) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: leading dimension %lld < rows %llu",
                      name, (long long)l->ld, (unsigned long long)l->rows);
    }
    return CUBLAS_STATUS_SUCCESS;
}

// Validates a matmul as both the heuristic and cublasLtMatmul see it. A data type off the
// guide's tables is CUBLAS_STATUS_NOT_SUPPORTED (no kernel: the heuristic finds no
// algorithm), except where the guide names cublasLtMatmul's status: an aux type is
// CUBLAS_STATUS_INVALID_VALUE there (`at_matmul`).
cublasStatus_t check_problem(const LtDesc* d, const LtLayout* a, const LtLayout* b,
                             const LtLayout* c, const LtLayout* dd, bool at_matmul,
                             Problem* p) {
    if (!d || !a || !b || !dd) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "a NULL descriptor or layout");
    }
    if (!c) c = dd;  // the guide: an omitted Cdesc is taken to be Ddesc
    cublasStatus_t s;
    if ((s = check_layout(a, "A", false)) || (s = check_layout(b, "B", false)) ||
        (s = check_layout(c, "C", true)) || (s = check_layout(dd, "D", false))) {
        return s;
    }
    if (d->pointer_mode != POINTER_MODE_HOST && d->pointer_mode != POINTER_MODE_DEVICE) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "only scalar alpha and beta are emulated");
    }
    if (d->fill != FILL_MODE_FULL) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "only CUBLAS_FILL_MODE_FULL is emulated");
    }
    if (d->transc != CUBLAS_OP_N) {
        // cublasLt.h: "Currently only CUBLAS_OP_N is supported" for C.
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "TRANSC must be CUBLAS_OP_N");
    }
    // The guide's type table, CUBLAS_COMPUTE_32F rows with fp32 or bf16 operands.
    if (d->compute != CUBLAS_COMPUTE_32F && d->compute != CUBLAS_COMPUTE_32F_PEDANTIC) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                      "compute type %d: only CUBLAS_COMPUTE_32F(_PEDANTIC) is emulated",
                      d->compute);
    }
    if (d->scale != CUDA_R_32F) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                      "scale type %d with CUBLAS_COMPUTE_32F: the table has CUDA_R_32F only",
                      d->scale);
    }
    if (c->type != dd->type) {
        // The guide: out of place, "both matrices must have the same data type".
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "C is %s, D %s", type_name(c->type),
                      type_name(dd->type));
    }
    const bool types_ok = a->type == b->type &&
                          ((a->type == CUDA_R_32F && dd->type == CUDA_R_32F) ||
                           (a->type == CUDA_R_16BF &&
                            (dd->type == CUDA_R_16BF || dd->type == CUDA_R_32F)));
    if (!types_ok) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                      "A %s, B %s, C/D %s: not an emulated row of the type table",
                      type_name(a->type), type_name(b->type), type_name(dd->type));
    }
    if (d->transa < CUBLAS_OP_N || d->transa > CUBLAS_OP_C || d->transb < CUBLAS_OP_N ||
        d->transb > CUBLAS_OP_C) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "TRANSA/TRANSB not a cublasOperation_t");
    }
    // Shapes: op(A) is m x k, op(B) k x n, C and D m x n.
    const bool ta = d->transa != CUBLAS_OP_N, tb = d->transb != CUBLAS_OP_N;
    const uint64_t m = dd->rows, n = dd->cols;
    const uint64_t a_rows = ta ? a->cols : a->rows, k = ta ? a->rows : a->cols;
    const uint64_t b_rows = tb ? b->cols : b->rows, b_cols = tb ? b->rows : b->cols;
    if (a_rows != m || b_rows != k || b_cols != n || c->rows != m || c->cols != n) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "shapes disagree: op(A) %llux%llu, op(B) %llux%llu, C %llux%llu, D "
                      "%llux%llu",
                      (unsigned long long)a_rows, (unsigned long long)k,
                      (unsigned long long)b_rows, (unsigned long long)b_cols,
                      (unsigned long long)c->rows, (unsigned long long)c->cols,
                      (unsigned long long)m, (unsigned long long)n);
    }
    // Epilogues: the guide's attribute defaults and rules.
    const uint32_t e = d->epilogue;
    if (e != EPI_DEFAULT && e != EPI_BIAS && !applies_gelu(e) && e != EPI_DGELU) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "epilogue %u is not emulated", e);
    }
    // BIAS_DATA_TYPE: "if unset (or -1), the bias vector elements are the same type as the
    // elements of the output matrix (Dtype)", the exceptions being IMMA and fp8 kernels;
    // the table's Bias Type for our rows is D's type (bf16 D: CUDA_R_16BF only).
    const int32_t bias_type = d->bias_type == -1 ? dd->type : d->bias_type;
    if (adds_bias(e)) {
        if (!d->bias) {
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "a bias epilogue with a NULL bias");
        }
        if (bias_type != dd->type) {
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                          "bias type %s with D %s: the type table's Bias Type for these "
                          "operands is D's type",
                          type_name(bias_type), type_name(dd->type));
        }
    }
    // EPILOGUE_AUX_DATA_TYPE: unset (-1) is D's type; outside fp8 kernels "the data type
    // should be left unset or set to the default value of -1. If set for an unsupported
    // ... combination, calling cublasLtMatmul() will return CUBLAS_INVALID_VALUE". A value
    // equal to D's type means the same as unset and is accepted (the stricter reading,
    // refusing any value, would refuse no call that computes something different).
    const int32_t aux_type = d->aux_type == -1 ? dd->type : d->aux_type;
    if (uses_aux(e)) {
        if (!d->aux) {
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "an aux epilogue with a NULL aux");
        }
        if (d->aux_ld < 0 || (uint64_t)d->aux_ld < m || d->aux_ld % 8 != 0) {
            // cublasLt.h, EPILOGUE_AUX_LD for GELU: "Must be divisible by 8 and be no less
            // than the number of rows in the output matrix".
            return refuse(CUBLAS_STATUS_INVALID_VALUE,
                          "aux leading dimension %lld: must be a multiple of 8 and >= %llu",
                          (long long)d->aux_ld, (unsigned long long)m);
        }
        if (aux_type != dd->type) {
            return refuse(at_matmul ? CUBLAS_STATUS_INVALID_VALUE : CUBLAS_STATUS_NOT_SUPPORTED,
                          "aux type %s with D %s: outside fp8 kernels the aux type must "
                          "be left unset (D's type)",
                          type_name(aux_type), type_name(dd->type));
        }
    }
    *p = Problem{m, n, k, a->type, dd->type, bias_type, aux_type, ta, tb};
    return CUBLAS_STATUS_SUCCESS;
}

// What an algorithm encodes: the problem's types, transposes and epilogue (an algorithm
// applies to the configuration it was found for) and the alignments it assumes.
const uint64_t ALGO_MAGIC = 0x686770744c743133ull;  // "hgptLt13"
enum { ALIGN_A, ALIGN_B, ALIGN_C, ALIGN_D, ALIGN_BIAS, ALIGN_AUX, ALIGNS };

uint64_t config_key(const LtDesc* d, const Problem& p) {
    return (uint64_t)p.ab_type | (uint64_t)p.cd_type << 8 | (uint64_t)p.trans_a << 16 |
           (uint64_t)p.trans_b << 17 | (uint64_t)d->epilogue << 20 |
           (uint64_t)(p.bias_type & 0xff) << 40 | (uint64_t)(p.aux_type & 0xff) << 48 |
           (uint64_t)(d->compute & 0xff) << 56;
}

// The heuristic: one algorithm, which needs no workspace and every buffer aligned to an
// element, and assumes the alignments declared (A-D) or seen (bias, aux).
cublasStatus_t find_algo(const LtDesc* d, const LtLayout* a, const LtLayout* b,
                         const LtLayout* c, const LtLayout* dd, const LtPref& pref,
                         cublasLtMatmulAlgo_t* algo) {
    Problem p;
    if (cublasStatus_t s = check_problem(d, a, b, c, dd, false, &p)) return s;
    if (pref.search_mode != 0) {
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "only CUBLASLT_SEARCH_BEST_FIT is emulated");
    }
    const uint64_t need[ALIGNS] = {elem_bytes(p.ab_type), elem_bytes(p.ab_type),
                                   elem_bytes(p.cd_type), elem_bytes(p.cd_type),
                                   elem_bytes(p.bias_type), elem_bytes(p.aux_type)};
    const uint32_t e = d->epilogue;
    const uint64_t assumed[ALIGNS] = {pref.align[0], pref.align[1], pref.align[2],
                                      pref.align[3],
                                      alignment_of(adds_bias(e) ? d->bias : nullptr),
                                      alignment_of(uses_aux(e) ? d->aux : nullptr)};
    static const char* const names[ALIGNS] = {"A", "B", "C", "D", "bias", "aux"};
    for (int i = 0; i < ALIGNS; i++) {
        if (assumed[i] < need[i] || assumed[i] % need[i] != 0) {
            // cublasLt.h: a smaller MIN_ALIGNMENT "will exclude algorithms that can not work
            // with" it; no kernel reads elements at addresses they are not aligned to.
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                          "no algorithm: %s aligned to %llu bytes, its elements are %llu",
                          names[i], (unsigned long long)assumed[i],
                          (unsigned long long)need[i]);
        }
    }
    *algo = cublasLtMatmulAlgo_t{};
    algo->data[0] = ALGO_MAGIC;
    algo->data[1] = config_key(d, p);
    for (int i = 0; i < ALIGNS; i++) algo->data[2 + i] = assumed[i];
    return CUBLAS_STATUS_SUCCESS;
}

LtPref default_pref() {
    LtPref p{};
    for (uint32_t& a : p.align) a = 256;
    return p;
}

// Copies `buf` into `dst` if `size` is the attribute's size (else INVALID_VALUE).
template <typename T>
cublasStatus_t take(T* dst, const void* buf, size_t size, const char* what) {
    if (size != sizeof(T)) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s takes %zu bytes, got %zu", what,
                      sizeof(T), size);
    }
    memcpy(dst, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

// An attribute with no effect on what this reference computes: its size checked, its
// value dropped.
cublasStatus_t take_any(size_t size, size_t want, const char* what) {
    if (size != want) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s takes %zu bytes, got %zu", what, want,
                      size);
    }
    return CUBLAS_STATUS_SUCCESS;
}

// An attribute this reference does not implement: accepted at its default (all bytes
// zero), refused otherwise.
cublasStatus_t take_default(const void* buf, size_t size, size_t want, const char* what) {
    if (size != want) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s takes %zu bytes, got %zu", what, want,
                      size);
    }
    for (size_t i = 0; i < size; i++) {
        if (((const unsigned char*)buf)[i] != 0) {
            return refuse(CUBLAS_STATUS_NOT_SUPPORTED, "%s other than its default is not "
                          "emulated", what);
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
    if (!handle) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasLtCreate: NULL handle");
    *handle = new (std::nothrow) cublasLtContext{0};
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy: NULL handle");
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

// cuBLAS 13.0.0: major * 10000 + minor * 100 + patch.
size_t cublasLtGetVersion(void) { return 130000; }

size_t cublasLtGetCudartVersion(void) { return 13000; }

const char* cublasLtGetStatusName(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
    return cublasLtGetStatusName(status);
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, int32_t type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
    if (!layout) return refuse(CUBLAS_STATUS_INVALID_VALUE, "MatrixLayoutCreate: NULL out");
    *layout = new (std::nothrow) LtLayout{type, ORDER_COL, rows, cols, ld, 1, 0, 0};
    return *layout ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, int32_t attr,
                                                const void* buf, size_t size) {
    if (!l || !buf) return refuse(CUBLAS_STATUS_INVALID_VALUE, "MatrixLayout attribute: NULL");
    switch (attr) {
        case LAYOUT_TYPE: return take(&l->type, buf, size, "LAYOUT_TYPE");
        case LAYOUT_ORDER: {
            int32_t v = 0;
            if (cublasStatus_t s = take(&v, buf, size, "LAYOUT_ORDER")) return s;
            if (v < 0 || v > ORDER_LAST) {
                return refuse(CUBLAS_STATUS_INVALID_VALUE, "order %d", v);
            }
            l->order = v;
            return CUBLAS_STATUS_SUCCESS;
        }
        case LAYOUT_ROWS: return take(&l->rows, buf, size, "LAYOUT_ROWS");
        case LAYOUT_COLS: return take(&l->cols, buf, size, "LAYOUT_COLS");
        case LAYOUT_LD: return take(&l->ld, buf, size, "LAYOUT_LD");
        case LAYOUT_BATCH_COUNT: return take(&l->batch_count, buf, size, "LAYOUT_BATCH_COUNT");
        case LAYOUT_STRIDED_BATCH_OFFSET:  // read only with batches, refused at use
            return take_any(size, 8, "LAYOUT_STRIDED_BATCH_OFFSET");
        case LAYOUT_PLANE_OFFSET: return take(&l->plane_offset, buf, size, "LAYOUT_PLANE_OFFSET");
        case LAYOUT_BATCH_MODE: return take(&l->batch_mode, buf, size, "LAYOUT_BATCH_MODE");
    }
    return refuse(CUBLAS_STATUS_INVALID_VALUE, "unknown matrix layout attribute %d", attr);
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, int32_t compute,
                                        int32_t scale) {
    if (!desc) return refuse(CUBLAS_STATUS_INVALID_VALUE, "MatmulDescCreate: NULL out");
    *desc = new (std::nothrow) LtDesc{compute, scale, POINTER_MODE_HOST, CUBLAS_OP_N,
                                      CUBLAS_OP_N, CUBLAS_OP_N, FILL_MODE_FULL, EPI_DEFAULT,
                                      nullptr, nullptr, 0, -1, -1};
    return *desc ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, int32_t attr,
                                              const void* buf, size_t size) {
    if (!d || !buf) return refuse(CUBLAS_STATUS_INVALID_VALUE, "MatmulDesc attribute: NULL");
    // The int32 enumerations, each checked against its range.
    auto ranged = [&](int32_t* dst, int32_t lo, int32_t hi, const char* what) {
        int32_t v = 0;
        if (cublasStatus_t s = take(&v, buf, size, what)) return s;
        if (v < lo || v > hi) return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s = %d", what, v);
        *dst = v;
        return CUBLAS_STATUS_SUCCESS;
    };
    auto data_type = [&](int32_t* dst, const char* what) {
        int32_t v = 0;
        if (cublasStatus_t s = take(&v, buf, size, what)) return s;
        if (v != -1 && !known_type(v)) {
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s = %d", what, v);
        }
        *dst = v;
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attr) {
        case DESC_COMPUTE_TYPE: return take(&d->compute, buf, size, "COMPUTE_TYPE");
        case DESC_SCALE_TYPE: return data_type(&d->scale, "SCALE_TYPE");
        case DESC_POINTER_MODE:
            return ranged(&d->pointer_mode, 0, POINTER_MODE_LAST, "POINTER_MODE");
        case DESC_TRANSA: return ranged(&d->transa, CUBLAS_OP_N, CUBLAS_OP_C, "TRANSA");
        case DESC_TRANSB: return ranged(&d->transb, CUBLAS_OP_N, CUBLAS_OP_C, "TRANSB");
        case DESC_TRANSC: return ranged(&d->transc, CUBLAS_OP_N, CUBLAS_OP_C, "TRANSC");
        case DESC_FILL_MODE: return ranged(&d->fill, 0, FILL_MODE_FULL, "FILL_MODE");
        case DESC_EPILOGUE: {
            uint32_t v = 0;
            if (cublasStatus_t s = take(&v, buf, size, "EPILOGUE")) return s;
            if (!known_epilogue(v)) return refuse(CUBLAS_STATUS_INVALID_VALUE, "epilogue %u", v);
            d->epilogue = v;
            return CUBLAS_STATUS_SUCCESS;
        }
        case DESC_BIAS_POINTER: return take(&d->bias, buf, size, "BIAS_POINTER");
        case DESC_BIAS_BATCH_STRIDE:  // read only with batches, refused at use
            return take_any(size, 8, "BIAS_BATCH_STRIDE");
        case DESC_EPILOGUE_AUX_POINTER: return take(&d->aux, buf, size, "EPILOGUE_AUX_POINTER");
        case DESC_EPILOGUE_AUX_LD: return take(&d->aux_ld, buf, size, "EPILOGUE_AUX_LD");
        case DESC_EPILOGUE_AUX_BATCH_STRIDE:  // read only with batches, refused at use
            return take_any(size, 8, "EPILOGUE_AUX_BATCH_STRIDE");
        case DESC_SM_COUNT_TARGET:  // a hint to the heuristic's choice among kernels
            return take_any(size, 4, "SM_COUNT_TARGET");
        case DESC_EPILOGUE_AUX_DATA_TYPE:
            return data_type(&d->aux_type, "EPILOGUE_AUX_DATA_TYPE");
        case DESC_BIAS_DATA_TYPE: return data_type(&d->bias_type, "BIAS_DATA_TYPE");
        case DESC_ALPHA_VECTOR_BATCH_STRIDE:
            return take_default(buf, size, 8, "ALPHA_VECTOR_BATCH_STRIDE");
        case DESC_A_SCALE_POINTER: case DESC_B_SCALE_POINTER: case DESC_C_SCALE_POINTER:
        case DESC_D_SCALE_POINTER: case DESC_AMAX_D_POINTER: case DESC_EPILOGUE_AUX_SCALE_POINTER:
        case DESC_EPILOGUE_AUX_AMAX_POINTER: case DESC_D_OUT_SCALE_POINTER:
        case DESC_EMULATION_DESCRIPTOR:
            return take_default(buf, size, sizeof(void*), "a scale, amax or emulation pointer");
        case DESC_FAST_ACCUM: return take_default(buf, size, 1, "FAST_ACCUM");
        case DESC_A_SCALE_MODE: case DESC_B_SCALE_MODE: case DESC_C_SCALE_MODE:
        case DESC_D_SCALE_MODE: case DESC_EPILOGUE_AUX_SCALE_MODE: case DESC_D_OUT_SCALE_MODE:
            return take_default(buf, size, 4, "a scale mode");
    }
    return refuse(CUBLAS_STATUS_INVALID_VALUE, "unknown matmul descriptor attribute %d", attr);
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
    if (!pref) return refuse(CUBLAS_STATUS_INVALID_VALUE, "PreferenceCreate: NULL out");
    *pref = new (std::nothrow) LtPref(default_pref());
    return *pref ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p, int32_t attr,
                                                    const void* buf, size_t size) {
    if (!p || !buf) return refuse(CUBLAS_STATUS_INVALID_VALUE, "Preference attribute: NULL");
    switch (attr) {
        case PREF_SEARCH_MODE: return take(&p->search_mode, buf, size, "SEARCH_MODE");
        // The one algorithm needs no workspace and no split-K reduction, so no limit on
        // either excludes it.
        case PREF_MAX_WORKSPACE_BYTES: return take_any(size, 8, "MAX_WORKSPACE_BYTES");
        case PREF_REDUCTION_SCHEME_MASK: return take_any(size, 4, "REDUCTION_SCHEME_MASK");
        case PREF_MIN_ALIGNMENT_A_BYTES: return take(&p->align[0], buf, size, "MIN_ALIGNMENT_A");
        case PREF_MIN_ALIGNMENT_B_BYTES: return take(&p->align[1], buf, size, "MIN_ALIGNMENT_B");
        case PREF_MIN_ALIGNMENT_C_BYTES: return take(&p->align[2], buf, size, "MIN_ALIGNMENT_C");
        case PREF_MIN_ALIGNMENT_D_BYTES: return take(&p->align[3], buf, size, "MIN_ALIGNMENT_D");
        // Filters on kernel traits (occupancy, instruction kinds) that the emulated
        // algorithm does not model; hgpt sets neither.
        case PREF_MAX_WAVES_COUNT: return take_any(size, 4, "MAX_WAVES_COUNT");
        case PREF_IMPL_MASK: return take_any(size, 8, "IMPL_MASK");
    }
    return refuse(CUBLAS_STATUS_INVALID_VALUE, "unknown preference attribute %d", attr);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[],
                                              int* returned) {
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "heuristic: NULL handle");
    if (requested <= 0 || !results || !returned || !pref) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "heuristic: requestedAlgoCount <= 0 or a NULL argument");
    }
    *returned = 0;
    cublasLtMatmulAlgo_t algo;
    if (cublasStatus_t s = find_algo(desc, a, b, c, d, *pref, &algo)) return s;
    results[0] = cublasLtMatmulHeuristicResult_t{algo, 0, CUBLAS_STATUS_SUCCESS, 1.0f, {0, 0, 0, 0}};
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                              const void* alpha, const void* A, cublasLtMatrixLayout_t a_l,
                              const void* B, cublasLtMatrixLayout_t b_l, const void* beta,
                              const void* C, cublasLtMatrixLayout_t c_l, void* D,
                              cublasLtMatrixLayout_t d_l, const cublasLtMatmulAlgo_t* algo,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    (void)stream;  // every call of the emulated device completes before it returns
    if (!handle) return refuse(CUBLAS_STATUS_NOT_INITIALIZED, "matmul: NULL handle");
    Problem p;
    if (cublasStatus_t s = check_problem(desc, a_l, b_l, c_l, d_l, true, &p)) return s;
    if (!c_l) c_l = d_l;
    if (!alpha || !beta) return refuse(CUBLAS_STATUS_INVALID_VALUE, "matmul: NULL alpha or beta");
    const float al = *(const float*)alpha, be = *(const float*)beta;
    if (!D || (p.k > 0 && (!A || !B)) || (be != 0 && !C)) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "matmul: a NULL matrix");
    }
    if (C == D && (c_l->type != d_l->type || c_l->rows != d_l->rows ||
                   c_l->cols != d_l->cols || c_l->ld != d_l->ld)) {
        // The guide: in place means C == D and Cdesc == Ddesc.
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "matmul: C == D with Cdesc != Ddesc");
    }
    if ((!workspace && workspace_bytes > 0) || (uintptr_t)workspace % 256 != 0) {
        // The guide: "Must be 256B aligned (i.e. lowest 8 bits of address must be 0)".
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "matmul: workspace %p of %zu bytes",
                      workspace, workspace_bytes);
    }
    cublasLtMatmulAlgo_t implicit;
    if (!algo) {
        // The guide: NULL runs "an implicit heuristics query with default search
        // preferences", whose alignments are 256 bytes.
        if (cublasStatus_t s = find_algo(desc, a_l, b_l, c_l, d_l, default_pref(), &implicit)) {
            return s;
        }
        algo = &implicit;
    }
    if (algo->data[0] != ALGO_MAGIC || algo->data[1] != config_key(desc, p)) {
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "matmul: the algorithm was found for another configuration");
    }
    const uint32_t e = desc->epilogue;
    const void* const ptrs[ALIGNS] = {A, B, C, D, adds_bias(e) ? desc->bias : nullptr,
                                      uses_aux(e) ? desc->aux : nullptr};
    static const char* const names[ALIGNS] = {"A", "B", "C", "D", "bias", "aux"};
    for (int i = 0; i < ALIGNS; i++) {
        if ((uintptr_t)ptrs[i] % algo->data[2 + i] != 0) {
            return refuse(CUBLAS_STATUS_EXECUTION_FAILED,
                          "matmul: %s at %p, but its algorithm assumes %llu-byte alignment",
                          names[i], ptrs[i], (unsigned long long)algo->data[2 + i]);
        }
    }
    const uint64_t m = p.m, n = p.n, k = p.k;
    // op(A) by rows and op(B) by columns, in fp32, so each dot product reads two runs.
    std::vector<float> ar(m * k), bc(n * k);
    const uint64_t lda = a_l->ld, ldb = b_l->ld, ldc = c_l->ld, ldd = d_l->ld;
    for (uint64_t i = 0; i < m; i++)
        for (uint64_t l = 0; l < k; l++)
            ar[i * k + l] = load(A, p.ab_type, p.trans_a ? l + i * lda : i + l * lda);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t l = 0; l < k; l++)
            bc[j * k + l] = load(B, p.ab_type, p.trans_b ? j + l * ldb : l + j * ldb);
    for (uint64_t j = 0; j < n; j++) {
        for (uint64_t i = 0; i < m; i++) {
            float acc = 0.0f;
            const float* x = &ar[i * k];
            const float* y = &bc[j * k];
            for (uint64_t l = 0; l < k; l++) {
                const float prod = x[l] * y[l];
                acc = acc + prod;
            }
            float v = al * acc;
            // BLAS's convention, which cuBLAS states for its GEMMs: with beta 0, C is not
            // read (it may hold anything, NaN included).
            if (be != 0) v = v + be * load(C, p.cd_type, i + j * ldc);
            if (adds_bias(e)) v = v + load(desc->bias, p.bias_type, i);
            if (applies_gelu(e)) {
                if (uses_aux(e)) store(desc->aux, p.aux_type, i + j * desc->aux_ld, v);
                v = gelu(v);
            } else if (e == EPI_DGELU) {
                v = v * gelu_grad(load(desc->aux, p.aux_type, i + j * desc->aux_ld));
            }
            store(D, p.cd_type, i + j * ldd, v);
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
