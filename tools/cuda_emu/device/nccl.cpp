// An emulated NCCL for the emulated device: the NCCL 2.30 calls hgpt makes
// (src/dist/nccl.rs, through cudarc's nccl::sys), built as the libnccl.so.2 cudarc loads:
//     g++ -std=c++17 -O2 -shared -fPIC -o libnccl.so.2 tools/cuda_emu/device/nccl.cpp
// so that data-parallel training on CUDA (`hgpt train --device cuda --ranks N`, one process
// per emulated device) runs on one machine with no GPU.
//
// How ranks meet: a rank is a process, and its device pointers are its own host pointers
// (device/libcuda.cpp), so data moves through POSIX shared memory. ncclGetUniqueId writes
// a fresh segment name and a random token into the 128-byte id; ncclCommInitRank(world, id,
// rank) opens (or creates) that segment, checks the token, the world size and that the rank
// is new, records its process id, and waits for the others; once all have joined, the name
// is unlinked (the mappings stay), so a run that crashes later leaves nothing behind. Every call is
// synchronous, as the emulated device's stream is: a collective copies this rank's operand
// into its slot of the segment with the call's description, waits for every rank, checks
// that all made the same call (kind, count, type, op, root), computes its own output from
// the slots, and waits again before the slots are reused (operands larger than a slot go
// in chunks). Sums run in rank order in the data type (rank 0's + rank 1's + ...), so a
// world of N gives the same bits on every run. A wait ends with an error, never a hang:
// when a rank fails (its call was invalid, or it called ncclCommAbort) the group's failed
// flag ends every wait; a peer whose process is gone, or that does not arrive within
// HGPT_EMU_NCCL_TIMEOUT_S seconds (default 300), is named on stderr. Once a call fails the
// communicator keeps that error (ncclCommGetAsyncError returns it; later calls fail too).
// A call on a communicator already destroyed or aborted (NCCL has freed it) is refused
// with a line on stderr.
//
// Semantics, from NVIDIA's NCCL documentation (collectives and in-place operations), read
// independently of hgpt's calls:
//   AllReduce(send, recv, count): recv = sum over ranks of send[0, count), on every rank.
//   ReduceScatter(send, recv, recvcount): send holds world * recvcount elements; recv on
//     rank r = block r of the sum. In place when recv == send + r * recvcount.
//   AllGather(send, recv, sendcount): recv holds world * sendcount; block j = rank j's send.
//     In place when send == recv + r * sendcount.
//   Broadcast(send, recv, count, root): recv = root's send (send used on the root only).
//   Reduce(send, recv, count, root): on root, recv = the sum; other ranks' recv untouched.
//   In place for AllReduce, Broadcast and Reduce is send == recv. Any other overlap of send
//   and recv is not defined by the documentation and is refused here.
// Types float32 and float64, op sum: what hgpt uses; anything else is refused with a line
// on stderr (ncclInvalidArgument). Buffers must lie inside one allocation of the emulated
// device (checked through its cuMemGetAddressRange when libcuda.so.1 is loaded). Calls
// between ncclGroupStart and ncclGroupEnd run at once, in order, which is what a group of
// collectives every rank issues in the same order amounts to.
//
// What it cannot check: NVLink, InfiniBand or any transport; real NCCL's algorithms (rings,
// trees) and their summation order, so its bits differ from a GPU's in the last places;
// timing, overlap with compute and stream ordering (everything is synchronous); and the
// hang a real group falls into where this one reports an error.
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

#define API extern "C" __attribute__((visibility("default")))

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclTimeout = 8,
} ncclResult_t;
typedef int ncclDataType_t;  // ncclFloat32 = 7, ncclFloat64 = 8 (of NCCL 2.30's twelve)
typedef int ncclRedOp_t;     // ncclSum = 0
typedef void* cudaStream_t;
typedef struct {
    char internal[128];
} ncclUniqueId;

