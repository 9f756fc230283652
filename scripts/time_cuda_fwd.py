"""A/B of the CUDA backend's forward on the GPU: the tensor-core kernels (csrc/flash_tc.cuh, with the
Hopper forward of csrc/flash_wgmma.cuh where it applies; "tc" is the launcher's choice) against
the Hopper forward with one / two warpgroups per block ("1wg" / "2wg": TEMPORAL_KERNELS_CUDA_WGMMA),
the mma.sync forward ("mma": TEMPORAL_KERNELS_CUDA_WGMMA=0), the scalar kernels they replace
(TEMPORAL_KERNELS_CUDA_TC=0; all read per launch) and the Triton backend, on the SPEC §5 shapes in
bfloat16, packed-projection views in the "nt" token order as the benchmark uses. Every variant's
output is checked against the float64 reference first (SPEC §3 bound); "err" is the worst of
them, and a variant past the bound is named.

    python scripts/time_cuda_fwd.py [--ops temporal,spatial,spatial_cls,joint,joint_causal] [--bwd] [--no-scalar]

--bwd also times forward+backward (torch.autograd.grad of q, k, v and the CLS tensors against a
fixed random dout) for the tensor-core kernels and Triton, after checking every gradient against
the float64 reference. --no-scalar skips the scalar kernels (minutes at the long shapes).
Times: median of CUDA-graph replays over rotated inputs (scripts/tune_temporal.graph_time_ms).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import temporal_kernels as tk  # noqa: E402
from helpers import BOUNDS, rel_err  # noqa: E402
from temporal_kernels import reference  # noqa: E402
from tune_temporal import graph_time_ms  # noqa: E402

SHAPES = {
    "temporal": [(8, 8, 196, 12, 64), (4, 16, 196, 12, 64), (1, 32, 196, 12, 64), (2, 16, 784, 12, 64),
                 (1, 96, 196, 12, 64), (1, 256, 64, 12, 64), (2, 8, 196, 8, 40), (2, 8, 196, 8, 128)],
    "temporal_causal": [(8, 8, 196, 12, 64), (2, 16, 784, 12, 64)],
    "spatial": [(8, 8, 196, 12, 64), (2, 16, 784, 12, 64)],
    "spatial_cls": [(8, 8, 196, 12, 64), (2, 16, 784, 12, 64)],
    "joint": [(2, 8, 196, 12, 64)],
    "joint_causal": [(2, 8, 196, 12, 64)],
}
ROTATE = 4


# name: (backend, environment); a knob absent from the environment is unset (the launcher's own choice)
_KNOBS = ("TEMPORAL_KERNELS_CUDA_TC", "TEMPORAL_KERNELS_CUDA_WGMMA")
VARIANTS = {
    "tc": ("cuda", {}),
    "1wg": ("cuda", {"TEMPORAL_KERNELS_CUDA_WGMMA": "1"}),
    "2wg": ("cuda", {"TEMPORAL_KERNELS_CUDA_WGMMA": "2"}),
    "mma": ("cuda", {"TEMPORAL_KERNELS_CUDA_WGMMA": "0"}),
    "scalar": ("cuda", {"TEMPORAL_KERNELS_CUDA_TC": "0"}),
    "triton": ("triton", {}),
}


def set_env(env: dict) -> None:
    for knob in _KNOBS:
        if knob in env:
            os.environ[knob] = env[knob]
        else:
            os.environ.pop(knob, None)


def make_call(op, backend, q, k, v, cls):
    if op.startswith("temporal"):
        return lambda: tk.temporal_attention(q, k, v, causal=op.endswith("causal"), backend=backend)
    if op.startswith("spatial"):
        return lambda: tk.spatial_attention(q, k, v, cls=cls, backend=backend)
    return lambda: tk.joint_attention(q, k, v, causal=op.endswith("causal"), backend=backend)


def reference_out(op, q, k, v, cls, keep_cls=False):
    x = [t.double() for t in (q, k, v)]
    scale = q.shape[-1] ** -0.5
    if op.startswith("temporal"):
        return reference.temporal_attention(*x, causal=op.endswith("causal"), scale=scale)
    if op.startswith("spatial"):
        c = tuple(t.double() for t in cls) if cls else None
        out = reference.spatial_attention(*x, cls=c, scale=scale)
        return out[0] if cls and not keep_cls else out
    return reference.joint_attention(*x, causal=op.endswith("causal"), scale=scale)


def make_fwd_bwd(op, backend, q, k, v, cls, douts):
    leaves = (q, k, v) + (cls or ())
    fwd = make_call(op, backend, q, k, v, cls)

    def call():
        outs = fwd()
        outs = outs if isinstance(outs, tuple) else (outs,)
        return torch.autograd.grad(outs, leaves, douts)
    return call


def reference_grads(op, q, k, v, cls, douts):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v) + (cls or ())]
    outs = reference_out(op, *leaves[:3], tuple(leaves[3:]) if cls else None, keep_cls=True)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return torch.autograd.grad(outs, leaves, [d.double() for d in douts])


def time_bwd(op, shape, dtype) -> None:
    B, T, N, H, D = shape
    sets = []
    for _ in range(ROTATE):
        qkv = torch.randn(B, N, T, 3, H, D, device="cuda", dtype=dtype).transpose(1, 2)
        q, k, v = (x.detach().requires_grad_() for x in qkv.unbind(3))  # strided views, as the benchmark's
        cls = tuple(torch.randn(B, H, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)) \
            if op == "spatial_cls" else None
        douts = (torch.randn(q.shape, device="cuda", dtype=dtype),)
        if cls:
            douts += (torch.randn(B, T, H, D, device="cuda", dtype=dtype),)
        sets.append((q, k, v, cls, douts))
    q, k, v, cls, douts = sets[0]
    if B * T * N * H <= 2 ** 21:
        got = make_fwd_bwd(op, "cuda", q, k, v, cls, douts)()
        err = max(rel_err(g, r) for g, r in zip(got, reference_grads(op, q, k, v, cls, douts)))
    else:
        err = float("nan")
    status = "unchecked" if err != err else "ok" if err <= BOUNDS[dtype] else f"WRONG (bound {BOUNDS[dtype]:.0e})"
    times = {name: graph_time_ms([make_fwd_bwd(op, name, *s) for s in sets]) for name in ("cuda", "triton")}
    label = f"{op} B{B} T{T} N{N} H{H} D{D} fwd+bwd"
    print(f"{label:48s} {times['cuda']:8.4f} {'':>8s} {'':>8s} {'':>10s} {times['triton']:10.4f} {'':>7s} {'':>9s} "
          f"{times['cuda'] / times['triton']:9.2f}  {err:.2e} {status}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default=",".join(SHAPES))
    ap.add_argument("--bwd", action="store_true", help="also time forward+backward")
    ap.add_argument("--no-scalar", action="store_true", help="skip the scalar kernels")
    args = ap.parse_args()
    dtype = torch.bfloat16
    names = [name for name in VARIANTS if not (name == "scalar" and args.no_scalar)]
    print(f"{'case':48s} " + " ".join(f"{name + ' ms':>10s}" for name in names) + f" {'tc/triton':>9s}  err")
    for op in args.ops.split(","):
        for B, T, N, H, D in SHAPES[op]:
            sets = []
            for _ in range(ROTATE):
                qkv = torch.randn(B, N, T, 3, H, D, device="cuda", dtype=dtype).transpose(1, 2)  # "nt" views
                q, k, v = qkv.unbind(3)
                cls = tuple(torch.randn(B, H, D, device="cuda", dtype=dtype) for _ in range(3)) \
                    if op == "spatial_cls" else None
                sets.append((q, k, v, cls))
            q, k, v, cls = sets[0]
            checked = B * T * N * H <= 2 ** 21
            want = reference_out(op, q, k, v, cls) if checked else None
            times, errs = {}, {}
            for name in names:
                backend, env = VARIANTS[name]
                set_env(env)
                if checked:
                    out = make_call(op, backend, q, k, v, cls)()
                    errs[name] = rel_err(out[0] if isinstance(out, tuple) else out, want)
                times[name] = graph_time_ms([make_call(op, backend, *s) for s in sets])
            set_env({})
            err = max(errs.values()) if errs else float("nan")
            wrong = [name for name, e in errs.items() if e > BOUNDS[dtype]]
            status = "unchecked" if not checked else f"WRONG {','.join(wrong)} (bound {BOUNDS[dtype]:.0e})" if wrong \
                else "ok"
            label = f"{op} B{B} T{T} N{N} H{H} D{D}"
            print(f"{label:48s} " + " ".join(f"{times[name]:10.4f}" for name in names) +
                  f" {times['tc'] / times['triton']:9.2f}  {err:.2e} {status}", flush=True)
            if args.bwd:
                time_bwd(op, (B, T, N, H, D), dtype)


if __name__ == "__main__":
    main()
