// Tensor-core flash attention for float16 / bfloat16 (the forward here, the backward in its own
// section below), shared by every op: temporal attention (one sequence per (b, n, h): the T frames
// of patch n), spatial attention with the optional CLS token, and joint attention (frame-causal,
// frame_lens). Sequences, token addressing through the (b, t, n, h, d) strides, masks and
// statistics are spatial_attn.cuh's (Seq, tok_ptr, key_end, stat_view), so these kernels compute
// exactly what the scalar kernels compute, with the products on the tensor cores.
//
// flash_fwd_tc_kernel: a block of kWarps warps owns 16 * kWarps query rows of one sequence, each
// warp 16 of them; the block walks the keys in tiles of 16 * kWarps tokens (kWarps = 1 for
// sequences of up to 16 tokens, 2 up to 32, 4 beyond). Temporal attention with T <= 32 runs
// temporal_fwd_tc_packed_kernel instead: one warp per (b, n, h) group, two groups per warp when
// T <= 8, one group per two warps when 16 < T <= 32, without the sequence machinery (the
// memory-bound TimeSformer shapes). Inside a tile: full tiles skip the masks (a warp vote), a
// last tile of at most 16 keys runs as a 16-key tile, warps of padded rows compute nothing.
// Q, K and V reach shared memory by 16-byte cp.async (zero-filled past the sequence and the head
// dim), two K/V stages when the sequence has more than one tile; rows are padded by 16 bytes so
// the ldmatrix row addresses of one 8x8 matrix fall in different banks. Per tile: S = Q K^T by
// mma.sync m16n8k16 (Q fragments loaded once, K by ldmatrix), scaled and masked in fp32, online
// softmax in base 2 (running max and sum per row, the row's 4 lanes reduced by xor shuffles), P
// rounded to the input dtype and O += P V with V by ldmatrix.trans, FlashAttention-2's register
// reuse of the S accumulators as the A operand. O is normalized once at the end, staged in the
// block's Q rows and written with 16-byte stores; lse as the other forward kernels store it
// (natural log; a row that sees no key: -inf for temporal, +inf for spatial/joint).
//
// The forward applies (flash_tc_applies) to 16-bit inputs whose rows are 16-byte aligned (vec16)
// with D % 8 == 0 and D <= 160 (padded to 32, 64, 96, 128 or 160), the backward (see its section)
// to those with D <= 64, or D <= 128 for temporal T <= 32; everything else runs the scalar
// kernels. The CPU CI runs this source through tests/csrc_emu/ (ldmatrix, mma.sync and cp.async
// emulated per warp).
#pragma once

#include <cstring>

#include "spatial_attn.cuh"

namespace temporal_kernels {
namespace detail {

#ifdef __CUDACC__
__device__ __forceinline__ uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// Four 8x8 matrices of 16-bit elements; lane l gives the row address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// d += a b: a 16x16 (row), b 16x8 (col), d 16x8 float32.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// 16 bytes global -> shared, asynchronously; src_bytes < 16 zero-fills the rest (0: all zeros,
// src is not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// 2^x in one MUFU.EX2 (exp2f adds range fix-ups around it); results below 2^-126 flush to 0,
// -inf gives 0. Probabilities that small vanish against the row sums anyway.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
#endif

// Two floats rounded to T, packed low element first (one mma operand register).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T h[2] = {from_acc<T>(lo), from_acc<T>(hi)};
  uint32_t r;
  memcpy(&r, h, sizeof(r));
  return r;
}

// Shared-memory row of a tile, in elements: 16 bytes of padding per row (see the file comment).
template <int kD>
constexpr int tc_row() {
  return kD + 8;
}

// The rows of one token tensor of one sequence: token j's row without spatial_attn.cuh's 64-bit
// division per token (spatial and temporal tokens lie on one axis; joint tokens divide by N in
// 32 bits: a sequence has fewer than 2^31 tokens).
template <typename P>
struct TcRows {
  P base;              // token 0's patch row
  int64_t st_token;    // spatial: the n stride; temporal: the t stride; joint: the n stride
  int64_t st_frame;    // joint: the t stride
  uint32_t div;        // joint: N; otherwise 0 (every token on the st_token axis)
  int64_t cls_token;   // the CLS token's index (spatial with CLS), else -1
  P cls;

  __device__ __forceinline__ P row(int64_t j) const {
    if (j == cls_token) return cls;
    if (div == 0) return base + j * st_token;
    const uint32_t f = static_cast<uint32_t>(j) / div;
    return base + f * st_frame + (static_cast<uint32_t>(j) - f * div) * st_token;
  }
};

template <typename P>
__device__ __forceinline__ TcRows<P> tc_rows(const SpatialParams& p, P x, const int64_t* st, P cls, const Seq& s) {
  TcRows<P> r;
  r.base = x + tok_off(st, s, 0);
  r.st_token = p.mode == SeqMode::kTemporal ? st[kT] : st[kN];
  r.st_frame = st[kT];
  r.div = p.mode == SeqMode::kJoint ? static_cast<uint32_t>(s.div) : 0u;
  r.cls_token = p.has_cls ? s.n_main : -1;
  r.cls = cls;
  return r;
}

// Element offset of row r, 16-byte chunk ch in a tile: rows padded by 16 bytes (ldmatrix), or,
// kSwizzled, the wgmma tile of flash_wgmma.cuh ([kD / 64] column blocks of [kRows, 64] elements,
// each 8-row group a 1024-byte atom of the 128-byte swizzle: chunk ch % 8 of row r stored at
// chunk (ch % 8) ^ (r % 8), so a warp's 16-byte accesses to one row or one chunk column spread
// over all banks).
template <int kD, int kRows, bool kSwizzled>
__device__ __forceinline__ int tc_tile_off(int r, int ch) {
  if constexpr (kSwizzled) {
    return (ch / 8) * (kRows * 64) + r * 64 + (((ch % 8) ^ (r % 8)) * 8);
  } else {
    return r * tc_row<kD>() + ch * 8;
  }
}

// Stages tokens [j0, j0 + kRows) of x into a tile (laid out as tc_tile_off says) with the block's
// 32 kWarps threads; tokens at or past `end` and head-dim chunks at or past D become zeros.
template <typename T, int kD, int kWarps, bool kSwizzled = false, int kRows = 16 * kWarps>
__device__ __forceinline__ void tc_stage(T* tile, const TcRows<const T*>& x, int64_t j0, int64_t end, int64_t D) {
  constexpr int kChunks = kD / 8;
  constexpr int kThreads = 32 * kWarps;
  if constexpr (kThreads % kChunks == 0) {
    // A thread copies one chunk column of rows kStep apart: the row pointer is computed once per
    // tile and then stepped (joint tokens j = f N + n: n by kStep, wrapping to the next frame),
    // instead of row()'s arithmetic per chunk.
    constexpr int kStep = kThreads / kChunks;
    const int ch = static_cast<int>(threadIdx.x) % kChunks, r0 = static_cast<int>(threadIdx.x) / kChunks;
    const int rows = static_cast<int>(min(max(end - j0, int64_t(0)), int64_t(kRows)));  // rows with a token
    const int cls_r = x.cls_token >= j0 && x.cls_token < j0 + kRows ? static_cast<int>(x.cls_token - j0) : -1;
    const bool in_d = ch * 8 < D;
    const uint32_t j = static_cast<uint32_t>(j0 + r0);  // a sequence has < 2^31 tokens
    const uint32_t f = x.div == 0 ? 0u : j / x.div;
    uint32_t n = j - f * x.div;
    const T* src = x.base + f * x.st_frame + n * x.st_token + ch * 8;
    const int64_t step = kStep * x.st_token, wrap = x.st_frame - x.div * x.st_token;
#pragma unroll
    for (int i = 0; i < kRows / kStep; ++i) {
      const int r = r0 + i * kStep;
      const bool ok = in_d && r < rows;
      const T* from = r == cls_r ? x.cls + ch * 8 : src;
      cp_async16(tile + tc_tile_off<kD, kRows, kSwizzled>(r, ch), ok ? from : x.base, ok ? 16 : 0);
      src += step;
      n += kStep;
      while (x.div != 0 && n >= x.div) {
        n -= x.div;
        src += wrap;
      }
    }
  } else {
    for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
      const int r = c / kChunks, ch = c % kChunks;
      const int64_t j = j0 + r;
      const bool ok = j < end && ch * 8 < D;
      const T* src = ok ? x.row(j) + ch * 8 : x.base;
      cp_async16(tile + tc_tile_off<kD, kRows, kSwizzled>(r, ch), src, ok ? 16 : 0);
    }
  }
}

// A barrier over the block's warps (one warp: __syncwarp).
template <int kWarps>
__device__ __forceinline__ void tc_block_sync() {
  if constexpr (kWarps == 1) {
    __syncwarp();
  } else {
    __syncthreads();
  }
}

