// Op schemas of the con2 native extension. Kernels live in csrc/cpu/*.cpp and
// csrc/cuda/*.cu and register themselves per dispatch key with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(con2, m) {
  // SupCon "L_out" forward. Returns (loss [], lse [M], npos [M]): lse is the
  // log-sum-exp of s_ij / temperature over j != i, npos the number of positives;
  // both are saved for the backward, which recomputes the similarity tiles.
  m.def("supcon_fwd(Tensor z, Tensor labels, float temperature) -> (Tensor, Tensor, Tensor)");
  // Gradient of the loss w.r.t. z given the upstream scalar gradient `grad`.
  m.def(
      "supcon_bwd(Tensor grad, Tensor z, Tensor labels, Tensor lse, Tensor npos, "
      "float temperature) -> Tensor");
  // Loss and its gradient w.r.t. z for an upstream gradient of 1 (compute dtype), in one
  // call: used when z requires grad, so the similarity is computed once when it fits.
  m.def("supcon_fwd_bwd(Tensor z, Tensor labels, float temperature) -> (Tensor, Tensor)");
  // Both heads of the Con2 loss in one call: (losses [2] = (L_Context, L_Content), d
  // L_Context / d z_context, d L_Content / d z_content), gradients for an upstream gradient
  // of 1 in the compute dtype. `fused` selects the single-pass tiled CUDA kernels
  // (csrc/cuda/con2_fused.cuh) over two blocked supcon_fwd_bwd calls; CPU ignores it.
  m.def(
      "con2_fwd_bwd(Tensor z_context, Tensor z_content, Tensor context_labels, Tensor sample_ids, "
      "float temperature, bool fused=False) -> (Tensor, Tensor, Tensor)");
  // SimCLR views of uint8 images [S, C, H, W]: view i crops boxes[i] = (top, left, h, w) out of
  // images[source[i]], resizes it to size x size (bilinear), flips it when hflip[i], applies
  // colour jitter factors[i] (brightness, contrast, saturation, hue) in the order order[i],
  // greys it when gray[i], normalises with (mean, std): [M, C, size, size] of `dtype`.
  // context[i] (optional, integer [M]) is a context transform applied to the source image before
  // the crop, while its pixels are read: bit 0 inverts (255 - x), bit 1 flips vertically.
  m.def(
      "simclr_views(Tensor images, Tensor source, Tensor boxes, Tensor hflip, Tensor factors, Tensor order, "
      "Tensor gray, int size, float mean, float std, ScalarType dtype, bool channels_last, "
      "Tensor? context=None) -> Tensor");
  // Exact nearest bank row by cosine similarity: (values [Q] float32, indices [Q] int64).
  m.def("top1_cosine(Tensor queries, Tensor bank, Tensor bank_norms) -> (Tensor, Tensor)");
  // Per-row ||(x - mean) @ whitening||^2. `fused` selects the one-pass tensor-core CUDA kernel
  // (csrc/cuda/mahalanobis_fused.cuh) for float32 work with D <= 512; CPU ignores it.
  m.def("mahalanobis_sq(Tensor x, Tensor mean, Tensor whitening, bool fused=False) -> Tensor");
}
