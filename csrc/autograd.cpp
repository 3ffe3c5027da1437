// Autograd and autocast of con2_fwd_bwd, in C++ for every backend. The op returns both heads'
// gradients with the losses, so the backward only scales them by the upstream gradient. These
// were Python registrations (torch.library.register_autograd / register_autocast), whose
// Python frames cost more host time per training step than the kernels take on the GPU at
// M ~ 2048 (docs/PERFORMANCE.md). torch.compile traces through them like any C++ autograd op.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace con2 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_con2_fwd_bwd(const at::Tensor& z_context,
                                                                  const at::Tensor& z_content,
                                                                  const at::Tensor& context_labels,
                                                                  const at::Tensor& sample_ids, double temperature,
                                                                  bool fused) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("con2::con2_fwd_bwd", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                 bool)>();
  return op.call(z_context, z_content, context_labels, sample_ids, temperature, fused);
}

class Con2FwdBwd : public torch::autograd::Function<Con2FwdBwd> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z_context, const at::Tensor& z_content,
                               const at::Tensor& context_labels, const at::Tensor& sample_ids, double temperature,
                               bool fused) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [losses, dz0, dz1] = call_con2_fwd_bwd(z_context, z_content, context_labels, sample_ids, temperature, fused);
    ctx->save_for_backward({dz0, dz1});
    ctx->saved_data["dtype0"] = static_cast<int64_t>(z_context.scalar_type());
    ctx->saved_data["dtype1"] = static_cast<int64_t>(z_content.scalar_type());
    ctx->mark_non_differentiable({dz0, dz1});
    return {losses, dz0, dz1};
  }

  // Gradients were computed in the forward for upstream gradients of 1: scale each head by its
  // loss's upstream gradient. Gradients flowing into the dz outputs are not supported (unused).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // grad mode is on only under create_graph=True: this backward is not itself differentiable, so
    // a second derivative through it would silently miss the loss's own term
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "con2's native loss has no second derivative (backward with create_graph=True, as for a gradient "
                "penalty); use con2.ops.reference's loss, or set CON2_DISABLE_EXT=1");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& g = grads[0];
    at::Tensor grad0, grad1;
    if (g.defined()) {
      const at::Tensor gc = g.to(saved[0].scalar_type());
      const auto dtype0 = static_cast<at::ScalarType>(ctx->saved_data["dtype0"].toInt());
      const auto dtype1 = static_cast<at::ScalarType>(ctx->saved_data["dtype1"].toInt());
      if (const at::Tensor both = adjacent_halves(saved[0], saved[1]); both.defined()) {
        const at::Tensor scaled = both.mul(gc.view({2, 1, 1}));  // one launch for both heads
        if (ctx->needs_input_grad(0)) grad0 = scaled.select(0, 0).to(dtype0);
        if (ctx->needs_input_grad(1)) grad1 = scaled.select(0, 1).to(dtype1);
      } else {
        if (ctx->needs_input_grad(0)) grad0 = saved[0].mul(gc.select(0, 0)).to(dtype0);
        if (ctx->needs_input_grad(1)) grad1 = saved[1].mul(gc.select(0, 1)).to(dtype1);
      }
    }
    return {grad0, grad1, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  // [2, M, D] view of the two heads' gradients when they are the contiguous halves of one buffer
  // (the two-head kernels return them so); undefined otherwise.
  static at::Tensor adjacent_halves(const at::Tensor& a, const at::Tensor& b) {
    if (a.dim() != 2 || a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type() || !a.is_contiguous() ||
        !b.is_contiguous() || !a.is_alias_of(b) || b.storage_offset() != a.storage_offset() + a.numel()) {
      return at::Tensor();
    }
    return a.as_strided({2, a.size(0), a.size(1)}, {a.numel(), a.size(1), 1}, a.storage_offset());
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_fwd_bwd_autograd(const at::Tensor& z_context,
                                                                      const at::Tensor& z_content,
                                                                      const at::Tensor& context_labels,
                                                                      const at::Tensor& sample_ids,
                                                                      double temperature, bool fused) {
  const variable_list out =
      Con2FwdBwd::apply(z_context, z_content, context_labels, sample_ids, temperature, fused);
  return {out[0], out[1], out[2]};
}

// Autocast: the loss computes in float32 from bf16 / fp16 inputs (float64 stays float64).
template <c10::DispatchKey kKey, at::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor, at::Tensor> con2_fwd_bwd_autocast(const at::Tensor& z_context,
                                                                      const at::Tensor& z_content,
                                                                      const at::Tensor& context_labels,
                                                                      const at::Tensor& sample_ids,
                                                                      double temperature, bool fused) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  auto up = [](const at::Tensor& z) {
    const bool low = z.device().type() == kDevice && (z.scalar_type() == at::kHalf || z.scalar_type() == at::kBFloat16);
    return low ? z.to(at::kFloat) : z;
  };
  return call_con2_fwd_bwd(up(z_context), up(z_content), context_labels, sample_ids, temperature, fused);
}

}  // namespace

TORCH_LIBRARY_IMPL(con2, Autograd, m) { m.impl("con2_fwd_bwd", &con2_fwd_bwd_autograd); }
TORCH_LIBRARY_IMPL(con2, AutocastCPU, m) {
  m.impl("con2_fwd_bwd", &con2_fwd_bwd_autocast<c10::DispatchKey::AutocastCPU, at::kCPU>);
}
TORCH_LIBRARY_IMPL(con2, AutocastCUDA, m) {
  m.impl("con2_fwd_bwd", &con2_fwd_bwd_autocast<c10::DispatchKey::AutocastCUDA, at::kCUDA>);
}

}  // namespace con2