// Blocks per SM the compiler must fit (a register cap): the short temporal launches are memory
// bound and need many warps in flight. The 4-warp tiles of head dims up to 64 fit 3 blocks
// (<= 168 registers) without spills (4 blocks spilled), where the uncapped build took 207-223 registers
// and 2 blocks, 8 warps per SM, too few to hide the latencies of a tile's dependent steps;
// larger head dims keep the registers FlashAttention uses.
template <int kD, int kWarps>
constexpr int tc_min_blocks() {
  return kWarps == 4 ? (kD <= 64 ? 3 : 1) : kD > 128 ? 1 : (kD <= 64 ? 16 : 12) / kWarps;
}

// The softmax step of one key tile for a warp's 16 rows, in place: S (sc, the layout of an
// mma.sync / wgmma accumulator: element e of column tile nt is row g + 8 (e / 2), key
// nt * 8 + 2 tq + e % 2) scaled to base 2 and, when `masked`, masked to the keys
// [tile_begin[r], tile_end[r]) of row half r; the running max m and this lane's part of the row
// sums l updated; O rescaled; sc left holding the tile's probabilities.
template <int kD, int kNT>
__device__ __forceinline__ void tc_online_softmax(float (&sc)[kNT][4], const int (&tile_begin)[2], const int (&tile_end)[2],
                                                  bool masked, float qk_scale, float (&m)[2], float (&l)[2],
                                                  float (&o)[kD / 8][4]) {
  constexpr int kDT = kD / 8;
  const int tq = (threadIdx.x % 32) % 4;
  float mx[2] = {m[0], m[1]};
  if (masked) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = nt * 8 + 2 * tq + (e % 2);
        sc[nt][e] = key >= tile_begin[e / 2] && key < tile_end[e / 2] ? sc[nt][e] * qk_scale : -INFINITY;
      }
    }
  } else {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[nt][e] *= qk_scale;
    }
  }
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], sc[nt][e]);
  }
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    // A row that has seen no key yet keeps m = -inf; exponents then use base 0, so every
    // probability (and the correction of the zero accumulators) is exactly 0, not NaN.
    base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
    const float corr = exp2_approx(m[r] - base[r]);
    m[r] = mx[r];
    l[r] *= corr;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      o[dt][2 * r] *= corr;
      o[dt][2 * r + 1] *= corr;
    }
  }
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      sc[nt][e] = exp2_approx(sc[nt][e] - base[e / 2]);
      l[e / 2] += sc[nt][e];
    }
  }
}

// One key tile for one warp's 16 query rows: S = Q K^T (qf: the rows' A fragments, kb: the tile's
// 8 kNT key rows), scaled to base 2 and, when `masked` (warp-uniform; false: every row sees every
// key of the tile), masked (row half r sees the keys [tile_begin[r], tile_end[r]) of the tile:
// element e of a column tile is row g + 8 (e / 2), key 2 tq + e % 2),
// folded into the running max m, this lane's part of the row sums l and O += P V (vb: the value
// rows). The accumulators of column tiles 2 kk and 2 kk + 1 are the A fragment of P for keys
// [16 kk, 16 kk + 16): FlashAttention-2's register reuse. kBlockDiag (kNT = 2): rows g see keys
// 0-7 and rows g + 8 keys 8-15 only, two independent problems (temporal_fwd_tc_packed_kernel<., ., 2, 1>).
// Its two products repeat the loops of tc_gemm_abt / tc_gemm_xb (backward section) on purpose:
// the same arithmetic through those helpers made ptxas (nvcc 13.0, sm_90) spill 36 bytes in the
// register-capped 4-warp forward at head dims up to 64, the spatial kernel.
template <typename T, int kD, int kNT, bool kBlockDiag = false>
__device__ __forceinline__ void tc_attend_tile(const uint32_t (&qf)[kD / 16][4], const T* kb, const T* vb,
                                               const int (&tile_begin)[2], const int (&tile_end)[2], bool masked,
                                               float qk_scale, float (&m)[2], float (&l)[2], float (&o)[kD / 8][4]) {
  constexpr int kRow = tc_row<kD>();
  constexpr int kDT = kD / 8;
  const int lane = threadIdx.x % 32;
  float sc[kNT][4];  // S of the warp's 16 rows x the tile's 8 kNT keys
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) sc[nt][e] = 0.f;
  }
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t kf[4];
      ldsm_x4(kf, kb + (np * 16 + (lane % 8) + 8 * (lane / 16)) * kRow + kk * 16 + 8 * ((lane / 8) % 2));
      const uint32_t b0[2] = {kf[0], kf[1]}, b1[2] = {kf[2], kf[3]};
      mma_16816<T>(sc[2 * np], qf[kk], b0);
      mma_16816<T>(sc[2 * np + 1], qf[kk], b1);
    }
  }

  tc_online_softmax<kD, kNT>(sc, tile_begin, tile_end, masked, qk_scale, m, l, o);

  // O += P V.
#pragma unroll
  for (int kk = 0; kk < kNT / 2; ++kk) {
    const uint32_t pa[4] = {pack2<T>(sc[2 * kk][0], sc[2 * kk][1]), pack2<T>(sc[2 * kk][2], sc[2 * kk][3]),
                            pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                            pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < kDT / 2; ++dp) {
      uint32_t vf[4];
      ldsm_x4_trans(vf, vb + (kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * kRow + dp * 16 + 8 * (lane / 16));
      if constexpr (kBlockDiag) {
        // Rows g read keys 0-7 only and rows g + 8 keys 8-15 only: a zero probability times an
        // inf value of the other problem would be NaN. Each product's other half is dropped.
        const uint32_t a_lo[4] = {pa[0], 0u, 0u, 0u}, a_hi[4] = {0u, 0u, 0u, pa[3]};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float(&acc)[4] = o[2 * dp + h];
          const uint32_t b_lo[2] = {vf[2 * h], 0u}, b_hi[2] = {0u, vf[2 * h + 1]};
          float lo[4] = {acc[0], acc[1], 0.f, 0.f}, hi[4] = {0.f, 0.f, acc[2], acc[3]};
          mma_16816<T>(lo, a_lo, b_lo);
          mma_16816<T>(hi, a_hi, b_hi);
          acc[0] = lo[0];
          acc[1] = lo[1];
          acc[2] = hi[2];
          acc[3] = hi[3];
        }
      } else {
        const uint32_t b0[2] = {vf[0], vf[1]}, b1[2] = {vf[2], vf[3]};
        mma_16816<T>(o[2 * dp], pa, b0);
        mma_16816<T>(o[2 * dp + 1], pa, b1);
      }
    }
  }
}

