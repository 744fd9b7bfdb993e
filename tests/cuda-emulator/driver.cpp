// A stand-in for the CUDA driver (libcuda) and NVRTC that runs the project's kernels, and those
// burn's CUDA backend generates, on the CPU, so the host code, launch geometry and kernels can be
// tested where no GPU exists. NVRTC's "compile" builds the kernel source with the host C++
// compiler (device.h supplies CUDA's built-ins, include/ the headers burn's kernels include) into
// a shared library, the "PTX" names that library, and a launch runs every block in turn, each of
// its threads as a fiber that switches only at barriers and shuffles.
//
// What it checks: argument order and types, grid and block sizes, buffer sizes (each allocation
// ends at a guard page; copies are bounds-checked), shared-memory limits, barrier use (a barrier
// not every live thread reaches is reported), and the kernels' arithmetic; it exposes shared
// memory read before it is written and blocks that count on running in index order (their
// results change). What it cannot: the device's own float library and rounding (host libm and
// SSE here), races between blocks that run at once, memory ordering, and speed.
//
// OVSEG_CUDA_EMULATOR_FAIL=kernel:n makes the device fail mid-run, for testing the fallbacks.
//
// Built by tests/src/cuda_emulator.rs as libcuda.so and libnvrtc.so (the same file, both names).
#include <dlfcn.h>
#include <sys/stat.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "abi.h"

#ifndef EMU_SOURCE_DIR
#error "EMU_SOURCE_DIR (the folder holding device.h) must be defined"
#endif

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
};

namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr int kDefaultDynamicShared = 48 * 1024;
constexpr int kOptInShared = 227 * 1024;
constexpr size_t kStackBytes = 64 * 1024;

[[noreturn]] void fatal(const char* what) {
    std::fprintf(stderr, "cuda emulator: %s\n", what);
    std::abort();
}

CUresult fail(CUresult code, const std::string& why) {
    std::fprintf(stderr, "cuda emulator: %s\n", why.c_str());
    return code;
}

// ---- device memory: each allocation ends where an inaccessible page begins -------------------
struct Allocation {
    void* map;
    size_t map_bytes;
    size_t bytes;
};
std::mutex g_memory_lock;
std::map<uintptr_t, Allocation> g_allocations; // by start address
const size_t kPage = (size_t)sysconf(_SC_PAGESIZE);
constexpr unsigned char kCanary = 0xCB;

// The buffer ends as close to the guard page as `align` allows: 16 bytes (the widest load the
// kernels make) for device memory, so that reading even one element past the end of most buffers
// faults (the device aligns to 256 bytes; the kernels here need no more than 16), and what the
// kernel declares for its dynamic shared memory. Between the end and the guard page lies a canary
// that `overrun_buffer` checks.
void* allocate(size_t bytes, size_t align) {
    size_t rounded = (bytes + align - 1) / align * align;
    size_t pages = (rounded + kPage - 1) / kPage + 1;
    void* map = mmap(nullptr, pages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return nullptr;
    char* guard = (char*)map + (pages - 1) * kPage;
    mprotect(guard, kPage, PROT_NONE);
    char* start = guard - rounded;
    std::memset(map, kCanary, guard - (char*)map); // what lies around the buffer, checked after each launch
    std::memset(start, 0xA5, bytes);               // fresh device memory is not zero
    std::lock_guard<std::mutex> lock(g_memory_lock);
    g_allocations[(uintptr_t)start] = Allocation{map, pages * kPage, bytes};
    return start;
}

// The first allocation with a byte written just before or after it (in its mapping, short of the
// guard page), as "before|past the end of a N-byte buffer"; empty when none.
std::string overrun_buffer() {
    std::lock_guard<std::mutex> lock(g_memory_lock);
    for (const auto& [start, a] : g_allocations) {
        const unsigned char *map = (const unsigned char*)a.map, *buffer = (const unsigned char*)start;
        const unsigned char* guard = map + a.map_bytes - kPage;
        auto dirty = [](const unsigned char* from, const unsigned char* to) {
            for (; from < to; ++from)
                if (*from != kCanary) return true;
            return false;
        };
        bool before = dirty(map, buffer), after = dirty(buffer + a.bytes, guard);
        if (!before && !after) continue;
        // Reported once: the canary goes back for the launches that follow.
        std::memset((void*)map, kCanary, buffer - map);
        std::memset((void*)(buffer + a.bytes), kCanary, guard - buffer - a.bytes);
        return (before ? "before a " : "past the end of a ") + std::to_string(a.bytes) + "-byte buffer";
    }
    return "";
}

// Whether [at, at + bytes) lies inside one allocation.
bool device_range(CUdeviceptr at, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_memory_lock);
    auto it = g_allocations.upper_bound((uintptr_t)at);
    if (it == g_allocations.begin()) return false;
    --it;
    return at >= it->first && at + bytes <= it->first + it->second.bytes;
}

