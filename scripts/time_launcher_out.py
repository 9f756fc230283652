"""The temporal forward launcher called directly, with ``out`` in q's axis order or contiguous, with
and without wrap_triton's dispatch (the ops disable it in eager; a direct caller does not): host
time per call (profile_layers.per_call_us: queued, no syncs), GPU time (do_bench), and the number
of compiled variants of the kernel (a per-call recompile would show as a growing count).

    python scripts/time_launcher_out.py [--iters 300]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_layers import per_call_us  # noqa: E402

from temporal_kernels._layout import empty_like_video  # noqa: E402
from temporal_kernels.ops import _set_wrap_triton_enabled  # noqa: E402
from temporal_kernels.triton import temporal_attn as ta  # noqa: E402


def _variants() -> int:
    cache = getattr(ta._temporal_attn_fwd_short_kernel, "device_caches", None) or {}
    return sum(len(c[0]) if isinstance(c, tuple) else len(c) for c in cache.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    g = torch.Generator(device="cpu").manual_seed(0)
    for B, T, N, H, D in [(1, 8, 16, 2, 64), (8, 8, 196, 12, 64)]:
        qkv = torch.randn(B, N, T, 3, H, D, generator=g).to("cuda", torch.bfloat16).permute(0, 2, 1, 3, 4, 5)
        q, k, v = qkv.unbind(3)  # patch-major views
        lse = torch.empty(B, H, T, N, device="cuda")
        outs = {"q-order out": empty_like_video(q), "contiguous out": torch.empty(q.shape, dtype=q.dtype, device="cuda")}
        for name, out in outs.items():
            for dispatch in ("wrap_triton", "direct"):
                ctx = _set_wrap_triton_enabled(False) if dispatch == "direct" and _set_wrap_triton_enabled else contextlib.nullcontext()
                with ctx:
                    def call():
                        ta.temporal_attn_fwd(q, k, v, out, lse, None, False, D ** -0.5)

                    before = _variants()
                    host = per_call_us(call, args.iters)
                    gpu_ms = do_bench(call, warmup=5, rep=20)
                    print(f"B{B} T{T} N{N} H{H} D{D} {name:15s} {dispatch:11s} host {host:8.1f} us/call  "
                          f"do_bench {gpu_ms * 1e3:8.1f} us  variants {before} -> {_variants()}", flush=True)


if __name__ == "__main__":
    main()
