// Test-only: the CUDA kernels of csrc/cuda/*.cuh (fused and two-head Con2 loss, SimCLR views, Mahalanobis) run
// on the CPU through the CUDA emulator (cuda_emu.h), as torch.ops.con2_emu.*.
// Built on demand by tests/test_cuda_kernels_emu.py, never part of con2._C.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "emu/cuda_emu.h"
#include "cuda/con2_fused.cuh"
#include "cuda/con2_two_head.cuh"
#include "cuda/mahalanobis_fused.cuh"
#include "cuda/simclr_views.cuh"

namespace {

using EmuLaunch = con2_emu::Launch;

std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_fwd_bwd_emu(const at::Tensor& z_context,
                                                                 const at::Tensor& z_content,
                                                                 const at::Tensor& context_labels,
                                                                 const at::Tensor& sample_ids, double temperature) {
  TORCH_CHECK(z_context.size(1) <= con2::fused::kMaxDim && z_content.size(1) <= con2::fused::kMaxDim,
              "con2_emu: D > 256");
  return con2::fused::con2_fwd_bwd(z_context, z_content, context_labels, sample_ids, temperature, EmuLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_two_head_emu(const at::Tensor& z_context,
                                                                  const at::Tensor& z_content,
                                                                  const at::Tensor& context_labels,
                                                                  const at::Tensor& sample_ids, double temperature) {
  TORCH_CHECK(con2::two_head::applies(z_context, z_content), "con2_emu: two_head does not apply (heads of different widths, "
              "or similarities over the scratch budget)");
  return con2::two_head::con2_fwd_bwd(z_context, z_content, context_labels, sample_ids, temperature, EmuLaunch{});
}

at::Tensor simclr_views_emu(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                            const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                            const at::Tensor& gray, int64_t size, double mean, double std, at::ScalarType dtype,
                            bool channels_last, const std::optional<at::Tensor>& context) {
  return con2::views::simclr_views_device(images, source, boxes, hflip, factors, order, gray, size, mean, std,
                                          dtype, channels_last, context, EmuLaunch{});
}

at::Tensor mahalanobis_emu(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& whitening) {
  TORCH_CHECK(x.size(1) <= con2::maha::kMaxDim, "con2_emu: D > 512");
  return con2::maha::mahalanobis_fused(x, mean, whitening, EmuLaunch{});
}

}  // namespace

TORCH_LIBRARY(con2_emu, m) {
  m.def("con2_fwd_bwd(Tensor z_context, Tensor z_content, Tensor context_labels, Tensor sample_ids, "
        "float temperature) -> (Tensor, Tensor, Tensor)");
  m.impl("con2_fwd_bwd", c10::DispatchKey::CPU, &con2_fwd_bwd_emu);
  m.def("con2_two_head(Tensor z_context, Tensor z_content, Tensor context_labels, Tensor sample_ids, "
        "float temperature) -> (Tensor, Tensor, Tensor)");
  m.impl("con2_two_head", c10::DispatchKey::CPU, &con2_two_head_emu);
  m.def("simclr_views(Tensor images, Tensor source, Tensor boxes, Tensor hflip, Tensor factors, Tensor order, "
        "Tensor gray, int size, float mean, float std, ScalarType dtype, bool channels_last, "
        "Tensor? context=None) -> Tensor");
  m.impl("simclr_views", c10::DispatchKey::CPU, &simclr_views_emu);
  m.def("mahalanobis_sq(Tensor x, Tensor mean, Tensor whitening) -> Tensor");
  m.impl("mahalanobis_sq", c10::DispatchKey::CPU, &mahalanobis_emu);
}
