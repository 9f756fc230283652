// Host-side op glue shared by ops.cpp (temporal ops) and spatial_attn.cu (spatial and joint ops):
// argument checks, output allocation in q's axis memory order (as temporal_kernels/_layout.py
// allocates, so the outputs match the fakes of ops.py), and the AttnParams pointers and strides.
//
// Inline functions only: the header is included by the host compiler (ops.cpp) and by nvcc
// (spatial_attn.cu).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <optional>
#include <vector>

#include "params.h"

namespace temporal_kernels {
namespace op_utils {

constexpr int64_t kMaxHeadDim = 256;

inline DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    default:
      TORCH_CHECK(false, "temporal_kernels: expected float16, bfloat16, float32 or float64, got ", x.scalar_type());
  }
}

inline at::ScalarType stat_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Axes of `like` from outermost to innermost in memory, as temporal_kernels/_layout.py's
// axis_order() sorts them: expanded (stride-0) axes outermost, then by decreasing stride, ties
// keeping the logical order.
inline std::vector<int64_t> axis_order(const at::Tensor& like) {
  std::vector<int64_t> order(like.dim());
  std::iota(order.begin(), order.end(), 0);
  const auto strides = like.strides();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const bool a_real = strides[a] != 0, b_real = strides[b] != 0;
    return a_real != b_real ? !a_real : strides[a] > strides[b];
  });
  return order;
}

// A dense tensor of logical shape `sizes` whose axes lie in memory in `order`.
inline at::Tensor empty_in_order(at::IntArrayRef sizes, const std::vector<int64_t>& order,
                                 const at::TensorOptions& opts) {
  const int64_t nd = static_cast<int64_t>(order.size());
  std::vector<int64_t> physical(nd), inverse(nd);
  for (int64_t pos = 0; pos < nd; ++pos) {
    physical[pos] = sizes[order[pos]];
    inverse[order[pos]] = pos;
  }
  return at::empty(physical, opts).permute(inverse);
}

inline at::Tensor empty_in_axis_order(const at::Tensor& like) {
  return empty_in_order(like.sizes(), axis_order(like), like.options());
}

inline at::Tensor lse_like(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(3), q.size(1), q.size(2)}, q.options().dtype(stat_dtype(q)));
}

// The kernels need a unit head-dim stride; any other is copied once (SPEC §1).
inline at::Tensor unit_last(const at::Tensor& x) {
  return (x.size(-1) <= 1 || x.stride(-1) == 1) ? x : x.contiguous();
}

template <int K>
void set_strides(int64_t (&dst)[K], const at::Tensor& x) {
  for (int i = 0; i < K; ++i) dst[i] = x.stride(i);
}

// Every row start (all axes but the last) is 16-byte aligned.
inline bool aligned16(const at::Tensor& x) {
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return false;
  const int64_t elem = x.element_size();
  for (int i = 0; i + 1 < x.dim(); ++i) {
    if (x.size(i) > 1 && (x.stride(i) * elem) % 16 != 0) return false;
  }
  return true;
}

inline void check_video(const char* name, const at::Tensor& x, const at::Tensor& q) {
  TORCH_CHECK(x.is_cuda(), name, ": expected a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 5, name, ": expected a rank-5 tensor [B, T, N, H, D], got shape ", x.sizes());
  TORCH_CHECK(x.sizes() == q.sizes(), name, ": expected shape ", q.sizes(), " (from q), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == q.scalar_type(), name, ": expected dtype ", q.scalar_type(), " (from q), got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == q.device(), name, ": expected device ", q.device(), " (from q), got ", x.device());
}

inline void check_packed(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 6 && qkv.size(3) == 3, "qkv: expected shape [B, T, N, 3, H, D], got ", qkv.sizes());
}

inline void* current_stream(const at::Tensor& q) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
}

// First part of every launch's parameters: checks q, sets the shapes.
inline void set_shape(AttnParams& p, const at::Tensor& q) {
  check_video("q", q, q);
  dtype_of(q);
  TORCH_CHECK(q.size(4) <= kMaxHeadDim, "q: the cuda backend supports head dims D <= ", kMaxHeadDim, ", got D=",
              q.size(4));
  p.B = q.size(0);
  p.T = q.size(1);
  p.N = q.size(2);
  p.H = q.size(3);
  p.D = q.size(4);
}

// Second part: scale and masks. frame_lens becomes int64 on the device, kept alive in
// frame_lens_i64.
inline void set_mask(AttnParams& p, const at::Tensor& q, const std::optional<at::Tensor>& frame_lens, bool causal,
                     double scale, at::Tensor& frame_lens_i64) {
  p.scale = scale;
  p.causal = causal;
  if (frame_lens.has_value()) {
    const at::Tensor& fl = *frame_lens;
    TORCH_CHECK(fl.device() == q.device(), "frame_lens: expected device ", q.device(), " (the device of q), got ",
                fl.device());
    TORCH_CHECK(fl.dim() == 1 && fl.size(0) == p.B, "frame_lens: expected shape [", p.B, "], got ", fl.sizes());
    TORCH_CHECK(at::isIntegralType(fl.scalar_type(), /*includeBool=*/false),
                "frame_lens: expected an integer dtype, got ", fl.scalar_type());
    frame_lens_i64 = fl.to(at::kLong).contiguous();
    p.frame_lens = frame_lens_i64.data_ptr<int64_t>();
  }
}

// Points `ptr` at x's data and copies its strides.
template <typename Ptr, int K>
void bind(Ptr& ptr, int64_t (&stride)[K], const at::Tensor& x) {
  ptr = x.data_ptr();
  set_strides(stride, x);
}

// Pointers, strides and vec16 of a forward launch (q, k, v with unit head-dim stride).
inline void set_fwd_tensors(AttnParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& out, const at::Tensor& lse) {
  bind(p.q, p.q_stride, q);
  bind(p.k, p.k_stride, k);
  bind(p.v, p.v_stride, v);
  bind(p.out, p.out_stride, out);
  p.lse = lse.data_ptr();
  p.vec16 = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
}

// The same for a backward launch, which also reads dout and writes delta (scratch), dq, dk, dv.
inline void set_bwd_tensors(AttnParams& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& out, const at::Tensor& dout, const at::Tensor& lse,
                            const at::Tensor& delta, const at::Tensor& dq, const at::Tensor& dk,
                            const at::Tensor& dv) {
  set_fwd_tensors(p, q, k, v, out, lse);
  bind(p.dout, p.dout_stride, dout);
  bind(p.dq, p.dq_stride, dq);
  bind(p.dk, p.dk_stride, dk);
  bind(p.dv, p.dv_stride, dv);
  p.delta = delta.data_ptr();
  p.vec16 = p.vec16 && aligned16(dout) && aligned16(dq) && aligned16(dk) && aligned16(dv);
}

}  // namespace op_utils
}  // namespace temporal_kernels
