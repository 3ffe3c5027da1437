// A CPU emulator for the small subset of CUDA that the con2 kernels in csrc/cuda/*.cuh use,
// so that their device code runs (and is tested) on machines without a GPU.
//
// Include it after the torch / ATen headers and before the kernel header. It provides:
// threadIdx / blockIdx / blockDim / gridDim, __syncthreads, __syncwarp, __shfl_xor_sync,
// dynamic shared memory (CON2_DYNAMIC_SMEM), nvcuda::wmma for tf32 m16n16k8, and the few
// arithmetic intrinsics of the view kernel's GPU maths (__saturatef, __int_as_float, __fdividef,
// __ldg, the prmt byte permute) for builds with CON2_EMU_GPU_MATH (csrc/views_math.h).
// Semantics: one block at a time, each CUDA thread an OS thread, barriers for the
// synchronisation points. Checks that catch bugs the GPU would not report: wmma pointers must
// be 32-byte aligned and ldm a multiple of 16 bytes (the CUDA rules), tf32 fragments must
// hold tf32-rounded values before mma_sync, shared memory starts as NaN so reads of
// unwritten shared memory poison the result, and a thread that throws breaks every barrier
// (no deadlock) and the launch rethrows. A wmma fragment is a full copy of its tile in every
// lane (the layout is opaque on the GPU too, so kernels cannot depend on it).
#pragma once

#define CON2_CUDA_EMU 1

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace con2_emu {

// A reusable barrier that can be broken: a failing thread wakes every waiter, who then throws.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    if (broken_) throw std::runtime_error("cuda_emu: barrier broken by another thread");
    const uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return gen_ != gen || broken_; });
    if (broken_ && gen_ == gen) throw std::runtime_error("cuda_emu: barrier broken by another thread");
  }
  void breakAll() {
    std::lock_guard<std::mutex> lock(mu_);
    broken_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  uint64_t gen_ = 0;
  bool broken_ = false;
};

struct BlockState {
  explicit BlockState(int nthreads, size_t smem_bytes) : block(nthreads), shfl(nthreads) {
    for (int w = 0; w < nthreads / 32; ++w) warps.emplace_back(new Barrier(32));
    smem_storage.reset(static_cast<float*>(std::aligned_alloc(128, ((smem_bytes + 127) / 128) * 128 + 128)));
    std::memset(smem_storage.get(), 0xff, ((smem_bytes + 127) / 128) * 128 + 128);  // NaN
  }
  void fail(std::exception_ptr e) {
    {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!error) error = e;
    }
    block.breakAll();
    for (auto& w : warps) w->breakAll();
  }
  struct FreeDeleter {
    void operator()(float* p) const { std::free(p); }
  };
  Barrier block;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<uint64_t> shfl;  // one exchange slot per thread
  std::unique_ptr<float, FreeDeleter> smem_storage;
  std::mutex err_mu;
  std::exception_ptr error;
};

inline thread_local dim3 tl_thread_idx;
inline thread_local dim3 tl_block_idx;
inline thread_local BlockState* tl_state = nullptr;
inline dim3 g_block_dim;
inline dim3 g_grid_dim;

inline int linear_tid() {
  return static_cast<int>(tl_thread_idx.x + g_block_dim.x * (tl_thread_idx.y + g_block_dim.y * tl_thread_idx.z));
}

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error("cuda_emu: " + what); }

// Runs kernel<<<grid, block, smem_bytes>>>(args...) to completion, one block after another.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes, Args&&... args) {
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  if (nthreads <= 0 || nthreads % 32 != 0 || nthreads > 1024) fail("block size must be a multiple of 32, <= 1024");
  if (smem_bytes > 227 * 1024) fail("dynamic shared memory above the sm_90 limit of 227 KB");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    fail("grid dimensions outside CUDA's limits (x < 2^31, y and z <= 65535, none 0)");  // the GPU: a launch error
  g_block_dim = block;
  g_grid_dim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        BlockState state(nthreads, smem_bytes);
        std::vector<std::thread> threads;
        threads.reserve(nthreads);
        for (int t = 0; t < nthreads; ++t) {
          threads.emplace_back([&, t] {
            tl_thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            tl_block_idx = dim3(bx, by, bz);
            tl_state = &state;
            try {
              kernel(args...);
            } catch (...) {
              state.fail(std::current_exception());
            }
          });
        }
        for (auto& th : threads) th.join();
        if (state.error) std::rethrow_exception(state.error);
      }
}

}  // namespace con2_emu

#define threadIdx (::con2_emu::tl_thread_idx)
#define blockIdx (::con2_emu::tl_block_idx)
#define blockDim (::con2_emu::g_block_dim)
#define gridDim (::con2_emu::g_grid_dim)
#define CON2_DYNAMIC_SMEM(name) float* name = ::con2_emu::tl_state->smem_storage.get()

