// One-pass squared Mahalanobis distance, ||(x - mean) W||^2 per row, with the whitening
// product and the squared-norm reduction fused: a block keeps 64 centred rows of x in shared
// memory, streams W through it in [32 x 64] chunks, multiplies on tf32 tensor cores with the
// 3xTF32 split (float32 accuracy), and squares and sums each finished [64 x 64] output tile
// on chip, so the Q x K product never reaches memory. D <= 512 (64 centred rows fit in shared
// memory); any Q and K. Compiles with nvcc and, after csrc/emu/cuda_emu.h, as C++ on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "tf32.cuh"

namespace con2 {
namespace maha {

using namespace tf32;

constexpr int kRows = 64;      // rows of x per block, 16 per warp
constexpr int kCols = 64;      // output columns per tile
constexpr int kChunk = 32;     // rows of W per shared-memory chunk
constexpr int kThreads = 128;
constexpr int kMaxDim = 512;
constexpr int kWLd = kCols + 8;
constexpr int kTLd = kCols + 4;

inline int padded_dim(int64_t d) { return static_cast<int>((d + kChunk - 1) / kChunk * kChunk); }
inline size_t smem_bytes(int dp) {
  return sizeof(float) * (static_cast<size_t>(kRows) * (dp + 8) + kChunk * kWLd + kRows * kTLd);
}

struct Args {
  const float* x;     // [Q, D] contiguous float32
  const float* mean;  // [D]
  const float* w;     // [D, K] contiguous float32
  float* out;         // [Q]
  int64_t q;
  int d, dp, k;
};

__global__ void __launch_bounds__(kThreads) maha_kernel(Args a) {
  CON2_DYNAMIC_SMEM(smem);
  const int ld = a.dp + 8;
  float* xs = smem;                       // [kRows][ld] centred rows
  float* ws = xs + kRows * ld;            // [kChunk][kWLd] chunk of W
  float* tile = ws + kChunk * kWLd;       // [kRows][kTLd] finished output tile
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows;
  for (int e = threadIdx.x; e < kRows * a.dp; e += kThreads) {
    const int r = e / a.dp, c = e - r * a.dp;
    const int64_t row = r0 + r;
    xs[r * ld + c] = (row < a.q && c < a.d) ? a.x[row * a.d + c] - a.mean[c] : 0.0f;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wr = 16 * warp;              // this warp's rows
  float rowsum = 0.0f;                   // lanes 2j, 2j+1 own row wr + j, 32 columns each
  for (int k0 = 0; k0 < a.k; k0 += kCols) {
    FragC acc[4];
    for (int f = 0; f < 4; ++f) wmma::fill_fragment(acc[f], 0.0f);
    for (int d0 = 0; d0 < a.dp; d0 += kChunk) {
      __syncthreads();  // xs written / the previous chunk consumed
      for (int e = threadIdx.x; e < kChunk * kCols; e += kThreads) {
        const int r = e / kCols, c = e - r * kCols;
        const int dr = d0 + r, kc = k0 + c;
        ws[r * kWLd + c] = (dr < a.d && kc < a.k) ? a.w[static_cast<int64_t>(dr) * a.k + kc] : 0.0f;
      }
      __syncthreads();
      for (int kk = 0; kk < kChunk; kk += 8) {
        FragA x_hi, x_lo;
        load_tf32<true>(x_hi, x_lo, xs + wr * ld + d0 + kk, ld);
        for (int f = 0; f < 4; ++f) {
          FragB w_hi, w_lo;
          load_tf32<true>(w_hi, w_lo, ws + kk * kWLd + 16 * f, kWLd);
          mma_tf32<true, true>(acc[f], x_hi, x_lo, w_hi, w_lo);
        }
      }
    }
    for (int f = 0; f < 4; ++f) wmma::store_matrix_sync(tile + wr * kTLd + 16 * f, acc[f], kTLd, wmma::mem_row_major);
    __syncwarp();  // the warp reads back only its own rows
    const float* t = tile + (wr + (lane >> 1)) * kTLd + 32 * (lane & 1);
    float part = 0.0f;
    for (int c = 0; c < 32; ++c) part += t[c] * t[c];
    rowsum += part;
    __syncwarp();  // every lane has read the tile before the next one is stored
  }
  rowsum += __shfl_xor_sync(0xffffffffu, rowsum, 1);
  const int64_t row = r0 + wr + (lane >> 1);
  if ((lane & 1) == 0 && row < a.q) a.out[row] = rowsum;
}

// out [Q] float32 for x [Q, D <= 512], mean [D], w [D, K] (validated by the caller; working
// copies in float32, contiguous).
template <typename Launch>
at::Tensor mahalanobis_fused(const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& w_in,
                             Launch&& launch) {
  const at::Tensor x = x_in.detach().to(at::kFloat).contiguous();
  const at::Tensor mean = mean_in.detach().to(at::kFloat).contiguous();
  const at::Tensor w = w_in.detach().to(at::kFloat).contiguous();
  const int64_t q = x.size(0);
  at::Tensor out = at::empty({q}, x.options());
  const int dp = padded_dim(x.size(1));
  Args args{x.const_data_ptr<float>(), mean.const_data_ptr<float>(), w.const_data_ptr<float>(),
            out.mutable_data_ptr<float>(), q, static_cast<int>(x.size(1)), dp, static_cast<int>(w.size(1))};
  launch(&maha_kernel, dim3(static_cast<unsigned>((q + kRows - 1) / kRows)), dim3(kThreads), smem_bytes(dp), args);
  return out;
}

}  // namespace maha
}  // namespace con2
