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

#include <algorithm>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

#include "params.h"

namespace temporal_kernels {
namespace {

constexpr int64_t kMaxHeadDim = 256;

DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    default:
      TORCH_CHECK(false, "temporal_kernels: expected float16, bfloat16, float32 or float64, got ", x.scalar_type());
  }
}

at::ScalarType stat_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A dense tensor shaped like `like` whose axes lie in memory in `like`'s axis order, exactly as
// temporal_kernels/_layout.py's axis_order() sorts them: expanded (stride-0) axes outermost, then
// by decreasing stride, ties keeping the logical order (the fakes in ops.py use _layout).
at::Tensor empty_in_axis_order(const at::Tensor& like) {
  const int64_t nd = like.dim();
  std::vector<int64_t> order(nd);
  std::iota(order.begin(), order.end(), 0);
  const auto strides = like.strides();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const bool a_real = strides[a] != 0, b_real = strides[b] != 0;
    return a_real != b_real ? !a_real : strides[a] > strides[b];
  });
  std::vector<int64_t> physical(nd), inverse(nd);
  for (int64_t pos = 0; pos < nd; ++pos) {
    physical[pos] = like.size(order[pos]);
    inverse[order[pos]] = pos;
  }
  return at::empty(physical, like.options()).permute(inverse);
}

at::Tensor lse_like(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(3), q.size(1), q.size(2)}, q.options().dtype(stat_dtype(q)));
}

// The kernels need a unit head-dim stride; any other is copied once (SPEC §1).
at::Tensor unit_last(const at::Tensor& x) {
  return (x.size(-1) <= 1 || x.stride(-1) == 1) ? x : x.contiguous();
}

void set_strides(int64_t (&dst)[5], const at::Tensor& x) {
  for (int i = 0; i < 5; ++i) dst[i] = x.stride(i);
}

bool aligned16(const at::Tensor& x) {
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return false;
  const int64_t elem = x.element_size();
  for (int i = 0; i < 4; ++i) {
    if (x.size(i) > 1 && (x.stride(i) * elem) % 16 != 0) return false;
  }
  return true;
}

void check_video(const char* name, const at::Tensor& x, const at::Tensor& q) {
  TORCH_CHECK(x.is_cuda(), name, ": expected a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == 5, name, ": expected a rank-5 tensor [B, T, N, H, D], got shape ", x.sizes());
  TORCH_CHECK(x.sizes() == q.sizes(), name, ": expected shape ", q.sizes(), " (from q), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == q.scalar_type(), name, ": expected dtype ", q.scalar_type(), " (from q), got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == q.device(), name, ": expected device ", q.device(), " (from q), got ", x.device());
}

// Common part of every launch: shapes, masks, checks. frame_lens becomes int64 on the device.
AttnParams base_params(const at::Tensor& q, const std::optional<at::Tensor>& frame_lens, bool causal, double scale,
                       at::Tensor& frame_lens_i64) {
  check_video("q", q, q);
  dtype_of(q);
  TORCH_CHECK(q.size(4) <= kMaxHeadDim, "q: the cuda backend supports head dims D <= ", kMaxHeadDim, ", got D=",
              q.size(4));
  AttnParams p;
  p.B = q.size(0);
  p.T = q.size(1);
  p.N = q.size(2);
  p.H = q.size(3);
  p.D = q.size(4);
  TORCH_CHECK(p.T < (int64_t(1) << 30), "q: the cuda backend supports T < 2^30 frames, got T=", p.T);
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
  return p;
}

void* current_stream(const at::Tensor& q) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
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
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  set_strides(p.q_stride, q);
  set_strides(p.k_stride, k);
  set_strides(p.v_stride, v);
  set_strides(p.out_stride, out);
  p.vec16 = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
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
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.dout = dout.data_ptr();
  p.lse = lse.data_ptr();
  p.delta = delta.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  set_strides(p.q_stride, q);
  set_strides(p.k_stride, k);
  set_strides(p.v_stride, v);
  set_strides(p.out_stride, out);
  set_strides(p.dout_stride, dout);
  set_strides(p.dq_stride, dq);
  set_strides(p.dk_stride, dk);
  set_strides(p.dv_stride, dv);
  p.vec16 = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out) && aligned16(dout) && aligned16(dq) &&
            aligned16(dk) && aligned16(dv);
  temporal_attn_bwd(p, dtype_of(q), current_stream(q));
}

void check_packed(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 6 && qkv.size(3) == 3, "qkv: expected shape [B, T, N, 3, H, D], got ", qkv.sizes());
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
