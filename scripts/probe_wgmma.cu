// Probe of the wgmma operand layouts csrc/flash_wgmma.cuh relies on, on the GPU: one warpgroup
// multiplies an identity A (from registers) with a K tile (K-major) and a V tile (MN-major, the
// transposed read), both staged by tc_tile_off's 128-byte swizzle and read through wgmma_desc
// exactly as the kernel does. With K[n][k] = n (then = k) the product S = I K^T names, for every
// output element, which tile element the tensor cores read; likewise O = I V. Prints mismatch
// counts and the first few (expected vs read) coordinates. Then runs flash_fwd_wgmma_kernel and
// (two warpgroups per block) and flash_fwd_tc_kernel on single spatial sequences (N = 50 ... 200; D = 64) against a float64
// host reference and prints each one's largest error and its first wrong rows.
//
//   nvcc -gencode=arch=compute_90a,code=sm_90a -DTK_WGMMA -std=c++17 --expt-relaxed-constexpr -Icsrc -o /tmp/probe scripts/probe_wgmma.cu && /tmp/probe
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "flash_wgmma.cuh"

using namespace temporal_kernels::detail;
using T = __half;

__global__ void probe_kernel(const T* kg, const T* vg, float* s_out, float* o_out) {
  unsigned char* raw = dynamic_smem();
  T* k_s = reinterpret_cast<T*>(raw + (1024u - smem_addr(raw) % 1024u) % 1024u);
  T* v_s = k_s + 64 * 64;
  for (int c = threadIdx.x; c < 64 * 8; c += 128) {
    const int r = c / 8, ch = c % 8;
    for (int e = 0; e < 8; ++e) {
      k_s[tc_tile_off<64, 64, true>(r, ch) + e] = kg[r * 64 + ch * 8 + e];
      v_s[tc_tile_off<64, 64, true>(r, ch) + e] = vg[r * 64 + ch * 8 + e];
    }
  }
  fence_proxy_async_smem();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const int r0 = 16 * warp + g, r1 = r0 + 8;
  uint32_t a[4][4];  // the 64 x 64 identity as four 64 x 16 A fragments
  for (int kk = 0; kk < 4; ++kk) {
    const int c0 = 16 * kk + 2 * tq;
    a[kk][0] = pack2<T>(r0 == c0, r0 == c0 + 1);
    a[kk][1] = pack2<T>(r1 == c0, r1 == c0 + 1);
    a[kk][2] = pack2<T>(r0 == c0 + 8, r0 == c0 + 9);
    a[kk][3] = pack2<T>(r1 == c0 + 8, r1 == c0 + 9);
  }
  float s[8][4], o[8][4];
  for (int j = 0; j < 8; ++j)
    for (int e = 0; e < 4; ++e) o[j][e] = 0.f;
  wgmma_fence();
  for (int kk = 0; kk < 4; ++kk) wgmma_m64nNk16<T, false, 64, 0>(s, a[kk], wgmma_desc(k_s + kk * 16, 16, 1024), kk > 0);
  wgmma_commit();
  wgmma_wait_all();
  wgmma_pin(s);
  wgmma_pin(o);
  wgmma_fence();
  for (int kk = 0; kk < 4; ++kk) wgmma_m64nNk16<T, true, 64, 0>(o, a[kk], wgmma_desc(v_s + kk * 16 * 64, 8192, 1024), 1);
  wgmma_commit();
  wgmma_wait_all();
  wgmma_pin(o);
  for (int j = 0; j < 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * warp + g + 8 * (e / 2), col = 8 * j + 2 * tq + e % 2;
      s_out[row * 64 + col] = s[j][e];
      o_out[row * 64 + col] = o[j][e];
    }
  }
}

