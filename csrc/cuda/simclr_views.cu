// simclr_views on CUDA: the block-per-view kernel of simclr_views.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "simclr_views.cuh"

namespace con2 {
namespace {

at::Tensor simclr_views_cuda(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                             const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                             const at::Tensor& gray, int64_t size, double mean, double std, at::ScalarType dtype,
                             bool channels_last, const std::optional<at::Tensor>& context) {
  c10::cuda::CUDAGuard guard(images.device());
  return views::simclr_views_device(images, source, boxes, hflip, factors, order, gray, size, mean, std, dtype,
                                    channels_last, context, cuda::StreamLaunch{c10::cuda::getCurrentCUDAStream().stream()});
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CUDA, m) { m.impl("simclr_views", &simclr_views_cuda); }

}  // namespace con2
