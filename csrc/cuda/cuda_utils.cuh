// Small device helpers shared by the con2 CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include "reduce.cuh"

namespace con2 {
namespace cuda {

constexpr int kThreads = 256;

// Launches kernels on a stream for the host drivers of the *.cuh kernels, which take a launcher
// so that the same driver also runs under the CPU emulator (csrc/emu). Raises the dynamic
// shared-memory limit of kernels that need more than the default 48 KB.
struct StreamLaunch {
  cudaStream_t stream;
  template <typename... KArgs, typename... Args>
  void operator()(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args) const {
    if (smem > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
    kernel<<<grid, block, smem, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace cuda
}  // namespace con2
