// Host emulation of the few CUDA built-ins csrc/temporal_attn.cuh, csrc/spatial_attn.cuh, csrc/flash_tc.cuh and
// csrc/flash_wgmma.cuh use, so
// the CPU CI runs the real kernel source (indexing, strides, masks, tiles, barriers, shuffle masks, tensor-core
// fragment layouts) on small problems.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks run one after
// another. A fiber runs until it reaches __syncthreads or __shfl_xor_sync and then waits: a
// barrier opens when all threads of the block wait at it, a shuffle when exactly the lanes of its
// mask wait at a shuffle with that mask. Anything else (a lane outside the mask, divergent
// barriers, a thread that exits while others wait) aborts with a message instead of passing.
// The warp-wide instructions of flash_tc.cuh (ldmatrix, mma.sync m16n8k16, __syncwarp) meet at
// full-warp shuffles: every lane posts its operands, each lane computes its own result from the
// PTX fragment layouts, and a second meeting frees the operands. flash_wgmma.cuh's wgmma meets the
// same way at block barriers (its blocks are whole warpgroups) and reads B from shared memory
// through the matrix descriptor. cp.async and wgmma complete at issue, so their waits and fences
// are no-ops (the GPU suite and compute-sanitizer cover those). Shared memory starts as 0xFF
// bytes (NaN) each block. Half and bfloat16 are emulated (_Float16, and float's upper 16 bits with
// round-to-nearest-even).
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct Dim3 {
  unsigned x = 0;
};
Dim3 threadIdx, blockIdx;
Dim3 gridDim;

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

struct __half {
  _Float16 v;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}

using std::max;
using std::min;

[[noreturn]] void emu_fail(const char* what) {
  std::fprintf(stderr, "csrc emulation: %s\n", what);
  std::abort();
}

constexpr int kBlock = 256;  // the most threads a block may have

enum class Wait { kRun, kSync, kShfl, kDone };

constexpr size_t kStackBytes = 64 * 1024;

struct Fiber {
  ucontext_t uc;
  Wait wait = Wait::kRun;
  unsigned mask = 0;
  int off = 0;
  double slot = 0, result = 0;
};

struct BlockCtx {
  ucontext_t scheduler;
  Fiber fibers[kBlock];
  const void* posted[kBlock] = {};  // operands a lane posts for a warp-wide instruction
  int nthreads = kBlock;
  int current = 0;
  unsigned char* smem = nullptr;
  std::function<void()> body;
};
BlockCtx* ctx = nullptr;

inline void yield_to_scheduler() {
  Fiber& f = ctx->fibers[ctx->current];
  swapcontext(&f.uc, &ctx->scheduler);
}

inline void __syncthreads() {
  ctx->fibers[ctx->current].wait = Wait::kSync;
  yield_to_scheduler();
}

inline unsigned char* dynamic_smem() { return ctx->smem; }

template <typename T>
T __shfl_xor_sync(unsigned mask, T x, int off) {
  const unsigned lane = threadIdx.x & 31u;
  const unsigned src = lane ^ static_cast<unsigned>(off);
  if (!((mask >> lane) & 1u) || !((mask >> src) & 1u)) emu_fail("shuffle lane or source lane outside the mask");
  Fiber& f = ctx->fibers[ctx->current];
  f.wait = Wait::kShfl;
  f.mask = mask;
  f.off = off;
  f.slot = static_cast<double>(x);
  yield_to_scheduler();
  return static_cast<T>(ctx->fibers[ctx->current].result);
}

inline void warp_meet() { (void)__shfl_xor_sync(0xffffffffu, 0.0, 0); }

inline void __syncwarp() { warp_meet(); }

