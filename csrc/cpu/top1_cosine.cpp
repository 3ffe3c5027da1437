// CPU exact top-1 cosine search.
//
// Queries are normalised once; the bank is visited in blocks of rows. For each
// (query block, bank block) pair, at::mm writes the similarity into a bounded
// scratch block (<= 16 MB) that is immediately reduced to a row max / argmax with a
// fused, auto-vectorised loop (bank norms applied there). The Q x N similarity never
// exists in memory. Ties go to the lowest index, as in the reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common.h"

namespace con2 {
namespace {

constexpr int64_t kLanes = 8;

template <typename T>
void argmax_rows(const T* S, int64_t nb, int64_t b0, const T* inv, T* best_val, int64_t* best_idx,
                 int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const T* s = S + r * nb;
    T bv[kLanes];
    int64_t bi[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) {
      bv[k] = -std::numeric_limits<T>::infinity();
      bi[k] = 0;
    }
    const int64_t main = nb - nb % kLanes;
    for (int64_t j = 0; j < main; j += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) {
        const T v = s[j + k] * inv[j + k];
        const bool gt = v > bv[k];
        bv[k] = gt ? v : bv[k];
        bi[k] = gt ? j + k : bi[k];
      }
    }
    T v_best = -std::numeric_limits<T>::infinity();
    int64_t i_best = 0;
    for (int64_t k = 0; k < kLanes; ++k) {
      if (bv[k] > v_best || (bv[k] == v_best && bi[k] < i_best)) {
        v_best = bv[k];
        i_best = bi[k];
      }
    }
    for (int64_t j = main; j < nb; ++j) {
      const T v = s[j] * inv[j];
      if (v > v_best) {
        v_best = v;
        i_best = j;
      }
    }
    if (v_best > best_val[r]) {  // strict: earlier blocks win ties
      best_val[r] = v_best;
      best_idx[r] = b0 + i_best;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> top1_cosine_cpu(const at::Tensor& queries, const at::Tensor& bank,
                                                   const at::Tensor& bank_norms) {
  check_top1_inputs(queries, bank, bank_norms);
  const auto ct = compute_dtype(queries);
  const at::Tensor q = queries.detach().to(ct);
  const std::vector<int64_t> dims{1};
  const at::Tensor q_unit =
      (q / at::linalg_vector_norm(q, 2, at::IntArrayRef(dims), true, std::nullopt)).contiguous();
  const at::Tensor bank_d = bank.detach();
  const at::Tensor inv = bank_norms.detach().to(ct).reciprocal().contiguous();
  const int64_t Q = q_unit.size(0), N = bank.size(0);
  at::Tensor best_val = at::full({Q}, -std::numeric_limits<double>::infinity(), q_unit.options());
  at::Tensor best_idx = at::zeros({Q}, q_unit.options().dtype(at::kLong));
  const int64_t QB = std::min<int64_t>(Q, 1024);
  const int64_t NB = std::min<int64_t>(N, block_rows(QB, q_unit.element_size(), 16 << 20, 256, 1 << 20));
  at::Tensor buf = at::empty({QB, NB}, q_unit.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "con2_top1_cosine_cpu", [&] {
    for (int64_t b0 = 0; b0 < N; b0 += NB) {
      const int64_t nb = std::min(NB, N - b0);
      const at::Tensor blk = bank_d.narrow(0, b0, nb).to(ct);
      const at::Tensor blk_t = blk.t();
      const scalar_t* invp = inv.const_data_ptr<scalar_t>() + b0;
      for (int64_t q0 = 0; q0 < Q; q0 += QB) {
        const int64_t qb = std::min(QB, Q - q0);
        at::Tensor S = buf.view({-1}).narrow(0, 0, qb * nb).view({qb, nb});
        at::mm_out(S, q_unit.narrow(0, q0, qb), blk_t);
        const scalar_t* sp = S.const_data_ptr<scalar_t>();
        scalar_t* bv = best_val.mutable_data_ptr<scalar_t>() + q0;
        int64_t* bi = best_idx.mutable_data_ptr<int64_t>() + q0;
        at::parallel_for(0, qb, 16, [&](int64_t b, int64_t e) {
          argmax_rows<scalar_t>(sp, nb, b0, invp, bv, bi, b, e);
        });
      }
    }
  });
  return {best_val.to(at::kFloat), best_idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, CPU, m) { m.impl("top1_cosine", &top1_cosine_cpu); }

}  // namespace con2
