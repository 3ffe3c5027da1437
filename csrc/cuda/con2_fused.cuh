// Fused, tiled Con2 loss (both heads, forward and backward) in two kernels, FlashAttention
// style: the M x M similarity is only ever held as one [kRows x kCols] tile in shared
// memory, the softmax denominator is an online log-sum-exp, and the positive masks (same
// context label; same sample id) are derived from the label vectors inside the kernels.
// Memory beyond the inputs and gradients: 3 floats per row and head, O(M*D) in all.
//
//   stats kernel  block (I, head): for every column tile J, S_IJ = Z_I Z_J^T on tensor
//                 cores, then per row i the running max / sum of exp(s_ij / tau) over j != i
//                 and the positives' similarity sum and count -> lse_i, npos_i, loss_i.
//   grad kernel   block (I, head): recomputes S_IJ, turns it into
//                 H_ij = scale * (w_i p_ij + w_j p_ji - [l_i = l_j] (1/n_i + 1/n_j)), with
//                 p_ij = exp(s_ij / tau - lse_i), w_i = [n_i > 0], and accumulates dz_I += H_IJ Z_J
//                 (dL/dz = (G + G^T) Z, since s_ij = z_i . z_j; H_IJ needs the column rows'
//                 lse and counts, so the stats of all rows come first, hence two kernels).
//
// Products run on tf32 tensor cores with the 3xTF32 split (a = hi + lo; a.b ~ hi.hi + hi.lo +
// lo.hi), which keeps float32 accuracy; inputs that came from bf16 / fp16 are exact in tf32,
// so their Z products skip the split (kExact). This header compiles with nvcc and, with
// csrc/emu/cuda_emu.h included first, as plain C++ on the CPU (tests/test_cuda_kernels_emu.py).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "reduce.cuh"
#include "tf32.cuh"

