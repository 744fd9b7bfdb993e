// Kernels of the CUDA scorer (engine/src/cuda/scorer.rs).
//
// Every floating-point expression mirrors the CPU reference (engine/src/costmap.rs,
// engine/src/post.rs) operation for operation and in the same order. The host compiles this file
// with --fmad=false (no fused multiply-add), --prec-div=true and --ftz=false, so the results are
// the CPU's bit for bit.

typedef unsigned int u32;
typedef unsigned short u16;

#define UNKNOWN_LABEL 65535u

// Dot product with eight partial sums added pairwise at the end (costmap::dot).
__device__ __forceinline__ float dot8(const float* __restrict__ a, const float* __restrict__ b, int dim) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int d = 0;
    for (; d + 8 <= dim; d += 8) {
#pragma unroll
        for (int l = 0; l < 8; ++l) acc[l] += a[d + l] * b[d + l];
    }
#pragma unroll
    for (int l = 0; l < 8; ++l) {
        if (d + l < dim) acc[l] += a[d + l] * b[d + l];
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Bilinear corner weights in the order (y0,x0), (y0,x1), (y1,x0), (y1,x1) (costmap::corner_weights).
__device__ __forceinline__ void corner_weights(float fx, float fy, float w[4]) {
    w[0] = (1.0f - fx) * (1.0f - fy);
    w[1] = fx * (1.0f - fy);
    w[2] = (1.0f - fx) * fy;
    w[3] = fx * fy;
}

// costmap::rank_key: orders floats as Rust's f32::total_cmp does, with every NaN lowest.
__device__ __forceinline__ int total_key(float f) {
    if (f != f) return (int)0x80000000u;
    int b = __float_as_int(f);
    return b ^ (int)(((unsigned)(b >> 31)) >> 1);
}

// costmap::softmax_exp, same constants, same operations.
__device__ __forceinline__ float softmax_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 0.0f ? 0.0f : x); // as f32::clamp: NaN stays NaN
    float n = rintf(x * 1.44269504088896340736f);
    float r = x - n * 0.693359375f - n * -2.1219444e-4f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f + r * 0.0013888889f)))));
    return p * __int_as_float(((int)n + 127) << 23);
}

// costmap::ln_positive, same constants, same operations (x positive and normal).
__device__ __forceinline__ float ln_positive(float x) {
    unsigned bits = __float_as_uint(x);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
    if (m > 1.41421356237309504880f) {
        m *= 0.5f;
        e += 1;
    }
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float series = 2.0f * s * (1.0f + s2 * (0.33333334f + s2 * (0.2f + s2 * (0.14285715f + s2 * 0.11111111f))));
    return (float)e * 0.693147180559945309417f + series;
}

#define NEG_INF __int_as_float(0xff800000)

// ---------------------------------------------------------------------------------------------
// Dense cost: every label at every cell. A block computes 16 cells x 64 labels; each thread one
// cell and four labels, with the embedding dimension staged through shared memory in chunks of
// 32. Each output keeps its eight lane sums in registers, so the reduction order is dot8's.
//
// Without fusion (fuse == 0):    out = scale * (gain * dot + bias)
// With fusion:                   out = w_coarse * up + w_fine * scale * (gain * dot + bias)
// where up is the bilinear upsampling of the dense coarse field (costmap::fuse_level with every
// label kept).
#define DC_CELLS 16
#define DC_LABELS 64
#define DC_CHUNK 32

