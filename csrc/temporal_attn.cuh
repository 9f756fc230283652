// Temporal attention (SPEC §2): for every (b, n, h), softmax attention over the T frames.
//
// One kernel family serves every T. A "team" of S * R threads owns one (b, n, h) group:
// S lanes split the head dim into 8-element chunks (16-byte vector loads for half/bf16) and R
// rows of lanes handle R query (or key) frames at a time. Several teams share a block when T
// is short (the memory-bound TimeSformer case, T = 8..32), so a 256-thread block moves several
// groups at once. Tiles of KT frames (K/V in the forward pass and the backward's part A, Q/dO in
// part B) are staged in shared memory in the input dtype and read back with broadcasts. Dot
// products over the head dim are reduced over the S lanes with xor shuffles, so every lane holds
// the full score.
//
// Softmax runs in fp32 (fp64 for double) with a running max (online softmax), in base 2 with
// log2(e) folded into the scale. lse is stored in natural-log units, -inf for a query row that
// sees no key (the Triton backend's convention). In temporal attention those rows are exactly
// the padded frames, which output exactly 0 and which the backward pass never visits (as queries
// or as keys), so no recomputed probability ever meets a -inf lse.
//
// The backward pass is one kernel per launch, without atomics: part A walks the query rows
// (delta, dQ), part B the key rows (dK, dV), recomputing P from lse. delta = rowsum(P * dP) is
// summed in the accumulation dtype from the same dP values part B uses, not rowsum(dO * O) from
// the stored output: in 16-bit, O's rounding does not cancel against dP's, and dP - delta is a
// difference of near-equal terms whenever the values are alike (a T=2, D=1 float16 draw lost a
// factor of 30 against PyTorch's float16 math that way). dQ is accumulated in the same key loop
// as scale * (sum_j P dP k_j - delta * sum_j P k_j), so out is never read (11 passes of memory,
// SPEC §5). delta reaches part B through a [B, H, T, N] scratch buffer, published by the block
// barrier between the parts.
//
// Kernels and launch shapes live in this header, included by temporal_attn.cu; the CPU CI also
// compiles it with a host emulation of the few CUDA built-ins it uses (tests/csrc_emu/, one fiber
// per CUDA thread), which runs the kernels on small problems against the reference.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>

#include "params.h"

namespace temporal_kernels {
namespace detail {

constexpr int kChunk = 8;            // head-dim elements per lane
constexpr int kThreads = 256;        // threads per block
constexpr int kSmemBudget = 48 * 1024;  // dynamic shared memory per block (no opt-in needed)
constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

#ifdef __CUDACC__
// Dynamic shared memory of the block (a function, so a host emulation can supply its own).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}
#endif

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename T>
__device__ __forceinline__ T from_acc(float x);
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <typename T>
__device__ __forceinline__ T from_acc(double x) { return static_cast<T>(x); }

// Host: calls f(DTypeTag<T>()) with the element type T of dtype (the launchers' dtype dispatch).
template <typename T>
struct DTypeTag {
  using type = T;
};

template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: f(DTypeTag<__half>()); break;
    case DType::kBFloat16: f(DTypeTag<__nv_bfloat16>()); break;
    case DType::kFloat32: f(DTypeTag<float>()); break;
    case DType::kFloat64: f(DTypeTag<double>()); break;
  }
}

template <typename A>
__device__ __forceinline__ A inf() {
  return static_cast<A>(INFINITY);
}

