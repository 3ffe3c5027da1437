// simclr_views on the GPU: one thread block per view. The view never leaves the chip: when
// the view's contrast step has a factor other than 1, a first pass recomputes every pixel up
// to that step and reduces the mean grey level; the second pass recomputes each pixel through
// all steps (crop, jitter in the view's order, random grey, normalisation) and writes it
// once in the output dtype and layout. Per-pixel maths: csrc/views_math.h, shared with the
// CPU kernel. Compiles with nvcc and, after csrc/emu/cuda_emu.h, as C++ on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#ifndef CON2_CUDA_EMU
#include <cuda_runtime.h>
#define CON2_DYNAMIC_SMEM(name) extern __shared__ __align__(128) float name[]
#endif

#include "../common.h"
#include "../views_math.h"

namespace con2 {
namespace views {

constexpr int kViewThreads = 256;

struct ViewArgs {
  const uint8_t* images;  // [S, C, H, W]
  const int64_t* source;  // [M]
  const float* boxes;     // [M, 4] top, left, height, width
  const bool* hflip;      // [M]
  const float* factors;   // [M, 4] brightness, contrast, saturation, hue
  const int64_t* order;   // [M, 4]
  const bool* gray;       // [M]
  int c, h, w, size;
  float mean, std;
  bool channels_last;
};

// Pixel p of view `view` through the crop and the jitter steps [0, steps); v gets kC values.
template <int kC>
__device__ __forceinline__ void view_pixel(const ViewArgs& a, const uint8_t* img, const float* box, bool flip,
                                           const float* fac, const int64_t* ord, int steps, float contrast_mean,
                                           int p, float* v) {
  const int i = p / a.size, j = p - i * a.size;
  const float iy = source_coord(i, box[0], box[2], a.size, a.h);
  const float ix = source_coord(flip ? a.size - 1 - j : j, box[1], box[3], a.size, a.w);
  for (int k = 0; k < kC; ++k) v[k] = bilinear(img + k * a.h * a.w, a.h, a.w, iy, ix);
  for (int s = 0; s < steps; ++s) {
    const int op = static_cast<int>(ord[s]);
    jitter_step(v, kC, op, fac[op], contrast_mean);
  }
}

// kC (1 or 3) is a template parameter so that the pixel stays in registers.
template <typename out_t, int kC>
__global__ void __launch_bounds__(kViewThreads) views_kernel(ViewArgs a, out_t* out) {
  CON2_DYNAMIC_SMEM(red);  // 32 floats for the block reduction
  const int64_t view = blockIdx.x;
  const uint8_t* img = a.images + a.source[view] * kC * a.h * a.w;
  const float* box = a.boxes + 4 * view;
  const float* fac = a.factors + 4 * view;
  const int64_t* ord = a.order + 4 * view;
  const bool flip = a.hflip[view], grey = a.gray[view];
  const int P = a.size * a.size;
  float v[kC];
  float contrast_mean = 0.0f;
  if (fac[kContrast] != 1.0f) {  // lerp with weight 1 is the identity: no mean needed
    int kc = 0;
    while (ord[kc] != kContrast) ++kc;
    float sum = 0.0f;
    for (int p = threadIdx.x; p < P; p += kViewThreads) {
      view_pixel<kC>(a, img, box, flip, fac, ord, kc, 0.0f, p, v);
      sum += pixel_gray(v, kC);
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < kViewThreads / 32; ++w) total += red[w];  // same order in every thread
    contrast_mean = total / static_cast<float>(P);
  }
  out_t* o = out + view * kC * P;
  for (int p = threadIdx.x; p < P; p += kViewThreads) {
    view_pixel<kC>(a, img, box, flip, fac, ord, 4, contrast_mean, p, v);
    if constexpr (kC == 3) {
      if (grey) v[0] = v[1] = v[2] = luma(v[0], v[1], v[2]);
    }
    for (int k = 0; k < kC; ++k) {
      const out_t x = static_cast<out_t>((v[k] - a.mean) / a.std);
      o[a.channels_last ? p * kC + k : k * P + p] = x;
    }
  }
}

// The op: checks, device-side copies of the parameters, the output in its layout, one launch.
// `launch(kernel, grid, block, smem_bytes, args, out_ptr)` runs a kernel (CUDA or the emulator).
template <typename Launch>
at::Tensor simclr_views_device(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                               const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                               const at::Tensor& gray, int64_t size, double mean, double std, at::ScalarType dtype,
                               bool channels_last, Launch&& launch) {
  ViewInputs v = prepare_view_inputs(images, source, boxes, hflip, factors, order, gray, size, dtype, channels_last);
  const int64_t m = v.source.numel();
  if (m == 0) return v.out;
  ViewArgs args{v.images.const_data_ptr<uint8_t>(), v.source.const_data_ptr<int64_t>(),
                v.boxes.const_data_ptr<float>(),           v.hflip.const_data_ptr<bool>(),
                v.factors.const_data_ptr<float>(),         v.order.const_data_ptr<int64_t>(),
                v.gray.const_data_ptr<bool>(),             static_cast<int>(v.images.size(1)),
                static_cast<int>(v.images.size(2)),        static_cast<int>(v.images.size(3)),
                static_cast<int>(size),                    static_cast<float>(mean),
                static_cast<float>(std),                   channels_last};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "con2_simclr_views_device", [&] {
    auto kernel = args.c == 3 ? &views_kernel<scalar_t, 3> : &views_kernel<scalar_t, 1>;
    launch(kernel, dim3(static_cast<unsigned>(m)), dim3(kViewThreads), 32 * sizeof(float), args,
           v.out.mutable_data_ptr<scalar_t>());
  });
  return v.out;
}

}  // namespace views
}  // namespace con2
