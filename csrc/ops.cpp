// Op schemas and CUDA implementations of the compiled extension temporal_kernels._C.
//
// Every C++ op schema lives in the one TORCH_LIBRARY block below; the schemas mirror the Python
// annotations of temporal_kernels/ops.py (prefix "cuda"). Fake (meta) implementations and
// autograd are registered on the Python side (ops.py, "CUDA backend" section), with the same
// allocation helpers as the Triton ops, so the outputs allocated here must match them exactly:
// out/dq/dk/dv dense in q's axis memory order, dqkv dense in qkv's axis order (the backward
// kernel writes its q/k/v slices in place), lse contiguous [B, H, T, N] float32 (float64 for
// double inputs).
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "op_utils.h"
#include "params.h"

namespace temporal_kernels {
namespace {

using namespace op_utils;

// Common part of every launch: shapes, masks, checks. frame_lens becomes int64 on the device.
AttnParams base_params(const at::Tensor& q, const std::optional<at::Tensor>& frame_lens, bool causal, double scale,
                       at::Tensor& frame_lens_i64) {
  AttnParams p;
  set_shape(p, q);
  TORCH_CHECK(p.T < (int64_t(1) << 30), "q: the cuda backend supports T < 2^30 frames, got T=", p.T);
  set_mask(p, q, frame_lens, causal, scale, frame_lens_i64);
  return p;
}

// Forward on (q, k, v) views; `out` and `lse` preallocated (written in full).
void run_fwd(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out,
             const at::Tensor& lse, const std::optional<at::Tensor>& frame_lens, bool causal, double scale) {
  check_video("k", k_in, q_in);
  check_video("v", v_in, q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor frame_lens_i64;
  AttnParams p = base_params(q_in, frame_lens, causal, scale, frame_lens_i64);
  if (out.numel() == 0) {
    lse.zero_();
    return;
  }
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  set_fwd_tensors(p, q, k, v, out, lse);
  temporal_attn_fwd(p, dtype_of(q), current_stream(q));
}

// Backward into preallocated dq, dk, dv (views; written in full).
void run_bwd(const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
             const at::Tensor& out_in, const at::Tensor& lse, const std::optional<at::Tensor>& frame_lens,
             bool causal, double scale, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv) {
  check_video("k", k_in, q_in);
  check_video("v", v_in, q_in);
  check_video("out", out_in, q_in);
  check_video("dout", dout_in, q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  at::Tensor frame_lens_i64;
  AttnParams p = base_params(q_in, frame_lens, causal, scale, frame_lens_i64);
  TORCH_CHECK(lse.scalar_type() == stat_dtype(q_in) && lse.is_contiguous() &&
                  lse.sizes() == at::IntArrayRef({p.B, p.H, p.T, p.N}),
              "lse: expected a contiguous [B, H, T, N] tensor of dtype ", stat_dtype(q_in), ", got ", lse.sizes(),
              " ", lse.scalar_type());
  if (dq.numel() == 0) return;
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  const at::Tensor out = unit_last(out_in), dout = unit_last(dout_in);
  const at::Tensor delta = at::empty_like(lse);
  set_bwd_tensors(p, q, k, v, out, dout, lse, delta, dq, dk, dv);
  temporal_attn_bwd(p, dtype_of(q), current_stream(q));
}

std::tuple<at::Tensor, at::Tensor> cuda_temporal_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& frame_lens, bool causal,
                                                     double scale) {
  check_video("q", q, q);
  at::Tensor out = empty_in_axis_order(q), lse = lse_like(q);
  run_fwd(q, k, v, out, lse, frame_lens, causal, scale);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_temporal_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                                 const at::Tensor& k, const at::Tensor& v,
                                                                 const at::Tensor& out, const at::Tensor& lse,
                                                                 const std::optional<at::Tensor>& frame_lens,
                                                                 bool causal, double scale) {
  check_video("q", q, q);
  at::Tensor dq = empty_in_axis_order(q), dk = empty_in_axis_order(k), dv = empty_in_axis_order(v);
  run_bwd(dout, q, k, v, out, lse, frame_lens, causal, scale, dq, dk, dv);
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor> cuda_temporal_qkvpacked_fwd(const at::Tensor& qkv,
                                                               const std::optional<at::Tensor>& frame_lens,
                                                               bool causal, double scale) {
  check_packed(qkv);
  const at::Tensor q = qkv.select(3, 0);
  check_video("q", q, q);
  at::Tensor out = empty_in_axis_order(q), lse = lse_like(q);
  run_fwd(q, qkv.select(3, 1), qkv.select(3, 2), out, lse, frame_lens, causal, scale);
  return {out, lse};
}

at::Tensor cuda_temporal_qkvpacked_bwd(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& out,
                                       const at::Tensor& lse, const std::optional<at::Tensor>& frame_lens,
                                       bool causal, double scale) {
  check_packed(qkv);
  check_video("q", qkv.select(3, 0), qkv.select(3, 0));
  at::Tensor dqkv = empty_in_axis_order(qkv);
  run_bwd(dout, qkv.select(3, 0), qkv.select(3, 1), qkv.select(3, 2), out, lse, frame_lens, causal, scale,
          dqkv.select(3, 0), dqkv.select(3, 1), dqkv.select(3, 2));
  return dqkv;
}

}  // namespace
}  // namespace temporal_kernels

TORCH_LIBRARY(temporal_kernels, m) {
  m.def("cuda_temporal_fwd(Tensor q, Tensor k, Tensor v, Tensor? frame_lens, bool causal, float scale)"
        " -> (Tensor, Tensor)");
  m.def("cuda_temporal_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " Tensor? frame_lens, bool causal, float scale) -> (Tensor, Tensor, Tensor)");
  m.def("cuda_temporal_qkvpacked_fwd(Tensor qkv, Tensor? frame_lens, bool causal, float scale)"
        " -> (Tensor, Tensor)");
  m.def("cuda_temporal_qkvpacked_bwd(Tensor dout, Tensor qkv, Tensor out, Tensor lse, Tensor? frame_lens,"
        " bool causal, float scale) -> Tensor");
  // Implemented in spatial_attn.cu.
  m.def("cuda_spatial_fwd(Tensor q, Tensor k, Tensor v, Tensor? q_cls, Tensor? k_cls, Tensor? v_cls, float scale)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cuda_spatial_bwd(Tensor dout, Tensor? dcls_out, Tensor q, Tensor k, Tensor v, Tensor? q_cls,"
        " Tensor? k_cls, Tensor? v_cls, Tensor out, Tensor? cls_out, Tensor lse, Tensor? lse_cls, float scale)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("cuda_spatial_qkvpacked_fwd(Tensor qkv, Tensor? cls_qkv, float scale) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("cuda_spatial_qkvpacked_bwd(Tensor dout, Tensor? dcls_out, Tensor qkv, Tensor? cls_qkv, Tensor out,"
        " Tensor? cls_out, Tensor lse, Tensor? lse_cls, float scale) -> (Tensor, Tensor)");
  m.def("cuda_joint_fwd(Tensor q, Tensor k, Tensor v, Tensor? frame_lens, bool causal, float scale)"
        " -> (Tensor, Tensor)");
  m.def("cuda_joint_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " Tensor? frame_lens, bool causal, float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(temporal_kernels, CUDA, m) {
  m.impl("cuda_temporal_fwd", &temporal_kernels::cuda_temporal_fwd);
  m.impl("cuda_temporal_bwd", &temporal_kernels::cuda_temporal_bwd);
  m.impl("cuda_temporal_qkvpacked_fwd", &temporal_kernels::cuda_temporal_qkvpacked_fwd);
  m.impl("cuda_temporal_qkvpacked_bwd", &temporal_kernels::cuda_temporal_qkvpacked_bwd);
}

// `import temporal_kernels._C` only has to load the library (the TORCH_LIBRARY blocks above
// register the ops as the shared object loads); the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
