// simclr_views on the GPU: one thread block per view, reading its source image through the view's
// context transform (inversion, vertical flip). The view never leaves the chip: when
// the view's contrast step has a factor other than 1, a first pass recomputes every pixel up
// to that step and reduces the mean grey level (when contrast comes first, from sums over the
// source rows instead, see contrast_sum_from_rows); the second pass recomputes each pixel through
// all steps (crop, jitter in the view's order, random grey, normalisation) and writes it
// once in the output dtype and layout. Per-pixel maths: csrc/views_math.h, shared with the
// CPU kernel. Compiles with nvcc and, after csrc/emu/cuda_emu.h, as C++ on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cassert>
#include <stdexcept>
#include <type_traits>

#ifndef CON2_CUDA_EMU
#include <cuda_runtime.h>
#define CON2_DYNAMIC_SMEM(name) extern __shared__ __align__(128) float name[]
#endif

#include "../common.h"
#include "../views_math.h"
#include "reduce.cuh"

namespace con2 {
namespace views {

constexpr int kViewThreads = 256;
constexpr int kMaxViewSize = 4096;  // a view's taps and row sums live in shared memory (225 KB)

struct ViewArgs {
  const uint8_t* images;   // [S, C, H, W]; for C = 3 the kernel reads `packed` instead
  const uint32_t* packed;  // [S, H, W] packed pixels (pack_rgb_kernel), C = 3 only
  const int64_t* source;   // [M]
  const float* boxes;      // [M, 4] top, left, height, width
  const bool* hflip;       // [M]
  const float* factors;    // [M, 4] brightness, contrast, saturation, hue
  const int64_t* order;    // [M, 4]
  const bool* gray;        // [M]
  const int64_t* context;  // [M] context codes (ContextBit), or null: none
  int c, h, w, size;
  float inv_std, shift;  // normalisation (x - mean) / std as one multiply-add: x * inv_std + shift
  bool channels_last;
};

// Shared memory of a block: the byte -> [0, 1] table (read by the CPU emulator build; the GPU
// converts bytes arithmetically, see view_pixel), then the taps of every output column (ColumnTap)
// and row (RowTap), 32 floats for the block reduction, and 2 x size floats for the source-row grey
// sums of a contrast-first view (contrast_mean_from_rows). Everything per pixel that depends on
// one coordinate only is computed once per view, so a pixel costs two shared-memory loads, four
// address multiply-adds, four loads and the jitter arithmetic.
inline int64_t view_smem_bytes(int size) { return (256 + 12 * size + 32 + 2 * size) * 4; }

// An output index's bilinear taps along one axis: the first and second source index and their
// weights. Where the second index would fall outside the image its weight is exactly 0 (the
// sample position is clipped to the last index), so it repeats the first: every pixel reads four
// taps, no predicates. Columns as indices (16 bytes, one shared-memory load); rows as pointers to
// the two source rows of the view's image (through its context's vertical flip), so that a tap's
// address is one multiply-add: row pointer + column * pixel bytes.
struct alignas(16) ColumnTap {
  uint32_t first, second;
  float w0, w1;
};
struct alignas(16) RowTap {
  const void* first;
  const void* second;
  float w0, w1;
  int first_row, second_row;  // the two rows' indices in the source image
};

// One view's jitter steps, read once into registers: op and factor of step s.
struct Steps {
  int op[4];
  float f[4];
};

#ifdef CON2_GPU_MATH
// Byte b of a view as a float through the view's context inversion, from the float 2^23 + b (its
// bits 0x4B0000bb, built by one integer op) with one multiply-add: (2^23 + b) - 2^23 = b, or
// inverted (2^23 + 255) - (2^23 + b) = 255 - b, exact (integers below 2^24), so the inversion costs
// nothing per pixel. A conversion instruction would run at a quarter of the rate.
struct ByteToFloat {
  float sign, offset;  // 1, -2^23 or -1, 2^23 + 255
  __device__ explicit ByteToFloat(bool invert)
      : sign(invert ? -1.0f : 1.0f), offset(invert ? 8388863.0f : -8388608.0f) {}
  __device__ __forceinline__ float from_bits(uint32_t bits) const {
    return fmaf(__int_as_float(static_cast<int>(bits)), sign, offset);
  }
  __device__ __forceinline__ float byte(uint8_t b) const { return from_bits(0x4B000000u | b); }
  // byte k of a packed pixel (kPackedTop in its top byte): one byte permute builds 0x4B0000bb from
  // the word alone (selector nibbles: byte k, the sign of byte 3 (0x00) twice, byte 3)
  template <int k>
  __device__ __forceinline__ float word_byte(uint32_t word) const {
#ifdef __CUDA_ARCH__
    uint32_t bits;
    asm("prmt.b32 %0, %1, %1, %2;" : "=r"(bits) : "r"(word), "n"(0x3BB0 | k));
    return from_bits(bits);
#else
    return from_bits(con2_emu::prmt(word, word, 0x3BB0 | k));
#endif
  }
};

// Channel k of a bilinear sample from four packed taps, scaled to [0, 1] once.
template <int k>
__device__ __forceinline__ float packed_channel(const ByteToFloat& bf, uint32_t t00, uint32_t t01, uint32_t t10,
                                                uint32_t t11, float w00, float w01, float w10, float w11) {
  float s = bf.word_byte<k>(t00) * w00;
  s += bf.word_byte<k>(t01) * w01;
  s += bf.word_byte<k>(t10) * w10;
  s += bf.word_byte<k>(t11) * w11;
  return s * (1.0f / 255.0f);
}
#endif

// C = 3 images as one word per pixel, r | g << 8 | b << 16 | kPackedTop << 24: a bilinear tap of the view kernel
// then loads the three channels at once (a load and its 64-bit address per tap instead of three;
// the address arithmetic of twelve byte loads was a large part of a pixel's instructions).
constexpr uint32_t kPackedTop = 0x4B;  // the top byte of 2^23 as a float (see ByteToFloat::word_byte)

// Four pixels of one plane in a 32-bit word, four packed pixels in one 16-byte store.
struct alignas(16) PackedQuad {
  uint32_t pixel[4];
};

__device__ __forceinline__ uint32_t packed_pixel(uint32_t r, uint32_t g, uint32_t b) {
  return r | g << 8 | b << 16 | kPackedTop << 24;
}

// One image per grid row (blockIdx.y, striding), its pixels across blockIdx.x: no division per
// pixel. With `quads` (plane % 4 == 0 and 4-byte-aligned images) a thread packs four pixels from
// one 32-bit load per channel.
__global__ void __launch_bounds__(kViewThreads) pack_rgb_kernel(const uint8_t* images, uint32_t* packed, int plane,
                                                                int64_t n_images, bool quads) {
  const int items = quads ? plane / 4 : plane;
  for (int64_t s = blockIdx.y; s < n_images; s += gridDim.y) {
    const uint8_t* img = images + 3 * s * plane;
    uint32_t* out = packed + s * plane;
    for (int t = static_cast<int>(blockIdx.x) * kViewThreads + threadIdx.x; t < items;
         t += static_cast<int>(gridDim.x) * kViewThreads) {
      if (quads) {
        const uint32_t* words = reinterpret_cast<const uint32_t*>(img);
        const uint32_t r = words[t], g = words[items + t], b = words[2 * items + t];
        PackedQuad q;
        for (int k = 0; k < 4; ++k)
          q.pixel[k] = packed_pixel(r >> (8 * k) & 255u, g >> (8 * k) & 255u, b >> (8 * k) & 255u);
        reinterpret_cast<PackedQuad*>(out)[t] = q;
      } else {
        out[t] = packed_pixel(img[t], img[int64_t{plane} + t], img[2 * int64_t{plane} + t]);  // 3 planes > 2^31
      }
    }
  }
}

// A device-side assertion as in PyTorch's CUDA indexing; the emulator build throws instead.
__device__ inline void view_input_error(const char* message) {
#ifdef __CUDA_ARCH__
  __assert_fail(message, __FILE__, __LINE__, __func__);
#else
  throw std::out_of_range(message);
#endif
}

// Every view's source index inside the images, context code and jitter op indices in [0, 3], else a
// device-side assertion (a host-side check would cost a sync per batch). A kernel of its own: the
// check inside views_kernel cost it 15 registers, hence occupancy.
__global__ void __launch_bounds__(kViewThreads) check_view_inputs_kernel(const int64_t* source, const int64_t* context,
                                                                         const int64_t* order, int64_t m, int64_t n) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * kViewThreads + threadIdx.x;
  if (v >= m) return;
  if (source[v] < 0 || source[v] >= n)
    view_input_error("con2 simclr_views: a view's source index is outside [0, number of images)");
  if (context != nullptr && (context[v] < 0 || context[v] > 3))
    view_input_error("con2 simclr_views: a view's context code is outside [0, 3]");
  for (int s = 0; s < 4; ++s) {
    if (order[4 * v + s] < 0 || order[4 * v + s] > 3)  // views_kernel reads factors[4 * view + op]
      view_input_error("con2 simclr_views: a view's jitter order holds an op index outside [0, 3]");
  }
}

// Pixel (i, j) through the crop and the jitter steps [0, steps); v gets kC values. `src` is the
// view's source image: bytes [H, W] for kC = 1, packed words [H, W] for kC = 3; `invert` its
// context inversion.
template <int kC>
__device__ __forceinline__ void view_pixel(bool invert, const float* unit_of, const ColumnTap* cols, const RowTap* rows,
                                           const Steps& st, int steps, float contrast_mean, int i, int j, float* v) {
  using pixel_t = std::conditional_t<kC == 3, uint32_t, uint8_t>;  // a packed word or a byte
  const ColumnTap cx = cols[j];
  const RowTap& ry = rows[i];
  const pixel_t* r0 = static_cast<const pixel_t*>(ry.first);
  const pixel_t* r1 = static_cast<const pixel_t*>(ry.second);
  const pixel_t *p00 = r0 + cx.first, *p01 = r0 + cx.second, *p10 = r1 + cx.first, *p11 = r1 + cx.second;
  const float w00 = cx.w0 * ry.w0, w01 = cx.w1 * ry.w0, w10 = cx.w0 * ry.w1, w11 = cx.w1 * ry.w1;
  // grid_sample's weights and sum order (nw, ne, sw, se). The GPU interpolates the bytes and
  // scales by 1/255 once (within 2 ulp of the table's floats): table lookups with
  // data-dependent indices conflict on shared-memory banks. The emulator reads the exact table,
  // through the inversion 255 - b = b ^ 255.
#ifdef CON2_GPU_MATH  // __ldg: the row pointers come from shared memory, so say they are global
  const ByteToFloat bf(invert);
  if constexpr (kC == 3) {
    const uint32_t t00 = __ldg(p00), t01 = __ldg(p01), t10 = __ldg(p10), t11 = __ldg(p11);
    v[0] = packed_channel<0>(bf, t00, t01, t10, t11, w00, w01, w10, w11);
    v[1] = packed_channel<1>(bf, t00, t01, t10, t11, w00, w01, w10, w11);
    v[2] = packed_channel<2>(bf, t00, t01, t10, t11, w00, w01, w10, w11);
  } else {
    float s = bf.byte(__ldg(p00)) * w00;
    s += bf.byte(__ldg(p01)) * w01;
    s += bf.byte(__ldg(p10)) * w10;
    s += bf.byte(__ldg(p11)) * w11;
    v[0] = s * (1.0f / 255.0f);
  }
#else
  const uint32_t mask = invert ? 255u : 0u;
  for (int k = 0; k < kC; ++k) {
    const uint32_t t[4] = {static_cast<uint32_t>(*p00) >> (8 * k), static_cast<uint32_t>(*p01) >> (8 * k),
                           static_cast<uint32_t>(*p10) >> (8 * k), static_cast<uint32_t>(*p11) >> (8 * k)};
    float s = unit_of[(t[0] & 255u) ^ mask] * w00;
    s += unit_of[(t[1] & 255u) ^ mask] * w01;
    s += unit_of[(t[2] & 255u) ^ mask] * w10;
    s += unit_of[(t[3] & 255u) ^ mask] * w11;
    v[k] = s;
  }
#endif
#pragma unroll
  for (int s = 0; s < 4; ++s)
    if (s < steps) jitter_step(v, kC, st.op[s], st.f[s], contrast_mean);
}

// The grey level in [0, 1] of pixel x of a source row, through the view's inversion.
template <int kC>
__device__ __forceinline__ float tap_gray(const char* row, uint32_t x, bool invert, const float* unit_of) {
#ifdef CON2_GPU_MATH
  const ByteToFloat bf(invert);
  if constexpr (kC == 3) {
    const uint32_t t = __ldg(reinterpret_cast<const uint32_t*>(row) + x);
    return luma(bf.word_byte<0>(t), bf.word_byte<1>(t), bf.word_byte<2>(t)) * (1.0f / 255.0f);
  } else {
    return bf.byte(__ldg(reinterpret_cast<const uint8_t*>(row) + x)) * (1.0f / 255.0f);
  }
#else
  const uint32_t mask = invert ? 255u : 0u;
  if constexpr (kC == 3) {
    const uint32_t t = reinterpret_cast<const uint32_t*>(row)[x];
    return luma(unit_of[(t & 255u) ^ mask], unit_of[((t >> 8) & 255u) ^ mask], unit_of[((t >> 16) & 255u) ^ mask]);
  } else {
    return unit_of[reinterpret_cast<const uint8_t*>(row)[x] ^ mask];
  }
#endif
}

// This thread's share of the sum of the grey levels of all output pixels, for a view whose
// contrast step comes first. The grey of the bilinear crop is linear in the source pixels, so the
// sum over output pixels is sum_i (wy0 R(y0) + wy1 R(y1)) with R(y) = sum_j (wx0 g(y, x0) + wx1 g(y, x1))
// the horizontally interpolated grey of source row y: each source row lo..hi (hi - lo < 2 size) is
// summed once, by one warp, into row_sums, instead of four taps per output pixel. Same value as the
// per-pixel pass up to float summation order, and deterministic (fixed order, shuffle reduction).
template <int kC>
__device__ __forceinline__ float contrast_sum_from_rows(const char* src, int64_t row_bytes, int lo, int hi, bool invert,
                                                        const float* unit_of, const ColumnTap* cols, const RowTap* rows,
                                                        int size, float* row_sums) {
  const int lane = threadIdx.x & 31;
  for (int y = lo + static_cast<int>(threadIdx.x >> 5); y <= hi; y += kViewThreads / 32) {  // warp-uniform
    const char* row = src + y * row_bytes;
    float r = 0.0f;
    for (int j = lane; j < size; j += 32) {
      const ColumnTap c = cols[j];
      r += c.w0 * tap_gray<kC>(row, c.first, invert, unit_of) + c.w1 * tap_gray<kC>(row, c.second, invert, unit_of);
    }
    r = cuda::warp_reduce(r, cuda::SumOp());
    if (lane == 0) row_sums[y - lo] = r;
  }
  __syncthreads();
  float sum = 0.0f;
  for (int i = threadIdx.x; i < size; i += kViewThreads) {
    const RowTap& t = rows[i];
    sum += t.w0 * row_sums[t.first_row - lo] + t.w1 * row_sums[t.second_row - lo];
  }
  return sum;
}

// (i, j) of the pixel kViewThreads further on, from the step (di, dj) with dj < size: one
// compare, no division and no loop.
__device__ __forceinline__ void next_pixel(int& i, int& j, int di, int dj, int size) {
  i += di, j += dj;
  if (j >= size) j -= size, ++i;
}

// kC (1 or 3) is a template parameter so that the pixel stays in registers. At least 6 blocks of
// 256 threads per SM (75 % occupancy) caps the registers at 40; nvcc would take 48 (5 blocks).
template <typename out_t, int kC>
__global__ void __launch_bounds__(kViewThreads, 6) views_kernel(ViewArgs a, out_t* out) {
  CON2_DYNAMIC_SMEM(smem);
  float* unit_of = smem;
  static_assert(sizeof(ColumnTap) == 16 && sizeof(RowTap) == 32, "taps: whole shared-memory loads");
  ColumnTap* cols = reinterpret_cast<ColumnTap*>(unit_of + 256);
  RowTap* rows = reinterpret_cast<RowTap*>(cols + a.size);
  float* red = reinterpret_cast<float*>(rows + a.size);
  float* row_sums = red + 32;
  const int64_t view = blockIdx.x;
  const int64_t plane = static_cast<int64_t>(a.h) * a.w;
  const int pixel_bytes = kC == 3 ? 4 : 1;  // a packed word or a byte
  const int64_t row_bytes = static_cast<int64_t>(a.w) * pixel_bytes;
  const char* src = kC == 3 ? reinterpret_cast<const char*>(a.packed + a.source[view] * plane)
                            : reinterpret_cast<const char*>(a.images + a.source[view] * plane);
  const float* box = a.boxes + 4 * view;
  const bool flip = a.hflip[view], grey = a.gray[view];
  const int code = a.context != nullptr ? static_cast<int>(a.context[view]) : 0;
  const bool invert = code & kContextInvert, vflip = code & kContextVFlip;
  Steps st;
  int kc = 0;                // the contrast step's position
  float contrast_f = 1.0f;   // its factor (a scalar: indexing st.f with kc would put st on the stack)
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    st.op[s] = static_cast<int>(a.order[4 * view + s]);
    st.f[s] = a.factors[4 * view + st.op[s]];
    if (st.op[s] == kContrast) {
      kc = s;
      contrast_f = st.f[s];
    }
  }
#ifndef __CUDA_ARCH__  // only the emulator build reads the table (view_pixel)
  for (int t = threadIdx.x; t < 256; t += kViewThreads) unit_of[t] = unit(static_cast<uint8_t>(t));
#endif
  for (int t = threadIdx.x; t < 2 * a.size; t += kViewThreads) {  // columns, then rows
    const bool is_x = t < a.size;
    const int u = is_x ? t : t - a.size;
    const int extent = is_x ? a.w : a.h;
    const Tap tap = is_x ? axis_tap(u, box[1], box[3], a.size, a.w, flip) : axis_tap(u, box[0], box[2], a.size, a.h, false);
    int first = tap.i0, second = tap.i0 + 1 < extent ? tap.i0 + 1 : tap.i0;  // the weight of an outside second is 0
    if (is_x) {
      cols[u] = ColumnTap{static_cast<uint32_t>(first), static_cast<uint32_t>(second), tap.w0, tap.w1};
    } else {  // through the context's vertical flip: row y of the flipped image is row h - 1 - y
      if (vflip) first = a.h - 1 - first, second = a.h - 1 - second;
      rows[u] = RowTap{src + first * row_bytes, src + second * row_bytes, tap.w0, tap.w1, first, second};
    }
  }
  __syncthreads();
  const int P = a.size * a.size;
  const int di = kViewThreads / a.size, dj = kViewThreads - di * a.size;  // a thread's step in (row, column)
  float v[kC];
  float contrast_mean = 0.0f;
  if (contrast_f != 1.0f) {  // lerp with weight 1 is the identity: no mean needed
    float sum = 0.0f;
    const RowTap &top = rows[0], &bottom = rows[a.size - 1];  // rows are monotone: the ends span them
    const int lo = std::min(std::min(top.first_row, top.second_row), std::min(bottom.first_row, bottom.second_row));
    const int hi = std::max(std::max(top.first_row, top.second_row), std::max(bottom.first_row, bottom.second_row));
    if (kc == 0 && hi - lo < 2 * a.size) {
      sum = contrast_sum_from_rows<kC>(src, row_bytes, lo, hi, invert, unit_of, cols, rows, a.size, row_sums);
    } else {
      int i = threadIdx.x / a.size, j = threadIdx.x - i * a.size;
      for (int p = threadIdx.x; p < P; p += kViewThreads) {
        view_pixel<kC>(invert, unit_of, cols, rows, st, kc, 0.0f, i, j, v);
        sum += pixel_gray(v, kC);
        next_pixel(i, j, di, dj, a.size);
      }
    }
    sum = cuda::warp_reduce(sum, cuda::SumOp());
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < kViewThreads / 32; ++w) total += red[w];  // same order in every thread
    contrast_mean = total / static_cast<float>(P);
  }
  out_t* o = out + view * kC * P;
  int i = threadIdx.x / a.size, j = threadIdx.x - i * a.size;
  for (int p = threadIdx.x; p < P; p += kViewThreads) {
    view_pixel<kC>(invert, unit_of, cols, rows, st, 4, contrast_mean, i, j, v);
    if constexpr (kC == 3) {
      if (grey) v[0] = v[1] = v[2] = luma(v[0], v[1], v[2]);
    }
#pragma unroll
    for (int k = 0; k < kC; ++k) {
      const out_t x = static_cast<out_t>(fmaf(v[k], a.inv_std, a.shift));
      o[a.channels_last ? p * kC + k : k * P + p] = x;
    }
    next_pixel(i, j, di, dj, a.size);
  }
}

