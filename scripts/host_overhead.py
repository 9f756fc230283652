"""Python host time of each public op's eager call, with the kernel launches made no-ops (CPU).

    python scripts/host_overhead.py [--iters 200] [--repeats 15] [--profile OP]

Runs on the CPU machine, under the Triton interpreter with ``InterpretedFunction.run`` replaced
by a no-op: what remains is everything our code and torch do around the launches (validation,
backend choice, custom-op dispatch, autograd, buffer allocation, launch configuration). On the
GPU each launch adds Triton's own launch path (12-36 us per launch on the H100 host,
``logs/profile_layers_92592c3.log``); ``scripts/profile_host.py`` measures the whole on the GPU.
The device host's timings move by 1.3-7x between runs; this machine's (a 2-core VM) by up to
1.5x between runs even as the best of many loops: compare the best of several runs, and confirm
on the GPU.

Small shapes (B1 T8 N16 H2 D64, float32, patch-major packed views, as the models pass them),
``backend="triton"``; per op: forward under ``no_grad`` and forward+backward. The best of
``--repeats`` loops of ``--iters`` calls, with the garbage collector paused in each.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import gc
import time

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import triton.runtime.interpreter as _interpreter  # noqa: E402

import temporal_kernels as tk  # noqa: E402


def _no_launch(self, *args, **kwargs):
    return None


def cases():
    B, T, N, H, D = 1, 8, 16, 2, 64
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, N, T, 3, H, D, generator=g).permute(0, 2, 1, 3, 4, 5).requires_grad_()
    q, k, v = (x.detach().requires_grad_() for x in qkv.detach().unbind(3))
    cls = tuple(torch.randn(B, H, D, generator=g).requires_grad_() for _ in range(3))
    cls_qkv = torch.randn(B, 3, H, D, generator=g, requires_grad=True)
    kw = dict(backend="triton")
    yield "temporal", lambda: tk.temporal_attention(q, k, v, **kw)
    yield "temporal_causal", lambda: tk.temporal_attention(q, k, v, causal=True, **kw)
    yield "temporal_qkvpacked", lambda: tk.temporal_attention_qkvpacked(qkv, **kw)
    yield "spatial", lambda: tk.spatial_attention(q, k, v, **kw)
    yield "spatial_cls", lambda: tk.spatial_attention(q, k, v, cls=cls, **kw)
    yield "spatial_qkvpacked_cls", lambda: tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, **kw)
    yield "joint", lambda: tk.joint_attention(q, k, v, **kw)
    yield "factorized", lambda: tk.factorized_attention(q, k, v, temporal_heads=1, **kw)


def _fwd(fn):
    def run():
        with torch.no_grad():
            fn()

    return run


def _fwd_bwd(fn):
    def run():
        out = fn()
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return run


def per_call_us(fn, iters: int, repeats: int) -> float:
    for _ in range(20):
        fn()
    best = float("inf")
    gc.collect()
    gc.disable()  # a collection inside one loop is noise between A and B
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters)
    gc.enable()
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile", default=None, help="an op name: cProfile its forward+backward loop")
    args = ap.parse_args()
    _interpreter.InterpretedFunction.run = _no_launch
    print(f"host us per call, launches stubbed, torch {torch.__version__}, B1 T8 N16 H2 D64 fp32")
    print(f"{'op':24s} {'fwd':>8s} {'fwd+bwd':>8s}")
    for name, fn in cases():
        fwd = per_call_us(_fwd(fn), args.iters, args.repeats)
        fwd_bwd = per_call_us(_fwd_bwd(fn), args.iters, args.repeats)
        print(f"{name:24s} {fwd:8.1f} {fwd_bwd:8.1f}", flush=True)
        if name == args.profile:
            prof = cProfile.Profile()
            run = _fwd_bwd(fn)
            prof.enable()
            for _ in range(args.iters):
                run()
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
            print(s.getvalue())


if __name__ == "__main__":
    main()