__device__ __forceinline__ float exp2_(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_(double x) { return exp2(x); }
__device__ __forceinline__ float log2_(float x) { return log2f(x); }
__device__ __forceinline__ double log2_(double x) { return log2(x); }

// 16-byte words per chunk, elements per word.
template <typename T>
struct ChunkWords {
  static constexpr int kPer = 16 / sizeof(T);
  static constexpr int kWords = kChunk / kPer;
};

// Reads one chunk (n_valid <= kChunk elements, the rest read as 0) from global memory.
template <typename T, typename A>
__device__ __forceinline__ void load_chunk(const T* ptr, int n_valid, bool vec, A (&x)[kChunk]) {
  if (vec && n_valid == kChunk) {
    constexpr int kPer = ChunkWords<T>::kPer;
#pragma unroll
    for (int w = 0; w < ChunkWords<T>::kWords; ++w) {
      const uint4 raw = *reinterpret_cast<const uint4*>(ptr + w * kPer);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer; ++i) x[w * kPer + i] = to_acc(e[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) x[i] = i < n_valid ? to_acc(ptr[i]) : A(0);
  }
}

// Writes the first n_valid elements of one chunk to global memory.
template <typename T, typename A>
__device__ __forceinline__ void store_chunk(T* ptr, int n_valid, bool vec, const A (&x)[kChunk]) {
  if (vec && n_valid == kChunk) {
    constexpr int kPer = ChunkWords<T>::kPer;
#pragma unroll
    for (int w = 0; w < ChunkWords<T>::kWords; ++w) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer; ++i) e[i] = from_acc<T>(x[w * kPer + i]);
      *reinterpret_cast<uint4*>(ptr + w * kPer) = raw;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      if (i < n_valid) ptr[i] = from_acc<T>(x[i]);
    }
  }
}

// Copies one chunk global -> shared memory in the input dtype, zero-filling past n_valid so the
// dot products over padded lanes add 0.
template <typename T>
__device__ __forceinline__ void stage_chunk(T* dst, const T* src, int n_valid, bool vec) {
  if (vec && n_valid == kChunk) {
#pragma unroll
    for (int w = 0; w < ChunkWords<T>::kWords; ++w) {
      reinterpret_cast<uint4*>(dst)[w] = reinterpret_cast<const uint4*>(src)[w];
    }
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) dst[i] = i < n_valid ? src[i] : from_acc<T>(typename Acc<T>::type(0));
  }
}

// Reads one chunk from shared memory (always 16-byte aligned: rows are S * kChunk elements).
template <typename T, typename A>
__device__ __forceinline__ void smem_chunk(const T* src, A (&x)[kChunk]) {
  constexpr int kPer = ChunkWords<T>::kPer;
#pragma unroll
  for (int w = 0; w < ChunkWords<T>::kWords; ++w) {
    const uint4 raw = reinterpret_cast<const uint4*>(src)[w];
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kPer; ++i) x[w * kPer + i] = to_acc(e[i]);
  }
}

template <typename A>
__device__ __forceinline__ void zero_chunk(A (&x)[kChunk]) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) x[i] = A(0);
}

template <typename A>
__device__ __forceinline__ void scale_chunk(A (&x)[kChunk], A scale) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) x[i] *= scale;
}

template <typename A>
__device__ __forceinline__ A dot_chunk(const A (&a)[kChunk], const A (&b)[kChunk]) {
  A s = A(0);
#pragma unroll
  for (int i = 0; i < kChunk; ++i) s += a[i] * b[i];
  return s;
}

// Sum over the S lanes of one row (S a power of two <= 32, lanes aligned to S in the warp).
template <typename A>
__device__ __forceinline__ A row_sum(A x, int S, unsigned mask) {
  for (int off = S >> 1; off > 0; off >>= 1) x += __shfl_xor_sync(mask, x, off);
  return x;
}

// Elements of chunk c that lie inside the head dim D.
__device__ __forceinline__ int chunk_valid(int64_t D, int c) {
  return static_cast<int>(max(int64_t(0), min(int64_t(kChunk), D - int64_t(c) * kChunk)));
}

// Team shape of one launch (see the file comment); chosen on the host by team_shape().
struct Shape {
  int S;          // lanes per row (power of two, S * kChunk >= D)
  int R;          // rows per team (power of two)
  int team;       // S * R threads
  int gpb;        // teams (groups) per block
  int KT;         // frames per shared-memory tile
  int64_t team_bytes;  // shared memory per team, a multiple of 16 (tiles are read as 16-byte words)
};