inline float emu_float(__half x) { return __half2float(x); }
inline float emu_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// ldmatrix .x4 (optionally .trans): lane l posts the address of row l % 8 of matrix l / 8.
inline void emu_ldsm_x4(uint32_t (&r)[4], const void* row, bool trans) {
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, w0 = tid & ~31;
  ctx->posted[tid] = row;
  warp_meet();
  for (int j = 0; j < 4; ++j) {
    if (!trans) {  // lane l: row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1
      std::memcpy(&r[j], static_cast<const char*>(ctx->posted[w0 + j * 8 + lane / 4]) + (lane % 4) * 4, 4);
    } else {  // lane l: column l / 4 of rows 2 (l % 4) and 2 (l % 4) + 1
      uint16_t e[2];
      for (int h = 0; h < 2; ++h) {
        std::memcpy(&e[h], static_cast<const char*>(ctx->posted[w0 + j * 8 + 2 * (lane % 4) + h]) + (lane / 4) * 2, 2);
      }
      std::memcpy(&r[j], e, 4);
    }
  }
  warp_meet();
}

inline void ldsm_x4(uint32_t (&r)[4], const void* row) { emu_ldsm_x4(r, row, false); }
inline void ldsm_x4_trans(uint32_t (&r)[4], const void* row) { emu_ldsm_x4(r, row, true); }

struct MmaOperands {
  uint32_t a[4], b[2];
};

template <typename T>
float emu_half_of(uint32_t reg, int h) {
  const uint16_t bits = static_cast<uint16_t>(h ? reg >> 16 : reg & 0xffffu);
  T x;
  std::memcpy(&x, &bits, 2);
  return emu_float(x);
}

// mma.sync.m16n8k16.row.col, float accumulators. A (16x16): lane 4 (row % 8) + (k % 8) / 2,
// register row / 8 + 2 (k / 8); B (16x8): lane 4 col + (k % 8) / 2, register k / 8; the low half
// holds the even k. D: lane l holds rows l / 4 and l / 4 + 8, columns 2 (l % 4) and + 1.
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, w0 = tid & ~31;
  MmaOperands mine;
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  ctx->posted[tid] = &mine;
  warp_meet();
  auto op = [&](int l) { return static_cast<const MmaOperands*>(ctx->posted[w0 + l]); };
  for (int e = 0; e < 4; ++e) {
    const int row = lane / 4 + 8 * (e / 2), col = 2 * (lane % 4) + e % 2;
    float acc = d[e];
    for (int k = 0; k < 16; ++k) {
      const float x = emu_half_of<T>(op(4 * (row % 8) + (k % 8) / 2)->a[row / 8 + 2 * (k / 8)], k % 2);
      const float y = emu_half_of<T>(op(4 * col + (k % 8) / 2)->b[k / 8], k % 2);
      acc += x * y;
    }
    d[e] = acc;
  }
  warp_meet();
}

// Shared-memory addresses for wgmma descriptors: offsets from the block's dynamic shared memory
// (which starts at offset 0, as on the device when a kernel has no static shared memory).
inline uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(ptr) - ctx->smem);
}

// wgmma runs at its issue (like cp.async), so its fences, commits and waits are no-ops here.
inline void wgmma_fence() {}
inline void wgmma_commit() {}
inline void wgmma_wait_all() {}
inline void fence_proxy_async_smem() {}
template <int kRows>
void wgmma_pin(float (&)[kRows][4]) {}

struct WgmmaOperands {
  uint32_t a[4];
  uint64_t desc;
  int accumulate;
};

