"""Run one forward op and shape a few times, for Nsight Compute (GPU machine).

    ncu --kernel-name regex:_temporal_attn_fwd --launch-skip 1 --launch-count 1 --section ... \
        python scripts/ncu_op.py --op temporal --shape 1,256,64,12,64 [--backend triton|cuda] [--peer]

Inputs are patch-major views (memory ``[B, N, T, H, D]``, the benchmark's ``nt`` rows) in
bfloat16. ``--peer`` (temporal only) runs PyTorch's flash SDPA on the same zero-copy views
(``[B * N, H, T, D]``) instead, the fastest peer at long T, so its kernel can be set beside ours.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import temporal_kernels as tk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", choices=("temporal", "spatial"), default="temporal")
    ap.add_argument("--shape", default="1,256,64,12,64", help="B,T,N,H,D")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    B, T, N, H, D = (int(v) for v in args.shape.split(","))
    q, k, v = (torch.randn(B, N, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    if args.peer:
        if args.op != "temporal":
            raise SystemExit("--peer: temporal only")
        # memory [B, N, T, H, D] -> [B * N, H, T, D], no copy
        views = [x.transpose(1, 2).reshape(B * N, T, H, D).transpose(1, 2) for x in (q, k, v)]
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            for _ in range(args.calls):
                F.scaled_dot_product_attention(*views)
    else:
        fn = tk.temporal_attention if args.op == "temporal" else tk.spatial_attention
        for _ in range(args.calls):
            fn(q, k, v, backend=args.backend)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