CUresult check_range(CUdeviceptr at, size_t bytes, const char* what) {
    if (device_range(at, bytes)) return CUDA_SUCCESS;
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s: %zu bytes at 0x%llx are not inside one device allocation", what, bytes, at);
    return fail(CUDA_ERROR_INVALID_VALUE, msg);
}

// ---- fibers ------------------------------------------------------------------------------------
extern "C" void emu_switch(void** save_sp, void* next_sp);
// Saves the callee-saved registers on the current stack, stores the stack pointer and resumes the
// other stack (the floating-point control words are left alone: no kernel changes them).
// Hand-written because ucontext's switch makes a system call, and a block of 128 threads switches
// tens of times per pixel.
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
    EmuThread thread;
    State state = State::Done;
    void* sp = nullptr;
    unsigned char* stack = nullptr; // kStackBytes, above an inaccessible page
};

struct Launch {
    void (*entry)(void**);
    void** args;
    EmuThread** current; // the kernel library's __emu_current
};

void* g_scheduler_sp = nullptr;
std::vector<uintptr_t> g_stack_guards; // the inaccessible page below each fiber's stack
Fiber* g_running = nullptr;
Launch g_launch;

void fiber_main() {
    Fiber* f = g_running;
    g_launch.entry(g_launch.args);
    f->state = State::Done;
    emu_switch(&f->sp, g_scheduler_sp);
    fatal("a finished fiber was resumed");
}

void park(State state) {
    Fiber* f = g_running;
    f->state = state;
    emu_switch(&f->sp, g_scheduler_sp); // the scheduler points the kernel at this thread again
}
void sync_block() { park(State::AtBlockBarrier); }
void sync_warp() { park(State::AtWarpBarrier); }

void start_fiber(Fiber& f) {
    if (!f.stack) {
        // A guard page below, so that a kernel overflowing its stack faults instead of writing
        // over another fiber's.
        void* map = mmap(nullptr, kStackBytes + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED) fatal("no memory for a fiber stack");
        mprotect(map, kPage, PROT_NONE);
        g_stack_guards.push_back((uintptr_t)map);
        f.stack = (unsigned char*)map + kPage;
    }
    uintptr_t top = ((uintptr_t)f.stack + kStackBytes) & ~(uintptr_t)15;
    // emu_switch's frame: six registers, then the "return" into fiber_main, which must find the
    // stack as a call leaves it (8 below a 16-byte boundary).
    uint64_t* sp = (uint64_t*)(top - 64);
    for (int i = 0; i < 6; ++i) sp[i] = 0;
    sp[6] = (uint64_t)(uintptr_t)&fiber_main;
    f.sp = sp;
    f.state = State::Runnable;
}

// Runs one block to the end; false (with the reason printed) when barriers cannot be met.
// Between barriers the threads run one at a time, in an order that changes from round to round
// (a start and a direction drawn from a fixed-seed generator): a read that needs a barrier it
// does not have then sees a stale value in some round, as it may on the device.
bool run_block(std::vector<Fiber>& fibers, unsigned count) {
    static uint64_t order_state = 0x9E3779B97F4A7C15ull;
    for (;;) {
        bool any_live = false;
        order_state = order_state * 6364136223846793005ull + 1442695040888963407ull;
        unsigned start = (unsigned)(order_state >> 33) % count;
        bool backwards = (order_state >> 20) & 1;
        for (unsigned k = 0; k < count; ++k) {
            unsigned i = backwards ? (start + count - k) % count : (start + k) % count;
            Fiber& f = fibers[i];
            if (f.state != State::Runnable) continue;
            g_running = &f;
            *g_launch.current = &f.thread;
            emu_switch(&g_scheduler_sp, f.sp);
        }
        // Every thread is parked or done: release each warp whose live threads all wait at a
        // warp barrier, then the block if all its live threads wait at the block barrier.
        bool released = false, all_at_block = true;
        for (unsigned w = 0; w < count; w += 32) {
            bool warp_live = false, warp_ready = true;
            for (unsigned i = w; i < count && i < w + 32; ++i) {
                State s = fibers[i].state;
                if (s == State::Done) continue;
                any_live = warp_live = true;
                if (s != State::AtWarpBarrier) warp_ready = false;
                if (s != State::AtBlockBarrier) all_at_block = false;
            }
            if (warp_live && warp_ready) {
                for (unsigned i = w; i < count && i < w + 32; ++i)
                    if (fibers[i].state == State::AtWarpBarrier) fibers[i].state = State::Runnable;
                released = true;
            }
        }
        if (!any_live) return true;
        if (released) continue;
        if (all_at_block) {
            for (unsigned i = 0; i < count; ++i)
                if (fibers[i].state == State::AtBlockBarrier) fibers[i].state = State::Runnable;
            continue;
        }
        std::fprintf(stderr, "cuda emulator: block (%u,%u,%u): threads wait at barriers the others never reach\n",
                     fibers[0].thread.block_idx.x, fibers[0].thread.block_idx.y, fibers[0].thread.block_idx.z);
        return false;
    }
}