extern "C" __global__ void cost_dense(
    const float* __restrict__ pix, int cells, int dim,
    const float* __restrict__ emb, const float* __restrict__ gain, const float* __restrict__ bias, int num_labels,
    float scale,
    int fuse, const float* __restrict__ coarse, int coarse_width,
    const int* __restrict__ rows, const float* __restrict__ row_f,
    const int* __restrict__ cols, const float* __restrict__ col_f, int fine_width,
    float w_coarse, float w_fine,
    u32* __restrict__ out_count, u32* __restrict__ out_label, float* __restrict__ out_score)
{
    __shared__ float sp[DC_CELLS][DC_CHUNK + 1];
    __shared__ float sl[DC_LABELS][DC_CHUNK + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int cell = blockIdx.y * DC_CELLS + ty;
    const int label0 = blockIdx.x * DC_LABELS;

    float acc[4][8];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int l = 0; l < 8; ++l) acc[j][l] = 0.0f;

    for (int d0 = 0; d0 < dim; d0 += DC_CHUNK) {
        const int n = min(DC_CHUNK, dim - d0);
        for (int e = tid; e < DC_CELLS * DC_CHUNK; e += 256) {
            int r = e / DC_CHUNK, d = e % DC_CHUNK, c = blockIdx.y * DC_CELLS + r;
            sp[r][d] = (c < cells && d < n) ? pix[(size_t)c * dim + d0 + d] : 0.0f;
        }
        for (int e = tid; e < DC_LABELS * DC_CHUNK; e += 256) {
            int r = e / DC_CHUNK, d = e % DC_CHUNK, k = label0 + r;
            sl[r][d] = (k < num_labels && d < n) ? emb[(size_t)k * dim + d0 + d] : 0.0f;
        }
        __syncthreads();
        // d0 is a multiple of 8, so lane (d0 + g + l) & 7 == l.
        int g = 0;
        for (; g + 8 <= n; g += 8) {
#pragma unroll
            for (int l = 0; l < 8; ++l) {
                float p = sp[ty][g + l];
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[j][l] += p * sl[tx + 16 * j][g + l];
            }
        }
#pragma unroll
        for (int l = 0; l < 8; ++l) {
            if (g + l < n) {
                float p = sp[ty][g + l];
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[j][l] += p * sl[tx + 16 * j][g + l];
            }
        }
        __syncthreads();
    }
    if (cell >= cells) return;

    float w[4];
    int corner[4];
    if (fuse) {
        int y = cell / fine_width, x = cell % fine_width;
        int y0 = rows[2 * y], y1 = rows[2 * y + 1], x0 = cols[2 * x], x1 = cols[2 * x + 1];
        corner_weights(col_f[x], row_f[y], w);
        corner[0] = y0 * coarse_width + x0;
        corner[1] = y0 * coarse_width + x1;
        corner[2] = y1 * coarse_width + x0;
        corner[3] = y1 * coarse_width + x1;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        int k = label0 + tx + 16 * j;
        if (k >= num_labels) continue;
        float* a = acc[j];
        float dot = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        float cost = scale * (gain[k] * dot + bias[k]);
        float out = cost;
        if (fuse) {
            float up = 0.0f;
#pragma unroll
            for (int c = 0; c < 4; ++c) up += w[c] * coarse[(size_t)corner[c] * num_labels + k];
            out = w_coarse * up + w_fine * cost;
        }
        size_t at = (size_t)cell * num_labels + k;
        out_score[at] = out;
        out_label[at] = (u32)k;
    }
    if (tx == 0 && blockIdx.x == 0) out_count[cell] = (u32)num_labels;
}

// ---------------------------------------------------------------------------------------------
// Early rejection: per cell, the k best (score descending, then label ascending), in that order
// (costmap::keep_top_k). One thread per cell, k selection passes.
extern "C" __global__ void keep_top_k(
    const u32* __restrict__ count, const u32* __restrict__ label, const float* __restrict__ score, int cap_in,
    int cells, int k,
    u32* __restrict__ out_count, u32* __restrict__ out_label, float* __restrict__ out_score)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cells) return;
    int n = (int)count[i];
    int m = min(n, k);
    const u32* ls = label + (size_t)i * cap_in;
    const float* ss = score + (size_t)i * cap_in;
    bool have_prev = false;
    int prev_key = 0;
    u32 prev_label = 0;
    for (int j = 0; j < m; ++j) {
        int best = -1, best_key = 0;
        u32 best_label = 0;
        for (int e = 0; e < n; ++e) {
            int key = total_key(ss[e]);
            u32 l = ls[e];
            if (have_prev && !(key < prev_key || (key == prev_key && l > prev_label))) continue;
            if (best < 0 || key > best_key || (key == best_key && l < best_label)) {
                best = e;
                best_key = key;
                best_label = l;
            }
        }
        out_label[(size_t)i * k + j] = best_label;
        out_score[(size_t)i * k + j] = ss[best];
        have_prev = true;
        prev_key = best_key;
        prev_label = best_label;
    }
    out_count[i] = (u32)m;
}

