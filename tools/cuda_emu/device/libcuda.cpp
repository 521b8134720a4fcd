// libcuda.cpp: the emulated device. A stand-in for the NVIDIA driver (libcuda.so.1) that
// runs hgpt's real cuda/*.cu kernels on the CPU emulator (../emu.h), so that the whole
// CUDA backend (cudarc, the Rust launchers, the scratch slots, the memory plan, bf16
// buffers, the op order of a training step) runs on a machine with no GPU, and the GPU
// parity tests (tests/cuda_parity/) can compare it with the CPU backend in CI.
// tools/emulated_device.sh builds it (with device/cublaslt.cpp, a reference cuBLASLt) and
// runs the tests against it.
//
// What it is: one emulated H100-class device (sm_90, 132 SMs, 227 KiB of opt-in shared
// memory a block), one context, one stream. HGPT_EMU_DEVICES=n gives the machine n such
// devices (CUDA_VISIBLE_DEVICES narrows them as on a GPU machine), for data-parallel ranks
// in separate processes, each emulating the one it opens in its own memory (device/nccl.cpp
// connects them). Device memory is host memory: every
// allocation is its own mapping with an inaccessible page on each side, filled with NaN
// bytes (0xff) as cuMemAlloc leaves garbage, so a kernel or copy that runs off a buffer
// faults, and one that reads what nobody wrote gets NaN. Every call runs at once on the
// calling thread (launches serialised by one lock: the emulator's scheduler is global),
// so stream order holds trivially and events time host work. A module is the CUBIN NVRTC
// made (it is not run, only searched for the kernel's name); its kernels are the same
// source compiled here by g++, found by name in the table tools/emulated_device.sh
// generates from cuda/*.cu.
//
// What it checks that the kernel harnesses cannot: the launchers' real grids, blocks,
// dynamic shared memory (more than 48 KiB must be opted into with
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first, and at most 227 KiB), argument
// order and types as the Rust side passes them, buffer sizes against what kernels and
// copies touch, vector accesses at addresses a GPU would fault on (built with an
// alignment sanitizer), and everything the host does around them. What it cannot: timing, the
// hardware's races and memory model, register limits (tests/cuda_compile.rs reads
// ptxas's), and the real cuBLASLt's kernels.
#include "emu.h"
EMU_DYNAMIC_SHARED(smem);
EMU_DYNAMIC_SHARED(a);
#include "../../cuda/common.cuh"
#include "families.inc"  // #include of every cuda/*.cu (generated)

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#define API extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUstream;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