// Per-thread coordinates inside the block.
struct Lane {
  int team, r, s, d0, n_valid;
  unsigned mask;
};

__device__ __forceinline__ Lane lane_of(const Shape& sh, int64_t D) {
  Lane l;
  const int tid = threadIdx.x;
  l.team = tid / sh.team;
  const int in_team = tid % sh.team;
  l.r = in_team / sh.S;
  l.s = in_team % sh.S;
  l.d0 = l.s * kChunk;
  l.n_valid = chunk_valid(D, l.s);
  const int lane = tid & 31;
  l.mask = sh.S == 32 ? 0xffffffffu : (((1u << sh.S) - 1u) << (lane & ~(sh.S - 1)));
  return l;
}

// Inner steps of the kernels (temporal and spatial_attn.cuh's), one key (or query) row at a time,
// its rows staged in shared memory at this lane's chunk. Scores are in base 2; the S lanes of a
// row reduce their dot products with row_sum, so every lane holds the same score.

// Forward: folds key row (k_row, v_row) into the online softmax of query row qv (pre-scaled):
// running max m, running sum l, unnormalized output acc.
template <typename T, typename A>
__device__ __forceinline__ void softmax_step(const A (&qv)[kChunk], const T* k_row, const T* v_row, const Shape& sh,
                                             const Lane& ln, A& m, A& l, A (&acc)[kChunk]) {
  A kc[kChunk];
  smem_chunk(k_row, kc);
  const A sc = row_sum(dot_chunk(qv, kc), sh.S, ln.mask);
  if (sc > m) {  // uniform over the row's lanes: they hold the same score
    const A corr = exp2_(m - sc);
    l *= corr;
#pragma unroll
    for (int i = 0; i < kChunk; ++i) acc[i] *= corr;
    m = sc;
  }
  const A pr = exp2_(sc - m);
  l += pr;
  A vc[kChunk];
  smem_chunk(v_row, vc);
#pragma unroll
  for (int i = 0; i < kChunk; ++i) acc[i] += pr * vc[i];
}

// dQ without delta: adds P dP k and P k of key row (k_row, v_row) to acc_pdk and acc_pk, and P dP
// to dlt, for query row qv (pre-scaled), dov, with the row's lse2 (base 2). dQ / scale is then
// acc_pdk - dlt * acc_pk.
template <typename T, typename A>
__device__ __forceinline__ void dq_delta_step(const A (&qv)[kChunk], const A (&dov)[kChunk], A lse2, const T* k_row,
                                              const T* v_row, const Shape& sh, const Lane& ln, A (&acc_pdk)[kChunk],
                                              A (&acc_pk)[kChunk], A& dlt) {
  A kc[kChunk], vc[kChunk];
  smem_chunk(k_row, kc);
  smem_chunk(v_row, vc);
  const A sc = row_sum(dot_chunk(qv, kc), sh.S, ln.mask);
  const A dp = row_sum(dot_chunk(dov, vc), sh.S, ln.mask);
  const A pr = exp2_(sc - lse2);
  const A pdp = pr * dp;
  dlt += pdp;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    acc_pdk[i] += pdp * kc[i];
    acc_pk[i] += pr * kc[i];
  }
}

// dK, dV: adds P * dO and dS * q of query row (q_row, do_row), with its lse2 (base 2) and delta,
// to the accumulators of key row (k_row, v_row). kScoreScaled: the score is k_row . q times
// qk_scale (k_row not pre-scaled); else k_row . q.
template <bool kScoreScaled, typename T, typename A>
__device__ __forceinline__ void dkdv_step(const A (&k_row)[kChunk], const A (&v_row)[kChunk], A qk_scale,
                                          const T* q_row, const T* do_row, A lse2, A dlt, const Shape& sh,
                                          const Lane& ln, A (&dk_acc)[kChunk], A (&dv_acc)[kChunk]) {
  A qc[kChunk], doc[kChunk];
  smem_chunk(q_row, qc);
  smem_chunk(do_row, doc);
  A sc = row_sum(dot_chunk(qc, k_row), sh.S, ln.mask);
  if constexpr (kScoreScaled) sc = sc * qk_scale;
  const A dp = row_sum(dot_chunk(doc, v_row), sh.S, ln.mask);
  const A pr = exp2_(sc - lse2);
  const A ds = pr * (dp - dlt);
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    dv_acc[i] += pr * doc[i];
    dk_acc[i] += ds * qc[i];
  }
}