// The order a launch runs its blocks in: k -> (a k + c) mod n, with a and c drawn anew for each
// launch (a coprime to n, so every block runs once). The device promises no order; a kernel that
// reads what another block of the same launch writes then sees it in some launches and not in
// others.
class BlockOrder {
public:
    explicit BlockOrder(unsigned long long n) : n_(n) {
        static uint64_t state = 0x2545F4914F6CDD1Dull;
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        a_ = n_ > 1 ? (state >> 17) % n_ : 1;
        while (std::gcd(a_, n_) != 1) ++a_;
        c_ = n_ > 0 ? (state >> 5) % n_ : 0;
    }
    unsigned long long at(unsigned long long k) const { return (unsigned long long)(((unsigned __int128)a_ * k + c_) % n_); }

private:
    unsigned long long n_, a_, c_;
};

// A kernel that touches memory outside its buffers hits a guard page: name it before dying. A
// fault anywhere else (outside a launch, or on another thread) goes to the handler installed
// before this one.
std::atomic<const char*> g_kernel_name{nullptr}; // while a launch runs
std::atomic<pthread_t> g_launch_thread{};
struct sigaction g_previous_segv, g_previous_bus;

void on_fault(int sig, siginfo_t* info, void* context) {
    const char* kernel = g_kernel_name.load();
    if (!kernel || !pthread_equal(pthread_self(), g_launch_thread.load())) {
        const struct sigaction& previous = sig == SIGSEGV ? g_previous_segv : g_previous_bus;
        if (previous.sa_flags & SA_SIGINFO) {
            previous.sa_sigaction(sig, info, context);
        } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
            previous.sa_handler(sig);
        } else {
            signal(sig, SIG_DFL); // the instruction faults again, and the process ends as it would have
        }
        return;
    }
    uintptr_t at = (uintptr_t)info->si_addr;
    bool stack = std::any_of(g_stack_guards.begin(), g_stack_guards.end(), [at](uintptr_t g) { return at >= g && at < g + kPage; });
    const char* what = stack ? " overflowed a thread's stack (64 KB here; a larger local array or deeper calls than the emulator allows)\n"
                             : " touched memory outside its buffers (the device reports CUDA_ERROR_ILLEGAL_ADDRESS)\n";
    const char* parts[] = {"cuda emulator: kernel ", kernel, what};
    for (const char* p : parts) (void)!write(2, p, std::strlen(p));
    _exit(70);
}

// Runs on the thread's alternate signal stack (Rust gives every thread one), since the fault may
// come on a fiber's small stack.
void catch_faults() {
    static bool installed = false;
    if (installed) return;
    installed = true;
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, &g_previous_segv);
    sigaction(SIGBUS, &sa, &g_previous_bus);
}

// ---- modules -----------------------------------------------------------------------------------
// A library's static `__shared__` variables (see device.h).
struct StaticShared {
    char* start;
    unsigned long bytes;
};
struct Module {
    void* library;
    EmuThread** current;
    StaticShared shared;
    unsigned shared_align; // of its dynamic shared memory
};
struct Function {
    void (*entry)(void**);
    EmuThread** current;
    StaticShared shared;
    unsigned shared_align;
    int max_dynamic_shared = kDefaultDynamicShared;
    std::string name;
};

std::mutex g_launch_lock; // one launch at a time: fibers and the kernels' globals are shared

// A device that fails mid-run, for testing the fallbacks: OVSEG_CUDA_EMULATOR_FAIL=kernel:n makes
// the n-th launch of that kernel fail. As on a device, the launch itself is accepted and the
// error (CUDA_ERROR_ILLEGAL_ADDRESS) comes from the next synchronisation or copy, and from every
// call after it: a device's error is sticky.
std::atomic<bool> g_device_lost{false};
int g_context_token; // the one context and stream handed out
int g_stream_token;

