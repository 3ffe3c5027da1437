// The per-row maths of the SupCon loss on the GPU, shared by the row-blocked per-head kernels
// (supcon_loss.cu) and the two-head kernels (con2_two_head.cuh). Positive masks come from the
// label vector; nothing M x M besides the similarity row is read. No CUDA runtime header: also
// builds under the CPU emulator.
#pragma once

#include <cstdint>

#include "reduce.cuh"

namespace con2 {
namespace cuda {

template <typename T>
struct RowStats {
  T lse;   // log-sum-exp of s_ij / tau over j != i (0 when M = 1)
  T npos;  // number of positives: j != i with the anchor's label
  T loss;  // lse - mean positive s_ij / tau; 0 without positives
};

// Anchor i of its similarity row s[0, m), computed by the whole block (every thread gets the
// result). `red` holds >= 32 values.
template <typename T>
__device__ __forceinline__ RowStats<T> row_stats(const T* s, int64_t m, int64_t i, const int64_t* lab, T inv_tau,
                                                 T* red) {
  if (m == 1) return {T(0), T(0), T(0)};
  const int64_t li = lab[i];
  T mx = neg_inf<T>(), ps = T(0), pc = T(0);
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    if (j == i) continue;
    const T v = s[j];
    mx = v > mx ? v : mx;
    if (lab[j] == li) {
      ps += v;
      pc += T(1);
    }
  }
  mx = block_reduce(mx, MaxOp(), neg_inf<T>(), red);
  ps = block_reduce(ps, SumOp(), T(0), red);
  pc = block_reduce(pc, SumOp(), T(0), red);
  const T mt = logit(mx, inv_tau);
  T se = T(0);
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    if (j != i) se += dexp(logit(s[j], inv_tau) - mt);
  }
  se = block_reduce(se, SumOp(), T(0), red);
  const T l = mt + dlog(se);
  return {l, pc, pc > T(0) ? l - ps * inv_tau / pc : T(0)};
}

// Gradient weight of a pair j != i before the 1 / (M tau) scale: w_i p_ij + w_j p_ji minus
// (1/n_i + 1/n_j) for positives, with v = logit(s_ij, inv_tau), w = [anchor has positives], p = softmax
// probability from the row's lse, inv_pos = w / n.
template <typename T>
__device__ __forceinline__ T grad_weight(T v, bool positive, T lse_i, T lse_j, T w_i, T w_j, T inv_pos_i,
                                         T inv_pos_j) {
  const T pos = positive ? inv_pos_i + inv_pos_j : T(0);
  return w_i * dexp(nonpositive(v - lse_i)) + w_j * dexp(nonpositive(v - lse_j)) - pos;
}

}  // namespace cuda
}  // namespace con2
