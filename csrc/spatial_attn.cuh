// Spatial attention (optionally with TimeSformer's CLS token) and joint space-time attention
// (SPEC §2): flash-style attention over a strided token sequence.
//
// A sequence is that of one (b, t, h) for spatial attention (token i < N is patch i of frame t;
// with a CLS token, token N is the CLS token, read from its own [B, H, D] pointer as query and as
// key, its output going to cls_out[b, t, h]) or of one (b, h) for joint attention (token i is
// (frame i / N, patch i % N); frame-causal masking compares i / N, frame_lens cuts the sequence
// at frame_lens[b] * N: later rows output 0 and are never keys). flash_tc.cuh's tensor-core
// forward also walks temporal sequences (SeqMode::kTemporal: token i is frame i of one (b, n, h),
// Seq.n the patch). Tokens are addressed through the per-axis (b, t, n, h, d) strides of
// params.h, so any layout is read in place.
//
// A block of 256 threads owns one row block of one sequence: R rows of S lanes, the S lanes
// splitting the head dim into 8-element chunks (S * 8 >= D, S a power of two, R = 256 / S).
// The block loops over the sequence's other side in tiles of KT tokens staged in shared memory
// (input dtype) and reads them back as broadcasts; dot products are reduced over the S lanes with
// xor shuffles (temporal_attn.cuh's helpers). Work items (sequence, row block) are walked by a
// 1-D grid-stride loop, so any count works.
//
// Softmax runs in fp32 (fp64 for double) with a running max and sum, in base 2 with log2(e)
// folded into the scale; lse is stored in natural-log units ([B, H, T, N], the CLS rows'
// [B, H, T]). A row with no visible key (a padded joint frame) outputs 0 and stores lse = +inf,
// as the Triton kernels do.
//
// The backward pass is FA2-style and atomic-free: a dQ pass (blocks own query rows, loop over key
// tiles), then a dK/dV pass (blocks own key rows, loop over query tiles). The dQ pass also sums
// delta = rowsum(P * dP) in the accumulation dtype (CLS rows included) and writes it to the
// delta scratch the dK/dV pass reads, rather than delta = rowsum(dO * O) from the stored output:
// in 16-bit, O's rounding does not cancel against dP's, and dP - delta is a difference of
// near-equal terms whenever the values are alike (two-key D=1 draws missed the SPEC bound by
// two orders of magnitude that way). out and cls_out are not read by the backward. The CLS key's
// and query's gradients are written per frame into [B, T, H, D] partial buffers of the compute
// dtype and summed over T by a last small pass in a fixed order (deterministic).
//
// The CPU CI runs these kernels through the host emulation of tests/csrc_emu/.
#pragma once

#include "temporal_attn.cuh"

namespace temporal_kernels {
namespace detail {

constexpr int64_t kSpatialMaxTile = 64;  // tokens per shared-memory tile

// One token sequence (see the file comment).
struct Seq {
  int64_t b, h, t;  // t: the frame (spatial); 0 (joint, temporal)
  int64_t n;        // the patch (temporal); 0 (spatial, joint)
  int64_t L;        // tokens
  int64_t n_main;   // tokens that are patches; token n_main is the CLS token when there is one
  int64_t valid;    // tokens that are real (joint: frame_lens[b] * N); the rest are padding
  int64_t div;      // token i lies in frame t + i / div, at patch i % div
};

__device__ __forceinline__ int64_t n_seqs(const SpatialParams& p) {
  if (p.mode == SeqMode::kTemporal) return p.B * p.N * p.H;
  return p.mode == SeqMode::kSpatial ? p.B * p.T * p.H : p.B * p.H;
}

// a / b, in 32 bits when both fit (a 64-bit division is a long instruction sequence on the GPU).
__device__ __forceinline__ int64_t div_fast(int64_t a, int64_t b) {
  return ((a | b) >> 32) == 0 ? static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b)) : a / b;
}