namespace nccl {

const int FLOAT32 = 7, FLOAT64 = 8, SUM = 0;
const int MAX_RANKS = 64;
const size_t HEADER_BYTES = 1 << 16;
#ifndef HGPT_EMU_NCCL_DATA_BYTES
#define HGPT_EMU_NCCL_DATA_BYTES (32 << 20)
#endif
// Split into one slot per rank (tools/cuda_emu/nccl.cpp makes it small, to see chunking).
const size_t DATA_BYTES = HGPT_EMU_NCCL_DATA_BYTES;
const char MAGIC[] = "hgpt emulated NCCL";

enum Kind : int32_t { JOIN, ALL_REDUCE, REDUCE_SCATTER, ALL_GATHER, BROADCAST, REDUCE };
const char* const KIND_NAMES[] = {"join",      "ncclAllReduce", "ncclReduceScatter",
                                  "ncclAllGather", "ncclBroadcast", "ncclReduce"};

// What a rank called, published in its slot so the others can check they called the same.
struct Call {
    uint64_t seq;  // the communicator's call count
    int32_t kind, dtype, op, root;
    uint64_t count;
};

// The segment's header; the slots follow at HEADER_BYTES.
struct Header {
    std::atomic<uint32_t> state;   // 0 new, 1 being set up, 2 ready
    std::atomic<uint32_t> opened;  // ranks that have mapped it
    int32_t world;
    uint64_t token;
    std::atomic<uint32_t> bell;    // rung (futex-woken) on every arrival and failure
    std::atomic<uint32_t> failed;  // a rank failed or aborted: every wait ends
    std::atomic<int32_t> pid[MAX_RANKS];
    std::atomic<uint64_t> arrived[MAX_RANKS];  // barriers each rank has entered
    Call call[MAX_RANKS];
};
static_assert(sizeof(Header) <= HEADER_BYTES, "header");
static_assert(sizeof(std::atomic<uint32_t>) == 4 && std::atomic<uint64_t>::is_always_lock_free,
              "process-shared atomics");

// The id: MAGIC, the segment's name and the group's token.
struct Id {
    char magic[sizeof MAGIC];
    char name[64];
    uint64_t token;
};
static_assert(sizeof(Id) <= sizeof(ncclUniqueId), "unique id");

}  // namespace nccl

struct ncclComm {
    char name[64];
    nccl::Header* h;
    char* data;        // the slots
    size_t slot;       // bytes per rank
    int rank, world;
    uint64_t arrivals = 0, calls = 0;
    ncclResult_t error = ncclSuccess;  // sticky, once a call failed
};
typedef ncclComm* ncclComm_t;

