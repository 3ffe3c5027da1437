// CUDA squared Mahalanobis distance: per row ||(x - mean) @ W||^2.
//
// Rows are processed in blocks (scratch <= 2 x 32 MB): centre, one cuBLAS GEMM against W
// (float32; TF32 only if torch.backends.cuda.matmul.allow_tf32 is set), and a warp-per-row
// squared-norm reduction kernel. With `fused` (float32 work, D <= 512): the one-pass tensor-core
// kernel of mahalanobis_fused.cuh instead.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"
#include "mahalanobis_fused.cuh"

namespace con2 {
namespace {

using cuda::kThreads;

template <typename T>
__global__ void sqnorm_rows_kernel(const T* __restrict__ Y, int64_t rows, int64_t K, T* __restrict__ out) {
  const int64_t warps_per_block = blockDim.x / 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warp leaves together
  const T* y = Y + row * K;
  T acc = T(0);
  for (int64_t k = lane; k < K; k += 32) acc += y[k] * y[k];
  acc = cuda::warp_reduce(acc, cuda::SumOp());
  if (lane == 0) out[row] = acc;
}

at::Tensor mahalanobis_sq_cuda(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& whitening,
                               bool fused) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) > 0, "con2: x must be a non-empty [Q, D] tensor");
  TORCH_CHECK(mean.dim() == 1 && mean.size(0) == x.size(1), "con2: mean must have shape [D]");
  TORCH_CHECK(whitening.dim() == 2 && whitening.size(0) == x.size(1), "con2: whitening must have shape [D, k]");
  // the fused kernel reads mean and whitening through raw pointers (a host pointer there is no error)
  TORCH_CHECK(mean.device() == x.device() && whitening.device() == x.device(), "con2: mahalanobis_sq: x is on ",
              x.device(), " but mean is on ", mean.device(), " and whitening on ", whitening.device());
  c10::cuda::CUDAGuard guard(x.device());
  const auto ct = (x.scalar_type() == at::kDouble || whitening.scalar_type() == at::kDouble) ? at::kDouble
                                                                                              : at::kFloat;
  if (fused && ct == at::kFloat && x.size(1) <= maha::kMaxDim) {
    return maha::mahalanobis_fused(x, mean, whitening, cuda::StreamLaunch{c10::cuda::getCurrentCUDAStream().stream()});
  }
  const at::Tensor W = whitening.detach().to(ct).contiguous();
  const at::Tensor mu = mean.detach().to(ct);
  const int64_t Q = x.size(0), D = x.size(1), K = W.size(1);
  at::Tensor out = at::empty({Q}, x.options().dtype(ct));
  const int64_t R = std::min<int64_t>(Q, block_rows(std::max(D, K), at::elementSize(ct), 32 << 20, 256, 1 << 20));
  at::Tensor xbuf = at::empty({R * D}, out.options());
  at::Tensor ybuf = at::empty({R * K}, out.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_mahalanobis_sq_cuda", [&] {
    for (int64_t r0 = 0; r0 < Q; r0 += R) {
      const int64_t rb = std::min(R, Q - r0);
      at::Tensor xc = xbuf.narrow(0, 0, rb * D).view({rb, D});
      at::sub_out(xc, x.detach().narrow(0, r0, rb).to(ct), mu);
      at::Tensor Y = ybuf.narrow(0, 0, rb * K).view({rb, K});
      at::mm_out(Y, xc, W);
      const int64_t rows_per_block = kThreads / 32;
      const unsigned blocks = static_cast<unsigned>((rb + rows_per_block - 1) / rows_per_block);
      sqnorm_rows_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(Y.const_data_ptr<scalar_t>(), rb, K,
                                                                    out.mutable_data_ptr<scalar_t>() + r0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CUDA, m) { m.impl("mahalanobis_sq", &mahalanobis_sq_cuda); }

}  // namespace con2