__device__ __forceinline__ Seq seq_of(const SpatialParams& p, int64_t g) {
  Seq s;
  const int64_t gh = div_fast(g, p.H);  // g / H
  s.h = g - gh * p.H;
  s.n = 0;
  if (p.mode == SeqMode::kTemporal) {
    s.t = 0;
    s.b = div_fast(gh, p.N);
    s.n = gh - s.b * p.N;
    s.n_main = p.T;
    s.L = p.T;
    s.valid = p.frame_lens != nullptr ? min(max(p.frame_lens[s.b], int64_t(0)), p.T) : p.T;
    s.div = 1;  // token i is frame i
  } else if (p.mode == SeqMode::kSpatial) {
    s.b = div_fast(gh, p.T);
    s.t = gh - s.b * p.T;
    s.n_main = p.N;
    s.L = p.N + (p.has_cls ? 1 : 0);
    s.valid = s.L;
    s.div = s.L + 1;  // every token in frame t
  } else {
    s.t = 0;
    s.b = gh;
    s.n_main = p.T * p.N;
    s.L = s.n_main;
    int64_t frames = p.T;
    if (p.frame_lens != nullptr) frames = min(max(p.frame_lens[s.b], int64_t(0)), p.T);
    s.valid = frames * p.N;
    s.div = max(p.N, int64_t(1));
  }
  return s;
}

// Element offset of patch token i (< n_main) of sequence s in a tensor with (b, t, n, h) strides.
__device__ __forceinline__ int64_t tok_off(const int64_t* st, const Seq& s, int64_t i) {
  const int64_t o = i / s.div;
  return s.b * st[kB] + s.h * st[kH] + (s.t + o) * st[kT] + (s.n + i - o * s.div) * st[kN];
}

// Row i of a token tensor: a patch row, or (i == n_main) the sequence's CLS row `cls`.
template <typename T>
__device__ __forceinline__ T* tok_ptr(T* x, const int64_t* st, T* cls, const Seq& s, int64_t i) {
  return i == s.n_main ? cls : x + tok_off(st, s, i);
}

// One past the last key query row i sees.
__device__ __forceinline__ int64_t key_end(const SpatialParams& p, const Seq& s, int64_t i) {
  if (p.mode != SeqMode::kSpatial && p.causal) return min(s.valid, (i / s.div + 1) * s.div);
  return s.valid;
}

// First query row that sees key j.
__device__ __forceinline__ int64_t query_begin(const SpatialParams& p, const Seq& s, int64_t j) {
  if (p.mode != SeqMode::kSpatial && p.causal) return (j / s.div) * s.div;
  return 0;
}

// Per-sequence pointers and strides of the statistics ([B, H, T, N] in lse order).
struct StatView {
  int64_t st[5];
  int64_t cls;  // offset of the CLS row's statistic in the [B, H, T] buffers
};

__device__ __forceinline__ StatView stat_view(const SpatialParams& p, const Seq& s) {
  StatView v;
  v.st[kB] = p.H * p.T * p.N;
  v.st[kT] = p.N;
  v.st[kN] = 1;
  v.st[kH] = p.T * p.N;
  v.st[kD] = 0;
  v.cls = (s.b * p.H + s.h) * p.T + s.t;
  return v;
}

__device__ __forceinline__ int64_t cls_in_off(const int64_t (&st)[3], const Seq& s) {
  return s.b * st[0] + s.h * st[1];
}

__device__ __forceinline__ int64_t cls_frame_off(const int64_t (&st)[4], const Seq& s) {
  return s.b * st[0] + s.t * st[1] + s.h * st[2];
}

__device__ __forceinline__ int64_t cls_part_off(const SpatialParams& p, const Seq& s) {
  return ((s.b * p.T + s.t) * p.H + s.h) * p.D;
}