namespace nccl {

double timeout_s() {
    const char* s = getenv("HGPT_EMU_NCCL_TIMEOUT_S");
    return s ? atof(s) : 300.0;
}

double now() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

void ring(std::atomic<uint32_t>* bell) {
    bell->fetch_add(1);
    syscall(SYS_futex, (uint32_t*)bell, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// Whether process pid still runs (one that ended but is not yet reaped is a zombie: 'Z').
bool alive(int pid) {
    if (pid <= 0 || (kill(pid, 0) != 0 && errno != EPERM)) return false;
    char path[32], stat[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE* f = fopen(path, "r");
    if (!f) return true;
    const size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = 0;
    const char* state = strrchr(stat, ')');
    return !(state && state[1] == ' ' && (state[2] == 'Z' || state[2] == 'X'));
}

// Records a failure: on stderr, in the communicator, and in the group (ending its waits).
ncclResult_t fail(ncclComm* c, ncclResult_t r, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
ncclResult_t fail(ncclComm* c, ncclResult_t r, const char* fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "emulated NCCL: rank %d: %s\n", c->rank, line);
    c->error = r;
    c->h->failed.store(1);
    ring(&c->h->bell);
    return r;
}

// Waits until every rank has entered as many barriers as this one (`what` names the call
// for the messages). Ends early when the group failed, a peer's process is gone, or the
// timeout passes.
ncclResult_t barrier(ncclComm* c, const char* what) {
    Header* h = c->h;
    const uint64_t n = ++c->arrivals;
    h->arrived[c->rank].store(n);
    ring(&h->bell);
    const double deadline = now() + timeout_s();
    for (;;) {
        const uint32_t bell = h->bell.load();
        int late = -1;
        for (int k = 0; k < c->world && late < 0; k++)
            if (h->arrived[k].load() < n) late = k;
        if (late < 0) return ncclSuccess;
        if (h->failed.load()) {
            c->error = ncclRemoteError;
            fprintf(stderr, "emulated NCCL: rank %d: %s: a peer rank failed the group\n", c->rank,
                    what);
            return ncclRemoteError;
        }
        const int pid = h->pid[late].load();
        if (pid != 0 && !alive(pid) && h->arrived[late].load() < n)
            return fail(c, ncclRemoteError, "%s: rank %d (process %d) ended without reaching it",
                        what, late, pid);
        if (now() > deadline)
            return fail(c, ncclTimeout, "%s: rank %d did not reach it within %g s", what, late,
                        timeout_s());
        timespec tick{0, 100 * 1000 * 1000};
        syscall(SYS_futex, (uint32_t*)&h->bell, FUTEX_WAIT, bell, &tick, nullptr, 0);
    }
}

// The communicators this process holds: a call on one destroyed or aborted (its memory
// freed, in NCCL too) is refused rather than followed.
std::mutex live_lock;
std::set<const ncclComm*> live;

bool usable(const ncclComm* c, const char* what) {
    std::lock_guard<std::mutex> g(live_lock);
    if (live.count(c)) return true;
    fprintf(stderr, "emulated NCCL: %s on %s\n", what,
            c ? "a communicator already destroyed or aborted" : "a null communicator");
    return false;
}

size_t type_bytes(ncclDataType_t t) { return t == FLOAT32 ? 4 : t == FLOAT64 ? 8 : 0; }
const char* type_name(ncclDataType_t t) {
    return t == FLOAT32 ? "float32" : t == FLOAT64 ? "float64" : "an unemulated type";
}

// The emulated device's allocation check, when its libcuda.so.1 is loaded.
typedef int (*AddressRange)(unsigned long long*, size_t*, unsigned long long);
AddressRange address_range() {
    static const AddressRange f = [] {
        void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        return lib ? (AddressRange)dlsym(lib, "cuMemGetAddressRange_v2") : nullptr;
    }();
    return f;
}

// Whether [p, p + bytes) lies inside one allocation (always, without the emulated device).
bool inside(const void* p, size_t bytes) {
    AddressRange range = address_range();
    if (!range || bytes == 0) return true;
    unsigned long long base = 0;
    size_t size = 0;
    if (range(&base, &size, (unsigned long long)p) != 0) return false;
    return (unsigned long long)p + bytes <= base + size;
}

bool overlap(const void* a, size_t an, const void* b, size_t bn) {
    const char *x = (const char*)a, *y = (const char*)b;
    return an && bn && x < y + bn && y < x + an;
}

void describe(char* out, size_t n, const Call& k) {
    snprintf(out, n, "%s of %llu %s, op %d, root %d", KIND_NAMES[k.kind],
             (unsigned long long)k.count, type_name(k.dtype), k.op, k.root);
}

// The collective's checks on this rank's own arguments. sends/recvs: elements each buffer
// spans; in_place: where recv must start for an in-place call (send and recv may then
// overlap, and must not otherwise).
ncclResult_t check(ncclComm* c, const Call& k, const void* send, size_t sends, void* recv,
                   size_t recvs, const void* in_place_recv) {
    const char* what = KIND_NAMES[k.kind];
    if (!usable(c, what)) return ncclInvalidArgument;
    if (c->error != ncclSuccess) {
        fprintf(stderr, "emulated NCCL: rank %d: %s on a communicator that already failed\n",
                c->rank, what);
        return c->error;
    }
    const size_t e = type_bytes(k.dtype);
    if (e == 0)
        return fail(c, ncclInvalidArgument, "%s: data type %d is not emulated (float32, float64)",
                    what, k.dtype);
    if (k.op != SUM)
        return fail(c, ncclInvalidArgument, "%s: reduction op %d is not emulated (sum)", what,
                    k.op);
    if (k.root < 0 || k.root >= c->world)
        return fail(c, ncclInvalidArgument, "%s: root %d is not a rank of %d", what, k.root,
                    c->world);
    if ((sends && !send) || (recvs && !recv))
        return fail(c, ncclInvalidArgument, "%s: a null buffer", what);
    if (!inside(send, sends * e) || !inside(recv, recvs * e))
        return fail(c, ncclInvalidArgument,
                    "%s: its %s buffer (%zu bytes at %p) is not inside one device allocation",
                    what, inside(send, sends * e) ? "receive" : "send",
                    (inside(send, sends * e) ? recvs : sends) * e,
                    inside(send, sends * e) ? recv : send);
    if (recv != in_place_recv && overlap(send, sends * e, recv, recvs * e))
        return fail(c, ncclInvalidArgument,
                    "%s: send and receive buffers overlap without being in place (receive "
                    "buffer at %p, in place would be %p)",
                    what, recv, in_place_recv);
    return ncclSuccess;
}

// Publishes this rank's call, waits for all, and checks every rank made the same one.
ncclResult_t meet(ncclComm* c, const Call& mine) {
    const char* what = KIND_NAMES[mine.kind];
    if (ncclResult_t r = barrier(c, what)) return r;
    for (int k = 0; k < c->world; k++) {
        const Call& theirs = c->h->call[k];
        if (theirs.seq != mine.seq || theirs.kind != mine.kind || theirs.count != mine.count ||
            theirs.dtype != mine.dtype || theirs.op != mine.op || theirs.root != mine.root) {
            char a[160], b[160];
            describe(a, sizeof a, mine);
            describe(b, sizeof b, theirs);
            return fail(c, ncclInvalidUsage,
                        "call %llu differs between ranks: this rank's %s, rank %d's call %llu %s",
                        (unsigned long long)mine.seq, a, k, (unsigned long long)theirs.seq, b);
        }
    }
    return ncclSuccess;
}

// out[i] = in[0][i] + in[1][i] + ... in rank order, in the data type.
template <class T>
void sum(T* out, const char* slots, size_t slot, size_t offset, int world, size_t n) {
    for (size_t i = 0; i < n; i++) {
        T acc = ((const T*)(slots + offset))[i];
        for (int k = 1; k < world; k++) acc += ((const T*)(slots + k * slot + offset))[i];
        out[i] = acc;
    }
}

void sum_typed(ncclDataType_t t, void* out, const char* slots, size_t slot, size_t offset,
               int world, size_t n) {
    if (t == FLOAT32) sum((float*)out, slots, slot, offset, world, n);
    else sum((double*)out, slots, slot, offset, world, n);
}

// One collective: `k` on every rank, in chunks of `per` elements of each rank's block,
// `blocks` blocks of `count` elements a rank (ReduceScatter's send, AllGather's receive).
// put copies this rank's part of chunk [a, a + m) into its slot; take computes its output.
template <class Put, class Take>
ncclResult_t collective(ncclComm* c, Call k, size_t blocks, Put put, Take take) {
    k.seq = ++c->calls;
    const size_t e = type_bytes(k.dtype);
    const size_t per = c->slot / (blocks * e);
    size_t a = 0;
    do {
        const size_t m = k.count - a < per ? k.count - a : per;
        c->h->call[c->rank] = k;
        put(c->data + c->rank * c->slot, a, m);
        if (ncclResult_t r = meet(c, k)) return r;
        take(a, m);
        if (ncclResult_t r = barrier(c, KIND_NAMES[k.kind])) return r;
        a += m;
    } while (a < k.count);
    return ncclSuccess;
}

thread_local int group_depth = 0;

}  // namespace nccl

using namespace nccl;

// ---- identity, errors, groups

API ncclResult_t ncclGetVersion(int* version) {
    *version = 23000;  // 2.30.0, the API cudarc binds
    return ncclSuccess;
}

API const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error";
        case ncclSystemError: return "unhandled system error (emulated NCCL: see its stderr line)";
        case ncclInternalError: return "internal error";
        case ncclInvalidArgument: return "invalid argument (emulated NCCL: see its stderr line)";
        case ncclInvalidUsage: return "invalid usage (emulated NCCL: see its stderr line)";
        case ncclRemoteError: return "remote process exited or there was a network error";
        case ncclInProgress: return "NCCL operation in progress";
        case ncclTimeout: return "timeout (emulated NCCL: see its stderr line)";
    }
    return "unknown result code";
}

API ncclResult_t ncclGroupStart() {
    group_depth++;
    return ncclSuccess;
}
API ncclResult_t ncclGroupEnd() {
    if (group_depth == 0) {
        fprintf(stderr, "emulated NCCL: ncclGroupEnd without ncclGroupStart\n");
        return ncclInvalidUsage;
    }
    group_depth--;
    return ncclSuccess;
}

// ---- communicators

API ncclResult_t ncclGetUniqueId(ncclUniqueId* out) {
    Id id;
    memset(&id, 0, sizeof id);
    memcpy(id.magic, MAGIC, sizeof MAGIC);
    if (getrandom(&id.token, sizeof id.token, 0) != (ssize_t)sizeof id.token) {
        fprintf(stderr, "emulated NCCL: no random bytes for a unique id: %s\n", strerror(errno));
        return ncclSystemError;
    }
    snprintf(id.name, sizeof id.name, "/hgpt-emu-nccl-%d-%016llx", (int)getpid(),
             (unsigned long long)id.token);
    memset(out, 0, sizeof *out);
    memcpy(out->internal, &id, sizeof id);
    return ncclSuccess;
}

API ncclResult_t ncclCommInitRank(ncclComm_t* out, int world, ncclUniqueId uid, int rank) {
    Id id;
    memcpy(&id, uid.internal, sizeof id);
    if (memcmp(id.magic, MAGIC, sizeof MAGIC) != 0 || !memchr(id.name, 0, sizeof id.name)) {
        fprintf(stderr, "emulated NCCL: the unique id was not made by ncclGetUniqueId\n");
        return ncclInvalidArgument;
    }
    if (world < 1 || world > MAX_RANKS || rank < 0 || rank >= world) {
        fprintf(stderr, "emulated NCCL: rank %d of a world of %d (at most %d ranks)\n", rank,
                world, MAX_RANKS);
        return ncclInvalidArgument;
    }
    const int fd = shm_open(id.name, O_RDWR | O_CREAT, 0600);
    // Every rank sizes the segment alike (whatever the world), so none truncates another's.
    if (fd < 0 || ftruncate(fd, HEADER_BYTES + DATA_BYTES) != 0) {
        fprintf(stderr, "emulated NCCL: rank %d cannot open shared memory %s: %s\n", rank,
                id.name, strerror(errno));
        if (fd >= 0) close(fd);
        return ncclSystemError;
    }
    void* m = mmap(nullptr, HEADER_BYTES + DATA_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        fprintf(stderr, "emulated NCCL: rank %d cannot map %s: %s\n", rank, id.name,
                strerror(errno));
        shm_unlink(id.name);
        return ncclSystemError;
    }
    ((Header*)m)->opened.fetch_add(1);
    ncclComm* c = new ncclComm;
    memcpy(c->name, id.name, sizeof c->name);
    c->h = (Header*)m;
    c->data = (char*)m + HEADER_BYTES;
    c->slot = DATA_BYTES / world / 64 * 64;
    c->rank = rank;
    c->world = world;
    Header* h = c->h;
    // The first rank in sets the group up; the others wait until it has.
    uint32_t fresh = 0;
    if (h->state.compare_exchange_strong(fresh, 1)) {
        h->world = world;
        h->token = id.token;
        h->state.store(2);
    }
    const double deadline = now() + timeout_s();
    while (h->state.load() != 2 && now() < deadline) usleep(1000);
    ncclResult_t r = ncclSuccess;
    int none = 0;
    if (h->state.load() != 2 || h->token != id.token)
        r = fail(c, ncclInvalidArgument, "shared memory %s does not hold this id's group",
                 id.name);
    else if (h->world != world)
        r = fail(c, ncclInvalidArgument, "joined a world of %d, but the group has %d ranks",
                 world, h->world);
    else if (!h->pid[rank].compare_exchange_strong(none, (int)getpid()))
        r = fail(c, ncclInvalidUsage, "rank %d already joined (process %d)", rank, none);
    else {
        // Joined and compared; the second wait keeps the join's description in place
        // until every rank has compared it.
        h->call[rank] = Call{0, JOIN, FLOAT32, SUM, 0, 0};
        r = meet(c, h->call[rank]);
        if (r == ncclSuccess) r = barrier(c, "join");
    }
    // Once every rank has mapped the segment its name is no longer needed. A group that
    // failed before then keeps it, so the ranks still to come find the failure rather
    // than a new group (where a rank claimed more ranks than exist, it stays behind).
    if (r == ncclSuccess || h->opened.load() >= (uint32_t)h->world) shm_unlink(id.name);
    if (r != ncclSuccess) {
        munmap(c->h, HEADER_BYTES + DATA_BYTES);
        delete c;
        return r;
    }
    std::lock_guard<std::mutex> g(live_lock);
    live.insert(c);
    *out = c;
    return ncclSuccess;
}

API ncclResult_t ncclCommDestroy(ncclComm_t c) {
    if (!usable(c, "ncclCommDestroy")) return ncclInvalidArgument;
    {
        std::lock_guard<std::mutex> g(live_lock);
        live.erase(c);
    }
    munmap(c->h, HEADER_BYTES + DATA_BYTES);
    delete c;
    return ncclSuccess;
}

// Ends this rank's part in the group: peers waiting in a collective fail at once.
API ncclResult_t ncclCommAbort(ncclComm_t c) {
    if (!usable(c, "ncclCommAbort")) return ncclInvalidArgument;
    c->h->failed.store(1);
    ring(&c->h->bell);
    return ncclCommDestroy(c);
}

API ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t* state) {
    if (!usable(c, "ncclCommGetAsyncError")) return ncclInvalidArgument;
    *state = c->error;
    return ncclSuccess;
}

