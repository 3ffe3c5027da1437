// simclr_views on the CPU: one view at a time per thread, held in a thread-local float
// buffer that stays in cache while the crop, the four jitter steps (each a vectorisable
// pass over the buffer, contrast's mean taken just before its step), the random grey and the
// normalisation run over it; then one write in the output dtype and layout.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../common.h"
#include "../views_math.h"

namespace con2 {
namespace {

using namespace views;

// Per axis, the bilinear taps (axis_tap) of every output index, and whether the second is inside.
struct Taps {
  std::vector<int> i0;
  std::vector<float> w0, w1;
  std::vector<char> in1;
  void build(int size, float start, float len, int extent, bool flip) {
    i0.resize(size), w0.resize(size), w1.resize(size), in1.resize(size);
    for (int t = 0; t < size; ++t) {
      const Tap tap = axis_tap(t, start, len, size, extent, flip);
      i0[t] = tap.i0;
      w0[t] = tap.w0;
      w1[t] = tap.w1;
      in1[t] = tap.i0 + 1 < extent;
    }
  }
};

struct Scratch {  // per thread
  std::vector<float> buf;
  Taps tx, ty;
};

float kByteToUnit[256];          // v / 255 exactly as x_u8.float().div_(255) rounds it
float kInvertedByteToUnit[256];  // (255 - v) / 255: the inverted image's floats
const bool kTableReady = [] {
  for (int v = 0; v < 256; ++v) {
    kByteToUnit[v] = unit(static_cast<uint8_t>(v));
    kInvertedByteToUnit[v] = unit(static_cast<uint8_t>(255 - v));
  }
  return true;
}();

template <typename out_t>
void make_view(const uint8_t* img, int c, int h, int w, int size, const float* box, bool flip, const float* fac,
               const int64_t* ord, bool grey, int context, float mean, float std, Scratch& sc, out_t* out,
               bool channels_last) {
  const int P = size * size;
  float* buf = sc.buf.data();
  sc.ty.build(size, box[0], box[2], h, false);
  sc.tx.build(size, box[1], box[3], w, flip);
  const Taps& tx = sc.tx;
  const Taps& ty = sc.ty;
  // the context transform, applied while reading: row y of the flipped image is row h - 1 - y
  const float* to_unit = context & kContextInvert ? kInvertedByteToUnit : kByteToUnit;
  const bool vflip = context & kContextVFlip;
  for (int k = 0; k < c; ++k) {
    const uint8_t* plane = img + static_cast<int64_t>(k) * h * w;  // int64: planes may pass 2^31 bytes
    for (int i = 0; i < size; ++i) {
      const uint8_t* row0 = plane + static_cast<int64_t>(vflip ? h - 1 - ty.i0[i] : ty.i0[i]) * w;
      const uint8_t* row1 = ty.in1[i] ? (vflip ? row0 - w : row0 + w) : row0;
      const float wy0 = ty.w0[i], wy1 = ty.w1[i];
      const bool y1 = ty.in1[i];
      float* dst = buf + k * P + i * size;
      for (int j = 0; j < size; ++j) {
        const int x0 = tx.i0[j];
        const bool x1 = tx.in1[j];
        const int xb = x1 ? x0 + 1 : x0;
        float v = 0.0f;  // nw, ne, sw, se as grid_sample sums them
        v += to_unit[row0[x0]] * (tx.w0[j] * wy0);
        if (x1) v += to_unit[row0[xb]] * (tx.w1[j] * wy0);
        if (y1) v += to_unit[row1[x0]] * (tx.w0[j] * wy1);
        if (x1 && y1) v += to_unit[row1[xb]] * (tx.w1[j] * wy1);
        dst[j] = v;
      }
    }
  }
  float* __restrict__ r = buf;  // planes never overlap: lets the per-pixel loops vectorise
  float* __restrict__ g = buf + P;
  float* __restrict__ b = buf + 2 * P;
  for (int step = 0; step < 4; ++step) {
    const int op = static_cast<int>(ord[step]);
    const float f = fac[op];
    if (op == kBrightness) {
      for (int e = 0; e < c * P; ++e) buf[e] = lerp_clamp(0.0f, buf[e], f);
    } else if (op == kContrast) {
      double sum = 0.0;
      if (c == 3)
        for (int p = 0; p < P; ++p) sum += luma(r[p], g[p], b[p]);
      else
        for (int p = 0; p < P; ++p) sum += r[p];
      const float m = static_cast<float>(sum / P);
      for (int e = 0; e < c * P; ++e) buf[e] = lerp_clamp(m, buf[e], f);
    } else if (op == kSaturation && c == 3) {
      for (int p = 0; p < P; ++p) {
        const float y = luma(r[p], g[p], b[p]);
        r[p] = lerp_clamp(y, r[p], f);
        g[p] = lerp_clamp(y, g[p], f);
        b[p] = lerp_clamp(y, b[p], f);
      }
    } else if (op == kHue && c == 3 && f != 0.0f) {
      for (int p = 0; p < P; ++p) {
        float rv = r[p], gv = g[p], bv = b[p];
        hue_shift(rv, gv, bv, f);
        r[p] = rv, g[p] = gv, b[p] = bv;
      }
    }
  }
  if (grey && c == 3)
    for (int p = 0; p < P; ++p) r[p] = g[p] = b[p] = luma(r[p], g[p], b[p]);
  for (int k = 0; k < c; ++k)
    for (int p = 0; p < P; ++p) {
      const out_t v = static_cast<out_t>((buf[k * P + p] - mean) / std);
      out[channels_last ? p * c + k : k * P + p] = v;
    }
}

at::Tensor simclr_views_cpu(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                            const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                            const at::Tensor& gray, int64_t size, double mean, double std, at::ScalarType dtype,
                            bool channels_last, const std::optional<at::Tensor>& context) {
  const ViewInputs v = prepare_view_inputs(images, source, boxes, hflip, factors, order, gray, size, dtype,
                                           channels_last, context);
  const int64_t* codes = v.context.defined() ? v.context.const_data_ptr<int64_t>() : nullptr;
  const at::Tensor &img = v.images, &src = v.source, &bx = v.boxes, &fc = v.factors, &od = v.order;
  const at::Tensor &hf = v.hflip, &gr = v.gray;
  at::Tensor out = v.out;
  const int64_t m = src.numel(), sz = size;
  const int c = static_cast<int>(img.size(1)), h = static_cast<int>(img.size(2)), w = static_cast<int>(img.size(3));
  const int64_t per_view = c * sz * sz;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "con2_simclr_views_cpu", [&] {
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, m, 1, [&](int64_t b, int64_t e) {
      Scratch sc;
      sc.buf.resize(per_view);
      for (int64_t i = b; i < e; ++i) {
        make_view<scalar_t>(img.const_data_ptr<uint8_t>() + src.const_data_ptr<int64_t>()[i] * c * h * w, c, h, w,
                            static_cast<int>(sz), bx.const_data_ptr<float>() + 4 * i, hf.const_data_ptr<bool>()[i],
                            fc.const_data_ptr<float>() + 4 * i, od.const_data_ptr<int64_t>() + 4 * i,
                            gr.const_data_ptr<bool>()[i], codes ? static_cast<int>(codes[i]) : 0,
                            static_cast<float>(mean), static_cast<float>(std),
                            sc, op + i * per_view, channels_last);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CPU, m) { m.impl("simclr_views", &simclr_views_cpu); }

}  // namespace con2
