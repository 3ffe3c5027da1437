// CPU SupCon / Con2 loss: forward and backward.
//
// The M x M similarity is produced one row block at a time (at::mm into a bounded
// scratch block, a few MB), turned into logits s / tau and reduced in place with fused,
// auto-vectorised loops: forward keeps per-row log-sum-exp, positive sum and positive count; backward
// recomputes the block, turns it into H = G + G^T restricted to those rows (the
// similarity is symmetric, so G_ji is available from the same block) and does one
// GEMM dz[rows] = H[rows] @ z. Positive masks come from comparing labels inside the
// loops and are never stored. Extra memory: O(M*D + block*M).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common.h"

namespace con2 {
namespace {

constexpr int64_t kLanes = 8;
// Scratch similarity block: row blocks of at most this many bytes. When the whole M x M
// similarity fits (M <= ~2900 in float32), the fused forward+backward computes it once.
constexpr int64_t kBlockBytes = 32 << 20;

// Each row's logits s / tau are written back into the row (rounded once, in memory) before
// any exp reads them, so the exp arguments are differences of logits. Computed in place as
// s * inv_tau - max * inv_tau, FMA contraction (-mfma) kept the largest logit's rounding error
// in exp's argument; at |s| / tau ~ 1e11 (rows far from unit length, a small tau) that error is
// thousands, every exp underflowed and the loss was -inf. (Not the GEMM's alpha: its scaled
// S_ij and S_ji differ in the last bit, and the backward takes p_ji from S_ij.) The backward's
// p_ji relies on at::mm(z, z^T) being exactly symmetric, as BLAS computes it here: at such
// logits a last-bit difference between S_ij and S_ji would be worth thousands in exp's argument.

template <typename T>
void fwd_rows(T* S, int64_t rb, int64_t r0, int64_t M, const int64_t* lab, T inv_tau, T* lse, T* npos,
              T* rowloss, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t i = r0 + r;
    T* s = S + r * M;
    const int64_t li = lab[i];
    if (M == 1) {
      lse[i] = 0;
      npos[i] = 0;
      rowloss[i] = 0;
      continue;
    }
    // Three short passes over the (cache-resident) row, each a branch-free loop over
    // kLanes accumulators that the compiler vectorises:
    // 1. logits into the row; positive sum / count over j != i (not self included and subtracted
    //    after: a self logit far larger than the positives' would absorb them)
    T ps[kLanes], pc[kLanes], mx[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) {
      ps[k] = 0;
      pc[k] = 0;
      mx[k] = -std::numeric_limits<T>::infinity();
    }
    const int64_t main = M - M % kLanes;
    for (int64_t j = 0; j < main; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) {
        const T v = s[j + k] * inv_tau;
        s[j + k] = v;
        const bool positive = (lab[j + k] == li) & (j + k != i);
        ps[k] += positive ? v : T(0);  // a select, not p * v: 0 * an infinite logit is NaN
        pc[k] += positive ? T(1) : T(0);
      }
    }
    T possum = 0, cnt = 0;
    for (int64_t k = 0; k < kLanes; ++k) {
      possum += ps[k];
      cnt += pc[k];
    }
    for (int64_t j = main; j < M; ++j) {
      s[j] *= inv_tau;
      if (lab[j] == li && j != i) {
        possum += s[j];
        cnt += 1;
      }
    }
    // 2. max over j != i: the self entry of the scratch row becomes -inf from here on
    //    (vexp(-inf) == 0 in pass 3, and the backward treats j == i separately).
    s[i] = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < main; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) mx[k] = std::max(mx[k], s[j + k]);
    }
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t k = 0; k < kLanes; ++k) m = std::max(m, mx[k]);
    for (int64_t j = main; j < M; ++j) m = std::max(m, s[j]);
    // 3. sum of exp(s_j - max) over j != i
    T se[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) se[k] = 0;
    for (int64_t j = 0; j < main; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) se[k] += vexp<T>(s[j + k] - m);
    }
    T sum = 0;
    for (int64_t k = 0; k < kLanes; ++k) sum += se[k];
    for (int64_t j = main; j < M; ++j) sum += vexp<T>(s[j] - m);
    const T l = m + std::log(sum);
    lse[i] = l;
    npos[i] = cnt;
    rowloss[i] = cnt > 0 ? l - possum / cnt : T(0);
  }
}

