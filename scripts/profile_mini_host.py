"""Where the host time of the fused mini model's training step goes (GPU machine).

    python scripts/profile_mini_host.py [--iters 100] [--top 30]

``tk.nn.MiniSpaceTimeTransformer`` at SPEC §5's size (B8 T8 N196 D768, 12 heads, bf16): per step,
the host time (the loop queues ``--iters`` steps, then syncs: issue time per step against wall
time per step tells host-bound from GPU-bound), for

- the model as ``benchmarks/e2e_mini.py`` times it (``backend=None``), and with every op on
  Triton and on CUDA C++;
- the model with both attention calls replaced by a stand-in of the same shape (one elementwise
  op on a view of q): the host cost of everything around the attention;
- each attention op alone (public function, forward+backward) at the model's shape;

then cProfile of the ``backend=None`` step (self time, then cumulative).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

import temporal_kernels as tk
from temporal_kernels import nn as tknn

from profile_layers import cprofile_report, host_and_wall_ms  # scripts/ is on sys.path


@contextlib.contextmanager
def _stand_in_attention():
    """Both attention calls of the model become ``q * 1`` (same shape, one kernel each way)."""
    saved = tknn._tkf.spatial_attention_qkvpacked, tknn._tkf.temporal_attention_qkvpacked
    tknn._tkf.spatial_attention_qkvpacked = lambda qkv, **kw: qkv.select(3, 0) * 1
    tknn._tkf.temporal_attention_qkvpacked = lambda qkv, **kw: qkv.select(3, 0) * 1
    try:
        yield
    finally:
        tknn._tkf.spatial_attention_qkvpacked, tknn._tkf.temporal_attention_qkvpacked = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    B, T, N, D, H = 8, 8, 196, 768, 12
    dt = torch.bfloat16
    torch.manual_seed(0)
    model = tk.nn.MiniSpaceTimeTransformer(D, H).to("cuda", dt)
    x = torch.randn(B, T, N, D, device="cuda", dtype=dt)
    dout = torch.randn_like(x)
    xg = x.detach().requires_grad_()
    params = list(model.parameters())

    def step():
        for p in params:
            p.grad = None
        xg.grad = None
        model(xg).backward(dout)

    def forward():
        with torch.no_grad():
            model(x)

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, mini model B{B} T{T} N{N} D{D} H{H} bf16, "
          f"temporal_kernels from {tk.__file__}")
    print(f"{'case':52s} {'host ms':>8s} {'wall ms':>8s}")

    def row(name, fn):
        host, wall = host_and_wall_ms(fn, args.iters)
        print(f"{name:52s} {host:8.3f} {wall:8.3f}", flush=True)

    for backend in (None, "triton", "cuda"):
        if backend == "cuda" and "cuda" not in tk.available_backends():
            continue
        model.backend = backend
        row(f"model fwd, backend={backend}", forward)
        row(f"model fwd+bwd, backend={backend}", step)
    model.backend = None
    with _stand_in_attention():
        row("model fwd, attention replaced by q * 1", forward)
        row("model fwd+bwd, attention replaced by q * 1", step)

    qkv = torch.randn(B, T, N, 3, H, D // H, device="cuda", dtype=dt, requires_grad=True)
    d_o = torch.randn(B, T, N, H, D // H, device="cuda", dtype=dt)
    for op in ("spatial_attention_qkvpacked", "temporal_attention_qkvpacked"):
        for backend in (None, "triton", "cuda"):
            if backend == "cuda" and "cuda" not in tk.available_backends():
                continue
            fn = getattr(tk, op)

            def fwd_bwd(fn=fn, backend=backend):
                qkv.grad = None
                fn(qkv, backend=backend).backward(d_o)

            def fwd(fn=fn, backend=backend):
                with torch.no_grad():
                    fn(qkv, backend=backend)

            row(f"{op} fwd, backend={backend}", fwd)
            row(f"{op} fwd+bwd, backend={backend}", fwd_bwd)

    for order, report in cprofile_report(step, args.iters, args.top, ("tottime", "cumulative")):
        print(f"== cProfile, model fwd+bwd (backend=None), {args.iters} steps, by {order}")
        print(report, flush=True)


if __name__ == "__main__":
    main()