// Valid frames of batch b, clamped to [0, T] (the public API validates the values; a direct op
// call with bad ones then reads nothing out of bounds).
__device__ __forceinline__ int frames_of(const AttnParams& p, int64_t b) {
  if (p.frame_lens == nullptr) return static_cast<int>(p.T);
  return static_cast<int>(min(max(p.frame_lens[b], int64_t(0)), p.T));
}

// The (b, n, h) group g of a team; an inactive team (g past the last group) reads group 0 and
// sees no frame.
struct Group {
  bool active;
  int64_t b, n, h;
  int len;  // valid frames
};

__device__ __forceinline__ Group group_of(const AttnParams& p, int64_t g) {
  Group r;
  r.active = g < p.B * p.N * p.H;
  r.h = r.active ? g % p.H : 0;
  r.n = r.active ? (g / p.H) % p.N : 0;
  r.b = r.active ? g / (p.H * p.N) : 0;
  r.len = !r.active ? 0 : frames_of(p, r.b);
  return r;
}

// Element offset of the (b, n, h) group in a tensor with (b, t, n, h, d) strides.
__device__ __forceinline__ int64_t group_offset(const int64_t (&st)[5], int64_t b, int64_t n, int64_t h) {
  return b * st[kB] + n * st[kN] + h * st[kH];
}

