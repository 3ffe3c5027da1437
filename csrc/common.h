// Shared helpers for the con2 native ops (header-only, no torch/extension.h).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>

namespace con2 {

// The loss and the scorers compute in float64 when given float64, float32 otherwise
// (bf16 / fp16 inputs are upcast; accumulation is always float32 or better).
inline at::ScalarType compute_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Rows per block so that a [rows, cols] scratch block stays around `bytes`.
inline int64_t block_rows(int64_t cols, int64_t elem_size, int64_t bytes, int64_t lo, int64_t hi) {
  int64_t r = bytes / std::max<int64_t>(1, cols * elem_size);
  return std::max<int64_t>(lo, std::min<int64_t>(hi, r));
}

// The temperatures the loss takes (con2/ops/reference.py TEMPERATURE_RANGE): a floor far below any
// useful temperature (unit rows' logits reach 1e6 there); above float32's largest, 1/T is 0.
constexpr double kMinTemperature = 1e-6;
constexpr double kMaxTemperature = 3.4028234663852886e38;

inline void check_loss_inputs(const at::Tensor& z, const at::Tensor& labels, double temperature) {
  TORCH_CHECK(z.dim() == 2, "con2: z must be a 2-D [M, D] tensor, got ", z.sizes());
  TORCH_CHECK(z.size(0) >= 1, "con2: z is empty");
  TORCH_CHECK(z.size(1) >= 1, "con2: z has no columns (D = 0)");
  TORCH_CHECK(z.is_floating_point(), "con2: z must be floating point, got ", z.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == z.size(0),
              "con2: labels must have shape [", z.size(0), "], got ", labels.sizes());
  TORCH_CHECK(!labels.is_floating_point() && !labels.is_complex(),
              "con2: labels must be an integer tensor, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == z.device(), "con2: labels are on ", labels.device(),
              " but z is on ", z.device());
  TORCH_CHECK(std::isfinite(temperature) && temperature >= kMinTemperature && temperature <= kMaxTemperature,
              "con2: temperature must be a number in [1e-06, 3.403e+38] (the float32 kernels' range), got ",
              temperature);
}

// The loss kernels' working copies: z in the compute dtype, labels int64, both contiguous.
struct LossInputs {
  at::Tensor z, labels;
};
inline LossInputs prepare_loss_inputs(const at::Tensor& z, const at::Tensor& labels, double temperature) {
  check_loss_inputs(z, labels, temperature);
  return {z.detach().to(compute_dtype(z)).contiguous(), labels.to(at::kLong).contiguous()};
}

inline void check_supcon_bwd_inputs(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& lse,
                                    const at::Tensor& npos) {
  TORCH_CHECK(grad.numel() == 1, "con2: supcon_bwd expects a scalar gradient");
  TORCH_CHECK(lse.numel() == z.size(0) && npos.numel() == z.size(0), "con2: lse / npos must have M entries");
}

inline void check_top1_inputs(const at::Tensor& queries, const at::Tensor& bank, const at::Tensor& bank_norms) {
  TORCH_CHECK(queries.dim() == 2 && bank.dim() == 2 && queries.size(1) == bank.size(1),
              "con2: top1_cosine expects [Q, D] queries and an [N, D] bank");
  TORCH_CHECK(queries.size(0) > 0 && bank.size(0) > 0, "con2: top1_cosine got an empty input");
  TORCH_CHECK(queries.size(1) > 0, "con2: top1_cosine got rows of dimension 0");
  TORCH_CHECK(bank_norms.is_floating_point(), "con2: bank_norms must be floating point, got ", bank_norms.scalar_type());
  TORCH_CHECK(bank_norms.dim() == 1 && bank_norms.size(0) == bank.size(0),
              "con2: bank_norms must have shape [", bank.size(0), "]");
}

// Validates the two heads' inputs of con2_fwd_bwd (same M, dtype and device) and each head's.
inline void check_con2_inputs(const at::Tensor& z_context, const at::Tensor& z_content,
                              const at::Tensor& context_labels, const at::Tensor& sample_ids, double temperature) {
  check_loss_inputs(z_context, context_labels, temperature);
  check_loss_inputs(z_content, sample_ids, temperature);
  TORCH_CHECK(z_context.size(0) == z_content.size(0), "con2: z_context has ", z_context.size(0),
              " rows but z_content has ", z_content.size(0));
  TORCH_CHECK(z_context.scalar_type() == z_content.scalar_type(), "con2: z_context is ", z_context.scalar_type(),
              " but z_content is ", z_content.scalar_type());
  TORCH_CHECK(z_context.device() == z_content.device(), "con2: z_context is on ", z_context.device(),
              " but z_content is on ", z_content.device());
}

// simclr_views inputs: uint8 [S, C, H, W] images (C = 1 or 3), per view a source index,
// the random parameters of con2.data.views.ViewParams and an optional context code; prepared as
// contiguous working copies (float32 boxes / factors, int64 source / order / context, bool flags)
// plus the output in its layout. `context` stays undefined when the op got none.
// Largest image side (float32 source coordinates are exact below 2^24) and view side (the CPU
// kernel's int pixel offsets, times 3 channels, stay below 2^31); the CUDA kernel has its own, smaller cap.
constexpr int64_t kMaxImageSide = int64_t{1} << 24;
constexpr int64_t kMaxViewSide = int64_t{1} << 14;
struct ViewInputs {
  at::Tensor images, source, boxes, hflip, factors, order, gray, context, out;
};
inline ViewInputs prepare_view_inputs(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                                      const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                                      const at::Tensor& gray, int64_t size, at::ScalarType dtype,
                                      bool channels_last, const std::optional<at::Tensor>& context) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == at::kByte,
              "con2: simclr_views expects uint8 [S, C, H, W] images, got ", images.scalar_type(), " ", images.sizes());
  TORCH_CHECK(images.size(1) == 1 || images.size(1) == 3, "con2: images must have 1 or 3 channels, got ", images.size(1));
  TORCH_CHECK(images.size(2) >= 1 && images.size(3) >= 1, "con2: empty images");
  // source coordinates are float32, exact to 2^24: past that the taps' weights and indices go wrong
  TORCH_CHECK(images.size(2) <= kMaxImageSide && images.size(3) <= kMaxImageSide, "con2: simclr_views takes images of at most ",
              kMaxImageSide, " px a side, got ", images.size(3), "x", images.size(2));
  const int64_t m = source.numel();
  TORCH_CHECK(source.dim() == 1 && !source.is_floating_point(), "con2: source must be an integer [M] tensor");
  TORCH_CHECK(m == 0 || images.size(0) > 0, "con2: simclr_views got ", m, " views of an empty image batch");
  TORCH_CHECK(boxes.sizes() == at::IntArrayRef({m, 4}) && factors.sizes() == at::IntArrayRef({m, 4}) &&
                  order.sizes() == at::IntArrayRef({m, 4}) && hflip.numel() == m && gray.numel() == m,
              "con2: boxes / factors / order must be [M, 4] and hflip / gray [M] for M = ", m, " views");
  const bool has_context = context.has_value() && context->defined();
  if (has_context)
    TORCH_CHECK(context->dim() == 1 && context->numel() == m && !context->is_floating_point() &&
                    context->scalar_type() != at::kBool,
                "con2: context must be an integer [M] tensor of context codes for M = ", m, " views, got ",
                context->scalar_type(), " ", context->sizes());
  TORCH_CHECK(size >= 1 && size <= kMaxViewSide, "con2: size must be in [1, ", kMaxViewSide, "], got ", size);
  TORCH_CHECK(!order.is_floating_point() && !order.is_complex() && order.scalar_type() != at::kBool,
              "con2: order must be an integer [M, 4] tensor of jitter op indices, got ", order.scalar_type());
  TORCH_CHECK(!boxes.is_complex() && !factors.is_complex(), "con2: boxes and factors must be real, got ",
              boxes.scalar_type(), " and ", factors.scalar_type());
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "con2: views are float32, bfloat16 or float16, not ", dtype);
  for (const at::Tensor* t : {&source, &boxes, &hflip, &factors, &order, &gray})
    TORCH_CHECK(t->device() == images.device(), "con2: view parameters must be on ", images.device());
  if (has_context) TORCH_CHECK(context->device() == images.device(), "con2: context must be on ", images.device());
  ViewInputs v{images.contiguous(),           source.to(at::kLong).contiguous(), boxes.to(at::kFloat).contiguous(),
               hflip.to(at::kBool).contiguous(), factors.to(at::kFloat).contiguous(), order.to(at::kLong).contiguous(),
               gray.to(at::kBool).contiguous(), has_context ? context->to(at::kLong).contiguous() : at::Tensor(),
               at::Tensor()};
  // On the CPU a bad index or code is an error here; the CUDA kernel checks each view's itself (a
  // check here would cost a host sync per batch, stalling the training loop's run-ahead).
  if (m > 0 && images.device().is_cpu()) {
    const at::Tensor codes = has_context ? v.context : at::zeros({1}, v.source.options());
    const at::Tensor range =
        at::stack({v.source.min(), v.source.max(), codes.min(), codes.max(), v.order.min(), v.order.max()});
    const int64_t* r = range.const_data_ptr<int64_t>();
    const int64_t n = images.size(0);
    TORCH_CHECK(r[0] >= 0 && r[1] < n, "con2: source indices must be in [0, ", n, "), got [", r[0], ", ", r[1], "]");
    TORCH_CHECK(r[2] >= 0 && r[3] <= 3, "con2: context codes must be in [0, 3] (bit 0 invert, bit 1 vertical flip), got [",
                r[2], ", ", r[3], "]");
    TORCH_CHECK(r[4] >= 0 && r[5] <= 3, "con2: order must hold jitter op indices in [0, 3], got [", r[4], ", ", r[5],
                "]");
  }
  v.out = at::empty({m, images.size(1), size, size}, images.options().dtype(dtype),  // no relayout copy
                    channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  return v;
}

