// Included ahead of a kernel file when the stand-in driver compiles it with the host C++
// compiler: CUDA's built-in variables, qualifiers and intrinsics as plain C++ over the thread the
// driver is running. Only what the project's kernels and burn's generated ones use.
#pragma once
#include <cmath>
#include <math.h> // CUDA's float overloads in the global namespace: `abs` of a float must not be C's integer abs
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "abi.h"

extern "C" {
EmuThread* __emu_current = nullptr;
EmuHooks __emu_hooks = {nullptr, nullptr};
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __grid_constant__
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __align__(n) __attribute__((aligned(n)))
// Blocks run one after another, so a function-level static is the running block's shared memory.
// All of them sit in one section, which the driver fills with a pattern before each block: shared
// memory does not start at zero, nor keep what the block before left there. (Not for `__shared__`
// in an inline or template function: its variable would need a section of its own.)
#define __shared__ static __attribute__((section("emu_shared")))
static char __emu_shared_anchor __attribute__((section("emu_shared"), used)); // the section exists
extern "C" char __start_emu_shared[], __stop_emu_shared[];                      // placed by the linker
extern "C" void __emu_static_shared(char** start, unsigned long* bytes) {
    *start = __start_emu_shared;
    *bytes = (unsigned long)(__stop_emu_shared - __start_emu_shared);
}

#define threadIdx (__emu_current->thread_idx)
#define blockIdx (__emu_current->block_idx)
#define blockDim (__emu_current->block_dim)
#define gridDim (__emu_current->grid_dim)
#define warpSize 32

inline void __syncthreads() { __emu_hooks.sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { __emu_hooks.sync_warp(); }

// Every lane of the warp writes its value, then reads lane `partner`'s; a lane whose partner
// lies beyond its warp or the block keeps its own, as on the device.
// (The full warp width only; the mask is not checked.)
template <typename T>
inline T __emu_shuffle(T value, unsigned partner) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a type wider than 64 bits");
    EmuThread* me = __emu_current;
    unsigned threads = me->block_dim.x * me->block_dim.y * me->block_dim.z;
    std::memcpy(&me->shuffle[me->linear], &value, sizeof(T));
    __syncwarp();
    T out = value;
    if (partner / 32 == me->linear / 32 && partner < threads) std::memcpy(&out, &me->shuffle[partner], sizeof(T));
    __syncwarp();
    return out;
}

template <typename T>
inline T __shfl_down_sync(unsigned, T value, unsigned delta) {
    return __emu_shuffle(value, __emu_current->linear + delta);
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask) {
    unsigned me = __emu_current->linear;
    return __emu_shuffle(value, me - me % 32 + ((me % 32) ^ ((unsigned)lane_mask & 31u)));
}

template <typename T>
struct EmuSame {
    using type = T;
};

// One block runs at a time, and its threads only switch at barriers: a plain add is atomic here.
// The value takes the pointer's type, so `atomicAdd(&unsigned_counter, 1)` compiles as in CUDA.
template <typename T>
inline T atomicAdd(T* at, typename EmuSame<T>::type value) {
    T old = *at;
    *at = old + value;
    return old;
}

inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
// Reinterprets the bits of a value of the same size.
template <typename To, typename From>
inline To __emu_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
    To out;
    std::memcpy(&out, &v, sizeof out);
    return out;
}
inline float __int_as_float(int v) { return __emu_bits<float>(v); }
inline int __float_as_int(float f) { return __emu_bits<int>(f); }
inline float __uint_as_float(unsigned v) { return __emu_bits<float>(v); }
inline unsigned __float_as_uint(float f) { return __emu_bits<unsigned>(f); }

// CUDA's min/max: integer arguments of mixed types compare in their common type; floats follow
// fminf/fmaxf (a NaN loses).
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin((C)a, (C)b);
    else return (C)a < (C)b ? (C)a : (C)b;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax((C)a, (C)b);
    else return (C)a < (C)b ? (C)b : (C)a;
}

using std::isinf;
using std::isnan;

// The driver calls `__emu_entry_<kernel>(args)` on each emulated thread: the argument array of
// cuLaunchKernel (one pointer per parameter) unpacked by the kernel's own parameter types.
template <typename... P, std::size_t... I>
inline void __emu_call(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(args[I])...);
}
template <typename... P>
inline void __emu_invoke(void (*kernel)(P...), void** args) {
    __emu_call(kernel, args, std::index_sequence_for<P...>{});
}