namespace dev {

// The device's memory: 80 GiB, or HGPT_EMU_MEMORY_MIB (to see a run refused or run out).
size_t total_from_env() {
    const char* mib = getenv("HGPT_EMU_MEMORY_MIB");
    return mib ? strtoull(mib, nullptr, 10) << 20 : 80ull << 30;
}
const size_t TOTAL_BYTES = total_from_env();

// The devices this process sees: HGPT_EMU_DEVICES (default 1) on the machine, each process
// emulating the one it opens in its own memory, narrowed by CUDA_VISIBLE_DEVICES as the
// driver does (its entries up to the first that names no device).
int visible_from_env() {
    const char* n = getenv("HGPT_EMU_DEVICES");
    const long machine = n ? strtol(n, nullptr, 10) : 1;
    const char* list = getenv("CUDA_VISIBLE_DEVICES");
    if (!list) return (int)machine;
    int count = 0;
    for (const char* p = list; *p; count++) {
        char* end;
        const long d = strtol(p, &end, 10);
        if (end == p || d < 0 || d >= machine || (*end && *end != ',')) break;
        p = *end ? end + 1 : end;
    }
    return count;
}
const int VISIBLE = visible_from_env();
const int OPTIN_SHARED = 232448;                 // 227 KiB, an sm_90 block's most
const int DEFAULT_SHARED = 48 << 10;             // without the opt-in
const size_t PAGE = 4096;

std::mutex lock;  // one launch (and one allocation table change) at a time

// ---- memory: a mapping per allocation, guarded on both sides

struct Allocation {
    char* base;    // the mapping, guard pages included
    size_t total;  // its length
    size_t bytes;  // what was asked for
};
std::map<CUdeviceptr, Allocation> allocations;
size_t live_bytes = 0;

// The allocation holding [p, p + n), or null (and a line on stderr naming `what`).
const Allocation* find(CUdeviceptr p, size_t n, const char* what) {
    auto it = allocations.upper_bound(p);
    if (it != allocations.begin()) {
        --it;
        if (p >= it->first && p + n <= it->first + it->second.bytes) return &it->second;
    }
    fprintf(stderr, "emulated device: %s of %zu bytes at 0x%llx is outside every allocation\n",
            what, n, p);
    return nullptr;
}

// ---- kernels: the emulator's functions, called with cuLaunchKernel's parameter array

using Entry = void (*)(void** params);

template <class... A, size_t... I>
void call_with(void (*f)(A...), void** params, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

template <auto F>
struct Kernel;
template <class... A, void (*F)(A...)>
struct Kernel<F> {
    // Every CUDA thread reads the arguments from the caller's values, which stay put
    // until the launch returns (kernels take them by value).
    static void run(void** params) { call_with(F, params, std::index_sequence_for<A...>{}); }
};

struct Function {
    const char* name;
    Entry entry;
    int max_dynamic_shared;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
};

#define KERNEL(name) {#name, Kernel<name>::run, DEFAULT_SHARED},
Function functions[] = {
#include "kernels.inc"  // KERNEL(name) for each kernel in cuda/*.cu (generated)
};

struct Module {
    std::string image;  // the CUBIN's bytes, searched for kernel names
};

// The byte length of an ELF64 image (a CUBIN): its section headers come last.
size_t elf_bytes(const unsigned char* p) {
    if (memcmp(p, "\x7f" "ELF", 4) != 0 || p[4] != 2) return 0;
    uint64_t shoff;
    uint16_t shentsize, shnum;
    memcpy(&shoff, p + 0x28, 8);
    memcpy(&shentsize, p + 0x3a, 2);
    memcpy(&shnum, p + 0x3c, 2);
    return shoff + (size_t)shentsize * shnum;
}

// A fault inside a kernel: name it before dying, as a GPU would report the launch
// failed. (Not thread_local: this library's TLS segment is the emulated shared memory.)
const char* running = nullptr;
void on_fault(int sig) {
    char line[256];
    const int n = snprintf(line, sizeof line,
                           "emulated device: kernel %s touched memory outside its buffers "
                           "(signal %d, block %u,%u, thread %d)\n",
                           running ? running : "(none: a host copy or cuBLASLt)", sig,
                           blockIdx.x, blockIdx.y, emu::cur);
    if (n > 0) (void)!write(2, line, (size_t)n);
    _exit(139);
}

// The handler runs on an alternate stack (a fault may come from a CUDA thread's small
// one): the thread's own if it has one (Rust's threads do), else one made here.
void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_fault;
        sa.sa_flags = SA_ONSTACK;
        sigaction(SIGSEGV, &sa, nullptr);
        sigaction(SIGBUS, &sa, nullptr);
    });
    stack_t old;
    if (sigaltstack(nullptr, &old) == 0 && (old.ss_flags & SS_DISABLE)) {
        stack_t ss;
        ss.ss_size = 1 << 16;
        ss.ss_sp = malloc(ss.ss_size);
        ss.ss_flags = 0;
        sigaltstack(&ss, nullptr);
    }
}

