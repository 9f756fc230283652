// Launchers of the temporal attention kernels (temporal_attn.cuh): dtype dispatch, launch shape,
// current stream (the caller holds the device guard), launch check.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>

#include "temporal_attn.cuh"

namespace temporal_kernels {
namespace {

template <typename T>
void launch_fwd(const AttnParams& p, cudaStream_t stream) {
  const detail::Launch l = detail::fwd_launch<T>(p);
  detail::temporal_fwd_kernel<T><<<static_cast<unsigned>(l.grid), detail::kThreads, l.smem, stream>>>(p, l.sh);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bwd(const AttnParams& p, cudaStream_t stream) {
  const detail::Launch l = detail::bwd_launch<T>(p);
  detail::temporal_bwd_kernel<T><<<static_cast<unsigned>(l.grid), detail::kThreads, l.smem, stream>>>(p, l.sh);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void temporal_attn_fwd(const AttnParams& p, DType dtype, void* stream) {
  if (p.B * p.N * p.H * p.T == 0) return;
  // 16-bit aligned inputs: the tensor-core forward, one (b, n, h) sequence of T frames each.
  SpatialParams sp;
  static_cast<AttnParams&>(sp) = p;
  sp.mode = SeqMode::kTemporal;
  if (flash_tc_fwd(sp, dtype, stream)) return;
  auto s = static_cast<cudaStream_t>(stream);
  detail::dispatch_dtype(dtype, [&](auto tag) { launch_fwd<typename decltype(tag)::type>(p, s); });
}

void temporal_attn_bwd(const AttnParams& p, DType dtype, void* stream) {
  if (p.B * p.N * p.H * p.T == 0) return;
  SpatialParams sp;
  static_cast<AttnParams&>(sp) = p;
  sp.mode = SeqMode::kTemporal;
  if (flash_tc_bwd(sp, dtype, stream)) return;
  auto s = static_cast<cudaStream_t>(stream);
  detail::dispatch_dtype(dtype, [&](auto tag) { launch_bwd<typename decltype(tag)::type>(p, s); });
}

}  // namespace temporal_kernels