namespace con2 {
namespace fused {

constexpr int kRows = 32;             // anchor rows per block
constexpr int kCols = 64;             // columns per tile
constexpr int kThreads = 128;         // 4 warps; 4 threads per anchor row for the row statistics
constexpr int kSubs = kThreads / kRows;
constexpr int kSLd = kCols + 4;       // leading dimension of the S / H tile
constexpr int kMaxDim = 256;

struct Head {
  const float* z;        // [M, D] contiguous float32
  const int64_t* labels; // [M]
  float* lse;            // [M] log-sum-exp of s_ij / tau over j != i (0 when M = 1)
  float* npos;           // [M] number of positives
  float* rowloss;        // [M] lse_i - mean positive logit (0 without positives)
  float* dz;             // [M, D] d loss / dz for an upstream gradient of 1
  int dim;
};

struct Params {
  Head head[2];
  int64_t m;
  float inv_tau;
  float scale;  // 1 / (M * tau)
};

template <int kDp>
struct Layout {  // shared-memory carve-up, in floats; every part starts 32-byte aligned
  static constexpr int ld = kDp + 8;
  static constexpr int zi = 0;
  static constexpr int zj = zi + kRows * ld;
  static constexpr int s = zj + kCols * ld;
  static constexpr int labels = s + kRows * kSLd;   // kCols int64
  static constexpr int lse = labels + 2 * kCols;
  static constexpr int w = lse + kCols;
  static constexpr int invp = w + kCols;
  static constexpr int floats = invp + kCols;
  static constexpr size_t bytes = sizeof(float) * floats;
};

struct Tiles {  // this block's shared-memory tiles (Layout's parts as pointers)
  float* zi;       // [kRows][ld] anchor rows
  float* zj;       // [kCols][ld] column rows
  float* s;        // [kRows][kSLd] similarity, then H
  int64_t* lab_j;  // [kCols] column labels
  float* lse_j;    // [kCols] column stats (grad kernel)
  float* w_j;
  float* invp_j;
};

template <int kDp>
__device__ __forceinline__ Tiles carve(float* smem) {
  using L = Layout<kDp>;
  return {smem + L::zi, smem + L::zj, smem + L::s, reinterpret_cast<int64_t*>(smem + L::labels),
          smem + L::lse,  smem + L::w,  smem + L::invp};
}

// The head of this block, chosen by a branch: a run-time index into the kernel's parameter
// array would make a local copy of it.
__device__ __forceinline__ Head block_head(const Params& p) { return blockIdx.y == 0 ? p.head[0] : p.head[1]; }

// Rows [r0, r0 + nrows) of z into dst (row stride Layout::ld), zero-padded past M and D.
template <int kDp>
__device__ __forceinline__ void load_rows(float* dst, const float* z, int64_t r0, int nrows, int64_t m, int dim) {
  for (int e = threadIdx.x; e < nrows * kDp; e += kThreads) {
    const int r = e / kDp, d = e - r * kDp;
    const int64_t row = r0 + r;
    dst[r * Layout<kDp>::ld + d] = (row < m && d < dim) ? z[row * dim + d] : 0.0f;
  }
}

using namespace tf32;

// s[kRows x kCols] = zi zj^T. Warp w owns rows 16 (w & 1) and columns 32 (w >> 1) + {0, 16}.
template <int kDp, bool kExact>
__device__ __forceinline__ void similarity_tile(const float* zi, const float* zj, float* s) {
  constexpr int ld = Layout<kDp>::ld;
  const int warp = threadIdx.x >> 5;
  const int r0 = (warp & 1) * 16, c0 = (warp >> 1) * 32;
  FragC acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  for (int k = 0; k < kDp; k += 8) {
    FragA a_hi, a_lo;
    load_tf32<!kExact>(a_hi, a_lo, zi + r0 * ld + k, ld);
    for (int c = 0; c < 2; ++c) {
      FragBt b_hi, b_lo;
      load_tf32<!kExact>(b_hi, b_lo, zj + (c0 + 16 * c) * ld + k, ld);
      mma_tf32<!kExact, !kExact>(acc[c], a_hi, a_lo, b_hi, b_lo);
    }
  }
  for (int c = 0; c < 2; ++c) wmma::store_matrix_sync(s + r0 * kSLd + c0 + 16 * c, acc[c], kSLd, wmma::mem_row_major);
}

// max that keeps a NaN (fmaxf drops it: a NaN row or column, an overflowing |z|^2, must not
// leave a finite loss behind)
__device__ __forceinline__ float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

__device__ __forceinline__ void merge_lse(float& mx, float& se, float omx, float ose) {
  const float nm = max_nan(mx, omx);
  if (nm == -INFINITY) return;  // both empty
  se = (mx == -INFINITY ? 0.0f : se * expf(mx - nm)) + (omx == -INFINITY ? 0.0f : ose * expf(omx - nm));
  mx = nm;
}

template <int kDp, bool kExact>
__global__ void __launch_bounds__(kThreads) stats_kernel(Params p) {
  CON2_DYNAMIC_SMEM(smem);
  const Head h = block_head(p);
  const Tiles t = carve<kDp>(smem);
  float *zi = t.zi, *zj = t.zj, *s = t.s;
  int64_t* lab_j = t.lab_j;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int row = threadIdx.x / kSubs, sub = threadIdx.x % kSubs;
  const int64_t i = r0 + row;
  const int64_t li = i < p.m ? h.labels[i] : 0;
  load_rows<kDp>(zi, h.z, r0, kRows, p.m, h.dim);
  float mx = -INFINITY, se = 0.0f, ps = 0.0f, pc = 0.0f;  // logits' running max / sum exp
  for (int64_t j0 = 0; j0 < p.m; j0 += kCols) {
    __syncthreads();  // the previous tile is no longer read
    load_rows<kDp>(zj, h.z, j0, kCols, p.m, h.dim);
    for (int c = threadIdx.x; c < kCols; c += kThreads) lab_j[c] = j0 + c < p.m ? h.labels[j0 + c] : 0;
    __syncthreads();
    similarity_tile<kDp, kExact>(zi, zj, s);
    __syncthreads();
    float tmx = -INFINITY;
    for (int c = sub; c < kCols; c += kSubs) {
      const int64_t j = j0 + c;
      if (j < p.m && j != i) tmx = max_nan(tmx, cuda::logit(s[row * kSLd + c], p.inv_tau));
    }
    if (tmx == -INFINITY) continue;  // no valid column in this tile for this thread
    float te = 0.0f;
    for (int c = sub; c < kCols; c += kSubs) {
      const int64_t j = j0 + c;
      if (j >= p.m || j == i) continue;
      const float v = s[row * kSLd + c];
      te += expf(cuda::logit(v, p.inv_tau) - tmx);
      if (lab_j[c] == li) {
        ps += v;
        pc += 1.0f;
      }
    }
    merge_lse(mx, se, tmx, te);
  }
  for (int off = 1; off < kSubs; off <<= 1) {  // the kSubs threads of a row are adjacent lanes
    const float omx = __shfl_xor_sync(0xffffffffu, mx, off);
    const float ose = __shfl_xor_sync(0xffffffffu, se, off);
    ps += __shfl_xor_sync(0xffffffffu, ps, off);
    pc += __shfl_xor_sync(0xffffffffu, pc, off);
    merge_lse(mx, se, omx, ose);
  }
  if (sub == 0 && i < p.m) {
    const float lse = p.m > 1 ? mx + logf(se) : 0.0f;  // M = 1: no other row at all (a NaN se stays NaN)
    h.lse[i] = lse;
    h.npos[i] = pc;
    h.rowloss[i] = pc > 0.0f ? lse - ps * p.inv_tau / pc : 0.0f;
  }
}

template <int kDp, bool kExact>
__global__ void __launch_bounds__(kThreads) grad_kernel(Params p) {
  constexpr int ld = Layout<kDp>::ld;
  constexpr int kFrags = kDp / 32;  // output column fragments per warp
  CON2_DYNAMIC_SMEM(smem);
  const Head h = block_head(p);
  const Tiles t = carve<kDp>(smem);
  float *zi = t.zi, *zj = t.zj, *s = t.s, *lse_j = t.lse_j, *w_j = t.w_j, *invp_j = t.invp_j;
  int64_t* lab_j = t.lab_j;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int row = threadIdx.x / kSubs, sub = threadIdx.x % kSubs;
  const int64_t i = r0 + row;
  const bool row_ok = i < p.m;
  const int64_t li = row_ok ? h.labels[i] : 0;
  const float lse_i = row_ok ? h.lse[i] : 0.0f;
  const float np_i = row_ok ? h.npos[i] : 0.0f;
  const float w_i = np_i > 0.0f ? 1.0f : 0.0f;
  const float invp_i = np_i > 0.0f ? 1.0f / np_i : 0.0f;
  const int warp = threadIdx.x >> 5;
  const int out_r0 = (warp & 1) * 16, out_c0 = (warp >> 1) * 16;  // fragment f covers columns out_c0 + 32 f
  load_rows<kDp>(zi, h.z, r0, kRows, p.m, h.dim);
  FragC acc[kFrags];
  for (int f = 0; f < kFrags; ++f) wmma::fill_fragment(acc[f], 0.0f);
  for (int64_t j0 = 0; j0 < p.m; j0 += kCols) {
    __syncthreads();
    load_rows<kDp>(zj, h.z, j0, kCols, p.m, h.dim);
    for (int c = threadIdx.x; c < kCols; c += kThreads) {
      const int64_t j = j0 + c;
      const float np = j < p.m ? h.npos[j] : 0.0f;
      lab_j[c] = j < p.m ? h.labels[j] : 0;
      lse_j[c] = j < p.m ? h.lse[j] : 0.0f;
      w_j[c] = np > 0.0f ? 1.0f : 0.0f;
      invp_j[c] = np > 0.0f ? 1.0f / np : 0.0f;
    }
    __syncthreads();
    similarity_tile<kDp, kExact>(zi, zj, s);
    __syncthreads();
    for (int c = sub; c < kCols; c += kSubs) {  // S -> H in place, each element by one thread
      const int64_t j = j0 + c;
      float hv = 0.0f;
      if (row_ok && j < p.m && j != i) {
        const float v = cuda::logit(s[row * kSLd + c], p.inv_tau);
        hv = w_i * expf(cuda::nonpositive(v - lse_i)) + w_j[c] * expf(cuda::nonpositive(v - lse_j[c]));
        if (lab_j[c] == li) hv -= invp_i + invp_j[c];
        hv *= p.scale;
      }
      s[row * kSLd + c] = hv;
    }
    __syncthreads();
    for (int k = 0; k < kCols; k += 8) {  // acc += H[:, k:k+8] @ zj[k:k+8, :]
      FragA a_hi, a_lo;
      load_tf32<true>(a_hi, a_lo, s + out_r0 * kSLd + k, kSLd);  // H is float32 whatever the input
      for (int f = 0; f < kFrags; ++f) {
        FragB b_hi, b_lo;
        load_tf32<!kExact>(b_hi, b_lo, zj + k * ld + out_c0 + 32 * f, ld);
        mma_tf32<true, !kExact>(acc[f], a_hi, a_lo, b_hi, b_lo);
      }
    }
  }
  __syncthreads();  // zj becomes the staging area for dz_I
  for (int f = 0; f < kFrags; ++f)
    wmma::store_matrix_sync(zj + out_r0 * ld + out_c0 + 32 * f, acc[f], ld, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kRows * h.dim; e += kThreads) {
    const int r = e / h.dim, d = e - r * h.dim;
    if (r0 + r < p.m) h.dz[(r0 + r) * h.dim + d] = zj[r * ld + d];
  }
}

inline int padded_dim(int64_t d) { return d <= 32 ? 32 : d <= 64 ? 64 : d <= 128 ? 128 : 256; }

// Both heads' losses [2] and gradients (float32) for an upstream gradient of 1, for float32 /
// bf16 / fp16 z_context, z_content [M, D <= 256] (validated by the caller). bf16 / fp16 values
// are exact in tf32, so their products skip the split. `launch(kernel, grid, block,
// smem_bytes, params)` runs a kernel (CUDA or the CPU emulator).
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_fwd_bwd(const at::Tensor& z_context, const at::Tensor& z_content,
                                                             const at::Tensor& context_labels,
                                                             const at::Tensor& sample_ids, double temperature,
                                                             Launch&& launch) {
  const bool exact = z_context.scalar_type() != at::kFloat;
  const at::Tensor z0 = z_context.detach().to(at::kFloat).contiguous();
  const at::Tensor z1 = z_content.detach().to(at::kFloat).contiguous();
  const at::Tensor l0 = context_labels.to(at::kLong).contiguous();
  const at::Tensor l1 = sample_ids.to(at::kLong).contiguous();
  const int64_t m = z0.size(0);
  auto opts = z0.options();
  at::Tensor stats = at::empty({3, 2, m}, opts);  // lse, npos, rowloss per head
  at::Tensor dz0 = at::empty_like(z0), dz1 = at::empty_like(z1);
  Params p;
  const at::Tensor* zs[2] = {&z0, &z1};
  const at::Tensor* ls[2] = {&l0, &l1};
  at::Tensor* dzs[2] = {&dz0, &dz1};
  for (int hd = 0; hd < 2; ++hd) {
    p.head[hd].z = zs[hd]->const_data_ptr<float>();
    p.head[hd].labels = ls[hd]->const_data_ptr<int64_t>();
    p.head[hd].lse = stats[0][hd].mutable_data_ptr<float>();
    p.head[hd].npos = stats[1][hd].mutable_data_ptr<float>();
    p.head[hd].rowloss = stats[2][hd].mutable_data_ptr<float>();
    p.head[hd].dz = dzs[hd]->mutable_data_ptr<float>();
    p.head[hd].dim = static_cast<int>(zs[hd]->size(1));
  }
  p.m = m;
  p.inv_tau = static_cast<float>(1.0 / temperature);
  p.scale = static_cast<float>(1.0 / (static_cast<double>(m) * temperature));
  const dim3 grid(static_cast<unsigned>((m + kRows - 1) / kRows), 2);
  const dim3 block(kThreads);
  const int dp = padded_dim(std::max(z0.size(1), z1.size(1)));
  auto run = [&](auto dp_tag, auto exact_tag) {
    constexpr int kDp = decltype(dp_tag)::value;
    constexpr bool kEx = decltype(exact_tag)::value;
    launch(&stats_kernel<kDp, kEx>, grid, block, Layout<kDp>::bytes, p);
    launch(&grad_kernel<kDp, kEx>, grid, block, Layout<kDp>::bytes, p);
  };
  auto by_exact = [&](auto dp_tag) {
    if (exact) run(dp_tag, std::true_type{});
    else run(dp_tag, std::false_type{});
  };
  switch (dp) {
    case 32: by_exact(std::integral_constant<int, 32>{}); break;
    case 64: by_exact(std::integral_constant<int, 64>{}); break;
    case 128: by_exact(std::integral_constant<int, 128>{}); break;
    default: by_exact(std::integral_constant<int, 256>{}); break;
  }
  at::Tensor losses = stats[2].sum(1).div_(static_cast<double>(m));
  return {losses, dz0, dz1};
}

}  // namespace fused
}  // namespace con2
