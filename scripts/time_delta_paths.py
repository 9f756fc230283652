"""What the exact 16-bit delta pass costs: the Triton spatial / joint / factorized backward
(``spatial_attn.attn_bwd``) timed with ``exact_delta`` on (the default for float16/bfloat16:
``delta = rowsum(P * dP)`` from a pass of the dQ kernel over the keys) and off (``rowsum(dO * O)``
from a small elementwise kernel), bf16, on the SPEC §5 shapes, in one process (CUDA-graph
replays over rotated inputs, as the benchmarks time). A tool: its output is not a result.

    python scripts/time_delta_paths.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tune_temporal import graph_time_ms  # noqa: E402  (the sweeps' timing: graph replays, rotated inputs)

from temporal_kernels._layout import empty_like_video  # noqa: E402
from temporal_kernels.triton import spatial_attn as sa  # noqa: E402

CASES = [  # (name, mode, (B, T, N, H, D), CLS, keyword arguments)
    ("spatial", sa.MODE_SPATIAL, (8, 8, 196, 12, 64), False, {}),
    ("spatial+cls", sa.MODE_SPATIAL, (8, 8, 196, 12, 64), True, {}),
    ("spatial", sa.MODE_SPATIAL, (2, 16, 784, 12, 64), False, {}),
    ("spatial+cls", sa.MODE_SPATIAL, (2, 16, 784, 12, 64), True, {}),
    ("joint", sa.MODE_JOINT, (2, 8, 196, 12, 64), False, {}),
    ("joint causal", sa.MODE_JOINT, (2, 8, 196, 12, 64), False, dict(causal=True)),
    ("factorized", sa.MODE_FACTORIZED, (8, 8, 196, 12, 64), False, dict(temporal_heads=6)),
]


def main() -> None:
    torch.manual_seed(0)
    dt = torch.bfloat16
    for name, mode, (B, T, N, H, D), with_cls, kw in CASES:
        sets = []
        for _ in range(4):
            qkv = torch.randn(B, T, N, 3, H, D, device="cuda", dtype=dt)
            q, k, v = qkv.unbind(3)
            out, lse = empty_like_video(q), torch.empty(B, H, T, N, device="cuda")
            extra = {}
            if with_cls:
                cls = tuple(torch.randn(B, H, D, device="cuda", dtype=dt) for _ in range(3))
                extra = dict(cls=cls, cls_out=torch.empty(B, T, H, D, device="cuda", dtype=dt),
                             lse_cls=torch.empty(B, H, T, device="cuda"))
            sa.attn_fwd(mode, q, k, v, out, lse, D ** -0.5, **extra, **kw)
            dout = torch.randn_like(out)
            grads = [torch.empty_like(x) for x in (q, k, v)]
            if with_cls:
                extra = dict(extra, dcls_out=torch.randn_like(extra["cls_out"]),
                             dcls=tuple(torch.empty(B, H, D, device="cuda", dtype=dt) for _ in range(3)))
            sets.append((q, k, v, out, lse, dout, grads, extra))
        times = {}
        for exact in (True, False):
            fns = [(lambda s=s, exact=exact: sa.attn_bwd(mode, s[5], *s[:3], s[3], s[4], D ** -0.5, *s[6], exact_delta=exact,
                                                          **s[7], **kw)) for s in sets]
            times[exact] = graph_time_ms(fns)
        print(f"{name:13s} B{B} T{T} N{N} H{H} D{D}: backward {times[True] * 1e3:7.1f} us with the exact delta pass, "
              f"{times[False] * 1e3:7.1f} us with rowsum(dO * O) ({times[False] / times[True]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