// The sequence's CLS rows (nullptr without CLS): inputs [B, H, D], dout of cls_out [B, T, H, D]
// (backward only).
template <typename T>
struct ClsRows {
  const T* q;
  const T* k;
  const T* v;
  const T* dout;
};

template <typename T>
__device__ __forceinline__ ClsRows<T> cls_rows(const SpatialParams& p, const Seq& s) {
  ClsRows<T> c{nullptr, nullptr, nullptr, nullptr};
  if (p.has_cls) {
    c.q = static_cast<const T*>(p.q_cls) + cls_in_off(p.q_cls_stride, s);
    c.k = static_cast<const T*>(p.k_cls) + cls_in_off(p.k_cls_stride, s);
    c.v = static_cast<const T*>(p.v_cls) + cls_in_off(p.v_cls_stride, s);
    if (p.dcls_out != nullptr) c.dout = static_cast<const T*>(p.dcls_out) + cls_frame_off(p.dcls_out_stride, s);
  }
  return c;
}

// Typed inputs and scales of the backward kernels.
template <typename T>
struct BwdInputs {
  using A = typename Acc<T>::type;
  const T* q;
  const T* k;
  const T* v;
  const T* dout;
  const A* lse;
  const A* lse_cls;
  const A* delta;
  const A* delta_cls;
  A scale, qk_scale, log2e;
};

template <typename T>
__device__ __forceinline__ BwdInputs<T> bwd_inputs(const SpatialParams& p) {
  using A = typename Acc<T>::type;
  return {static_cast<const T*>(p.q),         static_cast<const T*>(p.k),         static_cast<const T*>(p.v),
          static_cast<const T*>(p.dout),      static_cast<const A*>(p.lse),       static_cast<const A*>(p.lse_cls),
          static_cast<const A*>(p.delta),     static_cast<const A*>(p.delta_cls), static_cast<A>(p.scale),
          static_cast<A>(p.scale * kLog2e),   static_cast<A>(kLog2e)};
}

// Row i's statistic (lse or delta): a patch row of x, or the CLS row of x_cls.
template <typename A>
__device__ __forceinline__ A* stat_ptr(A* x, A* x_cls, const StatView& sv, const Seq& s, int64_t i) {
  return i == s.n_main ? x_cls + sv.cls : x + tok_off(sv.st, s, i);
}

template <typename A>
__device__ __forceinline__ A stat_at(const A* x, const A* x_cls, const StatView& sv, const Seq& s, int64_t i) {
  return *stat_ptr(x, x_cls, sv, s, i);
}

