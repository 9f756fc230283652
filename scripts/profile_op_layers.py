"""Host time of the packed spatial and temporal ops, layer by layer, Triton against CUDA C++ (GPU).

    python scripts/profile_op_layers.py [--windows 30] [--calls 20] [--profile ROW ...]

A tiny problem (B1 T8 N16 H2 D64 bf16: the GPU finishes each kernel long before the host queues
the next), so a call's time is the host's. Each row is the best of ``--windows`` loops of
``--calls`` calls with the garbage collector paused, after a warm-up; it gives the wall time and
the thread's CPU time per call (wall well above CPU: the thread waited, e.g. on a lock or the
GPU). The device host's timings moved by 1.3-7x between runs of single loops
(``logs/profile_dispatch_*.log``); the best of many short loops is what a host-side change is
compared by.

Rows: bare Triton launches (3 and 55 scalar arguments), a trivial ``custom_op`` alone and with
``register_autograd`` (forward+backward), then for each op the launchers into preallocated buffers
(Triton), the op bodies without dispatch (Triton), the ops through ``torch.ops`` (both backends),
the public function's forward (no grad) and forward+backward (both backends). ``--profile`` names
rows to cProfile (by self time).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import triton
import triton.language as tl
from torch import Tensor

import temporal_kernels as tk
from temporal_kernels import ops
from temporal_kernels._layout import empty_like_packed, empty_like_video
from temporal_kernels.triton.spatial_attn import spatial_attn_bwd, spatial_attn_fwd
from temporal_kernels.triton.temporal_attn import temporal_attn_bwd, temporal_attn_fwd

from profile_layers import _touch3, cprofile_report  # scripts/ is on sys.path


@triton.jit
def _touch55(X, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9,
             e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, f0, f1, f2, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


@torch.library.custom_op("tk_profile_layers::fwd", mutates_args=())
def _trivial_fwd(q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k)


@torch.library.custom_op("tk_profile_layers::bwd", mutates_args=())
def _trivial_bwd(dout: Tensor, q: Tensor, k: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k)


def _setup(ctx, inputs, output):
    q, k, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, k)


def _backward(ctx, dout, _unused):
    q, k = ctx.saved_tensors
    return (*_trivial_bwd(dout, q, k, ctx.scale), None)


torch.library.register_autograd("tk_profile_layers::fwd", _backward, setup_context=_setup)


def _direct(fn):
    def run():
        with ops._direct_launches():
            fn()

    return run


def per_call(fn, windows: int, calls: int) -> tuple[float, float]:
    """(wall us, thread CPU us) per call: the best of ``windows`` loops of ``calls`` calls."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    gc.collect()
    gc.disable()
    best_wall = best_cpu = float("inf")
    try:
        for _ in range(windows):
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(calls):
                fn()
            w1, c1 = time.perf_counter(), time.thread_time()
            best_wall, best_cpu = min(best_wall, (w1 - w0) / calls), min(best_cpu, (c1 - c0) / calls)
            torch.cuda.synchronize()
    finally:
        gc.enable()
    return best_wall * 1e6, best_cpu * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--profile", nargs="*", default=[], help="row names (substrings) to cProfile")
    args = ap.parse_args()
    B, T, N, H, D = 1, 8, 16, 2, 64
    dt = torch.bfloat16
    scale = D ** -0.5
    g = torch.Generator(device="cpu").manual_seed(0)
    qkv = torch.randn(B, N, T, 3, H, D, generator=g).to("cuda", dt).permute(0, 2, 1, 3, 4, 5)
    q, k, v = qkv.unbind(3)
    qkv_g = qkv.detach().clone().requires_grad_()
    out, lse = empty_like_video(q), torch.empty(B, H, T, N, device="cuda")
    dout = torch.randn_like(out)
    dqkv = empty_like_packed(qkv)
    x = torch.zeros(1024, device="cuda")
    ints = list(range(1, 54))  # a0 .. f2
    tq, tk_ = torch.randn(64, device="cuda", requires_grad=True), torch.randn(64, device="cuda", requires_grad=True)
    tdo = torch.randn(64, device="cuda")
    has_cuda = "cuda" in tk.available_backends()
    ns = torch.ops.temporal_kernels

    def trivial_fwd_bwd():
        tq.grad = tk_.grad = None
        o, _ = _trivial_fwd(tq, tk_, 0.1)
        o.backward(tdo)

    rows = [
        ("bare Triton launch, 3 args", lambda: _touch3[(1,)](x, 1024, BLOCK=1024)),
        ("bare Triton launch, 55 args", lambda: _touch55[(1,)](x, *ints, 1024, BLOCK=1024)),
        ("trivial custom_op", lambda: _trivial_fwd(tq.detach(), tk_.detach(), 0.1)),
        ("trivial custom_op + register_autograd fwd+bwd", trivial_fwd_bwd),
    ]
    spatial_saved = ns.triton_spatial_qkvpacked_fwd(qkv, None, scale)
    temporal_saved = ns.triton_temporal_qkvpacked_fwd(qkv, None, False, scale)
    for backend in ("triton", "cuda"):
        if backend == "cuda" and not has_cuda:
            continue
        s_fwd = getattr(ns, f"{backend}_spatial_qkvpacked_fwd")
        s_bwd = getattr(ns, f"{backend}_spatial_qkvpacked_bwd")
        t_fwd = getattr(ns, f"{backend}_temporal_qkvpacked_fwd")
        t_bwd = getattr(ns, f"{backend}_temporal_qkvpacked_bwd")
        so, _, slse, _ = spatial_saved
        to, tlse = temporal_saved
        if backend == "triton":
            # Outside an op, launches go through wrap_triton's higher-order op unless disabled, as
            # the op bodies disable it
            rows += [(name, _direct(fn)) for name, fn in [
                ("triton spatial fwd launcher", lambda: spatial_attn_fwd(q, k, v, None, out, None, lse, None, scale)),
                ("triton spatial bwd launcher", lambda: spatial_attn_bwd(dout, None, q, k, v, None, so, None, slse, None,
                                                                         scale, *dqkv.unbind(3), None)),
                ("triton spatial fwd body", lambda: ops._triton_spatial_qkvpacked_fwd._init_fn(qkv, None, scale)),
                ("triton spatial bwd body", lambda: ops._triton_spatial_qkvpacked_bwd._init_fn(
                    dout, None, qkv, None, so, None, slse, None, scale)),
                ("triton temporal fwd launcher", lambda: temporal_attn_fwd(q, k, v, out, lse, None, False, scale)),
                ("triton temporal bwd launcher", lambda: temporal_attn_bwd(dout, q, k, v, to, tlse, None, False, scale,
                                                                           *dqkv.unbind(3))),
            ]]

        def public(op, backend=backend):
            fn = getattr(tk, op)

            def fwd():
                with torch.no_grad():
                    fn(qkv, backend=backend)

            def fwd_bwd():
                qkv_g.grad = None
                fn(qkv_g, backend=backend).backward(dout)

            return fwd, fwd_bwd

        s_pub_fwd, s_pub_fb = public("spatial_attention_qkvpacked")
        t_pub_fwd, t_pub_fb = public("temporal_attention_qkvpacked")
        rows += [
            (f"{backend} spatial fwd op", lambda f=s_fwd: f(qkv, None, scale)),
            (f"{backend} spatial bwd op", lambda f=s_bwd: f(dout, None, qkv, None, so, None, slse, None, scale)),
            (f"{backend} spatial public fwd", s_pub_fwd),
            (f"{backend} spatial public fwd+bwd", s_pub_fb),
            (f"{backend} temporal fwd op", lambda f=t_fwd: f(qkv, None, False, scale)),
            (f"{backend} temporal bwd op", lambda f=t_bwd: f(dout, qkv, to, tlse, None, False, scale)),
            (f"{backend} temporal public fwd", t_pub_fwd),
            (f"{backend} temporal public fwd+bwd", t_pub_fb),
        ]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"B{B} T{T} N{N} H{H} D{D} bf16; best of {args.windows} loops of {args.calls} calls")
    print(f"  {'row':48s} {'wall us':>8s} {'cpu us':>8s}")
    for name, fn in rows:
        wall, cpu = per_call(fn, args.windows, args.calls)
        print(f"  {name:48s} {wall:8.1f} {cpu:8.1f}", flush=True)
    for name, fn in rows:
        if any(p in name for p in args.profile):
            ((_, report),) = cprofile_report(fn, args.windows * args.calls, 20)
            print(f"== cProfile, {name}, by self time")
            print(report, flush=True)


if __name__ == "__main__":
    main()
