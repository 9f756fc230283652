// Hopper (sm_90a) variant of flash_tc.cuh's forward: the same work items (query rows of one
// sequence per block, 64-key tiles, two K/V stages), masks, online softmax and statistics, with a
// tile's two products on warpgroup MMA (wgmma) instead of per-warp mma.sync, as Triton's forward
// does on this chip. A block is kWG warpgroups of 4 warps (64 kWG query rows; two share each
// staged K/V tile, as Triton's 128 x 64 tile; flash_tc.cu picks one for joint attention and for
// sequences of at most 64 tokens). Warp w owns rows [16 w, 16 w + 16), and the wgmma accumulator
// layout per warp is the mma.sync one, so the softmax step (tc_online_softmax) and
// FlashAttention-2's reuse of the S accumulators as P's A operand carry over unchanged.
//
// Per tile: S = Q K^T is D / 16 wgmma m64n64k16 (n16 / n32 for a short last tile) with Q from
// registers (ldmatrix from the padded Q tile, every tile) and K from shared memory; O += P V is
// (keys / 16) x (D / 64) m64n64k16 with P from registers and V from shared memory, transposed
// (V's rows are keys, its columns the product's N). K and V reach shared memory by cp.async into
// the 128-byte-swizzle layout of tc_tile_off<., ., true> (1024-byte atoms of 8 rows x 64
// elements, starting on a 1024-byte boundary), which both operands describe with one matrix
// descriptor form: K is K-major (its rows' head dims contiguous), V MN-major, both with 8-row
// groups 1024 bytes apart. cp.async writes through the generic proxy and wgmma reads through the
// async proxy, so every thread fences (fence.proxy.async) before the barrier that publishes a
// stage. scripts/probe_wgmma.cu checks these layouts on the GPU.
//
// Applies where the mma.sync forward runs its 4-warp flash kernel (sequences longer than 32, or
// spatial/joint of any length beyond one tile) with head dims padded to 64 or 128, on a build
// with sm_90a code (setup.py defines TK_WGMMA when TORCH_CUDA_ARCH_LIST has 9.0a, the default)
// and a device of compute capability 9.0. TEMPORAL_KERNELS_CUDA_WGMMA=0 turns it off, =1 / =2
// force one / two warpgroups per block (A/B). The CPU CI runs it through tests/csrc_emu/ (wgmma
// emulated per warpgroup from the descriptors).
#pragma once

#include <type_traits>

#include "flash_tc.cuh"