// Stages rows [j0, j0 + rows) of two token tensors into [KT, S*8] tiles (all threads of the block).
template <typename T>
__device__ __forceinline__ void stage_rows(T* x_tile, const T* x, const int64_t* xs, const T* xc, T* y_tile,
                                           const T* y, const int64_t* ys, const T* yc, const Seq& s, int64_t j0,
                                           int64_t rows, const Shape& sh, int64_t D, bool vec) {
  const int row_elems = sh.S * kChunk;
  for (int64_t idx = threadIdx.x; idx < rows * sh.S; idx += kThreads) {
    const int64_t jr = idx / sh.S;
    const int c = static_cast<int>(idx % sh.S);
    const int nv = chunk_valid(D, c);
    const int64_t j = j0 + jr;
    stage_chunk(x_tile + jr * row_elems + c * kChunk, tok_ptr(x, xs, xc, s, j) + c * kChunk, nv, vec);
    stage_chunk(y_tile + jr * row_elems + c * kChunk, tok_ptr(y, ys, yc, s, j) + c * kChunk, nv, vec);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) spatial_fwd_kernel(const SpatialParams p, const Shape sh, int64_t nblk) {
  using A = typename Acc<T>::type;
  const Lane ln = lane_of(sh, p.D);
  const int row_elems = sh.S * kChunk;
  T* k_tile = reinterpret_cast<T*>(dynamic_smem());  // [KT, S*8]
  T* v_tile = k_tile + sh.KT * row_elems;             // [KT, S*8]

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  A* lse = static_cast<A*>(p.lse);
  A* lse_cls = static_cast<A*>(p.lse_cls);
  const A qk_scale = static_cast<A>(p.scale * kLog2e);
  const int64_t total = n_seqs(p) * nblk;

  // The loop bounds depend on the block only, so every thread reaches every barrier.
  for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
    const Seq s = seq_of(p, w / nblk);
    const int64_t i0 = (w % nblk) * sh.R;
    const int64_t i = i0 + ln.r;
    const bool row = i < s.L;
    const bool live = i < s.valid;
    const int64_t kv_end = live ? key_end(p, s, i) : 0;
    const int64_t last = min(i0 + sh.R, s.valid) - 1;
    const int64_t blk_end = last >= i0 ? key_end(p, s, last) : 0;  // key_end grows with i
    const ClsRows<T> cls = cls_rows<T>(p, s);

    A qv[kChunk];
    if (live) {
      load_chunk(tok_ptr(q, p.q_stride, cls.q, s, i) + ln.d0, ln.n_valid, p.vec16, qv);
      scale_chunk(qv, qk_scale);
    }
    A m = -inf<A>();
    A l = A(0);
    A acc[kChunk];
    zero_chunk(acc);

    for (int64_t j0 = 0; j0 < blk_end; j0 += sh.KT) {
      const int64_t kt = min(int64_t(sh.KT), blk_end - j0);
      __syncthreads();  // the previous tile is no longer read
      stage_rows(k_tile, k, p.k_stride, cls.k, v_tile, v, p.v_stride, cls.v, s, j0, kt, sh, p.D, p.vec16);
      __syncthreads();
      const int64_t j_end = min(kv_end, j0 + kt);
      for (int64_t j = j0; j < j_end; ++j) {
        softmax_step(qv, k_tile + (j - j0) * row_elems + ln.d0, v_tile + (j - j0) * row_elems + ln.d0, sh, ln, m, l,
                     acc);
      }
    }

    if (row) {
      const bool ok = live && l > A(0);
      const A inv = ok ? A(1) / l : A(0);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) acc[e] *= inv;
      const StatView sv = stat_view(p, s);
      const A lse_val = ok ? (m + log2_(l)) * static_cast<A>(kLn2) : inf<A>();
      if (i < s.n_main) {
        if (ln.n_valid > 0) store_chunk(out + tok_off(p.out_stride, s, i) + ln.d0, ln.n_valid, p.vec16, acc);
        if (ln.s == 0) lse[tok_off(sv.st, s, i)] = lse_val;
      } else {
        T* oc = static_cast<T*>(p.cls_out) + cls_frame_off(p.cls_out_stride, s);
        if (ln.n_valid > 0) store_chunk(oc + ln.d0, ln.n_valid, p.vec16, acc);
        if (ln.s == 0) lse_cls[sv.cls] = lse_val;
      }
    }
  }
}

