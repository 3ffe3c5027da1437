// CPU squared Mahalanobis distance: per row ||(x - mean) @ W||^2.
//
// Rows are processed in blocks: centre the block, one GEMM against W into a bounded
// scratch block (<= 16 MB: large enough for full GEMM speed), and a fused squared-norm row reduction.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common.h"

namespace con2 {
namespace {

constexpr int64_t kLanes = 8;

template <typename T>
void sqnorm_rows(const T* Y, int64_t K, T* out, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T* y = Y + r * K;
    T acc[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) acc[k] = 0;
    const int64_t main = K - K % kLanes;
    for (int64_t j = 0; j < main; j += kLanes)
      for (int64_t k = 0; k < kLanes; ++k) acc[k] += y[j + k] * y[j + k];
    T s = 0;
    for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
    for (int64_t j = main; j < K; ++j) s += y[j] * y[j];
    out[r] = s;
  }
}

at::Tensor mahalanobis_sq_cpu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& whitening,
                             bool /*fused: CUDA only*/) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) > 0, "con2: x must be a non-empty [Q, D] tensor");
  TORCH_CHECK(mean.dim() == 1 && mean.size(0) == x.size(1), "con2: mean must have shape [D]");
  TORCH_CHECK(whitening.dim() == 2 && whitening.size(0) == x.size(1),
              "con2: whitening must have shape [D, k]");
  const auto ct = (x.scalar_type() == at::kDouble || whitening.scalar_type() == at::kDouble)
                      ? at::kDouble
                      : at::kFloat;
  const at::Tensor W = whitening.detach().to(ct).contiguous();
  const at::Tensor mu = mean.detach().to(ct);
  const int64_t Q = x.size(0), D = x.size(1), K = W.size(1);
  at::Tensor out = at::empty({Q}, x.options().dtype(ct));
  const int64_t R = std::min<int64_t>(Q, block_rows(std::max(D, K), at::elementSize(ct), 16 << 20, 256, 16384));
  at::Tensor xbuf = at::empty({R, D}, out.options());
  at::Tensor ybuf = at::empty({R, K}, out.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_mahalanobis_sq_cpu", [&] {
    for (int64_t r0 = 0; r0 < Q; r0 += R) {
      const int64_t rb = std::min(R, Q - r0);
      at::Tensor xc = xbuf.narrow(0, 0, rb);
      at::sub_out(xc, x.detach().narrow(0, r0, rb).to(ct), mu);
      at::Tensor Y = ybuf.narrow(0, 0, rb);
      at::mm_out(Y, xc, W);
      const scalar_t* yp = Y.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>() + r0;
      at::parallel_for(0, rb, 64, [&](int64_t b, int64_t e) { sqnorm_rows<scalar_t>(yp, K, op, b, e); });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CPU, m) { m.impl("mahalanobis_sq", &mahalanobis_sq_cpu); }

}  // namespace con2
