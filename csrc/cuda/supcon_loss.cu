// CUDA SupCon / Con2 loss: forward and backward.
//
// Same blocked scheme as the CPU kernel: the M x M similarity is produced one row block
// at a time by cuBLAS (float32, into a scratch block of at most 64 MB) and reduced by
// the kernels below: forward = one thread block per row (max, positive sum / count,
// sum of exp, all in float32 or float64); backward = an elementwise kernel that turns
// the recomputed block into H = G + G^T for those rows, then one GEMM dz = H @ z.
// Positive masks are derived from the label vector inside the kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"
#include "supcon_rows.cuh"

namespace con2 {
namespace {

using cuda::kThreads;

// Scratch similarity block budget; when all of M x M fits (M <= 4096 in float32) the
// fused forward+backward computes it once and reuses it for the gradient.
constexpr int64_t kBlockBytes = 64 << 20;

template <typename T>
__global__ void supcon_fwd_rows_kernel(const T* __restrict__ S, int64_t M, int64_t r0,
                                       const int64_t* __restrict__ lab, T inv_tau, T* __restrict__ lse,
                                       T* __restrict__ npos, T* __restrict__ rowloss) {
  __shared__ T shm[32];
  const int64_t r = blockIdx.x, i = r0 + r;
  const cuda::RowStats<T> st = cuda::row_stats(S + r * M, M, i, lab, inv_tau, shm);
  if (threadIdx.x == 0) {
    lse[i] = st.lse;
    npos[i] = st.npos;
    rowloss[i] = st.loss;
  }
}

template <typename T>
__global__ void supcon_bwd_h_kernel(T* __restrict__ S, int64_t M, int64_t r0, const int64_t* __restrict__ lab,
                                    T inv_tau, const T* __restrict__ grad, T scale, const T* __restrict__ lse,
                                    const T* __restrict__ w, const T* __restrict__ invp) {
  const int64_t r = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= M) return;
  const int64_t i = r0 + r;
  T* s = S + r * M;
  T h = T(0);
  if (j != i) {
    h = cuda::grad_weight(cuda::logit(s[j], inv_tau), lab[j] == lab[i], lse[i], lse[j], w[i], w[j], invp[i], invp[j]);
    h = h * (grad[0] * scale);
  }
  s[j] = h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cuda(const at::Tensor& z, const at::Tensor& labels,
                                                              double temperature) {
  c10::cuda::CUDAGuard guard(z.device());
  const auto [zc, lab] = prepare_loss_inputs(z, labels, temperature);
  const auto ct = zc.scalar_type();
  const int64_t M = zc.size(0);
  auto opts = zc.options();
  at::Tensor lse = at::empty({M}, opts), npos = at::empty({M}, opts), rowloss = at::empty({M}, opts);
  const int64_t B = std::min<int64_t>(65535, block_rows(M, zc.element_size(), kBlockBytes, 16, M));
  at::Tensor buf = at::empty({B * M}, opts);
  const at::Tensor zt = zc.t();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_supcon_fwd_cuda", [&] {
    const scalar_t inv_tau = static_cast<scalar_t>(1.0 / temperature);
    for (int64_t r0 = 0; r0 < M; r0 += B) {
      const int64_t rb = std::min(B, M - r0);
      at::Tensor S = buf.narrow(0, 0, rb * M).view({rb, M});
      at::mm_out(S, zc.narrow(0, r0, rb), zt);
      supcon_fwd_rows_kernel<scalar_t><<<static_cast<unsigned>(rb), kThreads, 0, stream>>>(
          S.const_data_ptr<scalar_t>(), M, r0, lab.const_data_ptr<int64_t>(), inv_tau,
          lse.mutable_data_ptr<scalar_t>(), npos.mutable_data_ptr<scalar_t>(),
          rowloss.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  at::Tensor loss = rowloss.sum().div_(static_cast<double>(M));
  return {loss, lse, npos};
}

// dz (compute dtype) for the upstream gradient `g` (a 1-element tensor on the device).
at::Tensor supcon_bwd_impl(const at::Tensor& zc, const at::Tensor& lab, const at::Tensor& lse,
                           const at::Tensor& npos, const at::Tensor& g, double temperature,
                           at::Tensor S_full /* optional: precomputed M x M similarity, overwritten */) {
  const auto ct = zc.scalar_type();
  const int64_t M = zc.size(0);
  const at::Tensor lse_c = lse.to(ct).contiguous();
  const at::Tensor np = npos.to(ct);
  const at::Tensor w = (np > 0).to(ct).contiguous();
  const at::Tensor invp = (w / np.clamp_min(1)).contiguous();
  at::Tensor dz = at::empty_like(zc);
  const int64_t B = S_full.defined()
                        ? M
                        : std::min<int64_t>(65535, block_rows(M, zc.element_size(), kBlockBytes, 16, M));
  at::Tensor buf = S_full.defined() ? S_full.view({-1}) : at::empty({B * M}, zc.options());
  const at::Tensor zt = zc.t();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_supcon_bwd_cuda", [&] {
    const scalar_t inv_tau = static_cast<scalar_t>(1.0 / temperature);
    const scalar_t scale = static_cast<scalar_t>(1.0 / (static_cast<double>(M) * temperature));
    for (int64_t r0 = 0; r0 < M; r0 += B) {
      const int64_t rb = std::min(B, M - r0);
      at::Tensor S = buf.narrow(0, 0, rb * M).view({rb, M});
      if (!S_full.defined()) at::mm_out(S, zc.narrow(0, r0, rb), zt);
      const dim3 grid(static_cast<unsigned>((M + kThreads - 1) / kThreads), static_cast<unsigned>(rb));
      supcon_bwd_h_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          S.mutable_data_ptr<scalar_t>(), M, r0, lab.const_data_ptr<int64_t>(), inv_tau,
          g.const_data_ptr<scalar_t>(), scale, lse_c.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
          invp.const_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::Tensor out = dz.narrow(0, r0, rb);
      at::mm_out(out, S, zc);
    }
  });
  return dz;
}

at::Tensor supcon_bwd_cuda(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& labels,
                           const at::Tensor& lse, const at::Tensor& npos, double temperature) {
  c10::cuda::CUDAGuard guard(z.device());
  const auto [zc, lab] = prepare_loss_inputs(z, labels, temperature);
  check_supcon_bwd_inputs(grad, z, lse, npos);
  // the kernel reads lse / npos through raw pointers (grad, a scalar, is moved below)
  TORCH_CHECK(lse.device() == z.device() && npos.device() == z.device(), "con2: supcon_bwd: z is on ", z.device(),
              " but lse is on ", lse.device(), " and npos on ", npos.device());
  const at::Tensor g = grad.reshape({1}).to(zc.options()).contiguous();
  return supcon_bwd_impl(zc, lab, lse, npos, g, temperature, at::Tensor()).to(z.scalar_type());
}

}  // namespace

// Loss and d loss / dz for an upstream gradient of 1 (compute dtype). When M x M fits in
// the scratch budget the similarity is computed once and reused (2 GEMMs instead of 3).
std::tuple<at::Tensor, at::Tensor> supcon_fwd_bwd_cuda(const at::Tensor& z, const at::Tensor& labels,
                                                       double temperature) {
  c10::cuda::CUDAGuard guard(z.device());
  const auto [zc, lab] = prepare_loss_inputs(z, labels, temperature);
  const auto ct = zc.scalar_type();
  const int64_t M = zc.size(0);
  const int64_t B = std::min<int64_t>(65535, block_rows(M, zc.element_size(), kBlockBytes, 16, M));
  const at::Tensor one = at::ones({1}, zc.options());
  if (B < M) {
    auto [loss, lse, npos] = supcon_fwd_cuda(zc, lab, temperature);
    return {loss, supcon_bwd_impl(zc, lab, lse, npos, one, temperature, at::Tensor())};
  }
  auto opts = zc.options();
  at::Tensor lse = at::empty({M}, opts), npos = at::empty({M}, opts), rowloss = at::empty({M}, opts);
  at::Tensor S = at::mm(zc, zc.t());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_supcon_fwd_bwd_cuda", [&] {
    supcon_fwd_rows_kernel<scalar_t><<<static_cast<unsigned>(M), kThreads, 0, stream>>>(
        S.const_data_ptr<scalar_t>(), M, 0, lab.const_data_ptr<int64_t>(), static_cast<scalar_t>(1.0 / temperature),
        lse.mutable_data_ptr<scalar_t>(), npos.mutable_data_ptr<scalar_t>(), rowloss.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor loss = rowloss.sum().div_(static_cast<double>(M));
  return {loss, supcon_bwd_impl(zc, lab, lse, npos, one, temperature, S)};
}

TORCH_LIBRARY_IMPL(con2, CUDA, m) {
  m.impl("supcon_fwd", &supcon_fwd_cuda);
  m.impl("supcon_bwd", &supcon_bwd_cuda);
  m.impl("supcon_fwd_bwd", &supcon_fwd_bwd_cuda);
}

}  // namespace con2
