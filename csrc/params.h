// Launch parameters shared by every CUDA kernel of temporal_kernels (the C++ mirror of the
// Triton launchers' argument lists).
//
// Strides are per axis in the order (b, t, n, h, d) for every tensor, in elements, so a kernel
// reads any layout of SPEC §1 directly (packed frame-major or patch-major views, separate
// tensors). The head-dim stride is 1 (op_utils.h copies once otherwise), but it is kept for the
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
  // Forward: written. Backward: not read (the kernels sum delta = rowsum(P * dP) instead).
  void* out = nullptr;
  // [B, H, T, N], float32 (float64 for double inputs). Forward: written. Backward: read.
  void* lse = nullptr;
  // Backward only.
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  // [B, H, T, N] scratch of the compute dtype: delta = rowsum(P * dP) per query row, written by
  // the backward's query-row part (temporal part A, spatial/joint dQ pass) and read by its dK/dV part.
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

// Token sequences of the flash-style kernels (spatial_attn.cuh).
enum class SeqMode : int {
  kSpatial = 0,  // one sequence per (b, t, h): the N patches of frame t (+ the CLS token)
  kJoint = 1,    // one sequence per (b, h): all T*N tokens, token i = (frame i / N, patch i % N)
  kTemporal = 2,  // one sequence per (b, n, h): the T frames of patch n (flash_tc.cuh's forward only)
};

// Spatial and joint attention. The AttnParams part holds the patch tensors as above (causal and
// frame_lens apply to joint only). The CLS token (spatial only) is one extra key and query per
// frame, read from its own [B, H, D] tensors; its per-frame outputs and statistics live in the
// cls_* buffers below.
struct SpatialParams : AttnParams {
  SeqMode mode = SeqMode::kSpatial;
  bool has_cls = false;
  // [B, H, D] inputs, strides (b, h, d).
  const void* q_cls = nullptr;
  const void* k_cls = nullptr;
  const void* v_cls = nullptr;
  int64_t q_cls_stride[3] = {};
  int64_t k_cls_stride[3] = {};
  int64_t v_cls_stride[3] = {};
  // [B, T, H, D] per-frame CLS output (forward: written; backward: not read) and its gradient,
  // strides (b, t, h, d).
  void* cls_out = nullptr;
  const void* dcls_out = nullptr;
  int64_t cls_out_stride[4] = {};
  int64_t dcls_out_stride[4] = {};
  // [B, H, T] contiguous, of the compute dtype: the CLS rows' lse and (backward scratch) delta.
  void* lse_cls = nullptr;
  void* delta_cls = nullptr;
  // Backward scratch: per-frame partial CLS gradients, [B, T, H, D] contiguous, compute dtype.
  void* dq_cls_part = nullptr;
  void* dk_cls_part = nullptr;
  void* dv_cls_part = nullptr;
  // Backward outputs: the CLS gradients summed over frames, [B, H, D], strides (b, h, d).
  void* dq_cls = nullptr;
  void* dk_cls = nullptr;
  void* dv_cls = nullptr;
  int64_t dq_cls_stride[3] = {};
  int64_t dk_cls_stride[3] = {};
  int64_t dv_cls_stride[3] = {};
};

// Implemented in temporal_attn.cu and spatial_attn.cu; launched on `stream` (a cudaStream_t),
// which the caller takes from the current stream under a device guard.
void temporal_attn_fwd(const AttnParams& p, DType dtype, void* stream);
void temporal_attn_bwd(const AttnParams& p, DType dtype, void* stream);
void spatial_attn_fwd(const SpatialParams& p, DType dtype, void* stream);
void spatial_attn_bwd(const SpatialParams& p, DType dtype, void* stream);
// The tensor-core forward of flash_tc.cuh for any SeqMode. Returns false, launching nothing,
// where it does not apply (see flash_tc_applies); the caller then runs its own forward kernel.
bool flash_tc_fwd(const SpatialParams& p, DType dtype, void* stream);
// Its backward (head dims up to 64): dQ and delta, then dK/dV (the caller still sums the CLS
// partial gradients). Returns false, launching nothing, where it does not apply.
bool flash_tc_bwd(const SpatialParams& p, DType dtype, void* stream);

}  // namespace temporal_kernels