template <typename T, int kD, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, tc_min_blocks<kD, kWarps>())
    flash_fwd_tc_kernel(const SpatialParams p, const int64_t nblk, const int stages) {
  constexpr int kM = 16 * kWarps;  // query rows per block, and keys per tile
  constexpr int kRow = tc_row<kD>();
  constexpr int kChunks = kD / 8;
  constexpr int kNT = kM / 8;  // 8-key column tiles of S
  constexpr int kDT = kD / 8;  // 8-column tiles of O
  static_assert(kD % 16 == 0 && kD <= 256, "head dim tile");

  T* q_s = reinterpret_cast<T*>(dynamic_smem());  // [kM, kRow]; at the end, the output rows
  T* k_s = q_s + kM * kRow;                        // [stages, kM, kRow]
  T* v_s = k_s + stages * kM * kRow;               // [stages, kM, kRow]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;  // fragment row (and row + 8), column pair 2 * tq
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  const float qk_scale = static_cast<float>(p.scale * kLog2e);
  const float no_key_lse = p.mode == SeqMode::kTemporal ? -INFINITY : INFINITY;
  const int64_t total = n_seqs(p) * nblk;

  // The loop bounds depend on the block only, so every thread reaches every barrier.
  for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
    const int64_t seq = div_fast(w, nblk);
    const Seq s = seq_of(p, seq);
    const int64_t i0 = (w - seq * nblk) * kM;
    const ClsRows<T> cls = cls_rows<T>(p, s);
    const TcRows<const T*> q_rows = tc_rows(p, q, p.q_stride, cls.q, s);
    const TcRows<const T*> k_rows = tc_rows(p, k, p.k_stride, cls.k, s);
    const TcRows<const T*> v_rows = tc_rows(p, v, p.v_stride, cls.v, s);
    const int64_t last = min(i0 + kM, s.valid) - 1;
    const int64_t blk_end = last >= i0 ? key_end(p, s, last) : 0;  // key_end grows with the row
    const int64_t n_tiles = (blk_end + kM - 1) / kM;

    __syncthreads();  // the previous work item's output rows have been written out
    tc_stage<T, kD, kWarps>(q_s, q_rows, i0, s.L, p.D);
    if (n_tiles > 0) {
      tc_stage<T, kD, kWarps>(k_s, k_rows, 0, blk_end, p.D);
      tc_stage<T, kD, kWarps>(v_s, v_rows, 0, blk_end, p.D);
    }
    cp_async_commit();

    // This lane's two rows and the keys they see.
    int64_t row_end[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t i = i0 + warp * 16 + g + 8 * r;
      row_end[r] = i < s.valid ? key_end(p, s, i) : 0;
    }
    float o[kDT][4];
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;
    }
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.f, 0.f};  // this lane's part of the row sums
    uint32_t qf[kD / 16][4];
    const bool warp_live = i0 + warp * 16 < s.valid;  // a row of the warp sees keys

    // Tile t sits in buffer t % stages = t & 1 (stages is 2 whenever there is a second tile).
    for (int64_t t = 0; t < n_tiles; ++t) {
      if (t + 1 < n_tiles) {
        const int nb = static_cast<int>((t + 1) & 1);
        tc_stage<T, kD, kWarps>(k_s + nb * kM * kRow, k_rows, (t + 1) * kM, blk_end, p.D);
        tc_stage<T, kD, kWarps>(v_s + nb * kM * kRow, v_rows, (t + 1) * kM, blk_end, p.D);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      if (t == 0 && warp_live) {
#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk) {
          ldsm_x4(qf[kk], q_s + (warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * kRow + kk * 16 + 8 * (lane / 16));
        }
      }
      const T* kb = k_s + static_cast<int>(t & 1) * kM * kRow;
      const T* vb = v_s + static_cast<int>(t & 1) * kM * kRow;

      int tile_end[2];  // keys of this tile the row sees
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_end[r] = static_cast<int>(max(int64_t(0), min(int64_t(kM), row_end[r] - t * kM)));
      }
      const int tile_begin[2] = {0, 0};
      // Tiles that every row of the warp sees whole (all but the last, and the diagonal ones of
      // causal sequences, in a warp without padded rows) skip the masks. A last tile of at most
      // 16 keys (N = 196: 4 of 64) runs as a 16-key tile (a 32-key variant spilled). A warp
      // whose rows are all padding computes nothing (its m, l and O stay those of a row that
      // sees no key). The tile indices stay 64-bit: with 32-bit ones (603181e) every 16-bit
      // spatial and joint forward failed on the GPU while the emulator passed.
      const bool masked = !__all_sync(0xffffffffu, tile_end[0] == kM && tile_end[1] == kM);
      const int64_t tile_keys = blk_end - t * kM;
      if (warp_live) {
        if (kNT >= 4 && tile_keys <= 16) {
          tc_attend_tile<T, kD, 2>(qf, kb, vb, tile_begin, tile_end, masked, qk_scale, m, l, o);
        } else {
          tc_attend_tile<T, kD, kNT>(qf, kb, vb, tile_begin, tile_end, masked, qk_scale, m, l, o);
        }
      }
      __syncthreads();  // this stage's buffers are refilled two tiles later
    }
    // Without a tile (every row of the block padded) the Q copies may still be in flight, some
    // into other warps' rows, which those warps are about to overwrite with their output.
    cp_async_wait<0>();
    __syncthreads();

    // Normalize, stage this warp's 16 output rows in its own Q rows (its Q fragments are in
    // registers), write lse, then the rows with 16-byte stores.
    const StatView sv = stat_view(p, s);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      T* orow = q_s + (warp * 16 + g + 8 * r) * kRow + 2 * tq;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<uint32_t*>(orow + dt * 8) = pack2<T>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
      }
      const int64_t i = i0 + warp * 16 + g + 8 * r;
      if (tq == 0 && i < s.L) {
        const float lse_val = l[r] > 0.f ? (m[r] + log2f(l[r])) * static_cast<float>(kLn2) : no_key_lse;
        *stat_ptr(static_cast<float*>(p.lse), static_cast<float*>(p.lse_cls), sv, s, i) = lse_val;
      }
    }
    __syncwarp();
    T* cls_o = p.has_cls ? static_cast<T*>(p.cls_out) + cls_frame_off(p.cls_out_stride, s) : nullptr;
    const TcRows<T*> out_rows = tc_rows(p, out, p.out_stride, cls_o, s);
    for (int c = lane; c < 16 * kChunks; c += 32) {
      const int r = c / kChunks, ch = c % kChunks;
      const int64_t i = i0 + warp * 16 + r;
      if (i < s.L && ch * 8 < p.D) {
        T* dst = out_rows.row(i) + ch * 8;
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(q_s + (warp * 16 + r) * kRow + ch * 8);
      }
    }
  }
}

// Temporal attention with T <= 32 in one block of kWarps warps per kPack (b, n, h) groups,
// without the general kernel's sequence machinery. kPack = 2 (T <= 8): the warp packs two groups
// into the 16 rows and 16 keys of its tiles (row and key 8 s + t: frame t of group s; with T < 8
// the rows t >= T are padding), so no row is padding at T = 8, and the key tile is block-diagonal
// (a row sees only its own group's keys). kPack = 1: row and key t are frame t of the one group,
// in one warp (T <= 16) or two (16 < T <= 32: warp w owns rows [16 w, 16 w + 16), both read the
// 32 keys).
template <typename T, int kD, int kPack, int kWarps>
__global__ void __launch_bounds__(32 * kWarps, tc_min_blocks<kD, kWarps>())
    temporal_fwd_tc_packed_kernel(const SpatialParams p, const int64_t, const int) {
  static_assert(kPack == 1 || kPack == 2, "groups per warp");
  static_assert(kWarps == 1 || (kWarps == 2 && kPack == 1), "two warps: one group of up to 32 frames");
  constexpr int kSlots = 16 * kWarps;          // rows and keys of the block
  constexpr int kGroupRows = kSlots / kPack;  // rows (and keys) per group
  constexpr int kRow = tc_row<kD>();
  constexpr int kChunks = kD / 8;
  constexpr int kDT = kD / 8;
  T* q_s = reinterpret_cast<T*>(dynamic_smem());  // [kSlots, kRow]; at the end, the output rows
  T* k_s = q_s + kSlots * kRow;                    // [kSlots, kRow]
  T* v_s = k_s + kSlots * kRow;                    // [kSlots, kRow]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = kWarps == 1 ? 0 : 16 * warp;  // the warp's rows
  const int g = lane / 4, tq = lane % 4;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  float* lse = static_cast<float*>(p.lse);
  const float qk_scale = static_cast<float>(p.scale * kLog2e);
  const int T_ = static_cast<int>(p.T);
  const int64_t G = p.B * p.N * p.H;

  for (int64_t w = blockIdx.x; kPack * w < G; w += gridDim.x) {
    // The warp's groups: frames (rows), valid frames (keys), row pointers, lse of frame 0. With
    // kPack = 1, group 1 is inactive (no rows, no keys).
    int rows[2], len[2];
    int64_t q_off[2], k_off[2], v_off[2], o_off[2], stat[2];
#pragma unroll
    for (int sub = 0; sub < 2; ++sub) {
      const int64_t gi = kPack * w + sub;
      const bool active = sub < kPack && gi < G;
      const int64_t gh = div_fast(active ? gi : 0, p.H);
      const int64_t h = (active ? gi : 0) - gh * p.H;
      const int64_t b = div_fast(gh, p.N);
      const int64_t n = gh - b * p.N;
      rows[sub] = active ? T_ : 0;
      len[sub] = !active ? 0 : p.frame_lens == nullptr ? T_ : static_cast<int>(min(max(p.frame_lens[b], int64_t(0)), p.T));
      q_off[sub] = group_offset(p.q_stride, b, n, h);
      k_off[sub] = group_offset(p.k_stride, b, n, h);
      v_off[sub] = group_offset(p.v_stride, b, n, h);
      o_off[sub] = group_offset(p.out_stride, b, n, h);
      stat[sub] = (b * p.H + h) * p.T * p.N + n;
    }

    tc_block_sync<kWarps>();  // the previous item's output rows have been written out
    for (int c = threadIdx.x; c < kSlots * kChunks; c += 32 * kWarps) {
      const int r = c / kChunks, ch = c % kChunks;
      const int sub = r / kGroupRows, t = r % kGroupRows;
      const bool in_d = ch * 8 < p.D;
      const bool q_ok = in_d && t < (sub ? rows[1] : rows[0]);
      const bool kv_ok = in_d && t < (sub ? len[1] : len[0]);
      const T* q_src = q + (sub ? q_off[1] : q_off[0]) + t * p.q_stride[kT] + ch * 8;
      const T* k_src = k + (sub ? k_off[1] : k_off[0]) + t * p.k_stride[kT] + ch * 8;
      const T* v_src = v + (sub ? v_off[1] : v_off[0]) + t * p.v_stride[kT] + ch * 8;
      cp_async16(q_s + r * kRow + ch * 8, q_ok ? q_src : q, q_ok ? 16 : 0);
      cp_async16(k_s + r * kRow + ch * 8, kv_ok ? k_src : k, kv_ok ? 16 : 0);
      cp_async16(v_s + r * kRow + ch * 8, kv_ok ? v_src : v, kv_ok ? 16 : 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    tc_block_sync<kWarps>();

    uint32_t qf[kD / 16][4];
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      ldsm_x4(qf[kk], q_s + (row0 + (lane % 8) + 8 * ((lane / 8) % 2)) * kRow + kk * 16 + 8 * (lane / 16));
    }
    // This lane's rows g and g + 8: frame g of groups 0 and 1 (kPack = 2), keys 8 s + [0, end);
    // frames row0 + g and row0 + g + 8 of group 0 (kPack = 1), keys [0, end).
    int tile_begin[2], tile_end[2], frame[2], grp[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      grp[r] = kPack == 2 ? r : 0;
      frame[r] = kPack == 2 ? g : row0 + g + 8 * r;
      const int n_keys = grp[r] ? len[1] : len[0];
      const int end = frame[r] < n_keys ? (p.causal ? frame[r] + 1 : n_keys) : 0;
      tile_begin[r] = kGroupRows * grp[r];
      tile_end[r] = tile_begin[r] + end;
    }
    float o[kDT][4];
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;
    }
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.f, 0.f};
    tc_attend_tile<T, kD, kSlots / 8, kPack == 2>(qf, k_s, v_s, tile_begin, tile_end, true, qk_scale, m, l, o);

    // Every lane's Q fragments are loaded before the output rows replace the warp's own Q rows
    // (the other warp reads only its own).
    __syncwarp();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      T* orow = q_s + (row0 + g + 8 * r) * kRow + 2 * tq;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<uint32_t*>(orow + dt * 8) = pack2<T>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
      }
      if (tq == 0 && frame[r] < (grp[r] ? rows[1] : rows[0])) {
        lse[(grp[r] ? stat[1] : stat[0]) + frame[r] * p.N] =
            l[r] > 0.f ? (m[r] + log2f(l[r])) * static_cast<float>(kLn2) : -INFINITY;
      }
    }
    __syncwarp();
    for (int c = lane; c < 16 * kChunks; c += 32) {
      const int r = row0 + c / kChunks, ch = c % kChunks;
      const int sub = r / kGroupRows, t = r % kGroupRows;
      if (t < (sub ? rows[1] : rows[0]) && ch * 8 < p.D) {
        T* dst = out + (sub ? o_off[1] : o_off[0]) + t * p.out_stride[kT] + ch * 8;
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(q_s + r * kRow + ch * 8);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward (head dims up to 64): FlashAttention-2's two passes on the tensor cores, over the same
// sequences and masks as the forward. delta = rowsum(P * dP) stays exact in 16-bit, as in the
// scalar kernels: the dQ kernel sums it in fp32 from the recomputed P and dP in a first loop over
// the keys, writes it to the delta scratch, and only then forms dS = P (dP - delta) (rounded to
// the input dtype for the products) in a second loop. The dK/dV kernel reads lse and delta per
// query. The CLS token's rows go to the per-frame partial buffers (compute dtype) that
// spatial_cls_sum_kernel sums over frames.

// acc[kNT][4] += A B^T: a holds the A fragments of the warp's 16 rows (kD columns), b_rows the
// 8 kNT rows of B (kD columns) in shared memory (S = Q K^T, dP = dO V^T, their transposes).
template <typename T, int kD, int kNT>
__device__ __forceinline__ void tc_gemm_abt(float (&acc)[kNT][4], const uint32_t (&a)[kD / 16][4], const T* b_rows) {
  constexpr int kRow = tc_row<kD>();
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4(bf, b_rows + (np * 16 + (lane % 8) + 8 * (lane / 16)) * kRow + kk * 16 + 8 * ((lane / 8) % 2));
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
      mma_16816<T>(acc[2 * np], a[kk], b0);
      mma_16816<T>(acc[2 * np + 1], a[kk], b1);
    }
  }
}