// HGPT_EMU_ORDER=forward|reverse|shuffled: the order blocks, and threads within a block,
// run in (shuffled by default: a kernel whose result depends on it, a missing barrier or
// an order-dependent sum, shows up; the shuffles are seeded, so a run repeats).
emu::Order order_from_env() {
    const char* o = getenv("HGPT_EMU_ORDER");
    if (o && strcmp(o, "forward") == 0) return emu::FORWARD;
    if (o && strcmp(o, "reverse") == 0) return emu::REVERSE;
    return emu::SHUFFLED;
}
const emu::Order order = order_from_env();

// HGPT_EMU_SEED=N seeds the shuffles (1 by default): two processes with different seeds
// run blocks and threads in different orders, so a deterministic step must still give
// them the same bits.
const bool seeded = [] {
    if (const char* s = getenv("HGPT_EMU_SEED")) emu::rng.seed(strtoul(s, nullptr, 10));
    return true;
}();

// HGPT_EMU_TRACE=1: one line on stderr per launch and copy.
const bool trace = getenv("HGPT_EMU_TRACE") != nullptr;

int context_token;    // the one context's handle points here
CUdevice opened = 0;  // the device whose context this process uses

}  // namespace dev

using namespace dev;

// ---- initialisation, the device and the context

API CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
// NVRTC opens the driver and asks for its private tables; there are none here.
API CUresult cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}
API CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetCount(int* n) {
    *n = VISIBLE;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal < 0 || ordinal >= VISIBLE) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "hgpt emulated device (sm_90, kernels on the CPU)");
    return CUDA_SUCCESS;
}
API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = TOTAL_BYTES;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *v = 1024; break;             // MAX_THREADS_PER_BLOCK
        case 2: *v = 1024; break;             // MAX_BLOCK_DIM_X
        case 3: *v = 1024; break;             // MAX_BLOCK_DIM_Y
        case 4: *v = 64; break;               // MAX_BLOCK_DIM_Z
        case 5: *v = 2147483647; break;       // MAX_GRID_DIM_X
        case 6: *v = 65535; break;            // MAX_GRID_DIM_Y
        case 7: *v = 65535; break;            // MAX_GRID_DIM_Z
        case 8: *v = DEFAULT_SHARED; break;   // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;              // WARP_SIZE
        case 12: *v = 65536; break;           // MAX_REGISTERS_PER_BLOCK
        case 16: *v = 132; break;             // MULTIPROCESSOR_COUNT
        case 75: *v = 9; break;               // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;               // COMPUTE_CAPABILITY_MINOR
        case 81: *v = 233472; break;          // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 97: *v = OPTIN_SHARED; break;    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: *v = 0; break;              // MEMORY_POOLS_SUPPORTED: plain cuMemAlloc
        default:
            fprintf(stderr, "emulated device: no value for device attribute %d\n", attribute);
            return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice d) {
    opened = d;
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
API CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
API CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
API CUresult cuCtxGetDevice(CUdevice* d) {
    *d = opened;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
API CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
API CUresult cuStreamQuery(CUstream) { return CUDA_SUCCESS; }  // its work ran at each call

// The codes this driver returns, with the driver's names and texts for them.
struct ErrorText {
    CUresult code;
    const char* name;
    const char* text;
};
const ErrorText error_texts[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
     "too many resources requested for launch"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
};
static CUresult describe(CUresult e, const char** out, bool name) {
    for (const ErrorText& t : error_texts)
        if (t.code == e) {
            *out = name ? t.name : t.text;
            return CUDA_SUCCESS;
        }
    *out = name ? "CUDA_ERROR_UNKNOWN" : "unknown error";
    return CUDA_ERROR_INVALID_VALUE;
}
API CUresult cuGetErrorString(CUresult e, const char** s) { return describe(e, s, false); }
API CUresult cuGetErrorName(CUresult e, const char** s) { return describe(e, s, true); }

// ---- memory

API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::mutex> g(lock);
    *total = TOTAL_BYTES;
    *free_bytes = TOTAL_BYTES - live_bytes;
    return CUDA_SUCCESS;
}

// The buffer ends where the guard page after it begins, rounded to cuMemAlloc's 256-byte
// alignment: an overrun of up to 255 bytes past an odd size lands in the rounding, any
// further one faults.
API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(lock);
    if (bytes > TOTAL_BYTES - live_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
    const size_t rounded = (bytes + 255) & ~(size_t)255;
    const size_t body = (rounded + PAGE - 1) & ~(PAGE - 1);
    const size_t total = body + 2 * PAGE;
    void* m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char* base = (char*)m;
    if (mprotect(base + PAGE, body, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, total);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    char* at = base + PAGE + body - rounded;
    memset(at, 0xff, rounded);
    *p = (CUdeviceptr)at;
    allocations[*p] = {base, total, bytes};
    live_bytes += bytes;
    return CUDA_SUCCESS;
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    munmap(it->second.base, it->second.total);
    live_bytes -= it->second.bytes;
    allocations.erase(it);
    return CUDA_SUCCESS;
}

// The allocation holding p (the emulated NCCL checks its buffers with it).
API CUresult cuMemGetAddressRange_v2(CUdeviceptr* base, size_t* bytes, CUdeviceptr p) {
    std::lock_guard<std::mutex> g(lock);
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin() || p >= std::prev(it)->first + std::prev(it)->second.bytes)
        return CUDA_ERROR_NOT_FOUND;
    --it;
    if (base) *base = it->first;
    if (bytes) *bytes = it->second.bytes;
    return CUDA_SUCCESS;
}

static CUresult copy(void* to, const void* from, size_t n, CUdeviceptr dev_to,
                     CUdeviceptr dev_from) {
    std::lock_guard<std::mutex> g(lock);
    if (trace) fprintf(stderr, "emulated device: copy %zu bytes 0x%llx <- 0x%llx\n", n,
                       dev_to ? dev_to : (CUdeviceptr)to, dev_from ? dev_from : (CUdeviceptr)from);
    if (dev_to && !find(dev_to, n, "a copy's destination")) return CUDA_ERROR_INVALID_VALUE;
    if (dev_from && !find(dev_from, n, "a copy's source")) return CUDA_ERROR_INVALID_VALUE;
    memmove(to, from, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr to, const void* from, size_t n) {
    return copy((void*)to, from, n, to, 0);
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr to, const void* from, size_t n, CUstream) {
    return copy((void*)to, from, n, to, 0);
}
API CUresult cuMemcpyDtoH_v2(void* to, CUdeviceptr from, size_t n) {
    return copy(to, (const void*)from, n, 0, from);
}
API CUresult cuMemcpyDtoHAsync_v2(void* to, CUdeviceptr from, size_t n, CUstream) {
    return copy(to, (const void*)from, n, 0, from);
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr to, CUdeviceptr from, size_t n) {
    return copy((void*)to, (const void*)from, n, to, from);
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr to, CUdeviceptr from, size_t n, CUstream) {
    return copy((void*)to, (const void*)from, n, to, from);
}

template <class T>
static CUresult fill(CUdeviceptr p, T value, size_t count) {
    std::lock_guard<std::mutex> g(lock);
    if (!find(p, count * sizeof(T), "a memset")) return CUDA_ERROR_INVALID_VALUE;
    if (p % sizeof(T) != 0) return CUDA_ERROR_INVALID_VALUE;
    std::fill((T*)p, (T*)p + count, value);
    return CUDA_SUCCESS;
}
API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return fill(p, v, n); }
API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream) {
    return fill(p, v, n);
}
API CUresult cuMemsetD16Async(CUdeviceptr p, unsigned short v, size_t n, CUstream) {
    return fill(p, v, n);
}
API CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, CUstream) {
    return fill(p, v, n);
}