// delta and dQ of one block of query rows, in one loop over the keys: delta_i = sum_j P_ij dP_ij
// (summed in the accumulation dtype, written to delta / delta_cls for the dK/dV pass, which runs
// after this one), dQ = scale * sum_j dS_ij k_j = scale * (sum_j P_ij dP_ij k_j - delta_i *
// sum_j P_ij k_j). Every row of the sequence gets its delta: padded rows (joint) get 0.
template <typename T>
__global__ void __launch_bounds__(kThreads) spatial_bwd_dq_kernel(const SpatialParams p, const Shape sh,
                                                                  int64_t nblk) {
  using A = typename Acc<T>::type;
  const Lane ln = lane_of(sh, p.D);
  const int row_elems = sh.S * kChunk;
  T* k_tile = reinterpret_cast<T*>(dynamic_smem());  // [KT, S*8]
  T* v_tile = k_tile + sh.KT * row_elems;             // [KT, S*8]

  const BwdInputs<T> in = bwd_inputs<T>(p);
  T* dq = static_cast<T*>(p.dq);
  A* delta = static_cast<A*>(p.delta);
  A* delta_cls = static_cast<A*>(p.delta_cls);
  const int64_t total = n_seqs(p) * nblk;

  for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
    const Seq s = seq_of(p, w / nblk);
    const StatView sv = stat_view(p, s);
    const int64_t i0 = (w % nblk) * sh.R;
    const int64_t i = i0 + ln.r;
    const bool row = i < s.L;
    const bool live = i < s.valid;  // padded rows: dQ = 0, their dout is never read
    const int64_t kv_end = live ? key_end(p, s, i) : 0;
    const int64_t last = min(i0 + sh.R, s.valid) - 1;
    const int64_t blk_end = last >= i0 ? key_end(p, s, last) : 0;
    const ClsRows<T> cls = cls_rows<T>(p, s);

    A qv[kChunk], dov[kChunk];
    A lse2 = A(0), dlt = A(0);
    if (live) {
      load_chunk(tok_ptr(in.q, p.q_stride, cls.q, s, i) + ln.d0, ln.n_valid, p.vec16, qv);
      load_chunk(tok_ptr(in.dout, p.dout_stride, cls.dout, s, i) + ln.d0, ln.n_valid, p.vec16, dov);
      scale_chunk(qv, in.qk_scale);
      lse2 = stat_at(in.lse, in.lse_cls, sv, s, i) * in.log2e;
    }
    A acc[kChunk], acc_pk[kChunk];
    zero_chunk(acc);
    zero_chunk(acc_pk);

    for (int64_t j0 = 0; j0 < blk_end; j0 += sh.KT) {
      const int64_t kt = min(int64_t(sh.KT), blk_end - j0);
      __syncthreads();
      stage_rows(k_tile, in.k, p.k_stride, cls.k, v_tile, in.v, p.v_stride, cls.v, s, j0, kt, sh, p.D, p.vec16);
      __syncthreads();
      const int64_t j_end = min(kv_end, j0 + kt);
      for (int64_t j = j0; j < j_end; ++j) {
        dq_delta_step(qv, dov, lse2, k_tile + (j - j0) * row_elems + ln.d0, v_tile + (j - j0) * row_elems + ln.d0,
                      sh, ln, acc, acc_pk, dlt);
      }
    }

    if (row && ln.s == 0) *stat_ptr(delta, delta_cls, sv, s, i) = dlt;
    if (row && ln.n_valid > 0) {
#pragma unroll
      for (int e = 0; e < kChunk; ++e) acc[e] = in.scale * (acc[e] - dlt * acc_pk[e]);
      if (i < s.n_main) {
        store_chunk(dq + tok_off(p.dq_stride, s, i) + ln.d0, ln.n_valid, p.vec16, acc);
      } else {
        store_chunk(static_cast<A*>(p.dq_cls_part) + cls_part_off(p, s) + ln.d0, ln.n_valid, false, acc);
      }
    }
  }
}