template <typename T>
void bwd_rows(T* S, int64_t r0, int64_t M, const int64_t* lab, bool rows_hold_logits, T inv_tau, T coef,
              const T* lse, const T* w, const T* invp, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t i = r0 + r;
    T* s = S + r * M;
    const int64_t li = lab[i];
    const T lse_i = lse[i], w_i = w[i], invp_i = invp[i];
    if (!rows_hold_logits) {  // a fresh similarity row (the fused path's forward left logits there)
      for (int64_t j = 0; j < M; ++j) s[j] *= inv_tau;
    }
    for (int64_t j = 0; j < M; ++j) {
      const T v = s[j];
      const T pos = lab[j] == li ? (invp_i + invp[j]) : T(0);
      // softmax probabilities, at most 1 (vexp drops a rounding excess: S_ij and S_ji may
      // differ in the last bit)
      const T h = w_i * vexp<T>(v - lse_i) + w[j] * vexp<T>(v - lse[j]) - pos;
      s[j] = coef * h;
    }
    s[i] = 0;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cpu(const at::Tensor& z,
                                                             const at::Tensor& labels,
                                                             double temperature) {
  const auto [zc, lab] = prepare_loss_inputs(z, labels, temperature);
  const auto ct = zc.scalar_type();
  const int64_t M = zc.size(0);
  auto opts = zc.options();
  at::Tensor lse = at::empty({M}, opts), npos = at::empty({M}, opts), rowloss = at::empty({M}, opts);
  const int64_t B = block_rows(M, zc.element_size(), kBlockBytes, 16, M);
  at::Tensor buf = at::empty({B, M}, opts);
  const at::Tensor zt = zc.t();
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_supcon_fwd_cpu", [&] {
    const scalar_t inv_tau = static_cast<scalar_t>(1.0 / temperature);
    for (int64_t r0 = 0; r0 < M; r0 += B) {
      const int64_t rb = std::min(B, M - r0);
      at::Tensor S = buf.narrow(0, 0, rb);
      at::mm_out(S, zc.narrow(0, r0, rb), zt);
      scalar_t* sp = S.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rb, 4, [&](int64_t b, int64_t e) {
        fwd_rows<scalar_t>(sp, rb, r0, M, lab.const_data_ptr<int64_t>(), inv_tau,
                           lse.mutable_data_ptr<scalar_t>(), npos.mutable_data_ptr<scalar_t>(),
                           rowloss.mutable_data_ptr<scalar_t>(), b, e);
      });
    }
  });
  at::Tensor loss = rowloss.sum().div_(static_cast<double>(M));
  return {loss, lse, npos};
}

// dz (compute dtype) for upstream gradient g, recomputing the similarity blocks.
at::Tensor supcon_bwd_impl(const at::Tensor& zc, const at::Tensor& lab, const at::Tensor& lse,
                           const at::Tensor& npos, double g, double temperature) {
  const auto ct = zc.scalar_type();
  const int64_t M = zc.size(0);
  const at::Tensor lse_c = lse.to(ct).contiguous();
  const at::Tensor np = npos.to(ct);
  const at::Tensor w = (np > 0).to(ct).contiguous();
  const at::Tensor invp = (w / np.clamp_min(1)).contiguous();
  at::Tensor dz = at::empty_like(zc);
  const int64_t B = block_rows(M, zc.element_size(), kBlockBytes, 16, M);
  at::Tensor buf = at::empty({B, M}, zc.options());
  const at::Tensor zt = zc.t();
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_supcon_bwd_cpu", [&] {
    const scalar_t inv_tau = static_cast<scalar_t>(1.0 / temperature);
    const scalar_t coef = static_cast<scalar_t>(g / (static_cast<double>(M) * temperature));
    for (int64_t r0 = 0; r0 < M; r0 += B) {
      const int64_t rb = std::min(B, M - r0);
      at::Tensor S = buf.narrow(0, 0, rb);
      at::mm_out(S, zc.narrow(0, r0, rb), zt);
      scalar_t* sp = S.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rb, 4, [&](int64_t b, int64_t e) {
        bwd_rows<scalar_t>(sp, r0, M, lab.const_data_ptr<int64_t>(), false, inv_tau, coef,
                           lse_c.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                           invp.const_data_ptr<scalar_t>(), b, e);
      });
      at::Tensor out = dz.narrow(0, r0, rb);
      at::mm_out(out, S, zc);
    }
  });
  return dz;
}