// The op: checks, device-side copies of the parameters, the output in its layout, one launch.
// `launch(kernel, grid, block, smem_bytes, args, out_ptr)` runs a kernel (CUDA or the emulator).
template <typename Launch>
at::Tensor simclr_views_device(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                               const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                               const at::Tensor& gray, int64_t size, double mean, double std, at::ScalarType dtype,
                               bool channels_last, const std::optional<at::Tensor>& context, Launch&& launch) {
  TORCH_CHECK(size <= kMaxViewSize, "con2: the CUDA simclr_views kernel makes views of at most ", kMaxViewSize,
              " px, not ", size, " (CON2_CUDA_VIEWS=compiled uses the torch ops)");
  ViewInputs v = prepare_view_inputs(images, source, boxes, hflip, factors, order, gray, size, dtype, channels_last,
                                     context);
  const int64_t m = v.source.numel();
  if (m == 0) return v.out;
  const int64_t s_images = v.images.size(0), plane = v.images.size(2) * v.images.size(3);
  TORCH_CHECK(plane < (int64_t{1} << 30), "con2: simclr_views takes images of fewer than 2^30 pixels");
  at::Tensor packed;  // C = 3: one word per pixel, made once per call for all views of each image
  if (v.images.size(1) == 3) {
    packed = at::empty({s_images, v.images.size(2), v.images.size(3)}, v.images.options().dtype(at::kInt));
    const bool quads = plane % 4 == 0 && reinterpret_cast<uintptr_t>(v.images.const_data_ptr()) % 4 == 0;
    const int64_t items = quads ? plane / 4 : plane;
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((items + kViewThreads - 1) / kViewThreads, 65535)),
                    static_cast<unsigned>(std::min<int64_t>(s_images, 65535)));
    launch(&pack_rgb_kernel, grid, dim3(kViewThreads), size_t{0}, v.images.const_data_ptr<uint8_t>(),
           reinterpret_cast<uint32_t*>(packed.mutable_data_ptr<int32_t>()), static_cast<int>(plane), s_images, quads);
  }
  ViewArgs args{v.images.const_data_ptr<uint8_t>(),
                packed.defined() ? reinterpret_cast<const uint32_t*>(packed.const_data_ptr<int32_t>()) : nullptr,
                v.source.const_data_ptr<int64_t>(),
                v.boxes.const_data_ptr<float>(),           v.hflip.const_data_ptr<bool>(),
                v.factors.const_data_ptr<float>(),         v.order.const_data_ptr<int64_t>(),
                v.gray.const_data_ptr<bool>(),
                v.context.defined() ? v.context.const_data_ptr<int64_t>() : nullptr,
                static_cast<int>(v.images.size(1)),
                static_cast<int>(v.images.size(2)),        static_cast<int>(v.images.size(3)),
                static_cast<int>(size),                    static_cast<float>(1.0 / std),
                static_cast<float>(-mean / std),           channels_last};
  if (!images.device().is_cpu()) {  // (on the CPU, prepare_view_inputs checked them)
    launch(&check_view_inputs_kernel, dim3(static_cast<unsigned>((m + kViewThreads - 1) / kViewThreads)),
           dim3(kViewThreads), size_t{0}, args.source, args.context, args.order, m, v.images.size(0));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "con2_simclr_views_device", [&] {
    auto kernel = args.c == 3 ? &views_kernel<scalar_t, 3> : &views_kernel<scalar_t, 1>;
    launch(kernel, dim3(static_cast<unsigned>(m)), dim3(kViewThreads), view_smem_bytes(static_cast<int>(size)), args,
           v.out.mutable_data_ptr<scalar_t>());
  });
  return v.out;
}

}  // namespace views
}  // namespace con2
