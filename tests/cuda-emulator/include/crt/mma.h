// Warp matrix operations (nvcuda::wmma) for the emulator. On the device a fragment is spread over
// the 32 lanes of a warp in an unspecified layout; here every lane holds the whole tile, so each
// lane's load, multiply and store do the warp's work (lanes store the same values). Each
// operation waits for the whole warp, as the device requires, and checks the pointer's 32-byte
// alignment and that the leading dimension is a multiple of 16 bytes. Whole-fragment operations
// and element-wise maps between fragments of one shape behave as on the device; a missing
// `__syncwarp` between a lane's store and another lane's read goes unnoticed, since each lane
// stores every element.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}

// Rounds to TensorFloat-32 (10 mantissa bits), to nearest with ties away from zero, as
// `cvt.rna.tf32.f32` does; the result is a float whose low 13 bits are zero.
inline float __float_to_tf32(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
    std::memcpy(&value, &bits, sizeof bits);
    return value;
}

template <typename T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

template <typename Use, int M, int N, int K> struct shape;
template <int M, int N, int K> struct shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    using element_type = typename storage<T>::type;
    static constexpr int rows = shape<Use, M, N, K>::rows, cols = shape<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    element_type x[num_elements];
};

// The device's requirements on a load or store; a breach ends the process with the reason.
template <typename P> inline void check_tile_access(const P* ptr, unsigned ldm, const char* what) {
    __syncwarp();
    if ((uintptr_t)ptr % 32 != 0 || (ldm * sizeof(P)) % 16 != 0) {
        std::fprintf(stderr, "cuda emulator: wmma::%s at %p with ldm %u: the pointer must be 32-byte aligned and ldm a multiple of 16 bytes\n", what, (const void*)ptr, ldm);
        std::_Exit(70);
    }
}

template <typename F, typename V> inline void fill_fragment(F& f, const V& value) {
    for (int i = 0; i < F::num_elements; ++i) f.x[i] = value;
}

template <typename F, typename P>
inline void load_tile(F& f, const P* ptr, unsigned ldm, bool row_major_memory) {
    check_tile_access(ptr, ldm, "load_matrix_sync");
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.x[r * F::cols + c] = ptr[row_major_memory ? r * ldm + c : c * ldm + r];
}

template <typename Use, int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const P* ptr, unsigned ldm) { load_tile(f, ptr, ldm, true); }
template <typename Use, int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, col_major>& f, const P* ptr, unsigned ldm) { load_tile(f, ptr, ldm, false); }
template <int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* ptr, unsigned ldm, layout_t layout) {
    load_tile(f, ptr, ldm, layout == mem_row_major);
}

template <int M, int N, int K, typename T, typename P>
inline void store_matrix_sync(P* ptr, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
    check_tile_access(ptr, ldm, "store_matrix_sync");
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c) ptr[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[r * N + c];
}

// The tensor cores read a TF32 operand's upper 19 bits only.
template <typename T> inline float operand(float v) { return v; }
template <> inline float operand<precision::tf32>(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= 0xffffe000u;
    std::memcpy(&v, &bits, sizeof bits);
    return v;
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
    __syncwarp();
    typename fragment<accumulator, M, N, K, TC>::element_type out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float sum = c.x[i * N + j];
            for (int k = 0; k < K; ++k) sum += operand<TA>(a.x[i * K + k]) * operand<TB>(b.x[k * N + j]);
            out[i * N + j] = sum;
        }
    for (int i = 0; i < M * N; ++i) d.x[i] = out[i];
}

} // namespace wmma
} // namespace nvcuda
