// con2_fwd_bwd on the CPU: the two heads through the blocked, multi-threaded SupCon kernel
// (csrc/cpu/supcon_loss.cpp), whose row blocks already bound the memory.
#include <torch/library.h>

#include "../common.h"

namespace con2 {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_fwd_bwd_cpu(const at::Tensor& z_context,
                                                                 const at::Tensor& z_content,
                                                                 const at::Tensor& context_labels,
                                                                 const at::Tensor& sample_ids, double temperature,
                                                                 bool /*fused: CUDA only*/) {
  check_con2_inputs(z_context, z_content, context_labels, sample_ids, temperature);
  auto [l0, dz0] = supcon_fwd_bwd_cpu(z_context, context_labels, temperature);
  auto [l1, dz1] = supcon_fwd_bwd_cpu(z_content, sample_ids, temperature);
  return {at::stack({l0, l1}), dz0, dz1};
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CPU, m) { m.impl("con2_fwd_bwd", &con2_fwd_bwd_cpu); }

}  // namespace con2