// Per-head SupCon loss and gradient (upstream gradient 1, compute dtype); the kernels of
// the supcon_fwd_bwd op, also used by con2_fwd_bwd.
std::tuple<at::Tensor, at::Tensor> supcon_fwd_bwd_cpu(const at::Tensor& z, const at::Tensor& labels,
                                                      double temperature);
std::tuple<at::Tensor, at::Tensor> supcon_fwd_bwd_cuda(const at::Tensor& z, const at::Tensor& labels,
                                                       double temperature);

// exp() of a non-positive argument (a softmax term: a logit minus the row's max or log-sum-exp)
// that GCC/Clang auto-vectorise (Cephes expf polynomial, ~1 ulp on [-87, 0]); exactly 0 below
// -87 (including -inf). A positive argument (a rounding excess) is taken as 0, so the term is at
// most 1 (at huge logits one bit of excess is worth more than exp's range).
template <typename T>
inline T vexp(T x) {
  return std::exp(std::min(x, T(0)));
}

template <>
inline float vexp<float>(float x) {
  // Branch-free so that loops calling it vectorise (needs -fno-trapping-math).
  const float lo = -87.0f;
  const float xc = std::min(std::max(x, lo), 0.0f);
  const float t = xc * 1.44269504088896341f;
  const float fn = (t + 12582912.0f) - 12582912.0f;  // round to nearest, |t| < 2^22
  const int32_t n = static_cast<int32_t>(fn);
  float r = xc - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return p * scale * static_cast<float>(x >= lo);
}

}  // namespace con2