// acc[kD / 8][4] += X B: x holds a 16 x 8 kNT product in accumulator layout (rounded to T here),
// b_rows its 8 kNT rows of B (kD columns) in shared memory (O = P V, dV = P^T dO, dQ = dS K,
// dK = dS^T Q). kBlockDiag (kNT = 2): rows g take B rows 0-7 only and rows g + 8 B rows 8-15 only
// (two independent problems; a zero of X times a non-finite B row of the other would be NaN).
template <typename T, int kD, int kNT, bool kBlockDiag = false>
__device__ __forceinline__ void tc_gemm_xb(float (&acc)[kD / 8][4], const float (&x)[kNT][4], const T* b_rows) {
  static_assert(!kBlockDiag || kNT == 2, "block-diagonal products are 16 x 16");
  constexpr int kRow = tc_row<kD>();
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kNT / 2; ++kk) {
    const uint32_t xa[4] = {pack2<T>(x[2 * kk][0], x[2 * kk][1]), pack2<T>(x[2 * kk][2], x[2 * kk][3]),
                            pack2<T>(x[2 * kk + 1][0], x[2 * kk + 1][1]),
                            pack2<T>(x[2 * kk + 1][2], x[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < kD / 16; ++dp) {
      uint32_t bf[4];
      ldsm_x4_trans(bf, b_rows + (kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * kRow + dp * 16 + 8 * (lane / 16));
      if constexpr (kBlockDiag) {
        const uint32_t a_lo[4] = {xa[0], 0u, 0u, 0u}, a_hi[4] = {0u, 0u, 0u, xa[3]};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float(&c)[4] = acc[2 * dp + h];
          const uint32_t b_lo[2] = {bf[2 * h], 0u}, b_hi[2] = {0u, bf[2 * h + 1]};
          float lo[4] = {c[0], c[1], 0.f, 0.f}, hi[4] = {0.f, 0.f, c[2], c[3]};
          mma_16816<T>(lo, a_lo, b_lo);
          mma_16816<T>(hi, a_hi, b_hi);
          c[0] = lo[0];
          c[1] = lo[1];
          c[2] = hi[2];
          c[3] = hi[3];
        }
      } else {
        const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
        mma_16816<T>(acc[2 * dp], xa, b0);
        mma_16816<T>(acc[2 * dp + 1], xa, b1);
      }
    }
  }
}

// The A fragments of 16 rows in shared memory.
template <typename T, int kD>
__device__ __forceinline__ void tc_load_a(uint32_t (&a)[kD / 16][4], const T* rows) {
  constexpr int kRow = tc_row<kD>();
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    ldsm_x4(a[kk], rows + ((lane % 8) + 8 * ((lane / 8) % 2)) * kRow + kk * 16 + 8 * (lane / 16));
  }
}

template <int kN, int kM>
__device__ __forceinline__ void tc_zero(float (&x)[kN][kM]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) {
#pragma unroll
    for (int j = 0; j < kM; ++j) x[i][j] = 0.f;
  }
}

// Writes the warp's 16 rows [row0, row0 + 16) of acc * mul: patch rows (< L, not the CLS token)
// to dst in T through the warp's 16 staging rows (16-byte stores), the CLS row in float to
// cls_part (D values).
template <typename T, int kD>
__device__ __forceinline__ void tc_store_rows(const float (&acc)[kD / 8][4], float mul, T* stage,
                                              const TcRows<T*>& dst, int64_t row0, int64_t L, float* cls_part,
                                              int64_t D) {
  constexpr int kRow = tc_row<kD>();
  constexpr int kChunks = kD / 8;
  const int lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    T* srow = stage + (g + 8 * h) * kRow + 2 * tq;
    const bool cls_row = row0 + g + 8 * h == dst.cls_token;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      const float x0 = acc[dt][2 * h] * mul, x1 = acc[dt][2 * h + 1] * mul;
      *reinterpret_cast<uint32_t*>(srow + dt * 8) = pack2<T>(x0, x1);
      const int d = dt * 8 + 2 * tq;
      if (cls_row && d < D) {
        cls_part[d] = x0;
        if (d + 1 < D) cls_part[d + 1] = x1;
      }
    }
  }
  __syncwarp();
  for (int c = lane; c < 16 * kChunks; c += 32) {
    const int r = c / kChunks, ch = c % kChunks;
    const int64_t i = row0 + r;
    if (i < L && i != dst.cls_token && ch * 8 < D) {
      *reinterpret_cast<uint4*>(dst.row(i) + ch * 8) = *reinterpret_cast<const uint4*>(stage + r * kRow + ch * 8);
    }
  }
}

