// tf32 tensor-core helpers (nvcuda::wmma m16n16k8) shared by the con2 CUDA kernels, with the
// 3xTF32 split (a = hi + lo; a.b ~ hi.hi + hi.lo + lo.hi) that keeps float32 accuracy.
// Compiles with nvcc and, after csrc/emu/cuda_emu.h, as C++ on the CPU.
#pragma once

#ifndef CON2_CUDA_EMU
#include <cuda_runtime.h>
#include <mma.h>
#define CON2_DYNAMIC_SMEM(name) extern __shared__ __align__(128) float name[]
#endif

namespace con2 {
namespace tf32 {

namespace wmma = nvcuda::wmma;

template <typename Frag>
__device__ __forceinline__ void to_tf32(Frag& f) {
  for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
}

// hi <- tf32(a), lo <- tf32(a - hi), for a loaded into hi.
template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
  for (int t = 0; t < hi.num_elements; ++t) {
    const float a = hi.x[t];
    const float h = wmma::__float_to_tf32(a);
    hi.x[t] = h;
    lo.x[t] = wmma::__float_to_tf32(a - h);
  }
}

// Loads a fragment as tf32: hi only (kSplit = false, values already exact in tf32) or hi + lo.
template <bool kSplit, typename Frag>
__device__ __forceinline__ void load_tf32(Frag& hi, Frag& lo, const float* p, unsigned ld) {
  wmma::load_matrix_sync(hi, p, ld);
  if (kSplit) split_tf32(hi, lo); else to_tf32(hi);
}

// acc += a b with the 3xTF32 split of the operands that need it (small terms first).
template <bool kSplitA, bool kSplitB, typename FA, typename FB, typename FC>
__device__ __forceinline__ void mma_tf32(FC& acc, const FA& a_hi, const FA& a_lo, const FB& b_hi, const FB& b_lo) {
  if (kSplitA) wmma::mma_sync(acc, a_lo, b_hi, acc);
  if (kSplitB) wmma::mma_sync(acc, a_hi, b_lo, acc);
  wmma::mma_sync(acc, a_hi, b_hi, acc);
}

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

}  // namespace tf32
}  // namespace con2
