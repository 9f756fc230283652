"""Host time per call of each layer of the eager path (GPU): a bare Triton launch with few and
with many arguments, the temporal launcher with and without wrap_triton's dispatch, the custom op
without autograd, the public function's forward, and forward+backward. The calls are queued
without syncs, so the time per call is the host's (the GPU work of these shapes is shorter).

    python scripts/profile_layers.py [--iters 300]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import time

import torch
import triton
import triton.language as tl

import temporal_kernels as tk
from temporal_kernels.ops import _set_wrap_triton_enabled
from temporal_kernels.triton import temporal_attn as ta


@triton.jit
def _touch3(X, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _touch48(X, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9,
             e0, e1, e2, e3, e4, e5, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


def cprofile_report(fn, calls: int, top: int, orders=("tottime",)) -> list[tuple[str, str]]:
    """cProfile of ``calls`` calls of ``fn`` (the GPU drained after): per sort order, its ``top``
    entries without blank lines. Shared by the profile_* scripts."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    reports = []
    for order in orders:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(order).print_stats(top)
        reports.append((order, "\n".join(line for line in s.getvalue().splitlines() if line.strip())))
    return reports


def host_and_wall_ms(fn, iters: int, warmup: int = 5) -> tuple[float, float]:
    """Per call: the host time to issue ``iters`` calls (queued, no syncs) and the wall time
    until the GPU has run them, in ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    issued = time.perf_counter()
    torch.cuda.synchronize()
    done = time.perf_counter()
    return (issued - t0) * 1e3 / iters, (done - t0) * 1e3 / iters


def per_call_us(fn, iters):
    """Host time per call (``host_and_wall_ms``), in us."""
    return host_and_wall_ms(fn, iters, warmup=10)[0] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    B, T, N, H, D = 8, 8, 196, 12, 64
    g = torch.Generator(device="cpu").manual_seed(0)
    qkv = torch.randn(B, N, T, 3, H, D, generator=g).to("cuda", torch.bfloat16).permute(0, 2, 1, 3, 4, 5)
    q, k, v = (x.detach().clone().requires_grad_() for x in qkv.unbind(3))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, T, N, device="cuda")
    x = torch.zeros(1024, device="cuda")
    nodirect = contextlib.nullcontext
    direct = (lambda: _set_wrap_triton_enabled(False)) if _set_wrap_triton_enabled else nodirect
    ints = list(range(1, 47))

    def launcher(ctx):
        def f():
            with ctx():
                ta.temporal_attn_fwd(q.detach(), k.detach(), v.detach(), out, lse, None, False, 0.125)
        return f

    def fwd_bwd():
        o = tk.temporal_attention(q, k, v)
        o.backward(torch.ones_like(o))
        q.grad = k.grad = v.grad = None

    def fwd():
        with torch.no_grad():
            tk.temporal_attention(q, k, v)

    rows = [
        ("bare Triton launch, 3 args", lambda: _touch3[(1,)](x, 1000, BLOCK=1024)),
        ("bare Triton launch, 48 args", lambda: _touch48[(1,)](x, *ints, 1000, BLOCK=1024)),
        ("temporal launcher, direct", launcher(direct)),
        ("temporal launcher, through wrap_triton", launcher(nodirect)),
        ("op triton_temporal_fwd (no grad)", lambda: torch.ops.temporal_kernels.triton_temporal_fwd(
            q.detach(), k.detach(), v.detach(), None, False, 0.125)),
        ("tk.temporal_attention fwd (no grad)", fwd),
        ("tk.temporal_attention fwd+bwd", fwd_bwd),
        ("torch.empty_like x3", lambda: [torch.empty_like(q) for _ in range(3)]),
    ]
    for name, fn in rows:
        print(f"{name:42s} {per_call_us(fn, args.iters):8.1f} us/call", flush=True)


if __name__ == "__main__":
    main()