// Whether this launch is the one that fails (it is then skipped, and the device lost).
bool injected_launch_failure(const std::string& kernel) {
    static std::mutex lock;
    static unsigned launches = 0;
    std::lock_guard<std::mutex> guard(lock);
    const char* spec = std::getenv("OVSEG_CUDA_EMULATOR_FAIL");
    std::string s = spec ? spec : "";
    size_t colon = s.rfind(':');
    if (g_device_lost || colon == std::string::npos || s.substr(0, colon) != kernel) return false;
    if (++launches != std::strtoul(s.c_str() + colon + 1, nullptr, 10)) return false;
    g_device_lost = true;
    return true;
}

CUresult device_state() {
    if (!g_device_lost) return CUDA_SUCCESS;
    return fail(CUDA_ERROR_ILLEGAL_ADDRESS, std::string("the device has failed (OVSEG_CUDA_EMULATOR_FAIL=") + std::getenv("OVSEG_CUDA_EMULATOR_FAIL") + ")");
}

// ---- NVRTC -------------------------------------------------------------------------------------
// The "PTX" the emulator's NVRTC returns: this tag and the path of the kernel library.
constexpr const char* kImageTag = "// ovseg-cuda-emulator library: ";

struct Program {
    std::string source, name, log, library;
};

// Where kernel libraries go, made if missing: OVSEG_CUDA_EMULATOR_DIR, else a folder of this
// user's under /tmp.
std::string kernels_dir() {
    const char* dir = std::getenv("OVSEG_CUDA_EMULATOR_DIR");
    std::string path = dir && *dir ? dir : "/tmp/ovseg-cuda-emulator-" + std::to_string(getuid());
    mkdir(path.c_str(), 0700); // an existing folder stays as it is
    return path;
}

std::string read_file(const std::string& path) {
    std::string text;
    if (FILE* in = std::fopen(path.c_str(), "r")) {
        char buf[4096];
        for (size_t n; (n = std::fread(buf, 1, sizeof buf, in)) > 0;) text.append(buf, n);
        std::fclose(in);
    }
    return text;
}

// The kernel source as host C++: dynamic shared memory becomes the block's buffer, and each
// `extern "C" __global__` kernel gets an entry point taking the launch's argument array. Only
// the forms the project's kernels and burn's use are understood; another is refused with
// `error` set.
std::string host_source(const std::string& src, std::vector<std::string>& kernels, std::string& error) {
    std::string out;
    size_t at = 0, shared_align = 16;
    const std::string dynamic = "extern __shared__";
    for (size_t hit; (hit = src.find(dynamic, at)) != std::string::npos;) {
        size_t end = src.find(';', hit);
        std::string decl = src.substr(hit + dynamic.size(), end == std::string::npos ? std::string::npos : end - hit - dynamic.size());
        size_t bracket = decl.find("[]");
        if (end == std::string::npos || bracket == std::string::npos) {
            error = "emulator: cannot read the declaration `" + dynamic + decl.substr(0, 60) + "` (expected `extern __shared__ T name[];`)";
            return "";
        }
        size_t name_start = decl.find_last_of(" *", bracket) + 1;
        std::string type = decl.substr(0, name_start), name = decl.substr(name_start, bracket - name_start);
        // An alignment (`__align__(128) uint8 smem[]`, as burn's kernels write it) goes to the
        // allocation; it has no place in the cast.
        for (size_t a; (a = type.find("__align__(")) != std::string::npos;) {
            shared_align = std::max(shared_align, (size_t)std::strtoul(type.c_str() + a + 10, nullptr, 10));
            type.erase(a, type.find(')', a) + 1 - a);
        }
        out += src.substr(at, hit - at) + type + "* " + name + " = (" + type + "*)__emu_current->dynamic_shared";
        at = end;
    }
    out += src.substr(at);
    const std::string global = "extern \"C\" __global__ void ";
    for (size_t hit = 0; (hit = src.find(global, hit)) != std::string::npos; hit += global.size()) {
        size_t start = hit + global.size();
        // Attributes before the name: `__launch_bounds__(256)`, `__cluster_dims__(2, 1, 1)`.
        for (size_t open; src.compare(start, 2, "__") == 0 && (open = src.find('(', start)) < src.find_first_of(" \n", start) &&
                          src.compare(open - 2, 2, "__") == 0;)
            start = src.find_first_not_of(" \n", src.find(')', open) + 1);
        std::string name = src.substr(start, src.find_first_of(" (", start) - start);
        if (std::find(kernels.begin(), kernels.end(), name) == kernels.end()) kernels.push_back(name); // declared, then defined
    }
    out += "\nextern \"C\" const unsigned __emu_shared_align = " + std::to_string(shared_align) + ";\n";
    for (const auto& k : kernels) out += "extern \"C\" void __emu_entry_" + k + "(void** args) { __emu_invoke(" + k + ", args); }\n";
    return out;
}

} // namespace

