// Both heads of the Con2 loss, forward and backward, in 6 launches: when the two M x M
// similarity matrices fit the scratch budget (M <= 2896 in float32) and the heads have the
// same width, the heads share every launch instead of running the per-head blocked path
// twice (~19 launches with its small ATen ops). At the training sizes (M ~ 2048) the loss is
// bound by host launch overhead, not by the GPU (docs/PERFORMANCE.md), so the launch count is
// what sets its speed.
//
//   Z = [Z_0; Z_1]                        (1 copy)
//   S_h = Z_h Z_h^T                       (1 batched GEMM)
//   row statistics of both heads          (1 kernel: max, log-sum-exp, positives, row loss)
//   the two losses                        (1 kernel, deterministic block sum)
//   H_h = G_h + G_h^T, overwriting S_h    (1 kernel, positive masks from the labels)
//   dZ_h = H_h Z_h                        (1 batched GEMM)
//
// Per-row maths shared with csrc/cuda/supcon_loss.cu (supcon_rows.cuh; METHOD §4; dL/dZ =
// (G + G^T) Z since S is a Gram matrix). Compiles with nvcc and, after csrc/emu/cuda_emu.h, as C++ on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#ifndef CON2_CUDA_EMU
#include <cuda_runtime.h>
#endif
#ifndef CON2_DYNAMIC_SMEM
#define CON2_DYNAMIC_SMEM(name) extern __shared__ __align__(128) float name[]
#endif

#include "supcon_rows.cuh"

