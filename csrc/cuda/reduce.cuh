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

// A logit s / tau, rounded on its own. Written s * inv_tau inside `exp(s * inv_tau - max)` the
// compiler fuses it into an FMA with the subtraction (nvcc's default --fmad=true; GCC with -mfma)
// and the largest logit's own rounding error stays in exp's argument: thousands at |s| / tau ~ 1e11
// (rows far from unit length, a small tau), so that every exp underflowed and the loss was -inf.
__device__ __forceinline__ float logit(float s, float inv_tau) { return __fmul_rn(s, inv_tau); }
__device__ __forceinline__ double logit(double s, double inv_tau) { return __dmul_rn(s, inv_tau); }

// exp's argument for a softmax probability, which is at most 1: drops a rounding excess (S_ij and
// S_ji may differ in the last bit, and at huge logits one bit is worth more than exp's range).
template <typename T>
__device__ __forceinline__ T nonpositive(T x) {
  return x > T(0) ? T(0) : x;  // NaN passes, as on the CPU: a non-finite input must not give a finite gradient
}

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