extern "C" {

// ---- driver: device and context ----------------------------------------------------------------
CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(int* device, int ordinal) {
    if (ordinal != 0) return fail(CUDA_ERROR_INVALID_VALUE, "only device 0 exists");
    *device = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, "%s", "CUDA emulator on the CPU");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, int) {
    *bytes = (size_t)8 << 30;
    return CUDA_SUCCESS;
}
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    *free_bytes = *total = (size_t)8 << 30;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* value, int attribute, int) {
    switch (attribute) {
    case 1: *value = (int)kMaxThreads; break;      // max threads per block
    case 2: case 3: *value = 1024; break;          // max block dim x, y
    case 4: *value = 64; break;                    // max block dim z
    case 5: *value = 0x7fffffff; break;            // max grid dim x
    case 6: case 7: *value = 65535; break;         // max grid dim y, z
    case 8: *value = kDefaultDynamicShared; break; // shared memory per block
    case 10: *value = 32; break;                   // warp size
    case 13: *value = 1000000; break;              // clock rate, kHz
    case 16: *value = 1; break;                    // multiprocessors
    case 75: *value = 8; break;                    // compute capability 8.7, Jetson Orin's: burn
    case 76: *value = 7; break;                    // then uses its tensor cores (TF32) as there
    case 97: *value = kOptInShared; break;         // opt-in shared memory per block
    case 115: *value = 0; break;                   // memory pools: no, so allocations are synchronous
    default: return fail(CUDA_ERROR_INVALID_VALUE, "device attribute " + std::to_string(attribute) + " is not emulated");
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &g_context_token;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = &g_context_token;
    return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() { return device_state(); }

// ---- streams and events: every operation completes before it returns ---------------------------
CUresult cuStreamCreate(void** stream, unsigned) {
    *stream = &g_stream_token;
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(void*) { return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(void*) { return device_state(); }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return CUDA_SUCCESS; }
CUresult cuEventCreate(void** event, unsigned) {
    *event = new int(0);
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(void* event) {
    delete (int*)event;
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(void*, void*) { return CUDA_SUCCESS; }
CUresult cuEventSynchronize(void*) { return device_state(); }
CUresult cuEventQuery(void*) { return CUDA_SUCCESS; }

// ---- memory ------------------------------------------------------------------------------------
CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) {
    void* at = allocate(bytes == 0 ? 1 : bytes, 16);
    if (!at) return fail(CUDA_ERROR_OUT_OF_MEMORY, "out of memory for " + std::to_string(bytes) + " bytes");
    *ptr = (CUdeviceptr)(uintptr_t)at;
    return CUDA_SUCCESS;
}
CUresult cuMemFree_v2(CUdeviceptr ptr) {
    std::lock_guard<std::mutex> lock(g_memory_lock);
    auto it = g_allocations.find((uintptr_t)ptr);
    if (it == g_allocations.end()) return fail(CUDA_ERROR_INVALID_VALUE, "freeing memory that was not allocated");
    munmap(it->second.map, it->second.map_bytes);
    g_allocations.erase(it);
    return CUDA_SUCCESS;
}
CUresult cuMemHostAlloc(void** ptr, size_t bytes, unsigned) {
    *ptr = std::malloc(bytes == 0 ? 1 : bytes);
    return *ptr ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* ptr) {
    std::free(ptr);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    if (CUresult r = device_state()) return r;
    if (CUresult r = check_range(dst, bytes, "host-to-device copy")) return r;
    std::memcpy((void*)(uintptr_t)dst, src, bytes);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = device_state()) return r;
    if (CUresult r = check_range(src, bytes, "device-to-host copy")) return r;
    std::memcpy(dst, (const void*)(uintptr_t)src, bytes);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = device_state()) return r;
    if (CUresult r = check_range(src, bytes, "device-to-device copy (source)")) return r;
    if (CUresult r = check_range(dst, bytes, "device-to-device copy (destination)")) return r;
    std::memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, bytes);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t bytes) {
    if (CUresult r = device_state()) return r;
    if (CUresult r = check_range(dst, bytes, "memset")) return r;
    std::memset((void*)(uintptr_t)dst, value, bytes);
    return CUDA_SUCCESS;
}
// Memory pools are not offered (attribute 115), but burn's CUDA runtime allocates this way anyway.
CUresult cuMemAllocAsync(CUdeviceptr* ptr, size_t bytes, void*) { return cuMemAlloc_v2(ptr, bytes); }
CUresult cuMemFreeAsync(CUdeviceptr ptr, void*) { return cuMemFree_v2(ptr); }
CUresult cuMemAllocHost_v2(void** ptr, size_t bytes) { return cuMemHostAlloc(ptr, bytes, 0); }

// CUDA_MEMCPY2D, between host and device memory (arrays are not emulated).
struct Memcpy2D {
    size_t src_x, src_y;
    int src_type;
    const void* src_host;
    CUdeviceptr src_device;
    void* src_array;
    size_t src_pitch, dst_x, dst_y;
    int dst_type;
    void* dst_host;
    CUdeviceptr dst_device;
    void* dst_array;
    size_t dst_pitch, width, height;
};
enum : int { MEMORY_HOST = 1, MEMORY_DEVICE = 2 };

// The first byte of one side of a 2D copy; a device side must lie inside one allocation.
CUresult copy_side(int type, const void* host, CUdeviceptr device, size_t x, size_t y, size_t pitch, const Memcpy2D& c,
                   const char* what, char** at) {
    if (type != MEMORY_HOST && type != MEMORY_DEVICE) return fail(CUDA_ERROR_NOT_SUPPORTED, std::string(what) + ": memory type " + std::to_string(type) + " is not emulated");
    char* first = (type == MEMORY_HOST ? (char*)host : (char*)(uintptr_t)device) + y * pitch + x;
    if (type == MEMORY_DEVICE && c.height > 0) {
        if (CUresult r = check_range((CUdeviceptr)(uintptr_t)first, (c.height - 1) * pitch + c.width, what)) return r;
    }
    *at = first;
    return CUDA_SUCCESS;
}
CUresult cuMemcpy2DAsync_v2(const Memcpy2D* c, void*) {
    if (CUresult r = device_state()) return r;
    if (c->height > 1 && (c->width > c->src_pitch || c->width > c->dst_pitch))
        return fail(CUDA_ERROR_INVALID_VALUE, "2D copy: rows of " + std::to_string(c->width) + " bytes are wider than the pitch");
    char *src, *dst;
    if (CUresult r = copy_side(c->src_type, c->src_host, c->src_device, c->src_x, c->src_y, c->src_pitch, *c, "2D copy (source)", &src)) return r;
    if (CUresult r = copy_side(c->dst_type, c->dst_host, c->dst_device, c->dst_x, c->dst_y, c->dst_pitch, *c, "2D copy (destination)", &dst)) return r;
    for (size_t row = 0; row < c->height; ++row) std::memmove(dst + row * c->dst_pitch, src + row * c->src_pitch, c->width);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, void*) { return cuMemcpyHtoD_v2(dst, src, bytes); }
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, void*) { return cuMemcpyDtoH_v2(dst, src, bytes); }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void*) { return cuMemcpyDtoD_v2(dst, src, bytes); }
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes, void*) { return cuMemsetD8_v2(dst, value, bytes); }