// dK, dV of one block of key rows: dV = sum_i P_ij dO_i, dK = scale * sum_i dS_ij q_i, with the
// delta of every query row (all live) written by spatial_bwd_dq_kernel, launched before it.
template <typename T>
__global__ void __launch_bounds__(kThreads) spatial_bwd_dkdv_kernel(const SpatialParams p, const Shape sh,
                                                                    int64_t nblk) {
  using A = typename Acc<T>::type;
  const Lane ln = lane_of(sh, p.D);
  const int row_elems = sh.S * kChunk;
  T* q_tile = reinterpret_cast<T*>(dynamic_smem());  // [KT, S*8]
  T* do_tile = q_tile + sh.KT * row_elems;            // [KT, S*8]
  A* lse2_tile = reinterpret_cast<A*>(do_tile + sh.KT * row_elems);  // [KT], base 2
  A* delta_tile = lse2_tile + sh.KT;                                    // [KT]

  const BwdInputs<T> in = bwd_inputs<T>(p);
  T* dk = static_cast<T*>(p.dk);
  T* dv = static_cast<T*>(p.dv);
  const int64_t total = n_seqs(p) * nblk;

  for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
    const Seq s = seq_of(p, w / nblk);
    const StatView sv = stat_view(p, s);
    const int64_t j0 = (w % nblk) * sh.R;
    const int64_t j = j0 + ln.r;
    const bool row = j < s.L;
    const bool live = j < s.valid;  // padded tokens are never keys
    // Queries [blk_begin, blk_end) can see some key of the block (query_begin grows with j).
    const int64_t blk_begin = query_begin(p, s, j0);
    const int64_t blk_end = j0 < s.valid ? s.valid : blk_begin;
    const ClsRows<T> cls = cls_rows<T>(p, s);

    A k_row[kChunk], v_row[kChunk];
    if (live) {
      load_chunk(tok_ptr(in.k, p.k_stride, cls.k, s, j) + ln.d0, ln.n_valid, p.vec16, k_row);
      load_chunk(tok_ptr(in.v, p.v_stride, cls.v, s, j) + ln.d0, ln.n_valid, p.vec16, v_row);
      scale_chunk(k_row, in.qk_scale);
    }
    A dk_acc[kChunk], dv_acc[kChunk];
    zero_chunk(dk_acc);
    zero_chunk(dv_acc);

    for (int64_t i0 = blk_begin; i0 < blk_end; i0 += sh.KT) {
      const int64_t kt = min(int64_t(sh.KT), blk_end - i0);
      __syncthreads();
      stage_rows(q_tile, in.q, p.q_stride, cls.q, do_tile, in.dout, p.dout_stride, cls.dout, s, i0, kt, sh, p.D,
                 p.vec16);
      for (int64_t r = threadIdx.x; r < kt; r += kThreads) {
        const int64_t i = i0 + r;
        lse2_tile[r] = stat_at(in.lse, in.lse_cls, sv, s, i) * in.log2e;
        delta_tile[r] = stat_at(in.delta, in.delta_cls, sv, s, i);
      }
      __syncthreads();
      const int64_t t_begin = live ? max(query_begin(p, s, j), i0) : i0;
      const int64_t t_end = live ? i0 + kt : i0;
      for (int64_t i = t_begin; i < t_end; ++i) {
        // k_row holds the scale: the score needs no multiply.
        dkdv_step<false>(k_row, v_row, in.qk_scale, q_tile + (i - i0) * row_elems + ln.d0,
                         do_tile + (i - i0) * row_elems + ln.d0, lse2_tile[i - i0], delta_tile[i - i0], sh, ln, dk_acc,
                         dv_acc);
      }
    }

    if (row && ln.n_valid > 0) {
#pragma unroll
      for (int e = 0; e < kChunk; ++e) dk_acc[e] *= in.scale;
      if (j < s.n_main) {
        store_chunk(dk + tok_off(p.dk_stride, s, j) + ln.d0, ln.n_valid, p.vec16, dk_acc);
        store_chunk(dv + tok_off(p.dv_stride, s, j) + ln.d0, ln.n_valid, p.vec16, dv_acc);
      } else {
        const int64_t off = cls_part_off(p, s) + ln.d0;
        store_chunk(static_cast<A*>(p.dk_cls_part) + off, ln.n_valid, false, dk_acc);
        store_chunk(static_cast<A*>(p.dv_cls_part) + off, ln.n_valid, false, dv_acc);
      }
    }
  }
}