// wgmma.mma_async m64nNk16, A from registers, float accumulators, for a block of whole
// warpgroups that all reach the instruction (the threads meet at block barriers). A: warp w holds rows [16 w, 16 w + 16) in
// mma.sync's A fragment; D: warp w's rows, 8-column tiles in mma.sync's D layout (d[kOff + j]).
// B (16 x kN) is read from shared memory through the descriptor, 128-byte swizzle only: K-major,
// element (k, n) at start + (n / 8) SBO + (n % 8) 128 + 2 k; MN-major (kTransB), at
// start + (k / 8) SBO + (k % 8) 128 + (n / 64) LBO + 2 (n % 64); the swizzle XORs address bits
// [4, 7) with bits [7, 10). Every thread of a warpgroup must pass the same descriptor and accumulate flag.
template <typename T, bool kTransB, int kN, int kOff, int kRows>
void wgmma_m64nNk16(float (&d)[kRows][4], const uint32_t (&a)[4], uint64_t desc, int accumulate) {
  static_assert(kOff + kN / 8 <= kRows, "accumulator tiles");
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, w0 = tid & ~31;
  if (ctx->nthreads % 128 != 0) emu_fail("wgmma: the emulated block must be whole warpgroups");
  WgmmaOperands mine;
  std::memcpy(mine.a, a, sizeof(mine.a));
  mine.desc = desc;
  mine.accumulate = accumulate;
  ctx->posted[tid] = &mine;
  __syncthreads();
  for (int t = tid & ~127; t < (tid & ~127) + 128; ++t) {
    const auto* other = static_cast<const WgmmaOperands*>(ctx->posted[t]);
    if (other->desc != desc || (other->accumulate != 0) != (accumulate != 0)) {
      emu_fail("wgmma: descriptor or scale-d differs across the warpgroup");
    }
  }
  if ((desc >> 62) != 1 || ((desc >> 49) & 7) != 0) emu_fail("wgmma: only the 128-byte swizzle at base offset 0 is emulated");
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  auto b_at = [&](int k, int n) {
    const uint32_t logical = kTransB ? start + (k / 8) * sbo + (k % 8) * 128 + (n / 64) * lbo + 2 * (n % 64)
                                     : start + (n / 8) * sbo + (n % 8) * 128 + 2 * k;
    const uint32_t physical = logical ^ (((logical >> 7) & 7u) << 4);
    T x;
    std::memcpy(&x, ctx->smem + physical, sizeof(T));
    return emu_float(x);
  };
  auto op = [&](int l) { return static_cast<const WgmmaOperands*>(ctx->posted[w0 + l]); };
  for (int j = 0; j < kN / 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int row = lane / 4 + 8 * (e / 2), col = 8 * j + 2 * (lane % 4) + e % 2;
      float acc = accumulate ? d[kOff + j][e] : 0.f;
      for (int k = 0; k < 16; ++k) {
        const float x = emu_half_of<T>(op(4 * (row % 8) + (k % 8) / 2)->a[row / 8 + 2 * (k / 8)], k % 2);
        acc += x * b_at(k, col);
      }
      d[kOff + j][e] = acc;
    }
  }
  __syncthreads();
}

inline void cp_async16(void* dst, const void* src, int src_bytes) {
  std::memset(dst, 0, 16);
  if (src_bytes > 0) std::memcpy(dst, src, static_cast<size_t>(src_bytes));
}
inline void cp_async_commit() {}
template <int kPending>
void cp_async_wait() {}

// ex2.approx.ftz: the emulation computes 2^x exactly (the kernels' bounds are far above its error).
inline float exp2_approx(float x) { return std::exp2(x); }

// A vote over the mask's lanes, through the emulated shuffles (every lane of the mask must reach it).
inline bool __all_sync(unsigned mask, int pred) {
  if (mask != 0xffffffffu) emu_fail("__all_sync: the kernels vote with the full warp only");
  double all = pred ? 1.0 : 0.0;
  for (int off = 1; off < 32; off *= 2) all = std::min(all, __shfl_xor_sync(mask, all, off));
  return all != 0.0;
}

void fiber_main() {
  ctx->body();
  ctx->fibers[ctx->current].wait = Wait::kDone;
  swapcontext(&ctx->fibers[ctx->current].uc, &ctx->scheduler);
}

