// The two-head loss (con2_two_head.cuh) replayed from a CUDA graph. At the training sizes the
// loss is bound by host time, not by the GPU: two batched GEMMs, three kernels and their
// allocations cost the host ~3x the 0.2 ms the GPU needs (docs/PERFORMANCE.md). Captured once
// per (device, M, D, temperature), a call is one copy kernel into the graph's fixed inputs, one
// graph launch and one copy out of its fixed outputs.
//
// The outputs are copied because the graph overwrites its buffers on every replay, while the
// gradients it returns are saved for the backward (a second forward before the backward must
// not change them). Replays share those buffers, so each call orders itself after the previous
// one (an event) and the cache is guarded by a mutex. Not used while the caller's stream is
// being captured into a graph of its own, or with CON2_CUDA_GRAPHS=0.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

#include "con2_two_head.cuh"
#include "cuda_utils.cuh"

namespace con2 {
namespace two_head {

// Both heads (float32 / bf16 / fp16) into the stacked float32 input, both label vectors into
// the int64 ones: one launch. n = M * D >= M.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pack_kernel(const scalar_t* __restrict__ z0, const scalar_t* __restrict__ z1, const int64_t* __restrict__ l0,
                const int64_t* __restrict__ l1, float* __restrict__ z, int64_t* __restrict__ lz0,
                int64_t* __restrict__ lz1, int64_t n, int64_t m) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += stride) {
    z[t] = static_cast<float>(z0[t]);
    z[n + t] = static_cast<float>(z1[t]);
    if (t < m) {
      lz0[t] = l0[t];
      lz1[t] = l1[t];
    }
  }
}

// A CUDA event for ordering streams (raw: ATen's CUDAEvent.h needs the cuSPARSE headers,
// which the CI toolkit lacks).
class StreamEvent {
 public:
  StreamEvent() = default;
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;
  ~StreamEvent() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  void record(cudaStream_t stream) {
    if (event_ == nullptr) C10_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(event_, stream));
  }
  void block(cudaStream_t stream) const {  // stream waits for the last record (none: no wait)
    if (event_ != nullptr) C10_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0));
  }

 private:
  cudaEvent_t event_ = nullptr;
};

struct GraphKey {
  int device;
  int64_t m, d;
  double temperature;
  bool operator==(const GraphKey& o) const {
    return device == o.device && m == o.m && d == o.d && temperature == o.temperature;
  }
};

struct GraphEntry {
  GraphKey key;
  at::Tensor z, l0, l1;    // fixed inputs: stacked heads [2, M, D] float32, labels int64
  at::Tensor losses, dz;   // fixed outputs, in the graph's private memory pool
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  StreamEvent done;  // after the last call's copies out
};

class GraphCache {
 public:
  static constexpr size_t kMaxEntries = 4;  // one per training shape is the usual case