inline void __syncthreads() { ::con2_emu::tl_state->block.wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::con2_emu::tl_state->warps[::con2_emu::linear_tid() / 32]->wait(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shfl of a small value");
  if (mask != 0xffffffffu || width != 32) ::con2_emu::fail("only full-warp shuffles are emulated");
  auto* st = ::con2_emu::tl_state;
  const int tid = ::con2_emu::linear_tid();
  const int base = tid & ~31, lane = tid & 31;
  std::memcpy(&st->shfl[tid], &v, sizeof(T));
  st->warps[tid / 32]->wait();
  T out;
  std::memcpy(&out, &st->shfl[base + (lane ^ (lane_mask & 31))], sizeof(T));
  st->warps[tid / 32]->wait();  // nobody overwrites a slot before every lane has read it
  return out;
}

// The GPU arithmetic intrinsics, as CUDA documents them (approximations by their exact values).
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline float __fdividef(float a, float b) { return a * (1.0f / b); }  // a times the reciprocal of b
// A product rounded on its own, never fused into a following add (an FMA), as on the GPU: the
// volatile store is a barrier to GCC's contraction, which this emulator is built with (like nvcc).
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline double __dmul_rn(double a, double b) {
  volatile double r = a * b;
  return r;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

namespace con2_emu {
// PTX prmt.b32 d, a, b, selector (default mode): byte n of d is byte (selector nibble n & 7) of the
// 8 bytes {b, a}; a nibble with bit 3 set replicates that byte's sign bit instead.
inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  const uint64_t bytes = static_cast<uint64_t>(b) << 32 | a;
  uint32_t out = 0;
  for (int n = 0; n < 4; ++n) {
    const uint32_t nibble = selector >> (4 * n) & 0xFu;
    uint32_t byte = static_cast<uint32_t>(bytes >> (8 * (nibble & 7u))) & 0xFFu;
    if (nibble & 8u) byte = byte & 0x80u ? 0xFFu : 0x00u;
    out |= byte << (8 * n);
  }
  return out;
}

// A launcher with the interface of con2::cuda::StreamLaunch, for the drivers in csrc/cuda/*.cuh.
struct Launch {
  template <typename... KArgs, typename... Args>
  void operator()(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args) const {
    launch(kernel, grid, block, smem, args...);
  }
};
}  // namespace con2_emu

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int m, int n, int k>
struct tile_shape;
template <int m, int n, int k>
struct tile_shape<matrix_a, m, n, k> {
  static constexpr int rows = m, cols = k;
};
template <int m, int n, int k>
struct tile_shape<matrix_b, m, n, k> {
  static constexpr int rows = k, cols = n;
};
template <int m, int n, int k>
struct tile_shape<accumulator, m, n, k> {
  static constexpr int rows = m, cols = n;
};

// Element (r, c) of the tile is x[r * cols + c] in every lane.
template <typename Use, int m, int n, int k, typename T, typename Layout = void>
struct fragment {
  static_assert(m == 16 && n == 16 && k == 8, "cuda_emu emulates the tf32 m16n16k8 shape only");
  static constexpr int rows = tile_shape<Use, m, n, k>::rows;
  static constexpr int cols = tile_shape<Use, m, n, k>::cols;
  static constexpr int num_elements = rows * cols;
  static constexpr bool is_tf32 = std::is_same<T, precision::tf32>::value;
  float x[num_elements];
};

inline float __float_to_tf32(float v) {  // cvt.rna.tf32.f32: nearest, ties away from zero
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & ~0x1fffu;
  float out;
  std::memcpy(&out, &b, 4);
  return out;
}

inline void check_ptr(const void* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) ::con2_emu::fail("wmma pointer not 32-byte aligned");
  if (ldm % 4 != 0) ::con2_emu::fail("wmma ldm not a multiple of 16 bytes");
}

template <typename Use, int m, int n, int k, typename T, typename Layout>
void load_matrix_sync(fragment<Use, m, n, k, T, Layout>& f, const float* p, unsigned ldm) {
  check_ptr(p, ldm);
  using F = fragment<Use, m, n, k, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same<Layout, col_major>::value ? p[c * ldm + r] : p[r * ldm + c];
}

template <int m, int n, int k>
void store_matrix_sync(float* p, const fragment<accumulator, m, n, k, float>& f, unsigned ldm, layout_t layout) {
  check_ptr(p, ldm);
  if ((::con2_emu::linear_tid() & 31) != 0) return;  // one lane writes the (identical) tile
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < n; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * n + c];
}

template <typename Use, int m, int n, int k, typename T, typename Layout>
void fill_fragment(fragment<Use, m, n, k, T, Layout>& f, float v) {
  for (auto& e : f.x) e = v;
}

template <typename F>
void check_tf32(const F& f) {
  for (float v : f.x)
    if (__float_to_tf32(v) != v && v == v) ::con2_emu::fail("tf32 fragment holds a value not rounded to tf32");
}

template <int m, int n, int k, typename LA, typename LB>
void mma_sync(fragment<accumulator, m, n, k, float>& d, const fragment<matrix_a, m, n, k, precision::tf32, LA>& a,
              const fragment<matrix_b, m, n, k, precision::tf32, LB>& b,
              const fragment<accumulator, m, n, k, float>& c) {
  check_tf32(a);
  check_tf32(b);
  float out[m * n];
  for (int r = 0; r < m; ++r)
    for (int col = 0; col < n; ++col) {
      float acc = c.x[r * n + col];
      for (int i = 0; i < k; ++i) acc += a.x[r * k + i] * b.x[i * n + col];
      out[r * n + col] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}

}  // namespace wmma
}  // namespace nvcuda
