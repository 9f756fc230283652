"""Run one temporal forward shape a few times, for Nsight Compute (GPU machine).

    ncu --kernel-name regex:_temporal_attn_fwd --launch-skip 2 --launch-count 1 --set detailed \
        python scripts/ncu_temporal.py --shape 1,256,64,12,64 [--backend triton|cuda] [--peer]

Inputs are patch-major views (memory ``[B, N, T, H, D]``, the benchmark's ``nt`` rows) in
bfloat16. ``--peer`` also runs PyTorch's flash SDPA on the same zero-copy view (the fastest peer
at long T), so one ncu run can set both kernels side by side (``--kernel-name regex:'fwd'``).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import temporal_kernels as tk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,256,64,12,64", help="B,T,N,H,D")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--calls", type=int, default=4)
    args = ap.parse_args()
    B, T, N, H, D = (int(v) for v in args.shape.split(","))
    q, k, v = (torch.randn(B, N, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    for _ in range(args.calls):
        tk.temporal_attention(q, k, v, backend=args.backend)
    if args.peer:
        # [B, T, N, H, D] view -> [B * N, H, T, D] without a copy (memory is [B, N, T, H, D])
        views = [x.transpose(1, 2).reshape(B * N, T, H, D).transpose(1, 2) for x in (q, k, v)]
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            for _ in range(args.calls):
                F.scaled_dot_product_attention(*views)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
