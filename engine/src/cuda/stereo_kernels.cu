// Kernels of the CUDA stereo matcher (engine/src/cuda/stereo.rs): the CPU reference's stages
// (engine/src/stereo/{census,cost,aggregate,select}.rs) with the same integer arithmetic, so
// everything up to the subpixel step is identical, and the subpixel step is the same IEEE
// float expression (compiled with --fmad=false, --prec-div=true).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define GUARD 0x7FFFu

// Stage 1 (census.rs): bit k = neighbour k (row-major window, centre skipped) darker than the
// centre; coordinates outside the image are clamped (replicate border).
extern "C" __global__ void census(const unsigned char* __restrict__ img, int width, int height, int win_w, int win_h,
                                  u64* __restrict__ codes) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y;
    if (x >= width || y >= height) return;
    int rx = win_w / 2, ry = win_h / 2;
    unsigned char centre = img[y * width + x];
    u64 code = 0;
    int bit = 0;
    for (int wy = 0; wy < win_h; ++wy) {
        int sy = min(max(y + wy - ry, 0), height - 1);
        for (int wx = 0; wx < win_w; ++wx) {
            if (wy == ry && wx == rx) continue;
            int sx = min(max(x + wx - rx, 0), width - 1);
            code |= (u64)(img[sy * width + sx] < centre) << bit;
            ++bit;
        }
    }
    codes[y * width + x] = code;
}

// Stage 2 (cost.rs): Hamming distance to the right code at x - d; `bits` where x - d < 0.
extern "C" __global__ void cost_volume(const u64* __restrict__ left, const u64* __restrict__ right, int width, int height,
                                       int disps, unsigned char bits, unsigned char* __restrict__ cost) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n = (long long)width * height * disps;
    if (i >= n) return;
    int d = (int)(i % disps);
    long long pixel = i / disps;
    int x = (int)(pixel % width);
    cost[i] = d <= x ? (unsigned char)__popcll(left[pixel] ^ right[pixel - d]) : bits;
}

// The penalties between the current pixel p and the previous one q on the path
// (aggregate.rs Penalties::at).
struct Penalties {
    u32 p1, p2, gradient, border_p1, border_p2;
    int use_gradient, use_labels;
};

__device__ __forceinline__ void penalties(const Penalties& pen, const unsigned char* left, const u16* labels, int p, int q,
                                          u32* p1, u32* p2) {
    if (pen.use_labels && labels[p] != labels[q]) {
        *p1 = pen.border_p1;
        *p2 = pen.border_p2;
        return;
    }
    *p1 = pen.p1;
    if (!pen.use_gradient) {
        *p2 = pen.p2;
        return;
    }
    u32 diff = left[p] > left[q] ? left[p] - left[q] : left[q] - left[p];
    u32 scaled = (u32)(u16)(pen.p2 * pen.gradient / (pen.gradient + diff));
    *p2 = max(scaled, pen.p1);
}

// Minimum over the block's threads (one per disparity); every thread gets it.
__device__ __forceinline__ u32 block_min(u32 v, u32* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) v = min(v, __shfl_down_sync(0xffffffffu, v, offset));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 m = scratch[0];
        for (int w = 1; w < (int)(blockDim.x + 31) / 32; ++w) m = min(m, scratch[w]);
        scratch[32] = m;
    }
    __syncthreads();
    u32 m = scratch[32];
    __syncthreads();
    return m;
}

