// Warp and block reductions and float / double math helpers shared by the con2 CUDA kernels.
// No CUDA runtime header, so the kernels that use them also build under the CPU emulator
// (csrc/emu/cuda_emu.h).
#pragma once

#include <cmath>

namespace con2 {
namespace cuda {

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(INFINITY);
}

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduce over the whole block; every thread gets the result. `shm` holds >= 32 values.
// Safe to call repeatedly with the same `shm`.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* shm) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // earlier readers of shm are done
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < nwarps ? shm[lane] : identity;
    w = warp_reduce(w, op);
    if (lane == 0) shm[0] = w;
  }
  __syncthreads();
  return shm[0];
}

}  // namespace cuda
}  // namespace con2