// Runs one block of `body` on `nthreads` threads to completion.
void run_block(unsigned blk, unsigned char* smem, std::function<void()> body, int nthreads = kBlock) {
  if (nthreads < 32 || nthreads > kBlock || nthreads % 32 != 0) emu_fail("block size");
  BlockCtx block;
  block.nthreads = nthreads;
  block.smem = smem;
  block.body = std::move(body);
  ctx = &block;
  blockIdx.x = blk;
  // Allocated once and left uninitialized: the fibers' stacks are reused by every block.
  static char* stacks = new char[kBlock * kStackBytes];
  for (int tid = 0; tid < nthreads; ++tid) {
    Fiber& f = block.fibers[tid];
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = stacks + tid * kStackBytes;
    f.uc.uc_stack.ss_size = kStackBytes;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, fiber_main, 0);
  }
  for (;;) {
    for (int tid = 0; tid < nthreads; ++tid) {
      Fiber& f = block.fibers[tid];
      while (f.wait == Wait::kRun) {
        block.current = tid;
        threadIdx.x = tid;
        swapcontext(&block.scheduler, &f.uc);
      }
    }
    int done = 0, sync = 0;
    bool released = false;
    for (int tid = 0; tid < nthreads; ++tid) {
      Fiber& f = block.fibers[tid];
      done += f.wait == Wait::kDone;
      sync += f.wait == Wait::kSync;
      if (f.wait != Wait::kShfl) continue;
      const int warp0 = tid & ~31;
      bool ready = true;
      for (int l = 0; l < 32; ++l) {
        if (!((f.mask >> l) & 1u)) continue;
        const Fiber& g = block.fibers[warp0 + l];
        ready &= g.wait == Wait::kShfl && g.mask == f.mask;
      }
      if (!ready) continue;
      for (int l = 0; l < 32; ++l) {
        if (!((f.mask >> l) & 1u)) continue;
        Fiber& g = block.fibers[warp0 + l];
        g.result = block.fibers[warp0 + (l ^ g.off)].slot;
      }
      for (int l = 0; l < 32; ++l) {
        if ((f.mask >> l) & 1u) block.fibers[warp0 + l].wait = Wait::kRun;
      }
      released = true;
    }
    if (released) continue;
    if (done == nthreads) break;
    if (sync + done == nthreads && done == 0) {
      for (int tid = 0; tid < nthreads; ++tid) block.fibers[tid].wait = Wait::kRun;
      continue;
    }
    emu_fail("deadlock: threads wait at different barriers or shuffles, or exited while others wait");
  }
  ctx = nullptr;
}

#include "temporal_attn.cuh"
#include "spatial_attn.cuh"
#include "flash_tc.cuh"
#include "flash_wgmma.cuh"

namespace tk = temporal_kernels;
namespace td = temporal_kernels::detail;

template <typename Kernel>
void run_grid(Kernel kernel, const tk::AttnParams& p, const td::Launch& l, int64_t max_grid) {
  const int64_t grid = max_grid > 0 ? std::min(l.grid, max_grid) : l.grid;
  gridDim.x = static_cast<unsigned>(grid);
  for (int64_t blk = 0; blk < grid; ++blk) {
    std::vector<unsigned char> smem(l.smem + 16, 0xFF);
    unsigned char* aligned = smem.data() + (16 - reinterpret_cast<uintptr_t>(smem.data()) % 16) % 16;
    run_block(static_cast<unsigned>(blk), aligned, [&] { kernel(p, l.sh); });
  }
}

// Whether the forward runs flash_tc.cuh's kernel where it applies, as flash_tc.cu decides on the
// device (off by default: the scalar kernels' tests keep their launch shapes), and whether the
// last forward did.
int g_use_tc = 0;
int g_use_wgmma = 0;  // and flash_wgmma.cuh's forward where it applies (as on an sm_90a build and
                      // device), with this many warpgroups per block