// d*_cls[b, h, d] = sum_t d*_cls_part[b, t, h, d], t in increasing order; one thread per element.
template <typename T>
__global__ void __launch_bounds__(kThreads) spatial_cls_sum_kernel(const SpatialParams p) {
  using A = typename Acc<T>::type;
  const A* parts[3] = {static_cast<const A*>(p.dq_cls_part), static_cast<const A*>(p.dk_cls_part),
                       static_cast<const A*>(p.dv_cls_part)};
  T* outs[3] = {static_cast<T*>(p.dq_cls), static_cast<T*>(p.dk_cls), static_cast<T*>(p.dv_cls)};
  const int64_t* strides[3] = {p.dq_cls_stride, p.dk_cls_stride, p.dv_cls_stride};
  const int64_t total = p.B * p.H * p.D;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t d = e % p.D, h = (e / p.D) % p.H, b = e / (p.D * p.H);
    for (int x = 0; x < 3; ++x) {
      A acc = A(0);
      for (int64_t t = 0; t < p.T; ++t) acc += parts[x][((b * p.T + t) * p.H + h) * p.D + d];
      outs[x][b * strides[x][0] + h * strides[x][1] + d * strides[x][2]] = from_acc<T>(acc);
    }
  }
}

// Launch shape of the row-block kernels.
struct SpatialLaunch {
  Shape sh;       // S lanes x R rows, one team per block; KT tokens per tile
  size_t smem;    // dynamic shared memory bytes per block
  int64_t nblk;   // row blocks per sequence
  int64_t grid;   // blocks (1-D; the kernels loop over work items)
};

inline int64_t seq_count(const SpatialParams& p) {
  if (p.mode == SeqMode::kTemporal) return p.B * p.N * p.H;
  return p.mode == SeqMode::kSpatial ? p.B * p.T * p.H : p.B * p.H;
}

inline int64_t seq_len(const SpatialParams& p) {
  if (p.mode == SeqMode::kTemporal) return p.T;
  return p.mode == SeqMode::kSpatial ? p.N + (p.has_cls ? 1 : 0) : p.T * p.N;
}

// bytes_per_token: shared memory one staged token costs the block.
inline SpatialLaunch spatial_launch(const SpatialParams& p, int64_t elem_bytes, int64_t stat_bytes) {
  SpatialLaunch l;
  l.sh.S = next_pow2((p.D + kChunk - 1) / kChunk);
  l.sh.R = kThreads / l.sh.S;
  l.sh.team = kThreads;
  l.sh.gpb = 1;
  const int64_t row_bytes = int64_t(l.sh.S) * kChunk * elem_bytes;
  const int64_t bytes_per_token = 2 * row_bytes + stat_bytes;
  const int64_t L = seq_len(p);
  l.sh.KT = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({kSpatialMaxTile, std::max<int64_t>(L, 1), kSmemBudget / bytes_per_token})));
  l.sh.team_bytes = (l.sh.KT * bytes_per_token + 15) / 16 * 16;
  l.smem = static_cast<size_t>(l.sh.team_bytes);
  l.nblk = (L + l.sh.R - 1) / l.sh.R;
  l.grid = std::min<int64_t>(seq_count(p) * l.nblk, int64_t(1) << 30);
  return l;
}

// Forward and dQ: K and V tiles. dK/dV: Q and dO tiles plus two statistics per token.
template <typename T>
SpatialLaunch spatial_fwd_launch(const SpatialParams& p) {
  return spatial_launch(p, sizeof(T), 0);
}

template <typename T>
SpatialLaunch spatial_dkdv_launch(const SpatialParams& p) {
  return spatial_launch(p, sizeof(T), 2 * static_cast<int64_t>(sizeof(typename Acc<T>::type)));
}

// Grid of the one-thread-per-element CLS sum.
inline int64_t cls_sum_grid(const SpatialParams& p) {
  const int64_t n = p.B * p.H * p.D;
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 30);
}

}  // namespace detail
}  // namespace temporal_kernels