// One key tile of the dQ kernel for the warp's 16 rows: S = Q K^T, dP = dO V^T, P from lse; pass 0
// adds rowsum(P * dP) to this lane's part of delta (dlt), pass 1 forms dS = P (dP - delta) and
// dQ += dS K. Row half r sees the tile's keys [0, tile_end[r]) (all of them unless `masked`).
template <typename T, int kD, int kNT>
__device__ __forceinline__ void tc_dq_tile(int pass, const uint32_t (&qf)[kD / 16][4], const uint32_t (&dof)[kD / 16][4],
                                           const T* kb, const T* vb, const int (&tile_end)[2], bool masked,
                                           float qk_scale, const float (&lse2)[2], float (&dlt)[2],
                                           float (&dq)[kD / 8][4]) {
  const int tq = threadIdx.x % 4;
  float sc[kNT][4], dp[kNT][4];
  tc_zero(sc);
  tc_zero(dp);
  tc_gemm_abt<T, kD, kNT>(sc, qf, kb);
  tc_gemm_abt<T, kD, kNT>(dp, dof, vb);
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = nt * 8 + 2 * tq + (e % 2);
      const float pr =
          !masked || key < tile_end[e / 2] ? exp2_approx(fmaf(sc[nt][e], qk_scale, -lse2[e / 2])) : 0.f;
      if (pass == 0) {
        dlt[e / 2] += pr * dp[nt][e];
      } else {
        sc[nt][e] = pr * (dp[nt][e] - dlt[e / 2]);  // dS
      }
    }
  }
  if (pass == 1) tc_gemm_xb<T, kD, kNT>(dq, sc, kb);
}

// delta and dQ of 16 * kWarps query rows, in two loops over the key tiles (see above).
template <typename T, int kD, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) flash_bwd_dq_tc_kernel(const SpatialParams p, const int64_t nblk, const int stages) {
  constexpr int kM = 16 * kWarps;
  constexpr int kRow = tc_row<kD>();
  constexpr int kNT = kM / 8;
  constexpr int kDT = kD / 8;
  T* q_s = reinterpret_cast<T*>(dynamic_smem());  // [kM, kRow]; at the end, the dQ rows
  T* do_s = q_s + kM * kRow;                       // [kM, kRow]
  T* k_s = do_s + kM * kRow;                       // [stages, kM, kRow]
  T* v_s = k_s + stages * kM * kRow;               // [stages, kM, kRow]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;
  const BwdInputs<T> in = bwd_inputs<T>(p);
  const float qk_scale = static_cast<float>(in.qk_scale), log2e = static_cast<float>(in.log2e);
  float* delta = static_cast<float*>(p.delta);
  float* delta_cls = static_cast<float*>(p.delta_cls);
  const int64_t total = n_seqs(p) * nblk;

  for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
    const int64_t seq = div_fast(w, nblk);
    const Seq s = seq_of(p, seq);
    const int64_t i0 = (w - seq * nblk) * kM;
    const ClsRows<T> cls = cls_rows<T>(p, s);
    const StatView sv = stat_view(p, s);
    const TcRows<const T*> q_rows = tc_rows(p, in.q, p.q_stride, cls.q, s);
    const TcRows<const T*> do_rows = tc_rows(p, in.dout, p.dout_stride, cls.dout, s);
    const TcRows<const T*> k_rows = tc_rows(p, in.k, p.k_stride, cls.k, s);
    const TcRows<const T*> v_rows = tc_rows(p, in.v, p.v_stride, cls.v, s);
    const int64_t last = min(i0 + kM, s.valid) - 1;
    const int64_t blk_end = last >= i0 ? key_end(p, s, last) : 0;
    const int64_t n_tiles = (blk_end + kM - 1) / kM;

    int64_t row_end[2];
    float lse2[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t i = i0 + warp * 16 + g + 8 * r;
      const bool live = i < s.valid;
      row_end[r] = live ? key_end(p, s, i) : 0;
      lse2[r] = live && row_end[r] > 0 ? stat_at(in.lse, in.lse_cls, sv, s, i) * log2e : 0.f;
    }

    __syncthreads();  // the previous work item's dQ rows have been written out
    tc_stage<T, kD, kWarps>(q_s, q_rows, i0, s.valid, p.D);
    tc_stage<T, kD, kWarps>(do_s, do_rows, i0, s.valid, p.D);
    cp_async_commit();
    uint32_t qf[kD / 16][4], dof[kD / 16][4];
    const bool warp_live = i0 + warp * 16 < s.valid;  // a row of the warp sees keys
    float dlt[2] = {0.f, 0.f};  // this lane's part of delta, then the row's delta
    float dq[kDT][4];
    tc_zero(dq);

    // Loop 0 sums delta; loop 1 accumulates dQ with it.
    for (int pass = 0; pass < 2; ++pass) {
      // A single key tile (temporal T <= 32, short sequences) stays in its buffer for pass 1.
      if (n_tiles > 1 || (n_tiles == 1 && pass == 0)) {
        tc_stage<T, kD, kWarps>(k_s, k_rows, 0, blk_end, p.D);
        tc_stage<T, kD, kWarps>(v_s, v_rows, 0, blk_end, p.D);
      }
      cp_async_commit();
      for (int64_t t = 0; t < n_tiles; ++t) {
        if (t + 1 < n_tiles) {
          const int nb = static_cast<int>((t + 1) & 1);  // stages is 2 whenever there is a second tile
          tc_stage<T, kD, kWarps>(k_s + nb * kM * kRow, k_rows, (t + 1) * kM, blk_end, p.D);
          tc_stage<T, kD, kWarps>(v_s + nb * kM * kRow, v_rows, (t + 1) * kM, blk_end, p.D);
          cp_async_commit();
          cp_async_wait<1>();
        } else {
          cp_async_wait<0>();
        }
        __syncthreads();
        if (pass == 0 && t == 0 && warp_live) {
          tc_load_a<T, kD>(qf, q_s + warp * 16 * kRow);
          tc_load_a<T, kD>(dof, do_s + warp * 16 * kRow);
        }
        const T* kb = k_s + static_cast<int>(t & 1) * kM * kRow;
        const T* vb = v_s + static_cast<int>(t & 1) * kM * kRow;
        int tile_end[2];  // keys of this tile the row sees
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          tile_end[r] = static_cast<int>(max(int64_t(0), min(int64_t(kM), row_end[r] - t * kM)));
        }
        // As in the forward: full tiles skip the masks, a last tile of at most 16 keys runs as
        // one of 16, a warp of padded rows only (delta 0, dQ 0) computes nothing.
        const bool masked = !__all_sync(0xffffffffu, tile_end[0] == kM && tile_end[1] == kM);
        const int64_t tile_keys = blk_end - t * kM;
        if (warp_live) {
          if (kNT >= 4 && tile_keys <= 16) {
            tc_dq_tile<T, kD, 2>(pass, qf, dof, kb, vb, tile_end, masked, qk_scale, lse2, dlt, dq);
          } else {
            tc_dq_tile<T, kD, kNT>(pass, qf, dof, kb, vb, tile_end, masked, qk_scale, lse2, dlt, dq);
          }
        }
        __syncthreads();  // this stage's buffers are refilled two tiles later
      }
      cp_async_wait<0>();
      __syncthreads();
      if (pass == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          dlt[r] += __shfl_xor_sync(0xffffffffu, dlt[r], 1);
          dlt[r] += __shfl_xor_sync(0xffffffffu, dlt[r], 2);
          const int64_t i = i0 + warp * 16 + g + 8 * r;
          if (tq == 0 && i < s.L) *stat_ptr(delta, delta_cls, sv, s, i) = dlt[r];
        }
      }
    }

    float* cls_part = p.has_cls ? static_cast<float*>(p.dq_cls_part) + cls_part_off(p, s) : nullptr;
    const TcRows<T*> dq_rows = tc_rows(p, static_cast<T*>(p.dq), p.dq_stride, static_cast<T*>(nullptr), s);
    tc_store_rows<T, kD>(dq, static_cast<float>(in.scale), q_s + warp * 16 * kRow, dq_rows, i0 + warp * 16, s.L,
                         cls_part, p.D);
  }
}

// One query tile of the dK/dV kernel for the warp's 16 keys (key: this lane's two): S^T = K Q^T,
// dP^T = V dO^T, P^T from each query column's lse (lse2_b, base 2), dS^T = P^T (dP^T - delta),
// dV += P^T dO, dK += dS^T Q. Column c sees the keys below kend_b[c].
template <typename T, int kD, int kNT>
__device__ __forceinline__ void tc_dkdv_tile(const uint32_t (&kf)[kD / 16][4], const uint32_t (&vf)[kD / 16][4],
                                             const T* qb, const T* dob, const float* lse2_b, const float* dlt_b,
                                             const int* kend_b, const int (&key)[2], float qk_scale,
                                             float (&dk)[kD / 8][4], float (&dv)[kD / 8][4]) {
  const int tq = threadIdx.x % 4;
  float st[kNT][4], dpt[kNT][4];  // S^T, dP^T: the warp's 16 keys x 8 kNT query columns
  tc_zero(st);
  tc_zero(dpt);
  tc_gemm_abt<T, kD, kNT>(st, kf, qb);
  tc_gemm_abt<T, kD, kNT>(dpt, vf, dob);
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = nt * 8 + 2 * tq + (e % 2);  // the query column
      const float pr = key[e / 2] < kend_b[c] ? exp2_approx(fmaf(st[nt][e], qk_scale, -lse2_b[c])) : 0.f;
      st[nt][e] = pr;
      dpt[nt][e] = pr * (dpt[nt][e] - dlt_b[c]);  // dS^T
    }
  }
  tc_gemm_xb<T, kD, kNT>(dv, st, dob);
  tc_gemm_xb<T, kD, kNT>(dk, dpt, qb);
}