  // Losses and both heads' gradients from a graph replay, or nullopt where a graph cannot be
  // used (graphs off, the caller's stream capturing, a failed capture): the caller then runs
  // the plain path. Inputs are validated by the caller and satisfy applies().
  std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> run(const at::Tensor& z_context,
                                                                    const at::Tensor& z_content,
                                                                    const at::Tensor& context_labels,
                                                                    const at::Tensor& sample_ids, double temperature) {
    if (disabled_) return std::nullopt;
    const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream.stream(), &capturing));
    if (capturing != cudaStreamCaptureStatusNone) return std::nullopt;

    const at::Tensor z0 = z_context.contiguous(), z1 = z_content.contiguous();
    const at::Tensor l0 = context_labels.to(at::kLong).contiguous(), l1 = sample_ids.to(at::kLong).contiguous();
    const GraphKey key{z0.get_device(), z0.size(0), z0.size(1), temperature};
    std::lock_guard<std::mutex> lock(mutex_);
    GraphEntry* e = find(key);
    const bool fresh = e == nullptr;
    if (fresh) {
      e = add(key, z0.options().dtype(at::kFloat));
    } else {
      e->done.block(stream.stream());  // the previous call (maybe on another stream) has read the outputs
    }
    pack(z0, z1, l0, l1, *e, stream);
    if (fresh && !capture(*e, stream)) {
      entries_.pop_front();
      disabled_ = true;
      return std::nullopt;
    }
    e->graph->replay();
    at::Tensor losses = at::empty_like(e->losses), dz = at::empty_like(e->dz);
    C10_CUDA_CHECK(cudaMemcpyAsync(dz.data_ptr(), e->dz.const_data_ptr(), dz.nbytes(), cudaMemcpyDeviceToDevice,
                                   stream.stream()));
    C10_CUDA_CHECK(cudaMemcpyAsync(losses.data_ptr(), e->losses.const_data_ptr(), losses.nbytes(),
                                   cudaMemcpyDeviceToDevice, stream.stream()));
    e->done.record(stream.stream());
    return std::make_tuple(losses, dz.select(0, 0), dz.select(0, 1));
  }

 private:
  GraphEntry* find(const GraphKey& key) {
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if ((*it)->key == key) {
        entries_.splice(entries_.begin(), entries_, it);  // most recently used first
        return entries_.front().get();
      }
    }
    return nullptr;
  }

  GraphEntry* add(const GraphKey& key, const at::TensorOptions& opts) {
    if (entries_.size() >= kMaxEntries) {
      // replays of the evicted graph may still run on any stream of its own device (the cache is
      // shared by every GPU of the process): let them finish there before its memory is freed
      c10::cuda::CUDAGuard on_its_device(static_cast<c10::DeviceIndex>(entries_.back()->key.device));
      C10_CUDA_CHECK(cudaDeviceSynchronize());
      entries_.pop_back();
    }
    auto e = std::make_unique<GraphEntry>();
    e->key = key;
    e->z = at::empty({2, key.m, key.d}, opts);
    e->l0 = at::empty({key.m}, opts.dtype(at::kLong));
    e->l1 = at::empty({key.m}, opts.dtype(at::kLong));
    entries_.push_front(std::move(e));
    return entries_.front().get();
  }

  static void pack(const at::Tensor& z0, const at::Tensor& z1, const at::Tensor& l0, const at::Tensor& l1,
                   GraphEntry& e, const c10::cuda::CUDAStream& stream) {
    const int64_t n = z0.numel(), m = z0.size(0);
    const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1024));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, z0.scalar_type(), "con2_two_head_pack", [&] {
      pack_kernel<scalar_t><<<blocks, kThreads, 0, stream.stream()>>>(
          z0.const_data_ptr<scalar_t>(), z1.const_data_ptr<scalar_t>(), l0.const_data_ptr<int64_t>(),
          l1.const_data_ptr<int64_t>(), e.z.mutable_data_ptr<float>(), e.l0.mutable_data_ptr<int64_t>(),
          e.l1.mutable_data_ptr<int64_t>(), n, m);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // Captures the core on a side stream (graphs cannot be captured on the legacy default stream)
  // after one warm-up run there, so that lazy set-up (cuBLAS handle and workspace) happens
  // outside the capture. Thread-local capture mode: other threads' CUDA calls (a pin-memory
  // thread) stay legal meanwhile. False, with a warning, when the capture fails.
  static bool capture(GraphEntry& e, const c10::cuda::CUDAStream& stream) {
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, stream.device_index());
    StreamEvent ready;
    ready.record(stream.stream());
    ready.block(side.stream());
    const double tau = e.key.temperature;
    try {
      c10::cuda::CUDAStreamGuard guard(side);
      const cuda::StreamLaunch launch{side.stream()};
      stacked_fwd_bwd(e.z, e.l0, e.l1, tau, launch);
      e.graph = std::make_unique<at::cuda::CUDAGraph>();
      e.graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      try {
        std::tie(e.losses, e.dz) = stacked_fwd_bwd(e.z, e.l0, e.l1, tau, launch);
      } catch (...) {
        cudaGraph_t partial = nullptr;
        cudaStreamEndCapture(side.stream(), &partial);  // leave the stream usable
        if (partial != nullptr) cudaGraphDestroy(partial);
        (void)cudaGetLastError();
        e.graph.release();  // mid-capture state: not safe to destroy; leaked once, graphs are off from here
        throw;
      }
      e.graph->capture_end();
    } catch (const std::exception& ex) {
      TORCH_WARN("con2: capturing the two-head loss in a CUDA graph failed, running it without graphs: ", ex.what());
      return false;
    }
    StreamEvent captured;
    captured.record(side.stream());
    captured.block(stream.stream());
    return true;
  }

  std::mutex mutex_;
  std::list<std::unique_ptr<GraphEntry>> entries_;
  std::atomic<bool> disabled_{[] {  // CON2_CUDA_GRAPHS=0 (con2.ops.native validates the value)
    const char* v = std::getenv("CON2_CUDA_GRAPHS");
    if (v == nullptr) return false;
    std::string s(v);
    s.erase(0, s.find_first_not_of(" \t"));
    s.erase(s.find_last_not_of(" \t") + 1);
    return s == "0";
  }()};
};

// Never destroyed: the CUDA context may already be gone when static destructors run at exit.
inline GraphCache& graph_cache() {
  static GraphCache* cache = new GraphCache();
  return *cache;
}

}  // namespace two_head
}  // namespace con2
