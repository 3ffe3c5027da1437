// Test-only kernels that check the CUDA emulator itself (tests/test_cuda_kernels_emu.py):
// a wmma product and a warp shuffle reduction with known answers, and the faults the
// emulator must report instead of computing garbage or hanging.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "emu/cuda_emu.h"

namespace {

namespace wmma = nvcuda::wmma;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

struct Args {
  const float* a;  // [16, 8]
  const float* b;  // [8, 16]
  float* out;      // [16, 16] product, then [32] warp sums
  int mode;        // 0 ok, 1 misaligned pointer, 2 values not rounded to tf32, 3 one thread throws,
                   // 4 a grid with 65536 blocks in y (over CUDA's limit)
};

__global__ void check_kernel(Args p) {
  CON2_DYNAMIC_SMEM(smem);  // a at 0, b at 128 (32-byte aligned), c at 256
  for (int e = threadIdx.x; e < 128; e += blockDim.x) {
    smem[e] = p.a[e];
    smem[128 + e] = p.b[e];
  }
  __syncthreads();
  if (p.mode == 3 && threadIdx.x == 5) throw std::runtime_error("thread 5 failed");
  FragA a;
  FragB b;
  FragC c;
  wmma::fill_fragment(c, 0.0f);
  wmma::load_matrix_sync(a, smem + (p.mode == 1 ? 1 : 0), 8);
  wmma::load_matrix_sync(b, smem + 128, 16);
  if (p.mode != 2)
    for (int t = 0; t < a.num_elements; ++t) a.x[t] = wmma::__float_to_tf32(a.x[t]);
  for (int t = 0; t < b.num_elements; ++t) b.x[t] = wmma::__float_to_tf32(b.x[t]);
  wmma::mma_sync(c, a, b, c);
  wmma::store_matrix_sync(smem + 256, c, 16, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < 256; e += blockDim.x) p.out[e] = smem[256 + e];
  float v = static_cast<float>(threadIdx.x);  // warp sum of the lane ids through shuffles
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  p.out[256 + threadIdx.x] = v;
}

at::Tensor self_check(const at::Tensor& a, const at::Tensor& b, int64_t mode) {
  TORCH_CHECK(a.numel() == 128 && b.numel() == 128, "a [16, 8] and b [8, 16]");
  const at::Tensor ac = a.to(at::kFloat).contiguous(), bc = b.to(at::kFloat).contiguous();
  at::Tensor out = at::zeros({256 + 64}, ac.options());
  Args p{ac.const_data_ptr<float>(), bc.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
         static_cast<int>(mode)};
  con2_emu::launch(&check_kernel, mode == 4 ? dim3(1, 65536) : dim3(1), dim3(64), 512 * sizeof(float), p);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(con2_emu, m) {
  m.def("self_check(Tensor a, Tensor b, int mode) -> Tensor");
  m.impl("self_check", c10::DispatchKey::CPU, &self_check);
}
