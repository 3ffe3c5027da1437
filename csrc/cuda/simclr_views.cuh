// simclr_views on the GPU: one thread block per view. The view never leaves the chip: when
// the view's contrast step has a factor other than 1, a first pass recomputes every pixel up
// to that step and reduces the mean grey level; the second pass recomputes each pixel through
// all steps (crop, jitter in the view's order, random grey, normalisation) and writes it
// once in the output dtype and layout. Per-pixel maths: csrc/views_math.h, shared with the
// CPU kernel. Compiles with nvcc and, after csrc/emu/cuda_emu.h, as C++ on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cassert>
#include <stdexcept>

#ifndef CON2_CUDA_EMU
#include <cuda_runtime.h>
#define CON2_DYNAMIC_SMEM(name) extern __shared__ __align__(128) float name[]
#endif

#include "../common.h"
#include "../views_math.h"

namespace con2 {
namespace views {

constexpr int kViewThreads = 256;
constexpr int kMaxViewSize = 8192;  // the per-axis taps of a view live in shared memory (197 KB)

struct ViewArgs {
  const uint8_t* images;  // [S, C, H, W]
  const int64_t* source;  // [M]
  const float* boxes;     // [M, 4] top, left, height, width
  const bool* hflip;      // [M]
  const float* factors;   // [M, 4] brightness, contrast, saturation, hue
  const int64_t* order;   // [M, 4]
  const bool* gray;       // [M]
  int c, h, w, size;
  float mean, inv_std;  // normalisation as a product: a division per value costs ~10 instructions
  bool channels_last;
};

// Shared memory of a block: the byte -> [0, 1] table (read by the CPU emulator build; the GPU
// converts bytes arithmetically, see view_pixel), then per axis the first bilinear tap
// of every output index and its two weights (the CPU kernel's Taps), then 32 floats for the
// block reduction. Everything per pixel that does not depend on both coordinates is computed
// once per view, so a pixel costs table lookups and the jitter arithmetic.
inline int64_t view_smem_bytes(int size) { return (256 + 6 * size + 32) * 4; }

// One view's jitter steps, read once into registers: op and factor of step s.
struct Steps {
  int op[4];
  float f[4];
};

#ifdef __CUDA_ARCH__
// A byte as a float in two full-rate instructions (2^23 + b, minus 2^23) instead of a
// conversion, which runs at a quarter of the rate.
__device__ __forceinline__ float byte_float(uint8_t b) {
  return __int_as_float(0x4B000000 | static_cast<int>(b)) - 8388608.0f;
}
#endif

// Every view's source index inside the images, else a device-side assertion as in PyTorch's
// CUDA indexing (a host-side check would cost a sync per batch). A kernel of its own: the check
// inside views_kernel cost it 15 registers, hence occupancy.
__global__ void __launch_bounds__(kViewThreads) check_sources_kernel(const int64_t* source, int64_t m, int64_t n) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * kViewThreads + threadIdx.x;
  if (v < m && (source[v] < 0 || source[v] >= n)) {
#ifdef __CUDA_ARCH__
    __assert_fail("con2 simclr_views: a view's source index is outside [0, number of images)", __FILE__, __LINE__,
                  __func__);
#else
    throw std::out_of_range("con2 simclr_views: a view's source index is outside [0, number of images)");
#endif
  }
}

// Pixel (i, j) through the crop and the jitter steps [0, steps); v gets kC values.
template <int kC>
__device__ __forceinline__ void view_pixel(const ViewArgs& a, const uint8_t* img, const float* unit_of,
                                           const int* tx, const float* wx, const int* ty, const float* wy,
                                           const Steps& st, int steps, float contrast_mean, int i, int j,
                                           float* v) {
  const int x0 = tx[j], y0 = ty[i];
  const bool x1 = x0 + 1 < a.w, y1 = y0 + 1 < a.h;
  const float wx0 = wx[2 * j], wx1 = wx[2 * j + 1], wy0 = wy[2 * i], wy1 = wy[2 * i + 1];
#pragma unroll
  for (int k = 0; k < kC; ++k) {  // grid_sample's weights and sum order (nw, ne, sw, se)
    const uint8_t* row = img + (k * a.h + y0) * a.w + x0;
#ifdef __CUDA_ARCH__
    // The GPU interpolates the bytes and scales by 1/255 once (within 2 ulp of the table's
    // floats): table lookups with data-dependent indices conflict on shared-memory banks.
    float s = byte_float(row[0]) * (wx0 * wy0);
    if (x1) s += byte_float(row[1]) * (wx1 * wy0);
    if (y1) s += byte_float(row[a.w]) * (wx0 * wy1);
    if (x1 && y1) s += byte_float(row[a.w + 1]) * (wx1 * wy1);
    v[k] = s * (1.0f / 255.0f);
#else
    float s = unit_of[row[0]] * (wx0 * wy0);
    if (x1) s += unit_of[row[1]] * (wx1 * wy0);
    if (y1) s += unit_of[row[a.w]] * (wx0 * wy1);
    if (x1 && y1) s += unit_of[row[a.w + 1]] * (wx1 * wy1);
    v[k] = s;
#endif
  }
#pragma unroll
  for (int s = 0; s < 4; ++s)
    if (s < steps) jitter_step(v, kC, st.op[s], st.f[s], contrast_mean);
}

// kC (1 or 3) is a template parameter so that the pixel stays in registers.
template <typename out_t, int kC>
__global__ void __launch_bounds__(kViewThreads) views_kernel(ViewArgs a, out_t* out) {
  CON2_DYNAMIC_SMEM(smem);
  float* unit_of = smem;
  int* tx = reinterpret_cast<int*>(unit_of + 256);
  int* ty = tx + a.size;
  float* wx = reinterpret_cast<float*>(ty + a.size);
  float* wy = wx + 2 * a.size;
  float* red = wy + 2 * a.size;
  const int64_t view = blockIdx.x;
  const uint8_t* img = a.images + a.source[view] * kC * a.h * a.w;
  const float* box = a.boxes + 4 * view;
  const bool flip = a.hflip[view], grey = a.gray[view];
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
    const Tap tap = is_x ? axis_tap(u, box[1], box[3], a.size, a.w, flip) : axis_tap(u, box[0], box[2], a.size, a.h, false);
    (is_x ? tx : ty)[u] = tap.i0;
    (is_x ? wx : wy)[2 * u] = tap.w0;
    (is_x ? wx : wy)[2 * u + 1] = tap.w1;
  }
  __syncthreads();
  const int P = a.size * a.size;
  float v[kC];
  float contrast_mean = 0.0f;
  if (contrast_f != 1.0f) {  // lerp with weight 1 is the identity: no mean needed
    float sum = 0.0f;
    int i = threadIdx.x / a.size, j = threadIdx.x - i * a.size;
    for (int p = threadIdx.x; p < P; p += kViewThreads) {
      view_pixel<kC>(a, img, unit_of, tx, wx, ty, wy, st, kc, 0.0f, i, j, v);
      sum += pixel_gray(v, kC);
      for (j += kViewThreads; j >= a.size; j -= a.size) ++i;
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < kViewThreads / 32; ++w) total += red[w];  // same order in every thread
    contrast_mean = total / static_cast<float>(P);
  }
  out_t* o = out + view * kC * P;
  int i = threadIdx.x / a.size, j = threadIdx.x - i * a.size;
  for (int p = threadIdx.x; p < P; p += kViewThreads) {
    view_pixel<kC>(a, img, unit_of, tx, wx, ty, wy, st, 4, contrast_mean, i, j, v);
    if constexpr (kC == 3) {
      if (grey) v[0] = v[1] = v[2] = luma(v[0], v[1], v[2]);
    }
#pragma unroll
    for (int k = 0; k < kC; ++k) {
      const out_t x = static_cast<out_t>((v[k] - a.mean) * a.inv_std);
      o[a.channels_last ? p * kC + k : k * P + p] = x;
    }
    for (j += kViewThreads; j >= a.size; j -= a.size) ++i;
  }
}