API ncclResult_t ncclCommCount(const ncclComm_t c, int* count) {
    if (!usable(c, "ncclCommCount")) return ncclInvalidArgument;
    *count = c->world;
    return ncclSuccess;
}

API ncclResult_t ncclCommUserRank(const ncclComm_t c, int* rank) {
    if (!usable(c, "ncclCommUserRank")) return ncclInvalidArgument;
    *rank = c->rank;
    return ncclSuccess;
}

// ---- collectives (the stream is ignored: the emulated device runs everything at the call)

API ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t,
                               ncclRedOp_t op, ncclComm_t c, cudaStream_t) {
    const Call k{0, ALL_REDUCE, t, op, 0, count};
    if (ncclResult_t r = check(c, k, send, count, recv, count, send)) return r;
    const size_t e = type_bytes(t);
    return collective(
        c, k, 1, [&](char* slot, size_t a, size_t m) { memcpy(slot, (const char*)send + a * e, m * e); },
        [&](size_t a, size_t m) { sum_typed(t, (char*)recv + a * e, c->data, c->slot, 0, c->world, m); });
}

API ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recvcount,
                                   ncclDataType_t t, ncclRedOp_t op, ncclComm_t c, cudaStream_t) {
    const Call k{0, REDUCE_SCATTER, t, op, 0, recvcount};
    const size_t e = type_bytes(t);
    const int world = c ? c->world : 1, rank = c ? c->rank : 0;
    const void* in_place = (const char*)send + rank * recvcount * e;
    if (ncclResult_t r = check(c, k, send, world * recvcount, recv, recvcount, in_place)) return r;
    // A chunk's slot holds [a, a + m) of every block, block j at j * m.
    return collective(
        c, k, world,
        [&](char* slot, size_t a, size_t m) {
            for (int j = 0; j < world; j++)
                memcpy(slot + j * m * e, (const char*)send + (j * recvcount + a) * e, m * e);
        },
        [&](size_t a, size_t m) {
            sum_typed(t, (char*)recv + a * e, c->data, c->slot, rank * m * e, world, m);
        });
}

