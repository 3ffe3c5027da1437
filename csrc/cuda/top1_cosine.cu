// CUDA exact top-1 cosine search: bf16 tensor-core candidate search + exact float32 re-score.
//
// Stage 1: for each bank block, cuBLAS computes the bf16 product q_unit16 @ bank16^T
//   (tensor cores, float32 accumulation) into a bounded scratch block; a row kernel keeps
//   the approximate max m_q (bank norms applied) per query.
// Stage 2: the product is recomputed; every candidate whose approximate score is within
//   kMargin of m_q is re-scored exactly (float32 dot of the float32 unit query with the
//   original bank row, times the float32 inverse bank norm) and merged with a 64-bit
//   atomicMax on (orderable float bits, ~index), so ties go to the lowest index.
// The approximation error of a bf16 score of unit-norm vectors is below 2 * 2^-8 (both
//   inputs rounded to bf16's 8 significant bits) + 2^-8 (the bf16 output) < 0.012, so the
//   exact best row always has an approximate score >= m_q - 0.024; kMargin = 0.03 covers it
//   with float32 accumulation (a cuBLAS split-K reduction in bf16 would add ~2^-9 a split).
// The Q x N similarity never exists in memory (scratch <= 64 MB).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"

namespace con2 {
namespace {

using cuda::kThreads;

constexpr float kMargin = 0.03f;
constexpr int64_t kScratchBytes = 64 << 20;

__global__ void approx_rowmax_kernel(const at::BFloat16* __restrict__ S, int64_t nb, const float* __restrict__ inv,
                                     float* __restrict__ m) {
  __shared__ float shm[32];
  const int64_t row = blockIdx.x;
  const at::BFloat16* s = S + row * nb;
  float mx = cuda::neg_inf<float>();
  for (int64_t j = threadIdx.x; j < nb; j += blockDim.x) {
    const float v = static_cast<float>(s[j]) * inv[j];
    mx = v > mx ? v : mx;
  }
  mx = cuda::block_reduce(mx, cuda::MaxOp(), cuda::neg_inf<float>(), shm);
  if (threadIdx.x == 0 && mx > m[row]) m[row] = mx;
}

__device__ __forceinline__ unsigned long long pack_key(float v, int64_t idx) {
  unsigned int u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(u) << 32) |
         static_cast<unsigned long long>(0xFFFFFFFFu - static_cast<unsigned int>(idx));
}

template <typename B_t>
__global__ void rescore_kernel(const at::BFloat16* __restrict__ S, int64_t nb, int64_t b0,
                               const float* __restrict__ inv, const float* __restrict__ m,
                               const float* __restrict__ q_unit, const B_t* __restrict__ bank, int64_t D,
                               unsigned long long* __restrict__ keys) {
  const int64_t row = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= nb) return;
  const float inv_j = inv[b0 + j];
  const float approx = static_cast<float>(S[row * nb + j]) * inv_j;
  if (!(approx >= m[row] - kMargin)) return;
  const float* q = q_unit + row * D;
  const B_t* b = bank + (b0 + j) * D;
  float acc = 0.0f;
  for (int64_t k = 0; k < D; ++k) acc = fmaf(q[k], static_cast<float>(b[k]), acc);
  atomicMax(keys + row, pack_key(acc * inv_j, b0 + j));
}

__global__ void decode_kernel(const unsigned long long* __restrict__ keys, int64_t Q, float* __restrict__ vals,
                              int64_t* __restrict__ idx) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= Q) return;
  const unsigned long long key = keys[q];
  if (key == 0) {  // no candidate was scored (NaN scores: a zero / NaN query): the CPU kernel's (-inf, 0),
    vals[q] = -INFINITY;  // not index 2^32 - 1
    idx[q] = 0;
    return;
  }
  unsigned int u = static_cast<unsigned int>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  vals[q] = __uint_as_float(u);
  idx[q] = static_cast<int64_t>(0xFFFFFFFFu - static_cast<unsigned int>(key & 0xFFFFFFFFull));
}