// dK and dV of 16 * kWarps key rows, in one loop over the query tiles that see them.
template <typename T, int kD, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) flash_bwd_dkdv_tc_kernel(const SpatialParams p, const int64_t nblk, const int stages) {
  constexpr int kM = 16 * kWarps;
  constexpr int kRow = tc_row<kD>();
  constexpr int kNT = kM / 8;
  constexpr int kDT = kD / 8;
  T* k_s = reinterpret_cast<T*>(dynamic_smem());  // [kM, kRow]; at the end, the dK rows
  T* v_s = k_s + kM * kRow;                        // [kM, kRow]; at the end, the dV rows
  T* q_s = v_s + kM * kRow;                        // [stages, kM, kRow]
  T* do_s = q_s + stages * kM * kRow;              // [stages, kM, kRow]
  float* lse2_s = reinterpret_cast<float*>(do_s + stages * kM * kRow);  // [stages, kM]
  float* dlt_s = lse2_s + stages * kM;                                  // [stages, kM]
  int* kend_s = reinterpret_cast<int*>(dlt_s + stages * kM);            // [stages, kM]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4;
  const BwdInputs<T> in = bwd_inputs<T>(p);
  const float qk_scale = static_cast<float>(in.qk_scale), log2e = static_cast<float>(in.log2e);
  const float* delta = static_cast<const float*>(p.delta);
  const float* delta_cls = static_cast<const float*>(p.delta_cls);
  const int64_t total = n_seqs(p) * nblk;

  for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
    const int64_t seq = div_fast(w, nblk);
    const Seq s = seq_of(p, seq);
    const int64_t j0 = (w - seq * nblk) * kM;
    const ClsRows<T> cls = cls_rows<T>(p, s);
    const StatView sv = stat_view(p, s);
    const TcRows<const T*> q_rows = tc_rows(p, in.q, p.q_stride, cls.q, s);
    const TcRows<const T*> do_rows = tc_rows(p, in.dout, p.dout_stride, cls.dout, s);
    const TcRows<const T*> k_rows = tc_rows(p, in.k, p.k_stride, cls.k, s);
    const TcRows<const T*> v_rows = tc_rows(p, in.v, p.v_stride, cls.v, s);
    // Queries that see a key of the block: from the first key's first query to the last valid row.
    const bool any_key = j0 < s.valid;
    const int64_t t_first = any_key ? query_begin(p, s, j0) / kM : 0;
    const int64_t t_end = any_key ? (s.valid + kM - 1) / kM : 0;

    auto stage_queries = [&](int64_t t, int buf) {
      const int64_t r0 = t * kM;
      tc_stage<T, kD, kWarps>(q_s + buf * kM * kRow, q_rows, r0, s.valid, p.D);
      tc_stage<T, kD, kWarps>(do_s + buf * kM * kRow, do_rows, r0, s.valid, p.D);
      for (int c = threadIdx.x; c < kM; c += kWarps * 32) {
        const int64_t i = r0 + c;
        const bool live = i < s.valid;
        const int64_t end = live ? key_end(p, s, i) : 0;
        kend_s[buf * kM + c] = static_cast<int>(end);
        lse2_s[buf * kM + c] = end > 0 ? stat_at(in.lse, in.lse_cls, sv, s, i) * log2e : 0.f;
        dlt_s[buf * kM + c] = end > 0 ? stat_at(delta, delta_cls, sv, s, i) : 0.f;
      }
    };

    __syncthreads();  // the previous work item's dK/dV rows have been written out
    tc_stage<T, kD, kWarps>(k_s, k_rows, j0, s.valid, p.D);
    tc_stage<T, kD, kWarps>(v_s, v_rows, j0, s.valid, p.D);
    if (t_first < t_end) stage_queries(t_first, 0);
    cp_async_commit();
    uint32_t kf[kD / 16][4], vf[kD / 16][4];
    float dk[kDT][4], dv[kDT][4];
    tc_zero(dk);
    tc_zero(dv);
    const int64_t key0 = j0 + warp * 16;  // this warp's first key
    const bool warp_live = key0 < s.valid;
    const int key[2] = {static_cast<int>(key0) + g, static_cast<int>(key0) + g + 8};  // a sequence has < 2^31 tokens

    // Query tile t sits in buffer (t - t_first) % stages = (t - t_first) & 1 (stages is 2 whenever
    // there is a second tile).
    for (int64_t t = t_first; t < t_end; ++t) {
      const int buf = static_cast<int>((t - t_first) & 1);
      if (t + 1 < t_end) {
        stage_queries(t + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      if (t == t_first && warp_live) {
        tc_load_a<T, kD>(kf, k_s + warp * 16 * kRow);
        tc_load_a<T, kD>(vf, v_s + warp * 16 * kRow);
      }
      const T* qb = q_s + buf * kM * kRow;
      const T* dob = do_s + buf * kM * kRow;
      const float* lse2_b = lse2_s + buf * kM;
      const float* dlt_b = dlt_s + buf * kM;
      const int* kend_b = kend_s + buf * kM;
      // A last query tile of at most 16 rows (the others are zero-filled and see no key) runs as
      // one of 16; a warp whose keys are all padding (dK, dV 0) computes nothing.
      if (warp_live) {
        if (kNT >= 4 && s.valid - t * kM <= 16) {
          tc_dkdv_tile<T, kD, 2>(kf, vf, qb, dob, lse2_b, dlt_b, kend_b, key, qk_scale, dk, dv);
        } else {
          tc_dkdv_tile<T, kD, kNT>(kf, vf, qb, dob, lse2_b, dlt_b, kend_b, key, qk_scale, dk, dv);
        }
      }
      __syncthreads();  // this stage's buffers are refilled two tiles later
    }
    cp_async_wait<0>();
    __syncthreads();

    const int64_t part = p.has_cls ? cls_part_off(p, s) : 0;
    float* dk_part = p.has_cls ? static_cast<float*>(p.dk_cls_part) + part : nullptr;
    float* dv_part = p.has_cls ? static_cast<float*>(p.dv_cls_part) + part : nullptr;
    const TcRows<T*> dk_rows = tc_rows(p, static_cast<T*>(p.dk), p.dk_stride, static_cast<T*>(nullptr), s);
    const TcRows<T*> dv_rows = tc_rows(p, static_cast<T*>(p.dv), p.dv_stride, static_cast<T*>(nullptr), s);
    tc_store_rows<T, kD>(dk, static_cast<float>(in.scale), k_s + warp * 16 * kRow, dk_rows, key0, s.L, dk_part, p.D);
    tc_store_rows<T, kD>(dv, 1.f, v_s + warp * 16 * kRow, dv_rows, key0, s.L, dv_part, p.D);
  }
}

// Temporal backward with T <= 32 in one block of kWarps warps per kPack (b, n, h) groups (16
// kWarps slots: with one warp the forward's lean kernel's rows, 8 s + t with kPack = 2, t with
// kPack = 1; with two warps (16 < T <= 32, kPack = 1) slot t is frame t), fused: q, k, v, dout and
// lse are read once and dq, dk, dv written once; delta = rowsum(P * dP) (fp32, quad sums) is
// summed by the warp that owns the query row and passed to the dK/dV side in shared memory. Warp
// w owns query slots and key slots [16 w, 16 w + 16): dQ from S = Q K^T and dP = dO V^T over all
// keys; dK and dV from the transposed products S^T = K Q^T and dP^T = V dO^T over all queries,
// recomputed rather than transposed (the probabilities of a key row need each query column's lse
// and delta). Masked elements are selected to 0, never multiplied, and with kPack = 2 every
// product is block-diagonal (tc_gemm_xb), so no value of one group reaches the other's gradients.
template <typename T, int kD, int kPack, int kWarps>
__global__ void __launch_bounds__(32 * kWarps) temporal_bwd_tc_packed_kernel(const SpatialParams p, const int64_t, const int) {
  static_assert(kPack == 1 || kPack == 2, "groups per block");
  static_assert(kWarps == 1 || (kWarps == 2 && kPack == 1), "two warps: one group of up to 32 frames");
  static_assert(kD <= 128, "the fused backward's head dims");
  constexpr int kSlots = 16 * kWarps;
  constexpr int kGroupRows = kSlots / kPack;
  constexpr int kNT = kSlots / 8;  // 8-column tiles of S (keys) and S^T (queries)
  constexpr int kRow = tc_row<kD>();
  constexpr int kChunks = kD / 8;
  constexpr int kDT = kD / 8;
  constexpr bool kDiag = kPack == 2;
  T* q_s = reinterpret_cast<T*>(dynamic_smem());  // [kSlots, kRow] each
  T* k_s = q_s + kSlots * kRow;                    // at the end, the dK rows
  T* v_s = k_s + kSlots * kRow;                    // at the end, the dV rows
  T* do_s = v_s + kSlots * kRow;
  T* dq_s = do_s + kSlots * kRow;                  // the dQ rows
  float* lse2_s = reinterpret_cast<float*>(dq_s + kSlots * kRow);  // [kSlots] per query slot
  float* dlt_s = lse2_s + kSlots;                                  // [kSlots]
  int* lo_s = reinterpret_cast<int*>(dlt_s + kSlots);              // [kSlots]: the slot's visible keys [lo, hi)
  int* hi_s = lo_s + kSlots;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = kWarps == 1 ? 0 : 16 * warp;  // the warp's query slots and key slots
  const int g = lane / 4, tq = lane % 4;
  const BwdInputs<T> in = bwd_inputs<T>(p);
  const float qk_scale = static_cast<float>(in.qk_scale), log2e = static_cast<float>(in.log2e);
  const float scale = static_cast<float>(in.scale);
  const int T_ = static_cast<int>(p.T);
  const int64_t G = p.B * p.N * p.H;

  for (int64_t w = blockIdx.x; kPack * w < G; w += gridDim.x) {
    int rows[2], len[2];
    int64_t b_[2], n_[2], h_[2];
#pragma unroll
    for (int sub = 0; sub < 2; ++sub) {
      const int64_t gi = kPack * w + sub;
      const bool active = sub < kPack && gi < G;
      const int64_t gh = div_fast(active ? gi : 0, p.H);
      h_[sub] = (active ? gi : 0) - gh * p.H;
      b_[sub] = div_fast(gh, p.N);
      n_[sub] = gh - b_[sub] * p.N;
      rows[sub] = active ? T_ : 0;
      len[sub] = !active ? 0
                         : p.frame_lens == nullptr ? T_
                                                   : static_cast<int>(min(max(p.frame_lens[b_[sub]], int64_t(0)), p.T));
    }
    auto off = [&](const int64_t(&st)[5], int sub) {
      return sub ? group_offset(st, b_[1], n_[1], h_[1]) : group_offset(st, b_[0], n_[0], h_[0]);
    };
    auto stat = [&](int sub) { return sub ? (b_[1] * p.H + h_[1]) * p.T * p.N + n_[1] : (b_[0] * p.H + h_[0]) * p.T * p.N + n_[0]; };

    tc_block_sync<kWarps>();  // the previous item's gradient rows have been written out
    for (int c = threadIdx.x; c < kSlots * kChunks; c += 32 * kWarps) {
      const int r = c / kChunks, ch = c % kChunks;
      const int sub = r / kGroupRows, t = r % kGroupRows;
      const bool ok = ch * 8 < p.D && t < (sub ? len[1] : len[0]);  // padded frames: neither queries nor keys
      const int64_t e = ch * 8;
      cp_async16(q_s + r * kRow + ch * 8, ok ? in.q + off(p.q_stride, sub) + t * p.q_stride[kT] + e : in.q, ok ? 16 : 0);
      cp_async16(k_s + r * kRow + ch * 8, ok ? in.k + off(p.k_stride, sub) + t * p.k_stride[kT] + e : in.k, ok ? 16 : 0);
      cp_async16(v_s + r * kRow + ch * 8, ok ? in.v + off(p.v_stride, sub) + t * p.v_stride[kT] + e : in.v, ok ? 16 : 0);
      cp_async16(do_s + r * kRow + ch * 8, ok ? in.dout + off(p.dout_stride, sub) + t * p.dout_stride[kT] + e : in.dout,
                 ok ? 16 : 0);
    }
    cp_async_commit();
    if (threadIdx.x < kSlots) {
      const int slot = threadIdx.x, sub = slot / kGroupRows, t = slot % kGroupRows;
      const int n_keys = sub ? len[1] : len[0];
      const int end = t < n_keys ? (p.causal ? t + 1 : n_keys) : 0;
      lo_s[slot] = kGroupRows * sub;
      hi_s[slot] = kGroupRows * sub + end;
      lse2_s[slot] = end > 0 ? in.lse[stat(sub) + t * p.N] * log2e : 0.f;
    }
    cp_async_wait<0>();
    tc_block_sync<kWarps>();

    // dQ side: rows are query slots row0 + g and row0 + g + 8, columns all key slots.
    int lo[2], hi[2];
    float lse2[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      lo[h] = lo_s[row0 + g + 8 * h];
      hi[h] = hi_s[row0 + g + 8 * h];
      lse2[h] = lse2_s[row0 + g + 8 * h];
    }
    float sc[kNT][4], dp[kNT][4], dq[kDT][4];
    tc_zero(sc);
    tc_zero(dp);
    tc_zero(dq);  // dQ / scale
    {
      uint32_t qf[kD / 16][4], dof[kD / 16][4];
      tc_load_a<T, kD>(qf, q_s + row0 * kRow);
      tc_load_a<T, kD>(dof, do_s + row0 * kRow);
      tc_gemm_abt<T, kD, kNT>(sc, qf, k_s);
      tc_gemm_abt<T, kD, kNT>(dp, dof, v_s);
    }
    float dlt[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = nt * 8 + 2 * tq + (e % 2), h = e / 2;
        const bool vis = key >= lo[h] && key < hi[h];
        sc[nt][e] = vis ? exp2f(sc[nt][e] * qk_scale - lse2[h]) : 0.f;  // P
        dlt[h] += vis ? sc[nt][e] * dp[nt][e] : 0.f;
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      dlt[h] += __shfl_xor_sync(0xffffffffu, dlt[h], 1);
      dlt[h] += __shfl_xor_sync(0xffffffffu, dlt[h], 2);
      if (tq == 0) dlt_s[row0 + g + 8 * h] = dlt[h];
    }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = nt * 8 + 2 * tq + (e % 2), h = e / 2;
        sc[nt][e] = key >= lo[h] && key < hi[h] ? sc[nt][e] * (dp[nt][e] - dlt[h]) : 0.f;  // dS
      }
    }
    tc_gemm_xb<T, kD, kNT, kDiag>(dq, sc, k_s);
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // staged now: its registers are free for dK and dV
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        *reinterpret_cast<uint32_t*>(dq_s + (row0 + g + 8 * h) * kRow + dt * 8 + 2 * tq) =
            pack2<T>(dq[dt][2 * h] * scale, dq[dt][2 * h + 1] * scale);
      }
    }
    tc_block_sync<kWarps>();  // dlt_s is complete

    // dK/dV side: rows are key slots row0 + g and row0 + g + 8, columns all query slots.
    float st[kNT][4], dpt[kNT][4], dk[kDT][4], dv[kDT][4];
    tc_zero(st);
    tc_zero(dpt);
    tc_zero(dk);
    tc_zero(dv);
    {
      uint32_t kf[kD / 16][4], vf[kD / 16][4];
      tc_load_a<T, kD>(kf, k_s + row0 * kRow);
      tc_load_a<T, kD>(vf, v_s + row0 * kRow);
      tc_gemm_abt<T, kD, kNT>(st, kf, q_s);
      tc_gemm_abt<T, kD, kNT>(dpt, vf, do_s);
    }
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qc = nt * 8 + 2 * tq + (e % 2), key = row0 + g + 8 * (e / 2);
        const bool vis = key >= lo_s[qc] && key < hi_s[qc];
        const float pr = vis ? exp2f(st[nt][e] * qk_scale - lse2_s[qc]) : 0.f;
        st[nt][e] = pr;                                                 // P^T
        dpt[nt][e] = vis ? pr * (dpt[nt][e] - dlt_s[qc]) : 0.f;         // dS^T
      }
    }
    tc_gemm_xb<T, kD, kNT, kDiag>(dv, st, do_s);
    tc_gemm_xb<T, kD, kNT, kDiag>(dk, dpt, q_s);
    // Every lane's K and V fragments are loaded before dK / dV replace the warp's own rows (the
    // other warp reads only its own K and V rows, Q and dO after the barrier above).
    __syncwarp();

    // Stage dK and dV beside dQ, then write the warp's rows of real frames (padded frames: 0).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + g + 8 * h;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        const int col = dt * 8 + 2 * tq;
        *reinterpret_cast<uint32_t*>(k_s + r * kRow + col) = pack2<T>(dk[dt][2 * h] * scale, dk[dt][2 * h + 1] * scale);
        *reinterpret_cast<uint32_t*>(v_s + r * kRow + col) = pack2<T>(dv[dt][2 * h], dv[dt][2 * h + 1]);
      }
    }
    __syncwarp();
    for (int c = lane; c < 16 * kChunks; c += 32) {
      const int r = row0 + c / kChunks, ch = c % kChunks;
      const int sub = r / kGroupRows, t = r % kGroupRows;
      if (t < (sub ? rows[1] : rows[0]) && ch * 8 < p.D) {
        const int e = ch * 8;
        T* dq_g = static_cast<T*>(p.dq) + off(p.dq_stride, sub) + t * p.dq_stride[kT] + e;
        T* dk_g = static_cast<T*>(p.dk) + off(p.dk_stride, sub) + t * p.dk_stride[kT] + e;
        T* dv_g = static_cast<T*>(p.dv) + off(p.dv_stride, sub) + t * p.dv_stride[kT] + e;
        *reinterpret_cast<uint4*>(dq_g) = *reinterpret_cast<const uint4*>(dq_s + r * kRow + e);
        *reinterpret_cast<uint4*>(dk_g) = *reinterpret_cast<const uint4*>(k_s + r * kRow + e);
        *reinterpret_cast<uint4*>(dv_g) = *reinterpret_cast<const uint4*>(v_s + r * kRow + e);
      }
    }
  }
}