// ---------------------------------------------------------------------------------------------
// Per cell [m, t, a] (costmap::cell_mass): a = rest - ln(left-out labels), the score each
// left-out label is taken to have (NaN without a rest); m the largest of the rest's weight
// gain * a + ln(left-out) and gain * score over the labels; t the sum of e^(... - m) over them.
// One warp per cell: lane l sums labels l, l + 32, ... in order, a shuffle tree adds the lanes'
// sums, the rest's term comes last.
#define CM_WARPS 4
extern "C" __global__ void cell_mass(
    const u32* __restrict__ count, const float* __restrict__ score, int cap,
    const float* __restrict__ rest, int has_rest, int cells, int num_labels, float gain, float* __restrict__ mass)
{
    const int lane = threadIdx.x % 32;
    const int i = blockIdx.x * CM_WARPS + threadIdx.x / 32;
    if (i >= cells) return; // the whole warp leaves together
    int n = (int)count[i];
    const float* s = score + (size_t)i * cap;
    float r = has_rest ? rest[i] : NEG_INF;
    float a = __int_as_float(0x7fc00000), rest_weight = NEG_INF;
    if (r != NEG_INF) {
        float ln_n = ln_positive((float)max(num_labels - n, 1));
        a = r - ln_n;
        rest_weight = gain * a + ln_n;
    }
    float m = rest_weight;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, gain * s[j]);
    for (int width = 16; width > 0; width /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, width));
    float t = 0.0f;
    for (int j = lane; j < n; j += 32)
        if (s[j] == s[j]) t += softmax_exp(gain * s[j] - m); // a NaN score adds nothing, as on the CPU
    for (int width = 16; width > 0; width /= 2) t += __shfl_down_sync(0xffffffffu, t, width);
    if (lane == 0) {
        if (r != NEG_INF) t += softmax_exp(rest_weight - m);
        mass[3 * (size_t)i] = m;
        mass[3 * (size_t)i + 1] = t;
        mass[3 * (size_t)i + 2] = a;
    }
}

// ---------------------------------------------------------------------------------------------
// Top-down fusion after rejection (costmap::fuse_level with `kept`): one warp per fine cell.
// Lane 0 builds the sorted union of the labels the four coarse corners kept; the lanes then
// score one candidate each. The coarse term reads the coarse field: directly when it is dense,
// else by search, with the corner's lowest score for a label it lacks. Each lane sums, per
// corner, e^(rest_gain * coarse score - m) of its candidates (m, and the score of a label a
// sparse corner lacks, from cell_mass); a shuffle tree adds the lanes' sums, and lane 0 turns
// what the corners hold beyond them into the cell's rest.
#define FS_WARPS 4
#define FS_MAX_CANDIDATES 256

// Where label l sits in a corner's list, or -1.
__device__ __forceinline__ int corner_slot(const u32* ls, int n, u32 l) {
    for (int e = 0; e < n; ++e)
        if (ls[e] == l) return e;
    return -1;
}