std::tuple<at::Tensor, at::Tensor> top1_cosine_cuda(const at::Tensor& queries, const at::Tensor& bank,
                                                    const at::Tensor& bank_norms) {
  check_top1_inputs(queries, bank, bank_norms);
  // the kernels read bank and bank_norms through raw pointers: a host or another GPU's pointer
  // would be an illegal address (or silently wrong), not an error
  TORCH_CHECK(bank.device() == queries.device() && bank_norms.device() == queries.device(),
              "con2: top1_cosine: queries are on ", queries.device(), " but bank is on ", bank.device(),
              " and bank_norms on ", bank_norms.device());
  TORCH_CHECK(bank.size(0) < (int64_t(1) << 32) - 1, "con2: top1_cosine supports < 2^32 - 1 bank rows");
  TORCH_CHECK(bank.scalar_type() == at::kFloat || bank.scalar_type() == at::kBFloat16 ||
                  bank.scalar_type() == at::kHalf,
              "con2: top1_cosine (CUDA) supports float32 / bfloat16 / float16 banks");
  c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor q = queries.detach().to(at::kFloat);
  const std::vector<int64_t> dims{1};
  const at::Tensor q_unit =
      (q / at::linalg_vector_norm(q, 2, at::IntArrayRef(dims), true, std::nullopt)).contiguous();
  const at::Tensor q16 = q_unit.to(at::kBFloat16);
  const at::Tensor bank_c = bank.detach().contiguous();
  const at::Tensor inv = bank_norms.detach().to(at::kFloat).reciprocal().contiguous();
  const int64_t Q = q_unit.size(0), N = bank_c.size(0), D = q_unit.size(1);
  const int64_t QB = std::min<int64_t>(Q, 4096);
  const int64_t NB = std::min<int64_t>(N, block_rows(QB, 2, kScratchBytes, 1024, int64_t(1) << 20));
  at::Tensor buf = at::empty({QB * NB}, q16.options());
  at::Tensor m = at::full({Q}, -std::numeric_limits<float>::infinity(), q_unit.options());
  at::Tensor keys = at::zeros({Q}, q_unit.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();

  auto product = [&](int64_t b0, int64_t nb, int64_t q0, int64_t qb, const at::Tensor& blk16) {
    at::Tensor S = buf.narrow(0, 0, qb * nb).view({qb, nb});
    at::mm_out(S, q16.narrow(0, q0, qb), blk16.t());
    return S;
  };
  // Stage 1: approximate per-query max.
  for (int64_t b0 = 0; b0 < N; b0 += NB) {
    const int64_t nb = std::min(NB, N - b0);
    const at::Tensor blk16 = bank_c.narrow(0, b0, nb).to(at::kBFloat16);
    for (int64_t q0 = 0; q0 < Q; q0 += QB) {
      const int64_t qb = std::min(QB, Q - q0);
      at::Tensor S = product(b0, nb, q0, qb, blk16);
      approx_rowmax_kernel<<<static_cast<unsigned>(qb), kThreads, 0, stream>>>(
          S.const_data_ptr<at::BFloat16>(), nb, inv.const_data_ptr<float>() + b0, m.mutable_data_ptr<float>() + q0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  // Stage 2: exact re-score of the candidates near the approximate max.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, bank_c.scalar_type(), "con2_top1_rescore", [&] {
    for (int64_t b0 = 0; b0 < N; b0 += NB) {
      const int64_t nb = std::min(NB, N - b0);
      const at::Tensor blk16 = bank_c.narrow(0, b0, nb).to(at::kBFloat16);
      for (int64_t q0 = 0; q0 < Q; q0 += QB) {
        const int64_t qb = std::min(QB, Q - q0);
        at::Tensor S = product(b0, nb, q0, qb, blk16);
        const dim3 grid(static_cast<unsigned>((nb + kThreads - 1) / kThreads), static_cast<unsigned>(qb));
        rescore_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
            S.const_data_ptr<at::BFloat16>(), nb, b0, inv.const_data_ptr<float>(),
            m.const_data_ptr<float>() + q0, q_unit.const_data_ptr<float>() + q0 * D,
            bank_c.const_data_ptr<scalar_t>(), D,
            reinterpret_cast<unsigned long long*>(keys.mutable_data_ptr<int64_t>()) + q0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  at::Tensor vals = at::empty({Q}, q_unit.options());
  at::Tensor idx = at::empty({Q}, q_unit.options().dtype(at::kLong));
  decode_kernel<<<static_cast<unsigned>((Q + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      reinterpret_cast<const unsigned long long*>(keys.const_data_ptr<int64_t>()), Q,
      vals.mutable_data_ptr<float>(), idx.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {vals, idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CUDA, m) { m.impl("top1_cosine", &top1_cosine_cuda); }

}  // namespace con2
