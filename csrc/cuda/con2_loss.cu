// con2_fwd_bwd on CUDA: the fused tiled kernels of con2_fused.cuh when asked for (and when
// they apply: float32 / bf16 / fp16 inputs, D <= 256); else both heads in shared launches
// (con2_two_head.cuh, replayed from a CUDA graph: two_head_graph.cuh) when they have one width
// and their similarities fit its scratch budget;
// else each head through the row-blocked cuBLAS SupCon kernel (csrc/cuda/supcon_loss.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"
#include "con2_fused.cuh"
#include "con2_two_head.cuh"
#include "two_head_graph.cuh"

namespace con2 {
namespace {

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
    if (auto out = two_head::graph_cache().run(z_context, z_content, context_labels, sample_ids, temperature)) {
      return *std::move(out);
    }
    return two_head::con2_fwd_bwd(z_context, z_content, context_labels, sample_ids, temperature, launch);
  }
  auto [l0, dz0] = supcon_fwd_bwd_cuda(z_context, context_labels, temperature);
  auto [l1, dz1] = supcon_fwd_bwd_cuda(z_content, sample_ids, temperature);
  return {at::stack({l0, l1}), dz0, dz1};
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CUDA, m) { m.impl("con2_fwd_bwd", &con2_fwd_bwd_cuda); }

}  // namespace con2