int g_last_tc = 0;  // 0: scalar kernel, 1: flash_fwd_tc_kernel, 2: temporal_fwd_tc_packed_kernel (T <= 32),
                    // 3: flash_fwd_wgmma_kernel

extern "C" void emu_set_tc(int on) { g_use_tc = on; }
extern "C" void emu_set_wgmma(int on) { g_use_wgmma = on; }
extern "C" int emu_last_tc() { return g_last_tc; }

template <typename Body>
void run_blocks(int64_t grid, size_t smem_bytes, Body body, int nthreads = kBlock);

// flash_tc.cu's launch on the emulator; false where the kernel does not apply.
template <typename T>
bool run_tc(const tk::SpatialParams& p, int64_t max_grid) {
  g_last_tc = 0;
  if (!g_use_tc || !td::flash_tc_applies<T>(p)) return false;
  if constexpr (td::kTcDtype<T>) {
    td::TcLaunch l = td::tc_launch(p);
    const bool wg = g_use_wgmma > 0 && td::wg_applies(l);
    if (wg) l = td::wg_launch(l, p, g_use_wgmma);
    const int64_t grid = max_grid > 0 ? std::min(l.grid, max_grid) : l.grid;
    const td::TcKernel<T> kernel = wg ? td::wg_kernel<T>(l) : td::tc_kernel<T>(l);
    run_blocks(grid, l.smem, [&] { kernel(p, l.nblk, l.stages); }, l.warps * 32);
    g_last_tc = wg ? 3 : l.pack > 0 ? 2 : 1;
  }
  return true;
}

// flash_tc.cu's backward launches on the emulator (dQ and delta, then dK/dV); false where they do
// not apply. g_last_tc_bwd: the last backward's kernels (0 scalar, 1 the flash pair, 2 the fused
// temporal kernel for T <= 32).
int g_last_tc_bwd = 0;
extern "C" int emu_last_tc_bwd() { return g_last_tc_bwd; }

template <typename T>
bool run_tc_bwd(const tk::SpatialParams& p, int64_t max_grid) {
  g_last_tc_bwd = 0;
  if (!g_use_tc || !td::flash_tc_bwd_applies<T>(p)) return false;
  const td::TcBwdLaunch l = td::tc_bwd_launch<T>(p);
  const int64_t grid = max_grid > 0 ? std::min(l.grid, max_grid) : l.grid;
  run_blocks(grid, l.smem_dq, [&] { l.dq(p, l.nblk, l.stages); }, l.warps * 32);
  if (l.dkdv != nullptr) run_blocks(grid, l.smem_dkdv, [&] { l.dkdv(p, l.nblk, l.stages); }, l.warps * 32);
  g_last_tc_bwd = l.pack > 0 ? 2 : 1;
  return true;
}

// Runs the forward or backward kernel over its grid; returns the launch shape it used.
template <typename T>
td::Launch run(bool backward, const tk::AttnParams& p, int64_t max_grid) {
  const td::Launch l = backward ? td::bwd_launch<T>(p) : td::fwd_launch<T>(p);
  tk::SpatialParams sp;
  static_cast<tk::AttnParams&>(sp) = p;
  sp.mode = tk::SeqMode::kTemporal;
  if (!backward && run_tc<T>(sp, max_grid)) return l;
  if (backward && run_tc_bwd<T>(sp, max_grid)) return l;
  if (backward) {
    run_grid(td::temporal_bwd_kernel<T>, p, l, max_grid);
  } else {
    run_grid(td::temporal_fwd_kernel<T>, p, l, max_grid);
  }
  return l;
}