// Host side: whether the kernel applies, and its launch.
template <typename T>
constexpr bool kTcDtype = false;
template <>
constexpr bool kTcDtype<__half> = true;
template <>
constexpr bool kTcDtype<__nv_bfloat16> = true;

constexpr int64_t kTcMaxHeadDim = 160;

template <typename T>
bool flash_tc_applies(const SpatialParams& p) {
  return kTcDtype<T> && p.vec16 && p.D % 8 == 0 && p.D > 0 && p.D <= kTcMaxHeadDim;
}

struct TcLaunch {
  int pack;      // temporal_fwd_tc_packed_kernel (temporal, T <= 32): groups per block (1 or 2); 0: flash
  int kd;        // head dim of the instantiation (D padded)
  int warps;     // warps per block: 16 * warps query rows per block and keys per tile
  int stages;    // K/V buffers: 2 when the sequence has more than one tile
  size_t smem;   // dynamic shared memory bytes per block
  int64_t nblk;  // row blocks per sequence (not read by the packed kernel)
  int64_t grid;  // blocks (1-D; the kernels loop over work items)
};

inline int tc_head_dim(int64_t D) {
  return D <= 32 ? 32 : D <= 64 ? 64 : D <= 96 ? 96 : D <= 128 ? 128 : 160;
}