// ---- modules and kernels

API CUresult cuModuleLoadData(void** module, const void* image) {
    const size_t n = elf_bytes((const unsigned char*)image);
    if (n == 0) return CUDA_ERROR_INVALID_IMAGE;
    *module = new Module{std::string((const char*)image, n)};
    return CUDA_SUCCESS;
}
API CUresult cuModuleUnload(void* module) {
    delete (Module*)module;
    return CUDA_SUCCESS;
}
API CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    // The CUBIN's string table holds the name, NUL-terminated, if the module has it.
    const std::string& image = ((Module*)module)->image;
    if (image.find(std::string(name) + '\0') == std::string::npos) return CUDA_ERROR_NOT_FOUND;
    for (Function& fn : functions)
        if (strcmp(fn.name, name) == 0) {
            *f = &fn;
            return CUDA_SUCCESS;
        }
    fprintf(stderr, "emulated device: kernel %s is in the CUBIN but not in the emulator's table\n",
            name);
    return CUDA_ERROR_NOT_FOUND;
}
API CUresult cuFuncSetAttribute(void* f, int attribute, int value) {
    if (attribute != 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        fprintf(stderr, "emulated device: function attribute %d is not emulated\n", attribute);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (value < 0 || value > OPTIN_SHARED) return CUDA_ERROR_INVALID_VALUE;
    ((Function*)f)->max_dynamic_shared = value;
    return CUDA_SUCCESS;
}

API CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned shared, CUstream,
                            void** params, void** extra) {
    Function* fn = (Function*)f;
    if (extra != nullptr || params == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return CUDA_ERROR_INVALID_VALUE;
    if (bx * by * bz == 0 || bx * by * bz > 1024 || bz > 64) return CUDA_ERROR_INVALID_VALUE;
    if ((int)shared > fn->max_dynamic_shared) {
        fprintf(stderr,
                "emulated device: kernel %s asks for %u bytes of dynamic shared memory, "
                "allowed %d\n",
                fn->name, shared, fn->max_dynamic_shared);
        return CUDA_ERROR_INVALID_VALUE;
    }
    // The emulator runs whole warps only; a real launch would run the partial warp.
    if ((bx * by) % 32 != 0 || bz != 1 || gz != 1) {
        fprintf(stderr, "emulated device: kernel %s launched with block %ux%ux%u, grid z %u: "
                "the emulator runs whole warps of 2-D blocks only\n", fn->name, bx, by, bz, gz);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    std::lock_guard<std::mutex> g(lock);
    install_fault_handler();
    if (trace)
        fprintf(stderr, "emulated device: %s grid %ux%u block %ux%u shared %u\n", fn->name, gx, gy,
                bx, by, shared);
    running = fn->name;
    emu::kernel_name = fn->name;
    emu::block_order = order;
    launch(dim3(gx, gy), dim3(bx, by), shared, order, [&] { fn->entry(params); });
    running = nullptr;
    return CUDA_SUCCESS;
}

// ---- events: host clocks, since every call has finished when it returns

struct Event {
    std::chrono::steady_clock::time_point at;
    bool recorded;
};
API CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{{}, false};
    return CUDA_SUCCESS;
}
API CUresult cuEventDestroy_v2(void* e) {
    delete (Event*)e;
    return CUDA_SUCCESS;
}
API CUresult cuEventRecord(void* e, CUstream) {
    *(Event*)e = {std::chrono::steady_clock::now(), true};
    return CUDA_SUCCESS;
}
API CUresult cuEventSynchronize(void*) { return CUDA_SUCCESS; }
API CUresult cuEventQuery(void*) { return CUDA_SUCCESS; }
API CUresult cuStreamWaitEvent(CUstream, void*, unsigned) { return CUDA_SUCCESS; }
static CUresult elapsed(float* ms, void* start, void* end) {
    const Event *a = (Event*)start, *b = (Event*)end;
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return CUDA_SUCCESS;
}
API CUresult cuEventElapsedTime(float* ms, void* start, void* end) { return elapsed(ms, start, end); }
API CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    return elapsed(ms, start, end);
}