namespace con2 {
namespace two_head {

constexpr int kThreads = 256;
constexpr int64_t kScratchBytes = 64 << 20;  // both similarity matrices, float32
constexpr size_t kSmemBytes = 32 * sizeof(float);  // block reductions

// float32 / bf16 / fp16 heads of one width (float64 keeps the per-head path) whose
// similarities fit.
inline bool applies(const at::Tensor& z_context, const at::Tensor& z_content) {
  const int64_t m = z_context.size(0);
  return z_context.scalar_type() != at::kDouble && z_content.scalar_type() != at::kDouble &&
         z_context.size(1) == z_content.size(1) && 2 * m * m * static_cast<int64_t>(sizeof(float)) <= kScratchBytes;
}

struct Args {
  float* s;                    // [2, M, M]: similarities, then the gradient weights H
  const int64_t* labels[2];    // [M] per head
  float* lse;                  // [2, M]
  float* has_pos;              // [2, M]: 1 where the anchor has a positive, else 0
  float* inv_pos;              // [2, M]: has_pos / number of positives
  float* rowloss;              // [2, M]
  float* losses;               // [2]
  int64_t m;
  float inv_tau, scale;        // 1 / tau, 1 / (M tau)
};

// The head's labels; a branch, not a run-time index into the parameter array (which would
// put the array on a stack frame).
__device__ __forceinline__ const int64_t* head_labels(const Args& a, int head) {
  return head == 0 ? a.labels[0] : a.labels[1];
}

// One block per (anchor row, head): max, positive sum and count, log-sum-exp over j != i.
__global__ void __launch_bounds__(kThreads) row_stats_kernel(Args a) {
  CON2_DYNAMIC_SMEM(red);
  const int head = static_cast<int>(blockIdx.y);
  const int64_t i = blockIdx.x, m = a.m, o = head * m + i;
  const cuda::RowStats<float> st = cuda::row_stats(a.s + o * m, m, i, head_labels(a, head), a.inv_tau, red);
  if (threadIdx.x == 0) {
    const bool any = st.npos > 0.0f;
    a.lse[o] = st.lse;
    a.has_pos[o] = any ? 1.0f : 0.0f;
    a.inv_pos[o] = any ? 1.0f / st.npos : 0.0f;
    a.rowloss[o] = st.loss;
  }
}

// One block: losses[h] = mean of head h's row losses (fixed summation order: deterministic).
__global__ void __launch_bounds__(kThreads) losses_kernel(Args a) {
  CON2_DYNAMIC_SMEM(red);
  for (int head = 0; head < 2; ++head) {
    float t = 0.0f;
    for (int64_t j = threadIdx.x; j < a.m; j += kThreads) t += a.rowloss[head * a.m + j];
    t = cuda::block_reduce(t, cuda::SumOp(), 0.0f, red);
    if (threadIdx.x == 0) a.losses[head] = t / static_cast<float>(a.m);
  }
}

// H_ij = (w_i p_ij + w_j p_ji - [l_i = l_j] (1/n_i + 1/n_j)) / (M tau), j != i; 0 on the diagonal.
// Grid (column blocks, M rows, 2 heads); overwrites S in place.
__global__ void __launch_bounds__(kThreads) grad_weights_kernel(Args a) {
  const int head = static_cast<int>(blockIdx.z);
  const int64_t m = a.m, i = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= m) return;
  const int64_t* lab = head_labels(a, head);
  const int64_t base = head * m;
  float* s = a.s + (base + i) * m;
  float h = 0.0f;
  if (j != i) {
    h = cuda::grad_weight(cuda::logit(s[j], a.inv_tau), lab[j] == lab[i], a.lse[base + i], a.lse[base + j],
                          a.has_pos[base + i], a.has_pos[base + j], a.inv_pos[base + i], a.inv_pos[base + j]);
    h *= a.scale;
  }
  s[j] = h;
}

// The core: losses [2] and float32 gradients dZ [2, M, D] of the stacked heads z [2, M, D]
// (float32, contiguous; labels int64, contiguous) for an upstream gradient of 1. Allocates its
// scratch and outputs and launches nothing else, so a CUDA graph can capture it
// (csrc/cuda/two_head_graph.cuh). `launch(kernel, grid, block, smem_bytes, args)` runs a
// kernel (CUDA or the CPU emulator); the batched GEMMs are ATen's (cuBLAS on the GPU).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> stacked_fwd_bwd(const at::Tensor& z, const at::Tensor& l0, const at::Tensor& l1,
                                                   double temperature, Launch&& launch) {
  const int64_t m = z.size(1);
  auto opts = z.options();
  at::Tensor s = at::empty({2, m, m}, opts);
  at::bmm_out(s, z, z.transpose(1, 2));
  at::Tensor stats = at::empty({4, 2, m}, opts);  // lse, has_pos, inv_pos, rowloss
  at::Tensor losses = at::empty({2}, opts);
  Args args{s.mutable_data_ptr<float>(),
            {l0.const_data_ptr<int64_t>(), l1.const_data_ptr<int64_t>()},
            stats[0].mutable_data_ptr<float>(),
            stats[1].mutable_data_ptr<float>(),
            stats[2].mutable_data_ptr<float>(),
            stats[3].mutable_data_ptr<float>(),
            losses.mutable_data_ptr<float>(),
            m,
            static_cast<float>(1.0 / temperature),
            static_cast<float>(1.0 / (static_cast<double>(m) * temperature))};
  const auto rows = static_cast<unsigned>(m);
  launch(&row_stats_kernel, dim3(rows, 2), dim3(kThreads), kSmemBytes, args);
  launch(&losses_kernel, dim3(1), dim3(kThreads), kSmemBytes, args);
  launch(&grad_weights_kernel, dim3(static_cast<unsigned>((m + kThreads - 1) / kThreads), rows, 2), dim3(kThreads),
         size_t{0}, args);
  at::Tensor dz = at::empty_like(z);
  at::bmm_out(dz, s, z);
  return {losses, dz};
}

// Losses [2] and float32 gradients of both heads (the two gradients are the halves of one
// [2, M, D] buffer; they do not overlap). Inputs are validated by the caller and must satisfy
// applies().
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_fwd_bwd(const at::Tensor& z_context, const at::Tensor& z_content,
                                                             const at::Tensor& context_labels,
                                                             const at::Tensor& sample_ids, double temperature,
                                                             Launch&& launch) {
  const at::Tensor z = at::stack({z_context.detach(), z_content.detach()}).to(at::kFloat);  // [2, M, D]
  auto [losses, dz] = stacked_fwd_bwd(z, context_labels.to(at::kLong).contiguous(), sample_ids.to(at::kLong).contiguous(),
                                      temperature, launch);
  return {losses, dz.select(0, 0), dz.select(0, 1)};
}

}  // namespace two_head
}  // namespace con2