// ---- modules and launches ----------------------------------------------------------------------
CUresult cuModuleLoadData(void** module, const void* image) {
    const std::string text = (const char*)image, tag = kImageTag;
    size_t at = text.find(tag);
    if (at == std::string::npos) return fail(CUDA_ERROR_INVALID_IMAGE, "the image was not made by the emulator's NVRTC");
    std::string path = text.substr(at + tag.size(), text.find('\n', at) - at - tag.size());
    void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library) return fail(CUDA_ERROR_INVALID_IMAGE, std::string("loading ") + path + ": " + dlerror());
    auto current = (EmuThread**)dlsym(library, "__emu_current");
    auto hooks = (EmuHooks*)dlsym(library, "__emu_hooks");
    auto static_shared = (void (*)(char**, unsigned long*))dlsym(library, "__emu_static_shared");
    auto shared_align = (const unsigned*)dlsym(library, "__emu_shared_align");
    if (!current || !hooks || !static_shared || !shared_align) return fail(CUDA_ERROR_INVALID_IMAGE, path + " lacks the emulator's hooks");
    *hooks = EmuHooks{sync_block, sync_warp};
    StaticShared shared;
    static_shared(&shared.start, &shared.bytes);
    *module = new Module{library, current, shared, *shared_align};
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(void* module) {
    delete (Module*)module; // the library stays loaded: another module may share it
    return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(void** function, void* module, const char* name) {
    auto m = (Module*)module;
    auto entry = (void (*)(void**))dlsym(m->library, (std::string("__emu_entry_") + name).c_str());
    if (!entry) return fail(CUDA_ERROR_NOT_FOUND, std::string("no kernel named ") + name);
    *function = new Function{entry, m->current, m->shared, m->shared_align, kDefaultDynamicShared, name};
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(void* function, int attribute, int value) {
    if (attribute != 8) return fail(CUDA_ERROR_NOT_SUPPORTED, "function attribute " + std::to_string(attribute) + " is not emulated");
    if (value < 0 || value > kOptInShared) return fail(CUDA_ERROR_INVALID_VALUE, "dynamic shared memory above the device's limit");
    ((Function*)function)->max_dynamic_shared = value;
    return CUDA_SUCCESS;
}
CUresult cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared_bytes, void*, void** args, void** extra) {
    auto f = (Function*)function;
    unsigned long long threads64 = (unsigned long long)bx * by * bz;
    char msg[200];
    if (extra) return fail(CUDA_ERROR_NOT_SUPPORTED, f->name + ": launch arguments through `extra` are not emulated");
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || gx > 0x7fffffffu || gy > 65535 || gz > 65535 ||
        bx > 1024 || by > 1024 || bz > 64) {
        std::snprintf(msg, sizeof msg, "%s: invalid launch grid (%u,%u,%u) block (%u,%u,%u)", f->name.c_str(), gx, gy, gz, bx, by, bz);
        return fail(CUDA_ERROR_INVALID_VALUE, msg);
    }
    if (threads64 > kMaxThreads) return fail(CUDA_ERROR_INVALID_VALUE, f->name + ": more than 1024 threads per block");
    unsigned threads = (unsigned)threads64;
    if (shared_bytes > (unsigned)f->max_dynamic_shared) {
        std::snprintf(msg, sizeof msg, "%s: %u bytes of dynamic shared memory, above the function's limit of %d", f->name.c_str(), shared_bytes, f->max_dynamic_shared);
        return fail(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, msg);
    }
    if (CUresult r = device_state()) return r;
    if (injected_launch_failure(f->name)) return CUDA_SUCCESS;
    std::lock_guard<std::mutex> lock(g_launch_lock);
    static std::vector<Fiber> fibers(kMaxThreads);
    // Guarded as device memory is (16-byte aligned, as on the device), so a kernel that overruns
    // what the launch asked for is caught.
    unsigned char* shared = shared_bytes ? (unsigned char*)allocate(shared_bytes, f->shared_align) : nullptr;
    std::vector<unsigned long long> shuffle(threads);
    g_launch = Launch{f->entry, args, f->current};
    catch_faults();
    g_launch_thread = pthread_self();
    g_kernel_name = f->name.c_str();
    CUresult result = CUDA_SUCCESS;
    const unsigned long long blocks = (unsigned long long)gx * gy * gz;
    const BlockOrder order(blocks);
    for (unsigned long long k = 0; k < blocks; ++k) {
        unsigned long long b = order.at(k);
        EmuDim block{(unsigned)(b % gx), (unsigned)(b / gx % gy), (unsigned)(b / ((unsigned long long)gx * gy))};
        if (shared) std::memset(shared, 0xA5, shared_bytes); // not zero, as on the device
        std::memset(f->shared.start, 0xA5, f->shared.bytes);  // nor what the last block left
        for (unsigned i = 0; i < threads; ++i) {
            EmuThread& t = fibers[i].thread;
            t.thread_idx = EmuDim{i % bx, (i / bx) % by, i / (bx * by)};
            t.block_idx = block;
            t.block_dim = EmuDim{bx, by, bz};
            t.grid_dim = EmuDim{gx, gy, gz};
            t.linear = i;
            t.dynamic_shared = shared;
            t.shuffle = shuffle.data();
            start_fiber(fibers[i]);
        }
        if (result == CUDA_SUCCESS && !run_block(fibers, threads)) result = fail(CUDA_ERROR_LAUNCH_FAILED, f->name + ": barrier mismatch");
    }
    g_kernel_name = nullptr;
    std::string hit = overrun_buffer(); // also after a failed launch, so the next is not blamed
    if (!hit.empty() && result == CUDA_SUCCESS) result = fail(CUDA_ERROR_LAUNCH_FAILED, f->name + " wrote " + hit);
    if (shared) cuMemFree_v2((CUdeviceptr)(uintptr_t)shared);
    return result;
}