at::Tensor supcon_bwd_cpu(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& labels,
                          const at::Tensor& lse, const at::Tensor& npos, double temperature) {
  const auto [zc, lab] = prepare_loss_inputs(z, labels, temperature);
  check_supcon_bwd_inputs(grad, z, lse, npos);
  const double g = grad.to(at::kDouble).item<double>();
  return supcon_bwd_impl(zc, lab, lse, npos, g, temperature).to(z.scalar_type());
}

}  // namespace

// Loss and d loss / dz (for an upstream gradient of 1, compute dtype) in one call. When
// the whole similarity fits in the scratch budget it is computed once and reused for the
// gradient (2 GEMMs instead of 3); otherwise forward and backward run blockwise.
std::tuple<at::Tensor, at::Tensor> supcon_fwd_bwd_cpu(const at::Tensor& z, const at::Tensor& labels,
                                                      double temperature) {
  const auto [zc, lab] = prepare_loss_inputs(z, labels, temperature);
  const auto ct = zc.scalar_type();
  const int64_t M = zc.size(0);
  const int64_t B = block_rows(M, zc.element_size(), kBlockBytes, 16, M);
  if (B < M) {
    auto [loss, lse, npos] = supcon_fwd_cpu(zc, lab, temperature);
    return {loss, supcon_bwd_impl(zc, lab, lse, npos, 1.0, temperature)};
  }
  auto opts = zc.options();
  at::Tensor lse = at::empty({M}, opts), npos = at::empty({M}, opts), rowloss = at::empty({M}, opts);
  at::Tensor S = at::mm(zc, zc.t());
  at::Tensor dz = at::empty_like(zc);
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_supcon_fwd_bwd_cpu", [&] {
    const scalar_t inv_tau = static_cast<scalar_t>(1.0 / temperature);
    scalar_t* sp = S.mutable_data_ptr<scalar_t>();
    const int64_t* lp = lab.const_data_ptr<int64_t>();
    at::parallel_for(0, M, 4, [&](int64_t b, int64_t e) {
      fwd_rows<scalar_t>(sp, M, 0, M, lp, inv_tau, lse.mutable_data_ptr<scalar_t>(),
                         npos.mutable_data_ptr<scalar_t>(), rowloss.mutable_data_ptr<scalar_t>(), b, e);
    });
    loss = rowloss.sum().div_(static_cast<double>(M));
    const at::Tensor w = (npos > 0).to(ct).contiguous();
    const at::Tensor invp = (w / npos.clamp_min(1)).contiguous();
    const scalar_t coef = static_cast<scalar_t>(1.0 / (static_cast<double>(M) * temperature));
    at::parallel_for(0, M, 4, [&](int64_t b, int64_t e) {
      bwd_rows<scalar_t>(sp, 0, M, lp, true, inv_tau, coef, lse.const_data_ptr<scalar_t>(),
                         w.const_data_ptr<scalar_t>(), invp.const_data_ptr<scalar_t>(), b, e);
    });
    at::mm_out(dz, S, zc);
  });
  return {loss, dz};
}

TORCH_LIBRARY_IMPL(con2, CPU, m) {
  m.impl("supcon_fwd", &supcon_fwd_cpu);
  m.impl("supcon_bwd", &supcon_bwd_cpu);
  m.impl("supcon_fwd_bwd", &supcon_fwd_bwd_cpu);
}

}  // namespace con2
