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

#include <algorithm>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

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
void launch_bwd(const SpatialParams& p, cudaStream_t stream) {
  const int64_t dgrid = detail::delta_grid(p);
  if (dgrid > 0) {
    detail::spatial_delta_kernel<T><<<static_cast<unsigned>(dgrid), detail::kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const detail::SpatialLaunch lkv = detail::spatial_dkdv_launch<T>(p);
  if (lkv.grid > 0) {
    detail::spatial_bwd_dkdv_kernel<T>
        <<<static_cast<unsigned>(lkv.grid), detail::kThreads, lkv.smem, stream>>>(p, lkv.sh, lkv.nblk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const detail::SpatialLaunch lq = detail::spatial_fwd_launch<T>(p);
  if (lq.grid > 0) {
    detail::spatial_bwd_dq_kernel<T>
        <<<static_cast<unsigned>(lq.grid), detail::kThreads, lq.smem, stream>>>(p, lq.sh, lq.nblk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t sgrid = detail::cls_sum_grid(p);
  if (p.has_cls && sgrid > 0) {
    detail::spatial_cls_sum_kernel<T><<<static_cast<unsigned>(sgrid), detail::kThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void spatial_attn_fwd(const SpatialParams& p, DType dtype, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat16: launch_fwd<__half>(p, s); break;
    case DType::kBFloat16: launch_fwd<__nv_bfloat16>(p, s); break;
    case DType::kFloat32: launch_fwd<float>(p, s); break;
    case DType::kFloat64: launch_fwd<double>(p, s); break;
  }
}

void spatial_attn_bwd(const SpatialParams& p, DType dtype, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat16: launch_bwd<__half>(p, s); break;
    case DType::kBFloat16: launch_bwd<__nv_bfloat16>(p, s); break;
    case DType::kFloat32: launch_bwd<float>(p, s); break;
    case DType::kFloat64: launch_bwd<double>(p, s); break;
  }
}

namespace {

// ---------------------------------------------------------------------------------------------
// op implementations

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

// Axes of `like` from outermost to innermost in memory, as temporal_kernels/_layout.py's
// axis_order() sorts them: expanded (stride-0) axes outermost, then by decreasing stride, ties
// keeping the logical order.
std::vector<int64_t> axis_order(const at::Tensor& like) {
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
at::Tensor empty_in_order(at::IntArrayRef sizes, const std::vector<int64_t>& order, const at::TensorOptions& opts) {
  const int64_t nd = static_cast<int64_t>(order.size());
  std::vector<int64_t> physical(nd), inverse(nd);
  for (int64_t pos = 0; pos < nd; ++pos) {
    physical[pos] = sizes[order[pos]];
    inverse[order[pos]] = pos;
  }
  return at::empty(physical, opts).permute(inverse);
}

at::Tensor empty_in_axis_order(const at::Tensor& like) {
  return empty_in_order(like.sizes(), axis_order(like), like.options());
}

// _layout.empty_like_cls_out: [B, T, H, D], its axes in the order of q's (b, t, h, d).
at::Tensor empty_like_cls_out(const at::Tensor& q) {
  std::vector<int64_t> order4;
  for (int64_t a : axis_order(q)) {
    if (a != kN) order4.push_back(a < kN ? a : a - 1);
  }
  return empty_in_order({q.size(0), q.size(1), q.size(3), q.size(4)}, order4, q.options());
}

at::Tensor lse_like(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(3), q.size(1), q.size(2)}, q.options().dtype(stat_dtype(q)));
}

// The kernels need a unit head-dim stride; any other is copied once (SPEC §1).
at::Tensor unit_last(const at::Tensor& x) {
  return (x.size(-1) <= 1 || x.stride(-1) == 1) ? x : x.contiguous();
}

template <int K>
void set_strides(int64_t (&dst)[K], const at::Tensor& x) {
  for (int i = 0; i < K; ++i) dst[i] = x.stride(i);
}

bool aligned16(const at::Tensor& x) {
  if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return false;
  const int64_t elem = x.element_size();
  for (int i = 0; i + 1 < x.dim(); ++i) {
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

void check_packed(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 6 && qkv.size(3) == 3, "qkv: expected shape [B, T, N, 3, H, D], got ", qkv.sizes());
}

void check_cls_packed(const std::optional<at::Tensor>& cls_qkv) {
  TORCH_CHECK(!cls_qkv.has_value() || (cls_qkv->dim() == 4 && cls_qkv->size(1) == 3),
              "cls_qkv: expected shape [B, 3, H, D], got ", cls_qkv.has_value() ? cls_qkv->sizes() : at::IntArrayRef());
}

void* current_stream(const at::Tensor& q) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
}

// Shapes, mode and masks of one launch. frame_lens becomes int64 on the device.
SpatialParams base_params(SeqMode mode, const at::Tensor& q, const std::optional<at::Tensor>& frame_lens, bool causal,
                          double scale, at::Tensor& frame_lens_i64) {
  check_video("q", q, q);
  dtype_of(q);
  TORCH_CHECK(q.size(4) <= kMaxHeadDim, "q: the cuda backend supports head dims D <= ", kMaxHeadDim, ", got D=",
              q.size(4));
  SpatialParams p;
  p.mode = mode;
  p.B = q.size(0);
  p.T = q.size(1);
  p.N = q.size(2);
  p.H = q.size(3);
  p.D = q.size(4);
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

// Forward into preallocated out, lse (and cls_out, lse_cls); every element written.
void run_fwd(SpatialParams& p, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
             const std::optional<Cls>& cls, const at::Tensor& out, const at::Tensor& cls_out, const at::Tensor& lse,
             const at::Tensor& lse_cls) {
  check_video("k", k_in, q_in);
  check_video("v", v_in, q_in);
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
  p.has_cls = cls.has_value();
  if (p.has_cls) {
    p.q_cls = cls->q.data_ptr();
    p.k_cls = cls->k.data_ptr();
    p.v_cls = cls->v.data_ptr();
    set_strides(p.q_cls_stride, cls->q);
    set_strides(p.k_cls_stride, cls->k);
    set_strides(p.v_cls_stride, cls->v);
    p.cls_out = cls_out.data_ptr();
    set_strides(p.cls_out_stride, cls_out);
    p.lse_cls = lse_cls.data_ptr();
    p.vec16 = p.vec16 && aligned16(cls->q) && aligned16(cls->k) && aligned16(cls->v) && aligned16(cls_out);
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
    p.q_cls = cls->q.data_ptr();
    p.k_cls = cls->k.data_ptr();
    p.v_cls = cls->v.data_ptr();
    set_strides(p.q_cls_stride, cls->q);
    set_strides(p.k_cls_stride, cls->k);
    set_strides(p.v_cls_stride, cls->v);
    p.cls_out = cls_out.data_ptr();
    p.dcls_out = dcls_out.data_ptr();
    set_strides(p.cls_out_stride, cls_out);
    set_strides(p.dcls_out_stride, dcls_out);
    p.lse_cls = lse_cls->data_ptr();
    p.delta_cls = delta_cls.data_ptr();
    p.dq_cls_part = parts[0].data_ptr();
    p.dk_cls_part = parts[1].data_ptr();
    p.dv_cls_part = parts[2].data_ptr();
    p.dq_cls = dcls[0].data_ptr();
    p.dk_cls = dcls[1].data_ptr();
    p.dv_cls = dcls[2].data_ptr();
    set_strides(p.dq_cls_stride, dcls[0]);
    set_strides(p.dk_cls_stride, dcls[1]);
    set_strides(p.dv_cls_stride, dcls[2]);
    p.vec16 = p.vec16 && aligned16(cls->q) && aligned16(cls->k) && aligned16(cls->v) && aligned16(cls_out) &&
              aligned16(dcls_out);
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