// The op: checks, device-side copies of the parameters, the output in its layout, one launch.
// `launch(kernel, grid, block, smem_bytes, args, out_ptr)` runs a kernel (CUDA or the emulator).
template <typename Launch>
at::Tensor simclr_views_device(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                               const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                               const at::Tensor& gray, int64_t size, double mean, double std, at::ScalarType dtype,
                               bool channels_last, Launch&& launch) {
  TORCH_CHECK(size <= kMaxViewSize, "con2: the CUDA simclr_views kernel makes views of at most ", kMaxViewSize,
              " px, not ", size, " (CON2_CUDA_VIEWS=compiled uses the torch ops)");
  ViewInputs v = prepare_view_inputs(images, source, boxes, hflip, factors, order, gray, size, dtype, channels_last);
  const int64_t m = v.source.numel();
  if (m == 0) return v.out;
  ViewArgs args{v.images.const_data_ptr<uint8_t>(), v.source.const_data_ptr<int64_t>(),
                v.boxes.const_data_ptr<float>(),           v.hflip.const_data_ptr<bool>(),
                v.factors.const_data_ptr<float>(),         v.order.const_data_ptr<int64_t>(),
                v.gray.const_data_ptr<bool>(),             static_cast<int>(v.images.size(1)),
                static_cast<int>(v.images.size(2)),        static_cast<int>(v.images.size(3)),
                static_cast<int>(size),                    static_cast<float>(mean),
                static_cast<float>(1.0 / std),             channels_last};
  if (!images.device().is_cpu()) {  // (on the CPU, prepare_view_inputs checked them)
    launch(&check_sources_kernel, dim3(static_cast<unsigned>((m + kViewThreads - 1) / kViewThreads)), dim3(kViewThreads),
           size_t{0}, args.source, m, v.images.size(0));
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