// Stages frames [j0, j0 + rows) of two (b, n, h) groups x, y (strides xs, ys) into [KT, S*8]
// tiles (all threads of the team).
template <typename T>
__device__ __forceinline__ void stage_frames(T* x_tile, const T* x, const int64_t (&xs)[5], T* y_tile, const T* y,
                                             const int64_t (&ys)[5], int j0, int rows, const Shape& sh,
                                             const Lane& ln, int64_t D, bool vec) {
  const int row_elems = sh.S * kChunk;
  for (int i = ln.r * sh.S + ln.s; i < rows * sh.S; i += sh.team) {
    const int jr = i / sh.S, c = i % sh.S;
    const int nv = chunk_valid(D, c);
    const int j = j0 + jr;
    stage_chunk(x_tile + jr * row_elems + c * kChunk, x + j * xs[kT] + c * kChunk, nv, vec);
    stage_chunk(y_tile + jr * row_elems + c * kChunk, y + j * ys[kT] + c * kChunk, nv, vec);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) temporal_fwd_kernel(const AttnParams p, const Shape sh) {
  using A = typename Acc<T>::type;
  unsigned char* smem_raw = dynamic_smem();
  const Lane ln = lane_of(sh, p.D);
  const int row_elems = sh.S * kChunk;
  T* k_tile = reinterpret_cast<T*>(smem_raw + ln.team * sh.team_bytes);  // [KT, S*8]
  T* v_tile = k_tile + sh.KT * row_elems;                                                            // [KT, S*8]

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  A* lse = static_cast<A*>(p.lse);
  const int T_ = static_cast<int>(p.T);  // frame indices fit in int (ops.cpp checks)
  const int64_t G = p.B * p.N * p.H;
  const A qk_scale = static_cast<A>(p.scale * kLog2e);
  const bool single_tile = T_ <= sh.KT;

  // The loop bounds depend on the block only, so every thread reaches every barrier.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * sh.gpb; base < G;
       base += static_cast<int64_t>(gridDim.x) * sh.gpb) {
    const Group grp = group_of(p, base + ln.team);
    const bool active = grp.active;
    const int64_t b = grp.b, n = grp.n, h = grp.h;
    const int len = grp.len;
    const T* q_g = q + group_offset(p.q_stride, b, n, h);
    const T* k_g = k + group_offset(p.k_stride, b, n, h);
    const T* v_g = v + group_offset(p.v_stride, b, n, h);
    T* out_g = out + group_offset(p.out_stride, b, n, h);
    A* lse_g = lse + (b * p.H + h) * T_ * p.N + n;  // row t at lse_g[t * N]

    for (int t0 = 0; t0 < T_; t0 += sh.R) {
      const int t = t0 + ln.r;
      const bool row = active && t < T_;
      const bool live = row && t < len;  // a padded frame sees no key
      const int kv_end = !live ? 0 : (p.causal ? min(len, t + 1) : len);

      A qv[kChunk];
      if (live) {
        load_chunk(q_g + t * p.q_stride[kT] + ln.d0, ln.n_valid, p.vec16, qv);
        scale_chunk(qv, qk_scale);
      }
      A m = -inf<A>();
      A l = A(0);
      A acc[kChunk];
      zero_chunk(acc);

      for (int j0 = 0; j0 < T_; j0 += sh.KT) {
        const int kt = min(sh.KT, T_ - j0);
        if (!single_tile || t0 == 0) {
          __syncthreads();  // the previous tile is no longer read
          const int rows = max(0, min(kt, len - j0));
          stage_frames(k_tile, k_g, p.k_stride, v_tile, v_g, p.v_stride, j0, rows, sh, ln, p.D, p.vec16);
          __syncthreads();
        }
        const int j_end = min(kv_end, j0 + kt);
        for (int j = j0; j < j_end; ++j) {
          softmax_step(qv, k_tile + (j - j0) * row_elems + ln.d0, v_tile + (j - j0) * row_elems + ln.d0, sh, ln, m, l,
                       acc);
        }
      }

      if (row) {
        const A inv = l > A(0) ? A(1) / l : A(0);
#pragma unroll
        for (int i = 0; i < kChunk; ++i) acc[i] *= inv;
        if (ln.n_valid > 0) store_chunk(out_g + t * p.out_stride[kT] + ln.d0, ln.n_valid, p.vec16, acc);
        if (ln.s == 0) {
          lse_g[t * p.N] = live ? (m + log2_(l)) * static_cast<A>(kLn2) : -inf<A>();
        }
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) temporal_bwd_kernel(const AttnParams p, const Shape sh) {
  using A = typename Acc<T>::type;
  unsigned char* smem_raw = dynamic_smem();
  const Lane ln = lane_of(sh, p.D);
  const int row_elems = sh.S * kChunk;
  // Per team: two [KT, S*8] tiles (part A: K, V; part B: Q, dO) and two [KT] stats (part B:
  // lse in base 2, delta).
  unsigned char* team_smem = smem_raw + ln.team * sh.team_bytes;
  T* x_tile = reinterpret_cast<T*>(team_smem);
  T* y_tile = x_tile + sh.KT * row_elems;
  A* lse2_tile = reinterpret_cast<A*>(y_tile + sh.KT * row_elems);
  A* delta_tile = lse2_tile + sh.KT;

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  T* dq = static_cast<T*>(p.dq);
  T* dk = static_cast<T*>(p.dk);
  T* dv = static_cast<T*>(p.dv);
  const A* lse = static_cast<const A*>(p.lse);
  A* delta = static_cast<A*>(p.delta);
  const int T_ = static_cast<int>(p.T);  // frame indices fit in int (ops.cpp checks)
  const int64_t G = p.B * p.N * p.H;
  const A scale = static_cast<A>(p.scale);
  const A qk_scale = static_cast<A>(p.scale * kLog2e);
  const A log2e = static_cast<A>(kLog2e);
  const bool single_tile = T_ <= sh.KT;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * sh.gpb; base < G;
       base += static_cast<int64_t>(gridDim.x) * sh.gpb) {
    const Group grp = group_of(p, base + ln.team);
    const bool active = grp.active;
    const int64_t b = grp.b, n = grp.n, h = grp.h;
    const int len = grp.len;
    const T* q_g = q + group_offset(p.q_stride, b, n, h);
    const T* k_g = k + group_offset(p.k_stride, b, n, h);
    const T* v_g = v + group_offset(p.v_stride, b, n, h);
    const T* do_g = dout + group_offset(p.dout_stride, b, n, h);
    T* dq_g = dq + group_offset(p.dq_stride, b, n, h);
    T* dk_g = dk + group_offset(p.dk_stride, b, n, h);
    T* dv_g = dv + group_offset(p.dv_stride, b, n, h);
    const int64_t stat0 = (b * p.H + h) * T_ * p.N + n;  // row t at [stat0 + t * N]

    // Part A: query rows -> delta = sum_j P_tj dP_tj, dQ = scale * sum_j dS_tj k_j.
    for (int t0 = 0; t0 < T_; t0 += sh.R) {
      const int t = t0 + ln.r;
      const bool row = active && t < T_;
      const bool live = row && t < len;
      const int kv_end = !live ? 0 : (p.causal ? min(len, t + 1) : len);

      A qv[kChunk], dov[kChunk];
      A dlt = A(0), lse2 = A(0);
      if (live) {
        load_chunk(q_g + t * p.q_stride[kT] + ln.d0, ln.n_valid, p.vec16, qv);
        load_chunk(do_g + t * p.dout_stride[kT] + ln.d0, ln.n_valid, p.vec16, dov);
        scale_chunk(qv, qk_scale);
        lse2 = lse[stat0 + t * p.N] * log2e;
      }
      A acc[kChunk], acc_pk[kChunk];
      zero_chunk(acc);
      zero_chunk(acc_pk);

      for (int j0 = 0; j0 < T_; j0 += sh.KT) {
        const int kt = min(sh.KT, T_ - j0);
        if (!single_tile || t0 == 0) {
          __syncthreads();
          const int rows = max(0, min(kt, len - j0));
          stage_frames(x_tile, k_g, p.k_stride, y_tile, v_g, p.v_stride, j0, rows, sh, ln, p.D, p.vec16);
          __syncthreads();
        }
        const int j_end = min(kv_end, j0 + kt);
        for (int j = j0; j < j_end; ++j) {
          dq_delta_step(qv, dov, lse2, x_tile + (j - j0) * row_elems + ln.d0, y_tile + (j - j0) * row_elems + ln.d0,
                        sh, ln, acc, acc_pk, dlt);
        }
      }
      if (live && ln.s == 0) delta[stat0 + t * p.N] = dlt;
      if (row && ln.n_valid > 0) {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) acc[i] = scale * (acc[i] - dlt * acc_pk[i]);
        store_chunk(dq_g + t * p.dq_stride[kT] + ln.d0, ln.n_valid, p.vec16, acc);
      }
    }

    // Part B: key rows -> dV = sum_t P_tj dO_t, dK = scale * sum_t dS_tj q_t. The barrier
    // before the first tile also publishes part A's delta to the team.
    for (int j0 = 0; j0 < T_; j0 += sh.R) {
      const int j = j0 + ln.r;
      const bool row = active && j < T_;
      const bool live = row && j < len;  // padded frames are never keys
      const int q_begin = p.causal ? j : 0;

      A k_row[kChunk], v_row[kChunk];
      if (live) {
        load_chunk(k_g + j * p.k_stride[kT] + ln.d0, ln.n_valid, p.vec16, k_row);
        load_chunk(v_g + j * p.v_stride[kT] + ln.d0, ln.n_valid, p.vec16, v_row);
      }
      A dk_acc[kChunk], dv_acc[kChunk];
      zero_chunk(dk_acc);
      zero_chunk(dv_acc);

      for (int i0 = 0; i0 < T_; i0 += sh.KT) {
        const int kt = min(sh.KT, T_ - i0);
        if (!single_tile || j0 == 0) {
          __syncthreads();
          const int rows = max(0, min(kt, len - i0));
          stage_frames(x_tile, q_g, p.q_stride, y_tile, do_g, p.dout_stride, i0, rows, sh, ln, p.D, p.vec16);
          for (int tr = ln.r * sh.S + ln.s; tr < rows; tr += sh.team) {
            const int t = i0 + tr;
            lse2_tile[tr] = lse[stat0 + t * p.N] * log2e;
            delta_tile[tr] = delta[stat0 + t * p.N];
          }
          __syncthreads();
        }
        const int t_begin = live ? max(q_begin, i0) : i0;
        const int t_end = live ? min(len, i0 + kt) : i0;
        for (int t = t_begin; t < t_end; ++t) {
          dkdv_step<true>(k_row, v_row, qk_scale, x_tile + (t - i0) * row_elems + ln.d0,
                          y_tile + (t - i0) * row_elems + ln.d0, lse2_tile[t - i0], delta_tile[t - i0], sh, ln, dk_acc,
                          dv_acc);
        }
      }
      if (row && ln.n_valid > 0) {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) dk_acc[i] *= scale;
        store_chunk(dk_g + j * p.dk_stride[kT] + ln.d0, ln.n_valid, p.vec16, dk_acc);
        store_chunk(dv_g + j * p.dv_stride[kT] + ln.d0, ln.n_valid, p.vec16, dv_acc);
      }
    }
  }
}