namespace temporal_kernels {
namespace detail {

#if defined(TK_WGMMA)
constexpr bool kWgmmaBuilt = true;
#else
constexpr bool kWgmmaBuilt = false;
#endif

constexpr int kWgRows = 64;  // query rows per block and keys per tile (one warpgroup)

#ifdef __CUDACC__
// Only the sm_90a device pass may emit wgmma; another pass (an sm_80 build, say) compiles a trap
// that the host never reaches (it picks this kernel on sm_90a builds and 9.0 devices only).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TK_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define TK_WGMMA_ASM(...) __trap()
#endif

__device__ __forceinline__ void wgmma_fence() { TK_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { TK_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { TK_WGMMA_ASM("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// Shared memory written by cp.async (generic proxy) becomes visible to wgmma (async proxy).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Pins accumulator registers at this point of the program for the compiler: reads after a
// wgmma.wait stay after it, writes before a wgmma issue stay before it (CUTLASS's
// warpgroup_fence_operand).
template <int kRows>
__device__ __forceinline__ void wgmma_pin(float (&d)[kRows][4]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
  }
}

#define TK_WG_ACC(i) "+f"(d[kOff + i][0]), "+f"(d[kOff + i][1]), "+f"(d[kOff + i][2]), "+f"(d[kOff + i][3])
// One wgmma.mma_async m64nNk16 with A from registers: SHAPE "m64n16k16" etc., D_REGS the
// accumulator operands {%0, ...}, A_REGS / DESC / PRED the operand numbers of the A registers, the
// descriptor and scale-d that follow them; then the accumulators' constraints.
#define TK_WGMMA_RS(SHAPE, TYPES, TRANS_B, D_REGS, A_REGS, DESC, PRED, ...)                                 \
  TK_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, " PRED ", 0;\n"                                          \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPES " " D_REGS ", " A_REGS ", " DESC       \
               ", p, 1, 1, " TRANS_B ";\n}\n"                                                              \
               : __VA_ARGS__                                                                               \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate))
#define TK_WGMMA_N16(TYPES, TRANS_B)                                                                      \
  TK_WGMMA_RS("m64n16k16", TYPES, TRANS_B, "{%0, %1, %2, %3, %4, %5, %6, %7}", "{%8, %9, %10, %11}", "%12", \
              "%13", TK_WG_ACC(0), TK_WG_ACC(1))
#define TK_WGMMA_N32(TYPES, TRANS_B)                                                                       \
  TK_WGMMA_RS("m64n32k16", TYPES, TRANS_B,                                                                 \
              "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}", "{%16, %17, %18, %19}", \
              "%20", "%21", TK_WG_ACC(0), TK_WG_ACC(1), TK_WG_ACC(2), TK_WG_ACC(3))
#define TK_WGMMA_N64(TYPES, TRANS_B)                                                                       \
  TK_WGMMA_RS("m64n64k16", TYPES, TRANS_B,                                                                 \
              "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
              "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}",                                     \
              "{%32, %33, %34, %35}", "%36", "%37", TK_WG_ACC(0), TK_WG_ACC(1), TK_WG_ACC(2), TK_WG_ACC(3),  \
              TK_WG_ACC(4), TK_WG_ACC(5), TK_WG_ACC(6), TK_WG_ACC(7))
#define TK_WGMMA_TYPED(N_MACRO)                      \
  if constexpr (std::is_same<T, __nv_bfloat16>::value) { \
    if constexpr (kTransB) {                         \
      N_MACRO("bf16.bf16", "1");                     \
    } else {                                         \
      N_MACRO("bf16.bf16", "0");                     \
    }                                                \
  } else {                                           \
    if constexpr (kTransB) {                         \
      N_MACRO("f16.f16", "1");                       \
    } else {                                         \
      N_MACRO("f16.f16", "0");                       \
    }                                                \
  }

// d[kOff, kOff + kN / 8) (this warp's part of a 64 x kN float accumulator, 8-column tiles as
// mma.sync's) = A B + (accumulate ? d : 0): A 64 x 16 from registers (this warp's 16 rows,
// mma.sync's A fragment), B 16 x kN from shared memory by `desc`, K-major, or MN-major when kTransB.
template <typename T, bool kTransB, int kN, int kOff, int kRows>
__device__ __forceinline__ void wgmma_m64nNk16(float (&d)[kRows][4], const uint32_t (&a)[4], uint64_t desc,
                                               int accumulate) {
  static_assert(kN == 16 || kN == 32 || kN == 64, "wgmma widths used here");
  static_assert(kOff + kN / 8 <= kRows, "accumulator tiles");
  if constexpr (kN == 16) {
    TK_WGMMA_TYPED(TK_WGMMA_N16)
  } else if constexpr (kN == 32) {
    TK_WGMMA_TYPED(TK_WGMMA_N32)
  } else {
    TK_WGMMA_TYPED(TK_WGMMA_N64)
  }
}
#undef TK_WGMMA_TYPED
#undef TK_WGMMA_N64
#undef TK_WGMMA_N32
#undef TK_WGMMA_N16
#undef TK_WGMMA_RS
#undef TK_WG_ACC
#undef TK_WGMMA_ASM
#endif  // __CUDACC__

// Matrix descriptor of a 128-byte-swizzle operand starting at `start` (16-byte aligned, inside a
// tile whose atoms start on 1024-byte boundaries): 8-row groups `sbo` bytes apart, and, MN-major,
// 64-element column blocks `lbo` bytes apart (K-major ignores it; PTX wants 1 there).
__device__ __forceinline__ uint64_t wgmma_desc(const void* start, uint32_t lbo, uint32_t sbo) {
  const uint32_t addr = smem_addr(start);
  return (uint64_t(1) << 62) | (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) |
         (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) | static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
}

// Register cap: 12 warps per SM at head dims up to 64 (3 blocks of one warpgroup; 2 blocks of
// two: 128 registers), 8 at 128.
template <int kD, int kWG>
constexpr int wg_min_blocks() {
  return kWG == 1 ? (kD <= 64 ? 3 : 2) : (kD <= 64 ? 2 : 1);
}

// One key tile of kKeys keys (64; a sequence's last tile of at most 16 or 32 keys runs narrower)
// for the warpgroup's 64 rows (this warp's 16): flash_tc.cuh's tc_attend_tile with both products
// on wgmma. kb, vb: the stage's swizzled K and V tiles.
template <typename T, int kD, int kKeys>
__device__ __forceinline__ void wg_attend_tile(const uint32_t (&qf)[kD / 16][4], const T* kb, const T* vb,
                                               const int (&tile_begin)[2], const int (&tile_end)[2], bool masked,
                                               float qk_scale, float (&m)[2], float (&l)[2], float (&o)[kD / 8][4]) {
  constexpr int kNT = kKeys / 8;        // 8-key column tiles of S
  constexpr int kBlock = kWgRows * 64;  // elements of one 64-column block of a tile
  constexpr uint32_t kAtomBytes = 8 * 64 * sizeof(T);
  float sc[kNT][4];

  // S = Q K^T: K-major B, head dims [16 kk, 16 kk + 16) of 64-column block kk / 4.
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    wgmma_m64nNk16<T, false, kKeys, 0>(sc, qf[kk], wgmma_desc(kb + (kk / 4) * kBlock + (kk % 4) * 16, 16, kAtomBytes),
                                       kk > 0);
  }
  wgmma_commit();
  wgmma_wait_all();
  wgmma_pin(sc);

  tc_online_softmax<kD, kNT>(sc, tile_begin, tile_end, masked, qk_scale, m, l, o);

  // O += P V: V MN-major, keys [16 kk, 16 kk + 16), head dims [64 j, 64 j + 64).
  uint32_t pa[kNT / 2][4];
#pragma unroll
  for (int kk = 0; kk < kNT / 2; ++kk) {
    pa[kk][0] = pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
    pa[kk][1] = pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
    pa[kk][2] = pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
    pa[kk][3] = pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
  }
  wgmma_pin(o);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kNT / 2; ++kk) {
    const T* rows = vb + kk * 16 * 64;
    wgmma_m64nNk16<T, true, 64, 0>(o, pa[kk], wgmma_desc(rows, kBlock * sizeof(T), kAtomBytes), 1);
    if constexpr (kD == 128) {
      wgmma_m64nNk16<T, true, 64, 8>(o, pa[kk], wgmma_desc(rows + kBlock, kBlock * sizeof(T), kAtomBytes), 1);
    }
  }
  wgmma_commit();
  wgmma_wait_all();
  wgmma_pin(o);
}

template <typename T, int kD, int kWG>
__global__ void __launch_bounds__(128 * kWG, wg_min_blocks<kD, kWG>())
    flash_fwd_wgmma_kernel(const SpatialParams p, const int64_t nblk, const int stages) {
  static_assert(kD == 64 || kD == 128, "head dims of the wgmma tiles");
  constexpr int kWarps = 4 * kWG;
  constexpr int kM = kWgRows * kWG;  // query rows per block
  constexpr int kN = kWgRows;        // keys per tile
  constexpr int kRow = tc_row<kD>();
  constexpr int kChunks = kD / 8;
  constexpr int kDT = kD / 8;
  constexpr int kTile = kN * kD;  // elements of one K or V stage

  // K and V stages first, from the first 1024-byte boundary (the swizzle atoms'), then Q.
  unsigned char* raw = dynamic_smem();
  T* k_s = reinterpret_cast<T*>(raw + (1024u - smem_addr(raw) % 1024u) % 1024u);  // [stages, kTile]
  T* v_s = k_s + stages * kTile;                                                  // [stages, kTile]
  T* q_s = v_s + stages * kTile;  // [kM, kRow], padded rows; at the end, the output rows

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  const float qk_scale = static_cast<float>(p.scale * kLog2e);
  const float no_key_lse = p.mode == SeqMode::kTemporal ? -INFINITY : INFINITY;
  const int64_t total = n_seqs(p) * nblk;

  for (int64_t w = blockIdx.x; w < total; w += gridDim.x) {
    const int64_t seq = div_fast(w, nblk);
    const Seq s = seq_of(p, seq);
    const int64_t i0 = (w - seq * nblk) * kM;
    const ClsRows<T> cls = cls_rows<T>(p, s);
    const TcRows<const T*> q_rows = tc_rows(p, q, p.q_stride, cls.q, s);
    const TcRows<const T*> k_rows = tc_rows(p, k, p.k_stride, cls.k, s);
    const TcRows<const T*> v_rows = tc_rows(p, v, p.v_stride, cls.v, s);
    const int64_t last = min(i0 + kM, s.valid) - 1;
    const int64_t blk_end = last >= i0 ? key_end(p, s, last) : 0;
    const int64_t n_tiles = (blk_end + kN - 1) / kN;

    __syncthreads();  // the previous work item's output rows have been written out
    tc_stage<T, kD, kWarps>(q_s, q_rows, i0, s.L, p.D);
    if (n_tiles > 0) {
      tc_stage<T, kD, kWarps, true, kN>(k_s, k_rows, 0, blk_end, p.D);
      tc_stage<T, kD, kWarps, true, kN>(v_s, v_rows, 0, blk_end, p.D);
    }
    cp_async_commit();

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
    float l[2] = {0.f, 0.f};
    uint32_t qf[kD / 16][4];

    // Every warp computes every tile (wgmma is warpgroup-wide); a warp of padded rows masks
    // all its keys, so its rows keep m = -inf, l = 0 and O = 0.
    for (int64_t t = 0; t < n_tiles; ++t) {
      if (t + 1 < n_tiles) {
        const int nb = static_cast<int>((t + 1) & 1);
        tc_stage<T, kD, kWarps, true, kN>(k_s + nb * kTile, k_rows, (t + 1) * kN, blk_end, p.D);
        tc_stage<T, kD, kWarps, true, kN>(v_s + nb * kTile, v_rows, (t + 1) * kN, blk_end, p.D);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      fence_proxy_async_smem();
      __syncthreads();
      // Q's A fragments are reloaded for every tile: kept from the first tile (loaded under
      // `t == 0`, as the mma.sync kernel does), the wgmma of later tiles read wrong A values on the
      // H100 (scripts/probe_wgmma.cu: every row of a sequence of two or more tiles wrong; the
      // emulator passed). Four ldmatrix per warp and tile.
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        ldsm_x4(qf[kk], q_s + (warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * kRow + kk * 16 + 8 * (lane / 16));
      }
      const T* kb = k_s + static_cast<int>(t & 1) * kTile;
      const T* vb = v_s + static_cast<int>(t & 1) * kTile;
      int tile_end[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_end[r] = static_cast<int>(max(int64_t(0), min(int64_t(kN), row_end[r] - t * kN)));
      }
      const int tile_begin[2] = {0, 0};
      const bool masked = !__all_sync(0xffffffffu, tile_end[0] == kN && tile_end[1] == kN);
      // A last tile of at most 16 or 32 keys (N = 196: 4 of 64; T = 96: 32) runs narrower.
      const int64_t tile_keys = blk_end - t * kN;
      if (tile_keys <= 16) {
        wg_attend_tile<T, kD, 16>(qf, kb, vb, tile_begin, tile_end, masked, qk_scale, m, l, o);
      } else if (tile_keys <= 32) {
        wg_attend_tile<T, kD, 32>(qf, kb, vb, tile_begin, tile_end, masked, qk_scale, m, l, o);
      } else {
        wg_attend_tile<T, kD, 64>(qf, kb, vb, tile_begin, tile_end, masked, qk_scale, m, l, o);
      }
      __syncthreads();  // this stage's buffers are refilled two tiles later
    }
    cp_async_wait<0>();
    __syncthreads();

    // The epilogue is flash_fwd_tc_kernel's, line for line. As one shared __forceinline__ helper
    // ptxas (nvcc 13.0, sm_90a) spilled 24 bytes in that kernel's register-capped 4-warp D = 64
    // instantiation and changed the SASS of every forward kernel, so each kernel keeps its copy.
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

// Host side: whether a forward launch of flash_tc.cuh (tc_launch) runs here instead, given that
// the build and the device allow wgmma, and the launch with `wgs` warpgroups per block.
inline bool wg_applies(const TcLaunch& l) { return l.pack == 0 && l.warps == 4 && (l.kd == 64 || l.kd == 128); }

inline TcLaunch wg_launch(const TcLaunch& l, const SpatialParams& p, int wgs) {
  TcLaunch w = l;
  const int64_t rows = int64_t(kWgRows) * wgs;
  w.warps = 4 * wgs;
  w.nblk = (seq_len(p) + rows - 1) / rows;
  w.grid = std::min<int64_t>(seq_count(p) * w.nblk, int64_t(1) << 30);
  w.smem = static_cast<size_t>(1024 + 2 * l.stages * kWgRows * l.kd * 2 + rows * (l.kd + 8) * 2);
  return w;
}

template <typename T>
TcKernel<T> wg_kernel(const TcLaunch& w) {
  if (w.warps == 4) return w.kd == 64 ? flash_fwd_wgmma_kernel<T, 64, 1> : flash_fwd_wgmma_kernel<T, 128, 1>;
  return w.kd == 64 ? flash_fwd_wgmma_kernel<T, 64, 2> : flash_fwd_wgmma_kernel<T, 128, 2>;
}

}  // namespace detail
}  // namespace temporal_kernels