// Stage 3 (aggregate.rs): path costs along one direction (dx, dy), added into `sum`. One block
// per scanline, one thread per disparity (blockDim.x = disps rounded up to whole warps). A scanline starts on the image border where the
// previous pixel along the direction falls outside, as on the CPU.
//   dy == 0: block = row;  dx == 0: block = column;
//   diagonal: blocks 0..width-1 start on the first row, the rest on the first column below it.
extern "C" __global__ void aggregate_path(const unsigned char* __restrict__ cost, const unsigned char* __restrict__ left,
                                          const u16* __restrict__ labels, Penalties pen, int width, int height, int disps,
                                          int dx, int dy, u16* __restrict__ sum) {
    extern __shared__ u32 shared[];
    u32* prev = shared;               // disps + 2 slots: GUARD, L(0..disps), GUARD
    u32* scratch = shared + disps + 2; // 33 slots for block_min
    int d = threadIdx.x;
    int x, y;
    int b = blockIdx.x;
    if (dy == 0) {
        y = b;
        x = dx > 0 ? 0 : width - 1;
    } else if (dx == 0) {
        x = b;
        y = dy > 0 ? 0 : height - 1;
    } else if (b < width) {
        x = b;
        y = dy > 0 ? 0 : height - 1;
    } else {
        x = dx > 0 ? 0 : width - 1;
        y = dy > 0 ? 1 + (b - width) : height - 2 - (b - width);
    }
    if (d == 0) {
        prev[0] = GUARD;
        prev[disps + 1] = GUARD;
    }
    u32 prev_min = 0;
    bool first = true;
    int q = 0;
    while (x >= 0 && x < width && y >= 0 && y < height) {
        int p = y * width + x;
        long long at = (long long)p * disps + d;
        u32 l = 0xFFFFFFFFu; // lanes past the last disparity take no part in the minimum
        if (d < disps) {
            u32 c = cost[at];
            if (first) {
                l = c;
            } else {
                u32 p1, p2;
                penalties(pen, left, labels, p, q, &p1, &p2);
                u32 v = min(min(prev[d + 1], prev[d] + p1), min(prev[d + 2] + p1, prev_min + p2));
                l = c + v - prev_min;
            }
        }
        u32 m = block_min(l, scratch);
        if (d < disps) {
            prev[d + 1] = l;
            sum[at] = (u16)(sum[at] + l);
        }
        __syncthreads();
        prev_min = m;
        first = false;
        q = p;
        x += dx;
        y += dy;
    }
}

__device__ __forceinline__ u32 pack(u32 v, int d) {
    return (v << 16) | (u32)d;
}

// Stage 4a (select.rs): winner-take-all with uniqueness and parabola subpixel; one thread per
// pixel. NaN where the match is not unique or lies left of the right image.
extern "C" __global__ void select_disparity(const u16* __restrict__ sum, int width, int height, int disps, int uniqueness,
                                            float* __restrict__ out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y;
    if (x >= width || y >= height) return;
    const u16* s = sum + ((long long)y * width + x) * disps;
    u32 best_packed = 0xFFFFFFFFu;
    for (int d = 0; d < disps; ++d) best_packed = min(best_packed, pack(s[d], d));
    u32 min_cost = best_packed >> 16;
    int best = (int)(best_packed & 0xFFFF);
    bool unique = true;
    if (uniqueness != 0) {
        u32 second = 0xFFFF;
        for (int d = 0; d < disps; ++d) {
            if (d + 1 < best || d > best + 1) second = min(second, (u32)s[d]);
        }
        unique = second * (u32)(100 - uniqueness) >= min_cost * 100u;
    }
    float value;
    if (best > x || !unique) {
        value = __int_as_float(0x7fc00000);
    } else if (best == 0 || best + 1 == disps) {
        value = (float)best;
    } else {
        float c0 = (float)s[best - 1], c1 = (float)s[best], c2 = (float)s[best + 1];
        float denom = c0 - 2.0f * c1 + c2;
        value = denom > 0.0f ? (float)best + (c0 - c2) / (2.0f * denom) : (float)best;
    }
    out[y * width + x] = value;
}

// Stage 4b (select.rs): for each right-image pixel xr, the packed (cost, d) minimum over the
// left pixels x = xr + d that match it.
extern "C" __global__ void right_best(const u16* __restrict__ sum, int width, int height, int disps, u32* __restrict__ rbest) {
    int xr = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y;
    if (xr >= width || y >= height) return;
    u32 best = 0xFFFFFFFFu;
    for (int d = 0; d < disps && xr + d < width; ++d) {
        best = min(best, pack(sum[((long long)y * width + xr + d) * disps + d], d));
    }
    rbest[y * width + xr] = best;
}

// Stage 4c (select.rs): the left-right check; a disparity whose right pixel prefers another
// one by more than `max_diff` becomes NaN.
extern "C" __global__ void left_right_check(const u32* __restrict__ rbest, int width, int height, int max_diff,
                                            float* __restrict__ out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y;
    if (x >= width || y >= height) return;
    float v = out[y * width + x];
    if (isnan(v)) return;
    int d = (int)floorf(v + 0.5f);
    if (d > x) {
        out[y * width + x] = __int_as_float(0x7fc00000);
        return;
    }
    int other = (int)(rbest[y * width + (x - d)] & 0xFFFF);
    if (abs(other - d) > max_diff) out[y * width + x] = __int_as_float(0x7fc00000);
}
