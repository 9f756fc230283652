// Launch parameters shared by every CUDA kernel of temporal_kernels (the C++ mirror of the
// Triton launchers' argument lists).
//
// Strides are per axis in the order (b, t, n, h, d) for every tensor, in elements, so a kernel
// reads any layout of SPEC §1 directly (packed frame-major or patch-major views, separate
// tensors). The head-dim stride is 1 (ops.cpp copies once otherwise), but it is kept for the
// convention. lse (and the backward's delta scratch) are contiguous [B, H, T, N].
//
// This header is plain C++ plus <cstdint>: it is included by ops.cpp (host compiler) and by the
// .cu files (nvcc), and pulls in no torch header so the .cu files stay cheap to compile.
#pragma once

#include <cstdint>

namespace temporal_kernels {

enum Axis : int { kB = 0, kT = 1, kN = 2, kH = 3, kD = 4 };

// The input dtype; the compute (softmax) dtype is float, double for kFloat64.
enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

struct AttnParams {
  // Inputs of the forward pass.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  // Forward: written. Backward: read (delta = rowsum(dout * out)).
  void* out = nullptr;
  // [B, H, T, N], float32 (float64 for double inputs). Forward: written. Backward: read.
  void* lse = nullptr;
  // Backward only.
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  // [B, H, T, N] scratch of the compute dtype: delta = rowsum(dout * out) per query row.
  void* delta = nullptr;

  int64_t q_stride[5] = {};
  int64_t k_stride[5] = {};
  int64_t v_stride[5] = {};
  int64_t out_stride[5] = {};
  int64_t dout_stride[5] = {};
  int64_t dq_stride[5] = {};
  int64_t dk_stride[5] = {};
  int64_t dv_stride[5] = {};

  int64_t B = 0, T = 0, N = 0, H = 0, D = 0;
  double scale = 1.0;  // multiplies the logits
  bool causal = false;
  // [B] int64 on the device, 0 <= frame_lens[b] <= T; nullptr: every frame is valid.
  const int64_t* frame_lens = nullptr;
  // Every row start of every tensor is 16-byte aligned: the kernels use 16-byte vector loads.
  bool vec16 = false;
};

// Implemented in temporal_attn.cu; launched on `stream` (a cudaStream_t), which the caller
// takes from the current stream under a device guard.
void temporal_attn_fwd(const AttnParams& p, DType dtype, void* stream);
void temporal_attn_bwd(const AttnParams& p, DType dtype, void* stream);

}  // namespace temporal_kernels
