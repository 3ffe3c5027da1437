// Test-only: the CUDA view kernel (csrc/cuda/simclr_views.cuh) with its GPU arithmetic
// (CON2_GPU_MATH: bytes to floats by bit tricks, the packed-pixel byte permute, saturate, one
// reciprocal for hue, ...) run on the CPU through the CUDA emulator, as torch.ops.con2_emu_gpu_math.
// kernels_emu.cpp runs the same kernel with the exact torch-op arithmetic; this build checks the
// GPU-only formulas, which otherwise only a GPU would execute. Built on demand by
// tests/test_cuda_kernels_emu.py, never part of con2._C.
#define CON2_EMU_GPU_MATH 1

#include <ATen/ATen.h>
#include <torch/library.h>

#include "emu/cuda_emu.h"
#include "cuda/simclr_views.cuh"

namespace {

at::Tensor simclr_views_emu(const at::Tensor& images, const at::Tensor& source, const at::Tensor& boxes,
                            const at::Tensor& hflip, const at::Tensor& factors, const at::Tensor& order,
                            const at::Tensor& gray, int64_t size, double mean, double std, at::ScalarType dtype,
                            bool channels_last, const std::optional<at::Tensor>& context) {
  return con2::views::simclr_views_device(images, source, boxes, hflip, factors, order, gray, size, mean, std,
                                          dtype, channels_last, context, con2_emu::Launch{});
}

}  // namespace

TORCH_LIBRARY(con2_emu_gpu_math, m) {
  m.def("simclr_views(Tensor images, Tensor source, Tensor boxes, Tensor hflip, Tensor factors, Tensor order, "
        "Tensor gray, int size, float mean, float std, ScalarType dtype, bool channels_last, "
        "Tensor? context=None) -> Tensor");
  m.impl("simclr_views", c10::DispatchKey::CPU, &simclr_views_emu);
}