// The fields every op's params share. ptrs: q, k, v, out, lse, dout, dq, dk, dv, delta.
// strides: [8][5] for q, k, v, out, dout, dq, dk, dv. sizes: B, T, N, H, D.
void set_attn_params(tk::AttnParams& p, void** ptrs, const int64_t* strides, const int64_t* sizes, double scale,
                     int causal, const int64_t* frame_lens, int vec16) {
  p.q = ptrs[0];
  p.k = ptrs[1];
  p.v = ptrs[2];
  p.out = ptrs[3];
  p.lse = ptrs[4];
  p.dout = ptrs[5];
  p.dq = ptrs[6];
  p.dk = ptrs[7];
  p.dv = ptrs[8];
  p.delta = ptrs[9];
  int64_t(*dst[8])[5] = {&p.q_stride, &p.k_stride, &p.v_stride, &p.out_stride,
                         &p.dout_stride, &p.dq_stride, &p.dk_stride, &p.dv_stride};
  for (int i = 0; i < 8; ++i) std::memcpy(*dst[i], strides + 5 * i, 5 * sizeof(int64_t));
  p.B = sizes[0];
  p.T = sizes[1];
  p.N = sizes[2];
  p.H = sizes[3];
  p.D = sizes[4];
  p.scale = scale;
  p.causal = causal != 0;
  p.frame_lens = frame_lens;
  p.vec16 = vec16 != 0;
}

// ptrs, strides, sizes: as set_attn_params. Returns the launch shape (S, R, team, gpb, KT, smem, grid).
extern "C" void emu_temporal(int backward, int dtype, void** ptrs, const int64_t* strides, const int64_t* sizes,
                             double scale, int causal, const int64_t* frame_lens, int vec16, int64_t max_grid,
                             int64_t* shape_out) {
  tk::AttnParams p;
  set_attn_params(p, ptrs, strides, sizes, scale, causal, frame_lens, vec16);
  td::Launch l;
  switch (static_cast<tk::DType>(dtype)) {
    case tk::DType::kFloat16: l = run<__half>(backward, p, max_grid); break;
    case tk::DType::kBFloat16: l = run<__nv_bfloat16>(backward, p, max_grid); break;
    case tk::DType::kFloat32: l = run<float>(backward, p, max_grid); break;
    case tk::DType::kFloat64: l = run<double>(backward, p, max_grid); break;
  }
  const int64_t shape[7] = {l.sh.S, l.sh.R, l.sh.team, l.sh.gpb, l.sh.KT, static_cast<int64_t>(l.smem), l.grid};
  std::memcpy(shape_out, shape, sizeof(shape));
}

// Runs `kernel` (a callable of no arguments) on `grid` blocks with `smem` bytes of shared memory.
template <typename Body>
void run_blocks(int64_t grid, size_t smem_bytes, Body body, int nthreads) {
  gridDim.x = static_cast<unsigned>(grid);
  for (int64_t blk = 0; blk < grid; ++blk) {
    std::vector<unsigned char> smem(smem_bytes + 16, 0xFF);
    unsigned char* aligned = smem.data() + (16 - reinterpret_cast<uintptr_t>(smem.data()) % 16) % 16;
    run_block(static_cast<unsigned>(blk), aligned, body, nthreads);
  }
}

int64_t capped(int64_t grid, int64_t max_grid) { return max_grid > 0 ? std::min(grid, max_grid) : grid; }

// Forward, or the backward's three passes (dQ and delta, dK/dV, CLS sum) in launch order.
template <typename T>
td::SpatialLaunch run_spatial(bool backward, const tk::SpatialParams& p, int64_t max_grid) {
  const td::SpatialLaunch lf = td::spatial_fwd_launch<T>(p);
  if (!backward) {
    if (run_tc<T>(p, max_grid)) return lf;
    run_blocks(capped(lf.grid, max_grid), lf.smem, [&] { td::spatial_fwd_kernel<T>(p, lf.sh, lf.nblk); });
    return lf;
  }
  const td::SpatialLaunch lkv = td::spatial_dkdv_launch<T>(p);
  if (!run_tc_bwd<T>(p, max_grid)) {
    run_blocks(capped(lf.grid, max_grid), lf.smem, [&] { td::spatial_bwd_dq_kernel<T>(p, lf.sh, lf.nblk); });
    run_blocks(capped(lkv.grid, max_grid), lkv.smem, [&] { td::spatial_bwd_dkdv_kernel<T>(p, lkv.sh, lkv.nblk); });
  }
  if (p.has_cls) run_blocks(capped(td::cls_sum_grid(p), max_grid), 0, [&] { td::spatial_cls_sum_kernel<T>(p); });
  return lkv;
}