// One spatial sequence of n_tok tokens, D = 64, both forward kernels, against float64.
void run_kernels(int n_tok) {
  const int D = 64;
  std::mt19937 rng(n_tok);
  std::normal_distribution<float> nd;
  std::vector<T> hq(n_tok * D), hk(n_tok * D), hv(n_tok * D);
  std::vector<double> q(n_tok * D), k(n_tok * D), v(n_tok * D);
  for (int i = 0; i < n_tok * D; ++i) {
    hq[i] = __float2half_rn(nd(rng));
    hk[i] = __float2half_rn(nd(rng));
    hv[i] = __float2half_rn(nd(rng));
    q[i] = __half2float(hq[i]);
    k[i] = __half2float(hk[i]);
    v[i] = __half2float(hv[i]);
  }
  const double scale = 0.125;
  std::vector<double> ref(n_tok * D, 0.0);
  for (int i = 0; i < n_tok; ++i) {
    std::vector<double> sc(n_tok);
    double mx = -1e300, sum = 0;
    for (int j = 0; j < n_tok; ++j) {
      double d = 0;
      for (int c = 0; c < D; ++c) d += q[i * D + c] * k[j * D + c];
      sc[j] = d * scale;
      mx = std::max(mx, sc[j]);
    }
    for (int j = 0; j < n_tok; ++j) sum += (sc[j] = std::exp(sc[j] - mx));
    for (int j = 0; j < n_tok; ++j)
      for (int c = 0; c < D; ++c) ref[i * D + c] += sc[j] / sum * v[j * D + c];
  }
  T *dq, *dk, *dv, *dout;
  float* dlse;
  cudaMalloc(&dq, n_tok * D * sizeof(T));
  cudaMalloc(&dk, n_tok * D * sizeof(T));
  cudaMalloc(&dv, n_tok * D * sizeof(T));
  cudaMalloc(&dout, n_tok * D * sizeof(T));
  cudaMalloc(&dlse, n_tok * sizeof(float));
  cudaMemcpy(dq, hq.data(), n_tok * D * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemcpy(dk, hk.data(), n_tok * D * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemcpy(dv, hv.data(), n_tok * D * sizeof(T), cudaMemcpyHostToDevice);
  temporal_kernels::SpatialParams p;
  p.q = dq;
  p.k = dk;
  p.v = dv;
  p.out = dout;
  p.lse = dlse;
  const int64_t st[5] = {int64_t(n_tok) * D, int64_t(n_tok) * D, D, D, 1};
  for (int a = 0; a < 5; ++a) p.q_stride[a] = p.k_stride[a] = p.v_stride[a] = p.out_stride[a] = st[a];
  p.B = p.T = p.H = 1;
  p.N = n_tok;
  p.D = D;
  p.scale = scale;
  p.vec16 = true;
  p.mode = temporal_kernels::SeqMode::kSpatial;
  const TcLaunch tl = tc_launch(p);
  for (int which = 0; which < 2; ++which) {
    const TcLaunch l = which == 0 ? wg_launch(tl, p, 2) : tl;
    const TcKernel<T> kernel = which == 0 ? wg_kernel<T>(l) : tc_kernel<T>(l);
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(l.smem));
    cudaMemset(dout, 0xFF, n_tok * D * sizeof(T));
    kernel<<<static_cast<unsigned>(l.grid), l.warps * 32, l.smem>>>(p, l.nblk, l.stages);
    const cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
      std::printf("CUDA error: %s\n", cudaGetErrorString(err));
      return;
    }
    std::vector<T> got(n_tok * D);
    cudaMemcpy(got.data(), dout, n_tok * D * sizeof(T), cudaMemcpyDeviceToHost);
    double worst = 0;
    int bad_rows = 0;
    for (int i = 0; i < n_tok; ++i) {
      double row_worst = 0;
      for (int c = 0; c < D; ++c) {
        const double e = std::fabs(__half2float(got[i * D + c]) - ref[i * D + c]);
        row_worst = std::isnan(e) ? 1e30 : std::max(row_worst, e);
      }
      worst = std::max(worst, row_worst);
      if (row_worst > 1e-2 && bad_rows++ < 6) {
        std::printf("  %s N=%d row %d: max abs err %.3g (got %.4f %.4f, want %.4f %.4f)\n",
                    which == 0 ? "wgmma" : "mma", n_tok, i, row_worst, __half2float(got[i * D]),
                    __half2float(got[i * D + 1]), ref[i * D], ref[i * D + 1]);
      }
    }
    std::printf("%s kernel, spatial N=%d D=64 (%d tiles, %d stages): max abs err %.3g, %d rows wrong\n",
                which == 0 ? "wgmma" : "mma", n_tok, static_cast<int>(l.nblk), l.stages, worst, bad_rows);
  }
  cudaFree(dq);
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dout);
  cudaFree(dlse);
}

int main() {
  T *kg, *vg;
  float *s, *o;
  cudaMalloc(&kg, 64 * 64 * sizeof(T));
  cudaMalloc(&vg, 64 * 64 * sizeof(T));
  cudaMalloc(&s, 64 * 64 * 4);
  cudaMalloc(&o, 64 * 64 * 4);
  cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 3 * 8192);
  std::vector<float> hs[2], ho[2];
  for (int pass = 0; pass < 2; ++pass) {  // pass 0: element = its row; pass 1: its column
    std::vector<T> h(64 * 64);
    for (int r = 0; r < 64; ++r)
      for (int c = 0; c < 64; ++c) h[r * 64 + c] = __float2half_rn(static_cast<float>(pass == 0 ? r : c));
    cudaMemcpy(kg, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
    cudaMemcpy(vg, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
    probe_kernel<<<1, 128, 3 * 8192>>>(kg, vg, s, o);
    const cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
      std::printf("CUDA error: %s\n", cudaGetErrorString(err));
      return 1;
    }
    hs[pass].resize(4096);
    ho[pass].resize(4096);
    cudaMemcpy(hs[pass].data(), s, 4096 * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(ho[pass].data(), o, 4096 * 4, cudaMemcpyDeviceToHost);
  }
  // S[i][n] = K[n][i]: reads K element (row n, column i). O[i][d] = V[i][d].
  int bad_s = 0, bad_o = 0;
  for (int i = 0; i < 64; ++i) {
    for (int n = 0; n < 64; ++n) {
      const int sr = static_cast<int>(hs[0][i * 64 + n]), sc = static_cast<int>(hs[1][i * 64 + n]);
      if (sr != n || sc != i) {
        if (bad_s++ < 12) std::printf("S[%d][%d]: expected K(%d,%d), read K(%d,%d)\n", i, n, n, i, sr, sc);
      }
      const int orr = static_cast<int>(ho[0][i * 64 + n]), oc = static_cast<int>(ho[1][i * 64 + n]);
      if (orr != i || oc != n) {
        if (bad_o++ < 12) std::printf("O[%d][%d]: expected V(%d,%d), read V(%d,%d)\n", i, n, i, n, orr, oc);
      }
    }
  }
  std::printf("S = Q K^T (K-major): %d of 4096 wrong; O = P V (MN-major): %d of 4096 wrong\n", bad_s, bad_o);
  for (int n_tok : {50, 64, 100, 128, 200}) run_kernels(n_tok);
  return 0;
}
