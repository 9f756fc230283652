// Spatial (+CLS) and joint attention of the CUDA backend: launchers of the spatial_attn.cuh
// kernels (dtype dispatch, launch shape, current stream, launch check) and the op
// implementations of cuda_spatial_* / cuda_joint_* (schemas: ops.cpp's TORCH_LIBRARY block;
// fakes and autograd: temporal_kernels/ops.py). Outputs are allocated exactly as the Triton ops
// allocate them: out/dq/dk/dv dense in q's axis order, cls_out [B, T, H, D] in the order of q's
// (b, t, h, d) axes, lse [B, H, T, N] and lse_cls [B, H, T] contiguous float32 (float64 for
// double), empty tensors for absent CLS outputs, dq_cls/dk_cls/dv_cls contiguous [B, H, D],
// dqkv and dcls_qkv dense in the axis order of qkv and cls_qkv.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "op_utils.h"
#include "spatial_attn.cuh"

namespace temporal_kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// launchers

template <typename T>
void launch_fwd(const SpatialParams& p, cudaStream_t stream) {
  const detail::SpatialLaunch l = detail::spatial_fwd_launch<T>(p);
  if (l.grid == 0) return;
  detail::spatial_fwd_kernel<T>
      <<<static_cast<unsigned>(l.grid), detail::kThreads, l.smem, stream>>>(p, l.sh, l.nblk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_cls_sum(const SpatialParams& p, cudaStream_t stream) {
  const int64_t sgrid = detail::cls_sum_grid(p);
  if (p.has_cls && sgrid > 0) {
    detail::spatial_cls_sum_kernel<T><<<static_cast<unsigned>(sgrid), detail::kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T>
void launch_bwd(const SpatialParams& p, cudaStream_t stream) {
  // dQ first: it writes the delta scratch that the dK/dV pass reads (same stream, in order).
  const detail::SpatialLaunch lq = detail::spatial_fwd_launch<T>(p);
  if (lq.grid > 0) {
    detail::spatial_bwd_dq_kernel<T>
        <<<static_cast<unsigned>(lq.grid), detail::kThreads, lq.smem, stream>>>(p, lq.sh, lq.nblk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const detail::SpatialLaunch lkv = detail::spatial_dkdv_launch<T>(p);
  if (lkv.grid > 0) {
    detail::spatial_bwd_dkdv_kernel<T>
        <<<static_cast<unsigned>(lkv.grid), detail::kThreads, lkv.smem, stream>>>(p, lkv.sh, lkv.nblk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  launch_cls_sum<T>(p, stream);
}

}  // namespace

void spatial_attn_fwd(const SpatialParams& p, DType dtype, void* stream) {
  if (flash_tc_fwd(p, dtype, stream)) return;  // 16-bit aligned inputs: the tensor-core forward
  auto s = static_cast<cudaStream_t>(stream);
  detail::dispatch_dtype(dtype, [&](auto tag) { launch_fwd<typename decltype(tag)::type>(p, s); });
}

void spatial_attn_bwd(const SpatialParams& p, DType dtype, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (flash_tc_bwd(p, dtype, stream)) {  // 16-bit aligned inputs, D <= 64: the tensor-core backward
    detail::dispatch_dtype(dtype, [&](auto tag) { launch_cls_sum<typename decltype(tag)::type>(p, s); });
    return;
  }
  detail::dispatch_dtype(dtype, [&](auto tag) { launch_bwd<typename decltype(tag)::type>(p, s); });
}

namespace {

// ---------------------------------------------------------------------------------------------
// op implementations

using namespace op_utils;

// _layout.empty_like_cls_out: [B, T, H, D], its axes in the order of q's (b, t, h, d).
at::Tensor empty_like_cls_out(const at::Tensor& q) {
  std::vector<int64_t> order4;
  for (int64_t a : axis_order(q)) {
    if (a != kN) order4.push_back(a < kN ? a : a - 1);
  }
  return empty_in_order({q.size(0), q.size(1), q.size(3), q.size(4)}, order4, q.options());
}

void check_like(const char* name, const at::Tensor& x, at::IntArrayRef sizes, const at::Tensor& q) {
  TORCH_CHECK(x.is_cuda() && x.device() == q.device(), name, ": expected a tensor on ", q.device(), ", got ",
              x.device());
  TORCH_CHECK(x.sizes() == sizes, name, ": expected shape ", sizes, ", got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == q.scalar_type(), name, ": expected dtype ", q.scalar_type(), " (from q), got ",
              x.scalar_type());
}

void check_stat(const char* name, const at::Tensor& x, at::IntArrayRef sizes, const at::Tensor& q) {
  TORCH_CHECK(x.device() == q.device() && x.scalar_type() == stat_dtype(q) && x.is_contiguous() && x.sizes() == sizes,
              name, ": expected a contiguous ", sizes, " tensor of dtype ", stat_dtype(q), " on ", q.device(),
              ", got ", x.sizes(), " ", x.scalar_type(), " on ", x.device());
}

void check_cls_packed(const std::optional<at::Tensor>& cls_qkv) {
  TORCH_CHECK(!cls_qkv.has_value() || (cls_qkv->dim() == 4 && cls_qkv->size(1) == 3),
              "cls_qkv: expected shape [B, 3, H, D], got ", cls_qkv.has_value() ? cls_qkv->sizes() : at::IntArrayRef());
}

// Shapes, mode and masks of one launch. frame_lens becomes int64 on the device.
SpatialParams base_params(SeqMode mode, const at::Tensor& q, const std::optional<at::Tensor>& frame_lens, bool causal,
                          double scale, at::Tensor& frame_lens_i64) {
  SpatialParams p;
  p.mode = mode;
  set_shape(p, q);
  set_mask(p, q, frame_lens, causal, scale, frame_lens_i64);
  return p;
}

struct Cls {
  at::Tensor q, k, v;
};

std::optional<Cls> cls_of(const std::optional<at::Tensor>& q_cls, const std::optional<at::Tensor>& k_cls,
                          const std::optional<at::Tensor>& v_cls, const at::Tensor& q) {
  TORCH_CHECK(q_cls.has_value() == k_cls.has_value() && q_cls.has_value() == v_cls.has_value(),
              "q_cls, k_cls, v_cls: expected all three or none");
  if (!q_cls.has_value()) return std::nullopt;
  const std::vector<int64_t> shape = {q.size(0), q.size(3), q.size(4)};
  check_like("q_cls", *q_cls, shape, q);
  check_like("k_cls", *k_cls, shape, q);
  check_like("v_cls", *v_cls, shape, q);
  return Cls{unit_last(*q_cls), unit_last(*k_cls), unit_last(*v_cls)};
}

// Pointers, strides and vec16 of the CLS inputs and of cls_out (forward: written; the backward
// binds it too but does not read it).
void set_cls_tensors(SpatialParams& p, const Cls& cls, const at::Tensor& cls_out) {
  bind(p.q_cls, p.q_cls_stride, cls.q);
  bind(p.k_cls, p.k_cls_stride, cls.k);
  bind(p.v_cls, p.v_cls_stride, cls.v);
  bind(p.cls_out, p.cls_out_stride, cls_out);
  p.vec16 = p.vec16 && aligned16(cls.q) && aligned16(cls.k) && aligned16(cls.v) && aligned16(cls_out);
}

// Forward into preallocated out, lse (and cls_out, lse_cls); every element written.
void run_fwd(SpatialParams& p, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
             const std::optional<Cls>& cls, const at::Tensor& out, const at::Tensor& cls_out, const at::Tensor& lse,
             const at::Tensor& lse_cls) {
  check_video("k", k_in, q_in);
  check_video("v", v_in, q_in);
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  set_fwd_tensors(p, q, k, v, out, lse);
  p.has_cls = cls.has_value();
  if (p.has_cls) {
    set_cls_tensors(p, *cls, cls_out);
    p.lse_cls = lse_cls.data_ptr();
  }
  spatial_attn_fwd(p, dtype_of(q), current_stream(q));
}

// Backward into preallocated dq, dk, dv (views) and, with CLS, the [B, H, D] views dcls[0..2].
void run_bwd(SpatialParams& p, const at::Tensor& dout_in, const std::optional<at::Tensor>& dcls_out_in,
             const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const std::optional<Cls>& cls,
             const at::Tensor& out_in, const std::optional<at::Tensor>& cls_out_in, const at::Tensor& lse,
             const std::optional<at::Tensor>& lse_cls, const at::Tensor& dq, const at::Tensor& dk,
             const at::Tensor& dv, const std::vector<at::Tensor>& dcls) {
  check_video("k", k_in, q_in);
  check_video("v", v_in, q_in);
  check_video("out", out_in, q_in);
  check_video("dout", dout_in, q_in);
  check_stat("lse", lse, {p.B, p.H, p.T, p.N}, q_in);
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  const at::Tensor out = unit_last(out_in), dout = unit_last(dout_in);
  const at::Tensor delta = at::empty_like(lse);
  set_bwd_tensors(p, q, k, v, out, dout, lse, delta, dq, dk, dv);
  p.has_cls = cls.has_value();
  // Kept alive until the launches are queued (the caching allocator orders their reuse).
  at::Tensor cls_out, dcls_out, delta_cls, parts;
  if (p.has_cls) {
    const std::vector<int64_t> frame_shape = {p.B, p.T, p.H, p.D};
    TORCH_CHECK(cls_out_in.has_value() && lse_cls.has_value(), "cls_out, lse_cls: required with the CLS token");
    check_like("cls_out", *cls_out_in, frame_shape, q_in);
    check_stat("lse_cls", *lse_cls, {p.B, p.H, p.T}, q_in);
    cls_out = unit_last(*cls_out_in);
    if (dcls_out_in.has_value()) {
      check_like("dcls_out", *dcls_out_in, frame_shape, q_in);
      dcls_out = unit_last(*dcls_out_in);
    } else {
      dcls_out = at::zeros(frame_shape, q.options());
    }
    delta_cls = at::empty_like(*lse_cls);
    parts = at::empty({3, p.B, p.T, p.H, p.D}, q.options().dtype(stat_dtype(q)));
    set_cls_tensors(p, *cls, cls_out);
    bind(p.dcls_out, p.dcls_out_stride, dcls_out);
    p.lse_cls = lse_cls->data_ptr();
    p.delta_cls = delta_cls.data_ptr();
    p.dq_cls_part = parts[0].data_ptr();
    p.dk_cls_part = parts[1].data_ptr();
    p.dv_cls_part = parts[2].data_ptr();
    bind(p.dq_cls, p.dq_cls_stride, dcls[0]);
    bind(p.dk_cls, p.dk_cls_stride, dcls[1]);
    bind(p.dv_cls, p.dv_cls_stride, dcls[2]);
    p.vec16 = p.vec16 && aligned16(dcls_out);
  }
  spatial_attn_bwd(p, dtype_of(q), current_stream(q));
}

using FwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

FwdResult spatial_fwd_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<Cls>& cls, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor frame_lens_i64;
  SpatialParams p = base_params(SeqMode::kSpatial, q, std::nullopt, false, scale, frame_lens_i64);
  const bool has_cls = cls.has_value();
  at::Tensor out = empty_in_axis_order(q), lse = lse_like(q);
  at::Tensor cls_out = has_cls ? empty_like_cls_out(q) : q.new_empty({0});
  const std::vector<int64_t> lse_cls_shape = has_cls ? std::vector<int64_t>{p.B, p.H, p.T} : std::vector<int64_t>{0};
  at::Tensor lse_cls = at::empty(lse_cls_shape, q.options().dtype(stat_dtype(q)));
  run_fwd(p, q, k, v, cls, out, cls_out, lse, lse_cls);
  return {out, cls_out, lse, lse_cls};
}

FwdResult cuda_spatial_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& q_cls, const std::optional<at::Tensor>& k_cls,
                           const std::optional<at::Tensor>& v_cls, double scale) {
  check_video("q", q, q);
  return spatial_fwd_impl(q, k, v, cls_of(q_cls, k_cls, v_cls, q), scale);
}

FwdResult cuda_spatial_qkvpacked_fwd(const at::Tensor& qkv, const std::optional<at::Tensor>& cls_qkv,
                                     double scale) {
  check_packed(qkv);
  check_cls_packed(cls_qkv);
  const at::Tensor q = qkv.select(3, 0);
  check_video("q", q, q);
  std::optional<at::Tensor> qc, kc, vc;
  if (cls_qkv.has_value()) {
    qc = cls_qkv->select(1, 0);
    kc = cls_qkv->select(1, 1);
    vc = cls_qkv->select(1, 2);
  }
  return spatial_fwd_impl(q, qkv.select(3, 1), qkv.select(3, 2), cls_of(qc, kc, vc, q), scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cuda_spatial_bwd(
    const at::Tensor& dout, const std::optional<at::Tensor>& dcls_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const std::optional<at::Tensor>& q_cls, const std::optional<at::Tensor>& k_cls,
    const std::optional<at::Tensor>& v_cls, const at::Tensor& out, const std::optional<at::Tensor>& cls_out,
    const at::Tensor& lse, const std::optional<at::Tensor>& lse_cls, double scale) {
  check_video("q", q, q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor frame_lens_i64;
  SpatialParams p = base_params(SeqMode::kSpatial, q, std::nullopt, false, scale, frame_lens_i64);
  const std::optional<Cls> cls = cls_of(q_cls, k_cls, v_cls, q);
  at::Tensor dq = empty_in_axis_order(q), dk = empty_in_axis_order(k), dv = empty_in_axis_order(v);
  std::vector<at::Tensor> dcls;
  for (const auto* c : {&q_cls, &k_cls, &v_cls}) {
    dcls.push_back(cls.has_value() ? at::empty((*c)->sizes(), q.options()) : q.new_empty({0}));
  }
  run_bwd(p, dout, dcls_out, q, k, v, cls, out, cls_out, lse, lse_cls, dq, dk, dv, dcls);
  return {dq, dk, dv, dcls[0], dcls[1], dcls[2]};
}

std::tuple<at::Tensor, at::Tensor> cuda_spatial_qkvpacked_bwd(
    const at::Tensor& dout, const std::optional<at::Tensor>& dcls_out, const at::Tensor& qkv,
    const std::optional<at::Tensor>& cls_qkv, const at::Tensor& out, const std::optional<at::Tensor>& cls_out,
    const at::Tensor& lse, const std::optional<at::Tensor>& lse_cls, double scale) {
  check_packed(qkv);
  check_cls_packed(cls_qkv);
  const at::Tensor q = qkv.select(3, 0);
  check_video("q", q, q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor frame_lens_i64;
  SpatialParams p = base_params(SeqMode::kSpatial, q, std::nullopt, false, scale, frame_lens_i64);
  std::optional<at::Tensor> qc, kc, vc;
  if (cls_qkv.has_value()) {
    qc = cls_qkv->select(1, 0);
    kc = cls_qkv->select(1, 1);
    vc = cls_qkv->select(1, 2);
  }
  const std::optional<Cls> cls = cls_of(qc, kc, vc, q);
  at::Tensor dqkv = empty_in_axis_order(qkv);
  at::Tensor dcls_qkv = cls.has_value() ? empty_in_axis_order(*cls_qkv) : qkv.new_empty({0});
  std::vector<at::Tensor> dcls;
  if (cls.has_value()) dcls = {dcls_qkv.select(1, 0), dcls_qkv.select(1, 1), dcls_qkv.select(1, 2)};
  run_bwd(p, dout, dcls_out, q, qkv.select(3, 1), qkv.select(3, 2), cls, out, cls_out, lse, lse_cls,
          dqkv.select(3, 0), dqkv.select(3, 1), dqkv.select(3, 2), dcls);
  return {dqkv, dcls_qkv};
}

std::tuple<at::Tensor, at::Tensor> cuda_joint_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const std::optional<at::Tensor>& frame_lens, bool causal,
                                                  double scale) {
  check_video("q", q, q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor frame_lens_i64;
  SpatialParams p = base_params(SeqMode::kJoint, q, frame_lens, causal, scale, frame_lens_i64);
  at::Tensor out = empty_in_axis_order(q), lse = lse_like(q);
  const at::Tensor none = q.new_empty({0});
  run_fwd(p, q, k, v, std::nullopt, out, none, lse, none);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_joint_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                              const at::Tensor& k, const at::Tensor& v,
                                                              const at::Tensor& out, const at::Tensor& lse,
                                                              const std::optional<at::Tensor>& frame_lens,
                                                              bool causal, double scale) {
  check_video("q", q, q);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor frame_lens_i64;
  SpatialParams p = base_params(SeqMode::kJoint, q, frame_lens, causal, scale, frame_lens_i64);
  at::Tensor dq = empty_in_axis_order(q), dk = empty_in_axis_order(k), dv = empty_in_axis_order(v);
  run_bwd(p, dout, std::nullopt, q, k, v, std::nullopt, out, std::nullopt, lse, std::nullopt, dq, dk, dv, {});
  return {dq, dk, dv};
}

}  // namespace
}  // namespace temporal_kernels

TORCH_LIBRARY_IMPL(temporal_kernels, CUDA, m) {
  m.impl("cuda_spatial_fwd", &temporal_kernels::cuda_spatial_fwd);
  m.impl("cuda_spatial_bwd", &temporal_kernels::cuda_spatial_bwd);
  m.impl("cuda_spatial_qkvpacked_fwd", &temporal_kernels::cuda_spatial_qkvpacked_fwd);
  m.impl("cuda_spatial_qkvpacked_bwd", &temporal_kernels::cuda_spatial_qkvpacked_bwd);
  m.impl("cuda_joint_fwd", &temporal_kernels::cuda_joint_fwd);
  m.impl("cuda_joint_bwd", &temporal_kernels::cuda_joint_bwd);
}