// Spatial (mode 0) or joint (mode 1) attention. ptrs, strides, sizes as emu_temporal. cls_ptrs:
// q_cls, k_cls, v_cls, cls_out, lse_cls, dcls_out, delta_cls, dq_cls_part, dk_cls_part,
// dv_cls_part, dq_cls, dk_cls, dv_cls (all null without CLS). cls_strides: q_cls[3], k_cls[3],
// v_cls[3], cls_out[4], dcls_out[4], dq_cls[3], dk_cls[3], dv_cls[3]. Returns the launch shape
// (S, R, KT, smem, nblk, grid) of the forward (backward: of the dK/dV pass).
extern "C" void emu_spatial(int backward, int dtype, int mode, void** ptrs, const int64_t* strides,
                            const int64_t* sizes, double scale, int causal, const int64_t* frame_lens, int has_cls,
                            void** cls_ptrs, const int64_t* cls_strides, int vec16, int64_t max_grid,
                            int64_t* shape_out) {
  tk::SpatialParams p;
  set_attn_params(p, ptrs, strides, sizes, scale, causal, frame_lens, vec16);
  p.mode = static_cast<tk::SeqMode>(mode);
  p.has_cls = has_cls != 0;
  p.q_cls = cls_ptrs[0];
  p.k_cls = cls_ptrs[1];
  p.v_cls = cls_ptrs[2];
  p.cls_out = cls_ptrs[3];
  p.lse_cls = cls_ptrs[4];
  p.dcls_out = cls_ptrs[5];
  p.delta_cls = cls_ptrs[6];
  p.dq_cls_part = cls_ptrs[7];
  p.dk_cls_part = cls_ptrs[8];
  p.dv_cls_part = cls_ptrs[9];
  p.dq_cls = cls_ptrs[10];
  p.dk_cls = cls_ptrs[11];
  p.dv_cls = cls_ptrs[12];
  const int64_t* c = cls_strides;
  std::memcpy(p.q_cls_stride, c, 3 * sizeof(int64_t));
  std::memcpy(p.k_cls_stride, c + 3, 3 * sizeof(int64_t));
  std::memcpy(p.v_cls_stride, c + 6, 3 * sizeof(int64_t));
  std::memcpy(p.cls_out_stride, c + 9, 4 * sizeof(int64_t));
  std::memcpy(p.dcls_out_stride, c + 13, 4 * sizeof(int64_t));
  std::memcpy(p.dq_cls_stride, c + 17, 3 * sizeof(int64_t));
  std::memcpy(p.dk_cls_stride, c + 20, 3 * sizeof(int64_t));
  std::memcpy(p.dv_cls_stride, c + 23, 3 * sizeof(int64_t));
  td::SpatialLaunch l;
  switch (static_cast<tk::DType>(dtype)) {
    case tk::DType::kFloat16: l = run_spatial<__half>(backward, p, max_grid); break;
    case tk::DType::kBFloat16: l = run_spatial<__nv_bfloat16>(backward, p, max_grid); break;
    case tk::DType::kFloat32: l = run_spatial<float>(backward, p, max_grid); break;
    case tk::DType::kFloat64: l = run_spatial<double>(backward, p, max_grid); break;
  }
  const int64_t shape[6] = {l.sh.S, l.sh.R, l.sh.KT, static_cast<int64_t>(l.smem), l.nblk,
                            capped(l.grid, max_grid)};
  std::memcpy(shape_out, shape, sizeof(shape));
}
