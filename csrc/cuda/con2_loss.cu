// con2_fwd_bwd on CUDA: the fused tiled kernels of con2_fused.cuh when asked for (and when
// they apply: float32 / bf16 / fp16 inputs, D <= 256); else both heads in shared launches
// (con2_two_head.cuh) when their similarities fit its scratch budget; else each head through
// the row-blocked cuBLAS SupCon kernel (csrc/cuda/supcon_loss.cu).
#include <ATen/ATen.h>
#if __has_include(<cublas_v2.h>) && __has_include(<cusparse.h>) && __has_include(<cusolverDn.h>)
#include <ATen/cuda/CUDABlas.h>
#define CON2_HAS_CUDA_BLAS 1  // setup.py finds these headers in the toolkit or the pip CUDA wheels
#endif
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"
#include "con2_fused.cuh"
#include "con2_two_head.cuh"

namespace con2 {
namespace {

// The two-head driver's batched GEMMs, straight to cuBLAS (at::cuda::blas::bgemm, the call
// at::bmm ends in): at::bmm's own checks and dispatch cost ~30 us of host time per call on the
// H100 machine, more than the GEMM itself at M = 2048. Row-major [M, D] is column-major D x M.
#ifdef CON2_HAS_CUDA_BLAS
struct CublasGemm {
  // S_h = Z_h Z_h^T: column-major C (M x M) = A^T B with A = B = Z_h (D x M, ld D).
  void gram(at::Tensor& s, const at::Tensor& z) const {
    const int64_t m = z.size(1), d = z.size(2);
    at::cuda::blas::bgemm<float>('t', 'n', m, m, d, 1.0f, z.const_data_ptr<float>(), d, m * d,
                                 z.const_data_ptr<float>(), d, m * d, 0.0f, s.mutable_data_ptr<float>(), m, m * m, 2);
  }
  // dZ_h = H_h Z_h: column-major dZ_h^T (D x M) = Z_h^T H_h^T with A = Z_h (D x M, ld D), B = H_h (M x M).
  void times(at::Tensor& dz, const at::Tensor& h, const at::Tensor& z) const {
    const int64_t m = z.size(1), d = z.size(2);
    at::cuda::blas::bgemm<float>('n', 'n', d, m, m, 1.0f, z.const_data_ptr<float>(), d, m * d,
                                 h.const_data_ptr<float>(), m, m * m, 0.0f, dz.mutable_data_ptr<float>(), d, m * d, 2);
  }
};
#else
using CublasGemm = two_head::AtenGemm;  // without the headers: at::bmm, the same cuBLAS calls plus its checks
#endif

bool fused_applies(const at::Tensor& z0, const at::Tensor& z1) {
  return z0.scalar_type() != at::kDouble && z0.size(1) <= fused::kMaxDim && z1.size(1) <= fused::kMaxDim;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_fwd_bwd_cuda(const at::Tensor& z_context,
                                                                  const at::Tensor& z_content,
                                                                  const at::Tensor& context_labels,
                                                                  const at::Tensor& sample_ids, double temperature,
                                                                  bool fused) {
  check_con2_inputs(z_context, z_content, context_labels, sample_ids, temperature);
  c10::cuda::CUDAGuard guard(z_context.device());
  const cuda::StreamLaunch launch{c10::cuda::getCurrentCUDAStream().stream()};
  if (fused && fused_applies(z_context, z_content)) {
    return fused::con2_fwd_bwd(z_context, z_content, context_labels, sample_ids, temperature, launch);
  }
  if (two_head::applies(z_context, z_content)) {
    return two_head::con2_fwd_bwd(z_context, z_content, context_labels, sample_ids, temperature, launch,
                                  CublasGemm{});
  }
  auto [l0, dz0] = supcon_fwd_bwd_cuda(z_context, context_labels, temperature);
  auto [l1, dz1] = supcon_fwd_bwd_cuda(z_content, sample_ids, temperature);
  return {at::stack({l0, l1}), dz0, dz1};
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CUDA, m) { m.impl("con2_fwd_bwd", &con2_fwd_bwd_cuda); }

}  // namespace con2
