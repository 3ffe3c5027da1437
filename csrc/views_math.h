// Per-pixel maths of the SimCLR view op (simclr_views), shared by the CPU kernel, the CUDA
// kernel and the CUDA emulator build. Each function transcribes the float32 arithmetic of
// the PyTorch path in con2/data/views.py (crop_grid + grid_sample, _blend_step's lerp,
// adjust_hue's closed form, _gray), operation for operation, so the two agree to rounding.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(CON2_CUDA_EMU)
#define CON2_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define CON2_HD inline __attribute__((always_inline))  // inlined into the CPU loops, which then vectorise
#else
#define CON2_HD inline
#endif

// The GPU's arithmetic: the branches marked CON2_GPU_MATH, compiled by nvcc for the device and by
// the emulator with CON2_EMU_GPU_MATH (cuda_emu.h supplies the intrinsics), so that the GPU-only
// formulas are tested on the CPU as well; the CPU kernel and the plain emulator build take the
// exact transcription of the torch ops.
#if defined(__CUDA_ARCH__) || defined(CON2_EMU_GPU_MATH)
#define CON2_GPU_MATH 1
#endif

namespace con2 {
namespace views {

enum Op : int { kBrightness = 0, kContrast = 1, kSaturation = 2, kHue = 3 };

// Bits of a view's context code (con2.data.contexts): the context transforms the op applies to
// the source image while reading it, before the crop. Both map pixels one to one, so no context
// image is ever made: inversion reads 255 - x, the vertical flip reads row h - 1 - y.
enum ContextBit : int { kContextInvert = 1, kContextVFlip = 2 };

// ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
CON2_HD float luma(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }

// Written with compares (not fminf / fmaxf) so that CPU loops calling it vectorise. On the GPU the
// saturate modifier, which folds into the multiply-add before it (three instructions fewer; the
// values are the same for every non-NaN input, and none is NaN here).
CON2_HD float clamp01(float v) {
#ifdef CON2_GPU_MATH
  return __saturatef(v);
#else
  v = v < 0.0f ? 0.0f : v;
  return v > 1.0f ? 1.0f : v;
#endif
}

// clamp(torch.lerp(start, end, w), 0, 1) with torch's two-sided lerp formula. On the GPU the
// saturate is written into each side so that it folds into the side's multiply-add.
CON2_HD float lerp_clamp(float start, float end, float w) {
#ifdef CON2_GPU_MATH
  const float d = end - start;
  return w < 0.5f ? __saturatef(fmaf(w, d, start)) : __saturatef(fmaf(-d, 1.0f - w, end));
#else
  const float v = w < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
  return clamp01(v);
#endif
}

// The divisions of the hue maths: exact on the CPU (the torch ops' floats); on the GPU
// __fdividef (within 2 ulp), because an IEEE division costs about ten instructions there and a
// pixel took seven of them. The hue map is continuous and 6-periodic in h6, so a floor that
// lands on the other side of a multiple of 6 moves the result by rounding only.
CON2_HD float hue_div(float a, float b) {
#ifdef CON2_GPU_MATH
  return __fdividef(a, b);
#else
  return a / b;
#endif
}

// torch.remainder(a, 6). PyTorch takes fmod and shifts negatives by 6; for |a| < 12 (always
// the case here: a hue sextant plus at most 6 * 0.5) a - 6 floor(a / 6) gives the same floats
// and, unlike fmodf, vectorises.
CON2_HD float remainder6(float a) { return a - 6.0f * floorf(hue_div(a, 6.0f)); }

#ifdef CON2_GPU_MATH
// The GPU's hue steps. One reciprocal serves the three divisions by crd (as __fdividef would, but
// without its guard for a denormal divisor: crd is 1 or the difference of two unequal [0, 1]
// floats made from bytes, never denormal). remainder6 of n + h6 with h6 in [0, 6) (to rounding)
// is one conditional subtraction (a floor there may round either way at 6 where the hue map is
// continuous, as above); the triangle min(k, 4 - k) is one min.
__device__ __forceinline__ float hue_reciprocal(float x) {
#ifdef __CUDA_ARCH__
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.0f / x;  // the emulator: the exact reciprocal (the GPU's is within 1 ulp)
#endif
}
__device__ __forceinline__ float hue_channel(float maxc, float cr, float n, float h6) {
  float k = n + h6;
  k = k >= 6.0f ? k - 6.0f : k;
  return fmaf(-cr, __saturatef(fminf(k, 4.0f - k)), maxc);
}
#endif

// adjust_hue: RGB -> hue sextant, shift by f (in turns), back with c = v - (v - min) w.
CON2_HD void hue_shift(float& r, float& g, float& b, float f) {
  const float mx_rg = r > g ? r : g, mn_rg = r < g ? r : g;
  const float maxc = mx_rg > b ? mx_rg : b, minc = mn_rg < b ? mn_rg : b;
  const float cr = maxc - minc;
  const float crd = cr == 0.0f ? 1.0f : cr;
#ifdef CON2_GPU_MATH
  const float inv = hue_reciprocal(crd);
  const float rc = (maxc - r) * inv, gc = (maxc - g) * inv, bc = (maxc - b) * inv;
#else
  const float rc = hue_div(maxc - r, crd), gc = hue_div(maxc - g, crd), bc = hue_div(maxc - b, crd);
#endif
  const bool is_r = maxc == r, is_g = maxc == g && !is_r;
  float h6 = is_r ? bc - gc : (is_g ? 2.0f + rc - bc : 4.0f + gc - rc);
  h6 = remainder6(h6 + 6.0f * f);
#ifdef CON2_GPU_MATH
  r = hue_channel(maxc, cr, 5.0f, h6);
  g = hue_channel(maxc, cr, 3.0f, h6);
  b = hue_channel(maxc, cr, 1.0f, h6);
#else
  const float kr = remainder6(5.0f + h6), kg = remainder6(3.0f + h6), kb = remainder6(1.0f + h6);
  r = maxc - cr * clamp01(kr < 4.0f - kr ? kr : 4.0f - kr);
  g = maxc - cr * clamp01(kg < 4.0f - kg ? kg : 4.0f - kg);
  b = maxc - cr * clamp01(kb < 4.0f - kb ? kb : 4.0f - kb);
#endif
}

// Source coordinate (in pixels, as grid_sample sees it) of output index t along one axis for
// a crop starting at `start` of length `len` resized to `size`: crop_grid's sample position,
// clamped into the crop, through the normalised grid and back, clipped to the border.
CON2_HD float source_coord(int t, float start, float len, int size, int extent) {
  const float j = static_cast<float>(t) + 0.5f;
  float x = start + j * (len / static_cast<float>(size)) - 0.5f;
  x = fminf(fmaxf(x, start), start + len - 1.0f);
  const float g = (2.0f * x + 1.0f) / static_cast<float>(extent) - 1.0f;       // crop_grid
  const float ix = ((g + 1.0f) * static_cast<float>(extent) - 1.0f) / 2.0f;     // grid_sample
  return fminf(fmaxf(ix, 0.0f), static_cast<float>(extent - 1));                // border padding
}

CON2_HD float unit(uint8_t v) { return static_cast<float>(v) / 255.0f; }  // as x_u8.float().div_(255)

// The bilinear tap of output index t along one axis (grid_sample's weights, same floats): the
// first source index and its weight, and the weight of the next index, which is inside the
// image when i0 + 1 < extent (else its weight is skipped).
struct Tap {
  int i0;
  float w0, w1;
};

CON2_HD Tap axis_tap(int t, float start, float len, int size, int extent, bool flip) {
  const float x = source_coord(flip ? size - 1 - t : t, start, len, size, extent);
  const float f0 = floorf(x);
  return {static_cast<int>(f0), f0 + 1.0f - x, x - f0};
}

// One colour-jitter step on one pixel (c channels in v). `mean` is the contrast step's mean
// grey level of the whole view before this step; unused by the other ops.
CON2_HD void jitter_step(float* v, int c, int op, float f, float mean) {
  if (op == kBrightness) {
    for (int k = 0; k < c; ++k) v[k] = lerp_clamp(0.0f, v[k], f);
  } else if (op == kContrast) {
    for (int k = 0; k < c; ++k) v[k] = lerp_clamp(mean, v[k], f);
  } else if (op == kSaturation) {
    if (c == 3) {
      const float y = luma(v[0], v[1], v[2]);
      for (int k = 0; k < 3; ++k) v[k] = lerp_clamp(y, v[k], f);
    }
  } else if (c == 3 && f != 0.0f) {  // hue
    hue_shift(v[0], v[1], v[2], f);
  }
}

CON2_HD float pixel_gray(const float* v, int c) { return c == 3 ? luma(v[0], v[1], v[2]) : v[0]; }

}  // namespace views
}  // namespace con2