API ncclResult_t ncclAllGather(const void* send, void* recv, size_t sendcount, ncclDataType_t t,
                               ncclComm_t c, cudaStream_t) {
    const Call k{0, ALL_GATHER, t, SUM, 0, sendcount};
    const size_t e = type_bytes(t);
    const int world = c ? c->world : 1, rank = c ? c->rank : 0;
    const void* in_place = (const char*)send - rank * sendcount * e;
    if (ncclResult_t r = check(c, k, send, sendcount, recv, world * sendcount, in_place)) return r;
    return collective(
        c, k, 1, [&](char* slot, size_t a, size_t m) { memcpy(slot, (const char*)send + a * e, m * e); },
        [&](size_t a, size_t m) {
            for (int j = 0; j < world; j++)
                memmove((char*)recv + (j * sendcount + a) * e, c->data + j * c->slot, m * e);
        });
}

API ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t,
                               int root, ncclComm_t c, cudaStream_t) {
    const Call k{0, BROADCAST, t, SUM, root, count};
    const bool is_root = c && c->rank == root;
    if (ncclResult_t r = check(c, k, send, is_root ? count : 0, recv, count, send)) return r;
    const size_t e = type_bytes(t);
    return collective(
        c, k, 1,
        [&](char* slot, size_t a, size_t m) {
            if (is_root) memcpy(slot, (const char*)send + a * e, m * e);
        },
        [&](size_t a, size_t m) {
            memmove((char*)recv + a * e, c->data + root * c->slot, m * e);
        });
}

API ncclResult_t ncclBcast(void* buf, size_t count, ncclDataType_t t, int root, ncclComm_t c,
                           cudaStream_t s) {
    return ncclBroadcast(buf, buf, count, t, root, c, s);
}

API ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t t,
                            ncclRedOp_t op, int root, ncclComm_t c, cudaStream_t) {
    const Call k{0, REDUCE, t, op, root, count};
    const bool is_root = c && c->rank == root;
    if (ncclResult_t r = check(c, k, send, count, recv, is_root ? count : 0, send)) return r;
    const size_t e = type_bytes(t);
    return collective(
        c, k, 1, [&](char* slot, size_t a, size_t m) { memcpy(slot, (const char*)send + a * e, m * e); },
        [&](size_t a, size_t m) {
            if (is_root) sum_typed(t, (char*)recv + a * e, c->data, c->slot, 0, c->world, m);
        });
}