inline TcLaunch tc_launch(const SpatialParams& p) {
  TcLaunch l;
  const int64_t L = seq_len(p);
  l.kd = tc_head_dim(p.D);
  l.pack = p.mode != SeqMode::kTemporal || L > 32 ? 0 : L <= 8 ? 2 : 1;
  l.warps = L <= 16 ? 1 : L <= 32 ? 2 : 4;
  const int64_t rows = 16 * l.warps;
  l.stages = L > rows ? 2 : 1;
  l.smem = static_cast<size_t>(rows * (l.kd + 8) * 2 * (1 + 2 * l.stages));
  l.nblk = (L + rows - 1) / rows;
  const int64_t items = l.pack > 0 ? (seq_count(p) + l.pack - 1) / l.pack : seq_count(p) * l.nblk;
  l.grid = std::min<int64_t>(items, int64_t(1) << 30);
  return l;
}

// The kernel instantiation of a launch (both kernels take the same arguments).
template <typename T>
using TcKernel = void (*)(const SpatialParams, const int64_t, const int);

template <typename T, int kD>
TcKernel<T> tc_kernel_for(const TcLaunch& l) {
  if (l.pack == 2) return temporal_fwd_tc_packed_kernel<T, kD, 2, 1>;
  if (l.pack == 1) {
    return l.warps == 2 ? temporal_fwd_tc_packed_kernel<T, kD, 1, 2> : temporal_fwd_tc_packed_kernel<T, kD, 1, 1>;
  }
  return l.warps == 1 ? flash_fwd_tc_kernel<T, kD, 1> : l.warps == 2 ? flash_fwd_tc_kernel<T, kD, 2>
                                                                      : flash_fwd_tc_kernel<T, kD, 4>;
}

// The backward: the flash pair for head dims up to 64 (their registers), the fused temporal kernel
// (T <= 32) up to 128.
constexpr int64_t kTcBwdMaxHeadDim = 64;
constexpr int64_t kTcFusedBwdMaxHeadDim = 128;

inline bool tc_bwd_fused(const SpatialParams& p) { return p.mode == SeqMode::kTemporal && p.T <= 32; }

template <typename T>
bool flash_tc_bwd_applies(const SpatialParams& p) {
  return flash_tc_applies<T>(p) && p.D <= (tc_bwd_fused(p) ? kTcFusedBwdMaxHeadDim : kTcBwdMaxHeadDim);
}

struct TcBwdLaunch {
  int pack;  // temporal_bwd_tc_packed_kernel (temporal, T <= 32): groups per block; 0: the two flash kernels
  int kd, warps, stages;
  size_t smem_dq, smem_dkdv;
  int64_t nblk, grid;
  TcKernel<void> dq, dkdv;
};

template <typename T, int kD, int kWarps>
void tc_bwd_kernels(TcBwdLaunch& l) {
  l.dq = flash_bwd_dq_tc_kernel<T, kD, kWarps>;
  l.dkdv = flash_bwd_dkdv_tc_kernel<T, kD, kWarps>;
}

template <typename T, int kD>
TcKernel<void> tc_fused_bwd_kernel(int pack, int warps) {
  return warps == 2  ? temporal_bwd_tc_packed_kernel<T, kD, 1, 2>
         : pack == 2 ? temporal_bwd_tc_packed_kernel<T, kD, 2, 1>
                     : temporal_bwd_tc_packed_kernel<T, kD, 1, 1>;
}

template <typename T>
TcBwdLaunch tc_bwd_launch(const SpatialParams& p) {
  TcBwdLaunch l;
  const int64_t L = seq_len(p);
  l.kd = p.D <= 32 ? 32 : 64;
  l.warps = L <= 16 ? 1 : L <= 32 ? 2 : 4;
  const int64_t rows = 16 * l.warps;
  l.stages = L > rows ? 2 : 1;
  const int64_t tile = rows * (l.kd + 8) * 2;
  l.smem_dq = static_cast<size_t>(tile * (2 + 2 * l.stages));
  l.smem_dkdv = static_cast<size_t>(tile * (2 + 2 * l.stages) + l.stages * rows * 12);
  l.nblk = (L + rows - 1) / rows;
  l.grid = std::min<int64_t>(seq_count(p) * l.nblk, int64_t(1) << 30);
  l.dq = l.dkdv = nullptr;
  l.pack = !tc_bwd_fused(p) ? 0 : L <= 8 ? 2 : 1;
  if (l.pack > 0) {
    l.kd = tc_head_dim(p.D);
    // One fused kernel (in l.dq): Q, K, V, dO and the gradient rows of 16 slots per warp, 4
    // statistics each.
    l.warps = L <= 16 ? 1 : 2;
    l.stages = 1;
    l.smem_dq = static_cast<size_t>(16 * l.warps * (5 * (l.kd + 8) * 2 + 16));
    l.smem_dkdv = 0;
    l.grid = std::min<int64_t>((seq_count(p) + l.pack - 1) / l.pack, int64_t(1) << 30);
    if constexpr (kTcDtype<T>) {
      switch (l.kd) {
        case 32: l.dq = tc_fused_bwd_kernel<T, 32>(l.pack, l.warps); break;
        case 64: l.dq = tc_fused_bwd_kernel<T, 64>(l.pack, l.warps); break;
        case 96: l.dq = tc_fused_bwd_kernel<T, 96>(l.pack, l.warps); break;
        default: l.dq = tc_fused_bwd_kernel<T, 128>(l.pack, l.warps); break;
      }
    }
    return l;
  }
  if constexpr (kTcDtype<T>) {
    if (l.kd == 32) {
      l.warps == 1 ? tc_bwd_kernels<T, 32, 1>(l) : l.warps == 2 ? tc_bwd_kernels<T, 32, 2>(l) : tc_bwd_kernels<T, 32, 4>(l);
    } else {
      l.warps == 1 ? tc_bwd_kernels<T, 64, 1>(l) : l.warps == 2 ? tc_bwd_kernels<T, 64, 2>(l) : tc_bwd_kernels<T, 64, 4>(l);
    }
  }
  return l;
}

template <typename T>
TcKernel<T> tc_kernel(const TcLaunch& l) {
  switch (l.kd) {
    case 32: return tc_kernel_for<T, 32>(l);
    case 64: return tc_kernel_for<T, 64>(l);
    case 96: return tc_kernel_for<T, 96>(l);
    case 128: return tc_kernel_for<T, 128>(l);
    default: return tc_kernel_for<T, 160>(l);
  }
}

}  // namespace detail
}  // namespace temporal_kernels