inline int next_pow2(int64_t x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

// bytes_per_frame: shared memory one staged frame costs one team.
inline Shape team_shape(const AttnParams& p, int64_t bytes_per_frame) {
  Shape sh;
  sh.S = next_pow2((p.D + kChunk - 1) / kChunk);
  sh.R = static_cast<int>(std::min<int64_t>(next_pow2(p.T), kThreads / sh.S));
  sh.team = sh.S * sh.R;
  sh.gpb = kThreads / sh.team;
  // One frame's worth is kept free for rounding every team's share up to 16 bytes.
  const int64_t budget = kSmemBudget / sh.gpb - bytes_per_frame;
  sh.KT = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.T, budget / bytes_per_frame)));
  sh.team_bytes = (sh.KT * bytes_per_frame + 15) / 16 * 16;
  return sh;
}

inline int64_t grid_for(const AttnParams& p, const Shape& sh) {
  const int64_t groups = p.B * p.N * p.H;
  const int64_t blocks = (groups + sh.gpb - 1) / sh.gpb;
  // The kernels loop over groups, so capping the 1-D grid loses nothing.
  return std::min<int64_t>(blocks, int64_t(1) << 30);
}

struct Launch {
  Shape sh;
  size_t smem;   // dynamic shared memory bytes per block
  int64_t grid;  // blocks (1-D)
};

// Forward: each team stages a K and a V tile.
template <typename T>
Launch fwd_launch(const AttnParams& p) {
  const int64_t row_bytes = next_pow2((p.D + kChunk - 1) / kChunk) * kChunk * sizeof(T);
  Launch l;
  l.sh = team_shape(p, 2 * row_bytes);
  l.smem = static_cast<size_t>(l.sh.gpb * l.sh.team_bytes);
  l.grid = grid_for(p, l.sh);
  return l;
}

// Backward: each team stages two tiles and two per-frame statistics.
template <typename T>
Launch bwd_launch(const AttnParams& p) {
  using A = typename Acc<T>::type;
  const int64_t row_bytes = next_pow2((p.D + kChunk - 1) / kChunk) * kChunk * sizeof(T);
  const int64_t frame_bytes = 2 * row_bytes + 2 * static_cast<int64_t>(sizeof(A));
  Launch l;
  l.sh = team_shape(p, frame_bytes);
  l.smem = static_cast<size_t>(l.sh.gpb * l.sh.team_bytes);
  l.grid = grid_for(p, l.sh);
  return l;
}

}  // namespace detail
}  // namespace temporal_kernels