const char* emu_error_text(CUresult r) {
    switch (r) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    default: return "CUDA_ERROR_UNKNOWN";
    }
}
CUresult cuGetErrorName(CUresult r, const char** name) {
    *name = emu_error_text(r);
    return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult r, const char** text) {
    *text = emu_error_text(r);
    return CUDA_SUCCESS;
}

// ---- NVRTC ---------------------------------------------------------------------------------------
int nvrtcVersion(int* major, int* minor) {
    *major = 13;
    *minor = 0;
    return 0;
}
const char* nvrtcGetErrorString(int r) { return r == 0 ? "NVRTC_SUCCESS" : r == 6 ? "NVRTC_ERROR_COMPILATION" : "NVRTC_ERROR"; }
int nvrtcCreateProgram(void** program, const char* source, const char* name, int, const char* const*, const char* const*) {
    *program = new Program{source, name ? name : "kernels.cu", "", ""};
    return 0;
}
int nvrtcDestroyProgram(void** program) {
    delete (Program*)*program;
    *program = nullptr;
    return 0;
}
// Compiles with the host compiler into a library named by the source's hash, reused when the same
// source comes again; options are NVRTC's and have no host equivalent, apart from what the
// build flags below already hold (no fused multiply-add, IEEE division and square root).
int nvrtcCompileProgram(void* program, int, const char* const*) {
    auto p = (Program*)program;
    std::vector<std::string> kernels;
    std::string source = host_source(p->source, kernels, p->log);
    if (source.empty()) return 6;
    // The key covers what the library is built from: the source, the headers and the command.
    const char* cxx = std::getenv("CXX");
    std::string compiler = std::string(cxx && *cxx ? cxx : "c++") + " -std=c++17 -O2 -fPIC -shared -ffp-contract=off -fno-fast-math" +
                           " -Wno-unknown-pragmas -include '" EMU_SOURCE_DIR "/device.h' -I '" EMU_SOURCE_DIR "' -I '" EMU_SOURCE_DIR "/include'";
    std::string key = source + compiler + read_file(EMU_SOURCE_DIR "/device.h") + read_file(EMU_SOURCE_DIR "/abi.h");
    std::vector<std::string> headers;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(EMU_SOURCE_DIR "/include"))
        if (entry.is_regular_file()) headers.push_back(entry.path().string());
    std::sort(headers.begin(), headers.end());
    for (const auto& header : headers) key += header + read_file(header);
    std::string base = kernels_dir() + "/kernels-" + std::to_string(std::hash<std::string>{}(key));
    p->library = base + ".so";
    if (access(p->library.c_str(), R_OK) == 0) return 0;
    std::string cpp = base + "." + std::to_string(getpid()) + ".cpp", log = cpp + ".log", tmp = cpp + ".so";
    FILE* out = std::fopen(cpp.c_str(), "w");
    if (!out) {
        p->log = "emulator: cannot write " + cpp;
        return 6;
    }
    std::fwrite(source.data(), 1, source.size(), out);
    std::fclose(out);
    int status = std::system((compiler + " -o '" + tmp + "' '" + cpp + "' > '" + log + "' 2>&1").c_str());
    p->log = read_file(log);
    if (status != 0) return 6;
    if (std::rename(tmp.c_str(), p->library.c_str()) != 0) { // atomic: a concurrent compile may win
        p->log += "emulator: cannot move " + tmp + " into place";
        return 6;
    }
    std::remove(cpp.c_str());
    std::remove(log.c_str());
    return 0;
}
int nvrtcGetPTXSize(void* program, size_t* size) {
    auto p = (Program*)program;
    *size = std::strlen(kImageTag) + p->library.size() + 2;
    return 0;
}
int nvrtcGetPTX(void* program, char* ptx) {
    auto p = (Program*)program;
    std::string text = kImageTag + p->library + "\n";
    std::memcpy(ptx, text.c_str(), text.size() + 1);
    return 0;
}
int nvrtcGetProgramLogSize(void* program, size_t* size) {
    *size = ((Program*)program)->log.size() + 1;
    return 0;
}
int nvrtcGetProgramLog(void* program, char* log) {
    auto p = (Program*)program;
    std::memcpy(log, p->log.c_str(), p->log.size() + 1);
    return 0;
}

} // extern "C"
