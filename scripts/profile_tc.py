"""Workload for Nsight Compute on the CUDA backend's tensor-core kernels (csrc/flash_tc.cuh) and the
Triton kernels they are compared with: one forward and one backward of each case in bfloat16, on
packed-projection "nt" views as the benchmark uses, after an unprofiled warm-up (compiles, autotune).

    ncu --profile-from-start off --clock-control none --set full -o $OUT/tc python scripts/profile_tc.py

Only the second pass runs between cudaProfilerStart and cudaProfilerStop.
"""

from __future__ import annotations

import argparse

import torch

import temporal_kernels as tk

CASES = {
    "spatial196": ("spatial", (8, 8, 196, 12, 64)),
    "spatial784": ("spatial", (2, 16, 784, 12, 64)),
    "joint": ("joint", (2, 8, 196, 12, 64)),
    "temporal32": ("temporal", (2, 32, 196, 12, 64)),
}


def run(op, shape, backend):
    B, T, N, H, D = shape
    qkv = torch.randn(B, N, T, 3, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    q, k, v = (x.detach().requires_grad_() for x in qkv.unbind(3))
    fn = {"spatial": tk.spatial_attention, "joint": tk.joint_attention, "temporal": tk.temporal_attention}[op]
    out = fn(q, k, v, backend=backend)
    out.backward(torch.randn_like(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--backends", default="cuda,triton")
    args = ap.parse_args()
    for profiled in (False, True):
        if profiled:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
        for name in args.cases.split(","):
            op, shape = CASES[name]
            for backend in args.backends.split(","):
                run(op, shape, backend)
        torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