extern "C" __global__ void fuse_sparse(
    const u32* __restrict__ k_count, const u32* __restrict__ k_label, int k_cap,
    const u32* __restrict__ c_count, const u32* __restrict__ c_label, const float* __restrict__ c_score,
    int c_cap, int c_dense, int c_width,
    const int* __restrict__ rows, const float* __restrict__ row_f,
    const int* __restrict__ cols, const float* __restrict__ col_f, int fine_width, int fine_cells,
    const float* __restrict__ pix, int dim,
    const float* __restrict__ emb, const float* __restrict__ gain, const float* __restrict__ bias,
    float scale, float w_coarse, float w_fine, int out_cap,
    const float* __restrict__ mass, float rest_gain,
    u32* __restrict__ out_count, u32* __restrict__ out_label, float* __restrict__ out_score,
    float* __restrict__ out_rest)
{
    __shared__ u32 candidates[FS_WARPS][FS_MAX_CANDIDATES];
    __shared__ int used_by_warp[FS_WARPS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int i = blockIdx.x * FS_WARPS + warp;
    if (i >= fine_cells) return; // the whole warp leaves together; only __syncwarp below

    int y = i / fine_width, x = i % fine_width;
    int y0 = rows[2 * y], y1 = rows[2 * y + 1], x0 = cols[2 * x], x1 = cols[2 * x + 1];
    int cell[4] = {y0 * c_width + x0, y0 * c_width + x1, y1 * c_width + x0, y1 * c_width + x1};
    float w[4];
    corner_weights(col_f[x], row_f[y], w);

    if (lane == 0) {
        int used = 0;
        long long prev = -1;
        while (used < min(out_cap, FS_MAX_CANDIDATES)) {
            u32 next = 0xffffffffu;
            for (int c = 0; c < 4; ++c) {
                const u32* ls = k_label + (size_t)cell[c] * k_cap;
                int n = (int)k_count[cell[c]];
                for (int e = 0; e < n; ++e)
                    if ((long long)ls[e] > prev && ls[e] < next) next = ls[e];
            }
            if (next == 0xffffffffu) break;
            candidates[warp][used++] = next;
            prev = next;
        }
        used_by_warp[warp] = used;
    }
    __syncwarp();
    const int used = used_by_warp[warp];

    float floor_[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (!c_dense) {
        for (int c = 0; c < 4; ++c) {
            const float* ss = c_score + (size_t)cell[c] * c_cap;
            int n = (int)c_count[cell[c]];
            float f = __int_as_float(0x7f800000); // +inf
            for (int e = 0; e < n; ++e) f = fminf(f, ss[e]);
            floor_[c] = f;
        }
    }
    const float* p = pix + (size_t)i * dim;
    float scored[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = lane; j < used; j += 32) {
        u32 l = candidates[warp][j];
        float up = 0.0f;
        for (int c = 0; c < 4; ++c) {
            const float* ss = c_score + (size_t)cell[c] * c_cap;
            int e = c_dense ? (int)l : corner_slot(c_label + (size_t)cell[c] * c_cap, (int)c_count[cell[c]], l);
            // Absent at this corner: its floor in the coarse term, and in the sums one of the
            // corner's left-out labels, scored a (cell_mass).
            float v = e < 0 ? mass[3 * (size_t)cell[c] + 2] : ss[e];
            up += w[c] * (e < 0 ? floor_[c] : v);
            if (v == v) scored[c] += softmax_exp(rest_gain * v - mass[3 * (size_t)cell[c]]);
        }
        float cost = scale * (gain[l] * dot8(p, emb + (size_t)l * dim, dim) + bias[l]);
        out_label[(size_t)i * out_cap + j] = l;
        out_score[(size_t)i * out_cap + j] = w_coarse * up + w_fine * cost;
    }
    for (int c = 0; c < 4; ++c)
        for (int width = 16; width > 0; width /= 2) scored[c] += __shfl_down_sync(0xffffffffu, scored[c], width);
    if (lane == 0) {
        out_count[i] = (u32)used;
        // costmap::rest_of_cell
        float top = NEG_INF;
        for (int c = 0; c < 4; ++c) top = fmaxf(top, mass[3 * (size_t)cell[c]]);
        float z = 0.0f;
        for (int c = 0; c < 4; ++c) {
            float left = fmaxf(mass[3 * (size_t)cell[c] + 1] - scored[c], 0.0f);
            z += w[c] * left * softmax_exp(mass[3 * (size_t)cell[c]] - top);
        }
        out_rest[i] = z >= 1.17549435e-38f ? top + ln_positive(z) : NEG_INF;
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax over each cell's candidates and its rest (costmap::softmax_in_place). One thread per
// cell.
extern "C" __global__ void softmax_cells(
    const u32* __restrict__ count, float* __restrict__ score, int cap, const float* __restrict__ rest, int has_rest,
    int cells)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= cells) return;
    int n = (int)count[i];
    float* s = score + (size_t)i * cap;
    float r = has_rest ? rest[i] : NEG_INF;
    float m = r;
    for (int j = 0; j < n; ++j) m = fmaxf(m, s[j]);
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) {
        s[j] = softmax_exp(s[j] - m);
        sum += s[j];
    }
    if (r != NEG_INF) sum += softmax_exp(r - m);
    for (int j = 0; j < n; ++j) s[j] = s[j] / sum;
}

// ---------------------------------------------------------------------------------------------
// Interpolation to frame pixels, argmax, confidence, unknown threshold (post::upsample_argmax).
// One block per field cell: it gathers the labels of the cell's 2x2 neighbourhood into shared
// memory (probabilities by corner and label), then scores every frame pixel whose top-left
// neighbour is this cell. Ties go to the lower label id; the CPU's sorted early exit gives the
// same answer. Dynamic shared memory: 4 * num_labels floats, num_labels bytes, num_labels u16.
extern "C" __global__ void upsample_argmax(
    const u32* __restrict__ count, const u32* __restrict__ label, const float* __restrict__ prob,
    int cap, int field_width, int field_height, int num_labels,
    const int* __restrict__ col_range, const int* __restrict__ row_range,
    const float* __restrict__ col_f, const float* __restrict__ row_f, int width,
    float threshold,
    u16* __restrict__ out_label, float* __restrict__ out_confidence)
{
    extern __shared__ float smem[];
    float* probs = smem;                                                       // [4][num_labels]
    unsigned char* present = (unsigned char*)(smem + 4 * num_labels);          // [num_labels]
    u16* candidates = (u16*)(present + ((num_labels + 1) & ~1));               // [num_labels]
    __shared__ int n_candidates;

    const int cx = blockIdx.x % field_width, cy = blockIdx.x / field_width;
    const int r0 = row_range[2 * cy], r1 = row_range[2 * cy + 1];
    const int c0 = col_range[2 * cx], c1 = col_range[2 * cx + 1];
    if (r0 >= r1 || c0 >= c1) return; // no frame pixel has this cell as its top-left neighbour

    for (int l = threadIdx.x; l < num_labels; l += blockDim.x) present[l] = 0;
    if (threadIdx.x == 0) n_candidates = 0;
    __syncthreads();
    const int x1 = min(cx + 1, field_width - 1), y1 = min(cy + 1, field_height - 1);
    const int cell[4] = {cy * field_width + cx, cy * field_width + x1, y1 * field_width + cx, y1 * field_width + x1};
    for (int c = 0; c < 4; ++c) {
        // Labels are unique within a cell, so within one corner no two threads share a label.
        int n = (int)count[cell[c]];
        for (int e = threadIdx.x; e < n; e += blockDim.x) {
            u32 l = label[(size_t)cell[c] * cap + e];
            probs[c * num_labels + l] = prob[(size_t)cell[c] * cap + e];
            present[l] |= (unsigned char)(1 << c);
        }
        __syncthreads();
    }
    for (int l = threadIdx.x; l < num_labels; l += blockDim.x) {
        if (present[l]) candidates[atomicAdd(&n_candidates, 1)] = (u16)l;
    }
    __syncthreads();

    const int nc = n_candidates, pw = c1 - c0, ph = r1 - r0;
    for (int e = threadIdx.x; e < pw * ph; e += blockDim.x) {
        int y = r0 + e / pw, x = c0 + e % pw;
        float w[4];
        corner_weights(col_f[x], row_f[y], w);
        float best_p = -1.0f;
        u32 best = UNKNOWN_LABEL;
        for (int j = 0; j < nc; ++j) {
            u32 l = candidates[j];
            unsigned char m = present[l];
            float p0 = (m & 1) ? probs[l] : 0.0f;
            float p1 = (m & 2) ? probs[num_labels + l] : 0.0f;
            float p2 = (m & 4) ? probs[2 * num_labels + l] : 0.0f;
            float p3 = (m & 8) ? probs[3 * num_labels + l] : 0.0f;
            float v = w[0] * p0 + w[1] * p1 + w[2] * p2 + w[3] * p3;
            if (v > best_p || (v == best_p && l < best)) {
                best_p = v;
                best = l;
            }
        }
        size_t at = (size_t)y * width + x;
        out_confidence[at] = fmaxf(best_p, 0.0f);
        out_label[at] = (u16)(best_p >= threshold ? best : UNKNOWN_LABEL);
    }
}

// ---------------------------------------------------------------------------------------------
// Painting a label map (LabelMap::colorize and LabelMap::overlay): one thread per pixel. Labels
// beyond the palette (unknown) are black in the colour image and keep the frame's pixel in the
// overlay. The blend is the CPU's expression, rounded half away from zero like f32::round.
extern "C" __global__ void paint_labels(
    const u16* __restrict__ labels, int pixels,
    const unsigned char* __restrict__ palette, int num_labels,
    const unsigned char* __restrict__ rgb, float alpha,
    int want_color, unsigned char* __restrict__ color,
    int want_overlay, unsigned char* __restrict__ overlay)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= pixels) return;
    const int l = (int)labels[i];
    const bool known = l < num_labels;
    for (int k = 0; k < 3; ++k) {
        const unsigned char c = known ? palette[3 * l + k] : (unsigned char)0;
        if (want_color) color[3 * i + k] = c;
        if (want_overlay) {
            const unsigned char p = rgb[3 * i + k];
            overlay[3 * i + k] = known ? (unsigned char)roundf((float)p * (1.0f - alpha) + (float)c * alpha) : p;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Preprocessing (preprocess::preprocess): colour conversion, separable anti-aliased resize with
// the host's filter taps, normalisation and layout, in two passes (rows, then columns).
// Pixel formats as engine::frame::PixelFormat, in declaration order.
#define FMT_RGB8 0
#define FMT_BGR8 1
#define FMT_RGBA8 2
#define FMT_BGRA8 3
#define FMT_MONO8 4
#define FMT_YUYV 5
#define FMT_UYVY 6
#define FMT_NV12 7

__device__ __forceinline__ int clamp_byte(int x) {
    x = (x + 128) >> 8;
    return x < 0 ? 0 : (x > 255 ? 255 : x);
}

// frame::yuv_to_rgb: BT.601 video range in integers.
__device__ __forceinline__ void yuv_to_rgb(int y, int u, int v, int rgb[3]) {
    int c = 298 * (y - 16), d = u - 128, e = v - 128;
    rgb[0] = clamp_byte(c + 409 * e);
    rgb[1] = clamp_byte(c - 100 * d - 208 * e);
    rgb[2] = clamp_byte(c + 516 * d);
}

// frame::Frame::rgb
__device__ __forceinline__ void frame_rgb(const unsigned char* data, int format, int step, int height, int x, int y, int rgb[3]) {
    const unsigned char* row = data + (size_t)y * step;
    switch (format) {
    case FMT_RGB8: rgb[0] = row[3 * x]; rgb[1] = row[3 * x + 1]; rgb[2] = row[3 * x + 2]; break;
    case FMT_BGR8: rgb[0] = row[3 * x + 2]; rgb[1] = row[3 * x + 1]; rgb[2] = row[3 * x]; break;
    case FMT_RGBA8: rgb[0] = row[4 * x]; rgb[1] = row[4 * x + 1]; rgb[2] = row[4 * x + 2]; break;
    case FMT_BGRA8: rgb[0] = row[4 * x + 2]; rgb[1] = row[4 * x + 1]; rgb[2] = row[4 * x]; break;
    case FMT_MONO8: rgb[0] = rgb[1] = rgb[2] = row[x]; break;
    case FMT_YUYV: {
        const unsigned char* d = row + (x & ~1) * 2;
        yuv_to_rgb(d[(x & 1) * 2], d[1], d[3], rgb);
        break;
    }
    case FMT_UYVY: {
        const unsigned char* d = row + (x & ~1) * 2;
        yuv_to_rgb(d[1 + (x & 1) * 2], d[0], d[2], rgb);
        break;
    }
    default: { // FMT_NV12
        const unsigned char* uv = data + (size_t)(height + y / 2) * step + (x & ~1);
        yuv_to_rgb(row[x], uv[0], uv[1], rgb);
        break;
    }
    }
}

// Pass 1: each frame row resampled to the content width, as f32 RGB.
// Taps of output column o: weights[offset[o] .. offset[o + 1]] applied from source column start[o].
extern "C" __global__ void resize_rows(
    const unsigned char* __restrict__ data, int format, int step, int frame_height,
    const int* __restrict__ start, const int* __restrict__ offset, const float* __restrict__ weights,
    int out_width, float* __restrict__ rows)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y;
    if (o >= out_width) return;
    float acc[3] = {0.0f, 0.0f, 0.0f};
    int s = start[o];
    for (int j = offset[o]; j < offset[o + 1]; ++j) {
        int rgb[3];
        frame_rgb(data, format, step, frame_height, s + (j - offset[o]), y, rgb);
        float w = weights[j];
        for (int c = 0; c < 3; ++c) acc[c] += w * (float)rgb[c];
    }
    float* out = rows + ((size_t)y * out_width + o) * 3;
    out[0] = acc[0];
    out[1] = acc[1];
    out[2] = acc[2];
}

// Pass 2: columns resampled to the content height, then (x - mean) / std per channel in the
// model's colour order, written at the content offset in NCHW (layout 0) or NHWC (layout 1).
// Border pixels of a letterbox stay 0 (the mean after normalisation): the host zeroes `out`.
extern "C" __global__ void resize_cols_normalize(
    const float* __restrict__ rows, int content_width,
    const int* __restrict__ start, const int* __restrict__ offset, const float* __restrict__ weights,
    int content_height, int order0, int order1, int order2,
    float mean0, float mean1, float mean2, float std0, float std1, float std2,
    int layout, int net_width, int net_height, int x0, int y0,
    float* __restrict__ out)
{
    int ox = blockIdx.x * blockDim.x + threadIdx.x, oy = blockIdx.y;
    if (ox >= content_width || oy >= content_height) return;
    float acc[3] = {0.0f, 0.0f, 0.0f};
    int s = start[oy];
    for (int j = offset[oy]; j < offset[oy + 1]; ++j) {
        const float* r = rows + ((size_t)(s + (j - offset[oy])) * content_width + ox) * 3;
        float w = weights[j];
        for (int c = 0; c < 3; ++c) acc[c] += w * r[c];
    }
    const int order[3] = {order0, order1, order2};
    const float mean[3] = {mean0, mean1, mean2}, sd[3] = {std0, std1, std2};
    int px = x0 + ox, py = y0 + oy;
    for (int c = 0; c < 3; ++c) {
        float v = (acc[order[c]] - mean[c]) / sd[c];
        size_t at = layout == 0 ? (size_t)c * net_width * net_height + (size_t)py * net_width + px
                                : ((size_t)py * net_width + px) * 3 + c;
        out[at] = v;
    }
}

// ---------------------------------------------------------------------------------------------
// An image encoder's output left on the device (NCHW, batch 1) to the scorer's levels
// (backend::nchw_to_pixel_major): pixel-major, each pixel divided by its L2 norm unless the norm
// is <= 1e-12 (costmap::l2_normalize). One thread per pixel; the squares are summed in channel
// order, as the CPU's sequential sum does.
extern "C" __global__ void nchw_to_pixel_major(const float* __restrict__ src, int dim, int pixels, float* __restrict__ out)
{
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= pixels) return;
    float sum = -0.0f;
    for (int d = 0; d < dim; ++d) {
        const float x = src[(size_t)d * pixels + p];
        sum += x * x;
    }
    const float norm = sqrtf(sum);
    float* o = out + (size_t)p * dim;
    for (int d = 0; d < dim; ++d) {
        const float x = src[(size_t)d * pixels + p];
        o[d] = norm > 1e-12f ? x / norm : x;
    }
}
