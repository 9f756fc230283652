// Launchers of the tensor-core flash forward and backward (flash_tc.cuh; the forward's Hopper
// variant flash_wgmma.cuh), called first by the launchers of temporal_attn.cu and spatial_attn.cu:
// dtype and instantiation dispatch, shared memory opt-in past 48 KiB, current stream (the caller
// holds the device guard), launch check. TEMPORAL_KERNELS_CUDA_TC=0 turns both off (the scalar
// kernels then run every pass), TEMPORAL_KERNELS_CUDA_WGMMA=0 the Hopper forward (mma.sync then
// runs it; =1 / =2: one / two warpgroups per block), for A/B runs and as fallbacks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "flash_wgmma.cuh"

namespace temporal_kernels {
namespace {

bool tc_enabled() {
  const char* env = std::getenv("TEMPORAL_KERNELS_CUDA_TC");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

// Warpgroups per block of the wgmma forward: 0 (off), 1 or 2. Joint attention takes one: its long
// sequences fill the H100 with 64-row blocks, and 128-row ones measured 1.13x (frame-causal 1.13x)
// slower at (2,8,196,12) (benchmarks/results/h100/logs/time_cuda_fwd_fcfa8ee.log); so do
// sequences of at most 64 tokens (two would leave half of every block's rows empty: T = 64 ran
// 1.40x Triton's time, logs/bench_1f8ec76.log); longer spatial and temporal ones take two (1.09x /
// 1.10x faster at N = 196 / T = 256). TEMPORAL_KERNELS_CUDA_WGMMA=0, 1
// or 2 forces it (A/B runs). The sm_90a kernels run on devices of compute capability 9.0 exactly
// (their code is arch-specific).
int wgmma_warpgroups(const SpatialParams& p) {
  if (!detail::kWgmmaBuilt) return 0;
  const char* env = std::getenv("TEMPORAL_KERNELS_CUDA_WGMMA");
  if (env != nullptr && std::strcmp(env, "0") == 0) return 0;
  int dev = 0, major = 0, minor = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major != 9 || minor != 0) return 0;
  if (env != nullptr && (std::strcmp(env, "1") == 0 || std::strcmp(env, "2") == 0)) return env[0] - '0';
  return p.mode == SeqMode::kJoint || detail::seq_len(p) <= detail::kWgRows ? 1 : 2;
}

template <typename T>
bool launch_fwd(const SpatialParams& p, cudaStream_t stream) {
  if (!detail::flash_tc_applies<T>(p) || !tc_enabled()) return false;
  if constexpr (detail::kTcDtype<T>) {
    detail::TcLaunch l = detail::tc_launch(p);
    if (l.grid == 0) return true;
    const int wgs = detail::wg_applies(l) ? wgmma_warpgroups(p) : 0;
    if (wgs > 0) l = detail::wg_launch(l, p, wgs);
    const detail::TcKernel<T> kernel = wgs > 0 ? detail::wg_kernel<T>(l) : detail::tc_kernel<T>(l);
    if (l.smem > 48 * 1024) {
      C10_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(l.smem)));
    }
    kernel<<<static_cast<unsigned>(l.grid), l.warps * 32, l.smem, stream>>>(p, l.nblk, l.stages);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return true;
}

template <typename T>
bool launch_bwd(const SpatialParams& p, cudaStream_t stream) {
  if (!detail::flash_tc_bwd_applies<T>(p) || !tc_enabled()) return false;
  if constexpr (detail::kTcDtype<T>) {
    const detail::TcBwdLaunch l = detail::tc_bwd_launch<T>(p);
    if (l.grid == 0) return true;
    // dQ first: it writes the delta scratch that the dK/dV kernel reads (same stream, in order).
    const std::pair<detail::TcKernel<void>, size_t> kernels[2] = {{l.dq, l.smem_dq}, {l.dkdv, l.smem_dkdv}};
    for (const auto& [kernel, smem] : kernels) {
      if (kernel == nullptr) continue;  // the fused temporal kernel is one launch
      if (smem > 48 * 1024) {
        C10_CUDA_CHECK(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      }
      kernel<<<static_cast<unsigned>(l.grid), l.warps * 32, smem, stream>>>(p, l.nblk, l.stages);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return true;
}

}  // namespace

bool flash_tc_bwd(const SpatialParams& p, DType dtype, void* stream) {
  bool launched = false;
  detail::dispatch_dtype(dtype, [&](auto tag) {
    launched = launch_bwd<typename decltype(tag)::type>(p, static_cast<cudaStream_t>(stream));
  });
  return launched;
}

bool flash_tc_fwd(const SpatialParams& p, DType dtype, void* stream) {
  bool launched = false;
  detail::dispatch_dtype(dtype, [&](auto tag) {
    launched = launch_fwd<typename decltype(tag)::type>(p, static_cast<cudaStream_t>(stream));
  });
  return launched;
}

}  // namespace temporal_kernels
