"""Host (CPU) time of one eager forward+backward call of each public op on the GPU, and where it
goes: the GPU is kept busy-free of syncs while N calls are queued, so the wall time per call is
the host's; then cProfile of the same loop, top entries by cumulative time.

    python scripts/profile_host.py [--iters 50] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import temporal_kernels as tk


def cases():
    B, T, N, H, D = 8, 8, 196, 12, 64
    dt = torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)

    def packed_nt():
        return torch.randn(B, N, T, 3, H, D, generator=g).to("cuda", dt).permute(0, 2, 1, 3, 4, 5).requires_grad_()

    qkv = packed_nt()
    q, k, v = (x.detach().requires_grad_() for x in qkv.detach().unbind(3))
    cls = tuple(torch.randn(B, H, D, generator=g).to("cuda", dt).requires_grad_() for _ in range(3))
    cls_qkv = torch.randn(B, 3, H, D, generator=g).to("cuda", dt).requires_grad_()
    yield "temporal", lambda: tk.temporal_attention(q, k, v), (q, k, v)
    yield "temporal_qkvpacked", lambda: tk.temporal_attention_qkvpacked(qkv), (qkv,)
    yield "spatial", lambda: tk.spatial_attention(q, k, v), (q, k, v)
    yield "spatial_cls", lambda: tk.spatial_attention(q, k, v, cls=cls), (q, k, v) + cls
    yield "spatial_qkvpacked_cls", lambda: tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv), (qkv, cls_qkv)
    yield "joint", lambda: tk.joint_attention(q[:2], k[:2], v[:2]), (q, k, v)


def step(fn, inputs):
    outs = fn()
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    for x in inputs:
        x.grad = None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    for name, fn, inputs in cases():
        for _ in range(5):
            step(fn, inputs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step(fn, inputs)
        host = (time.perf_counter() - t0) / args.iters
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / args.iters
        print(f"== {name}: host {host * 1e3:.3f} ms/call, with the GPU {wall * 1e3:.3f} ms/call", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.iters):
            step(fn, inputs)
        prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.top)
        print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:6000], flush=True)


if __name__ == "__main__":
    main()
