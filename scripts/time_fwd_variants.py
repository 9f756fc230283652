"""A/B of the Triton forwards' softmax variants in one process (GPU machine).

    python scripts/time_fwd_variants.py [--bwd]

For each case (SPEC §5 shapes, patch-major bf16 views) and each combination of the two switches
(``raw``: the temporal tiled forward's running max on unscaled products, exp2(s c - m c);
``whole``: the mask-free loop over whole key blocks, temporal: EVEN launches), the forward's
median time as CUDA-graph replays
over rotating inputs (``tune_temporal.graph_time_ms``) and its error against the float64
reference. ``--bwd``: the spatial / joint backward op instead (its dQ kernels take the same
``whole`` switch), on saved forward outputs; the error is the worst gradient's. A tool: its output
feeds the switches' defaults, it is not a result.
"""

from __future__ import annotations

import argparse
import itertools

import torch

import temporal_kernels as tk
from temporal_kernels import reference
from temporal_kernels.triton import spatial_attn as sa
from temporal_kernels.triton import temporal_attn as ta

from tune_temporal import graph_time_ms  # scripts/ is on sys.path

CASES = [
    # (name, op, (B, T, N, H, D), keyword arguments)
    ("temporal T256", "temporal", (1, 256, 64, 12, 64), {}),
    ("temporal T96", "temporal", (1, 96, 196, 12, 64), {}),
    ("spatial N196", "spatial", (8, 8, 196, 12, 64), {}),
    ("spatial N784", "spatial", (2, 16, 784, 12, 64), {}),
    ("spatial_cls N196+1", "spatial_cls", (8, 8, 196, 12, 64), {}),
    ("spatial_cls N784+1", "spatial_cls", (2, 16, 784, 12, 64), {}),
    ("joint", "joint", (2, 8, 196, 12, 64), {}),
    ("joint_causal", "joint", (2, 8, 196, 12, 64), dict(causal=True)),
]


def run_op(op, q, k, v, cls, kw):
    if op == "temporal":
        return tk.temporal_attention(q, k, v, backend="triton", **kw)
    if op == "joint":
        return tk.joint_attention(q, k, v, backend="triton", **kw)
    return tk.spatial_attention(q, k, v, cls=cls, backend="triton")


def reference_out(op, q, k, v, cls, kw):
    scale = q.shape[-1] ** -0.5
    q, k, v = (x.double() for x in (q, k, v))
    if op == "temporal":
        return reference.temporal_attention(q, k, v, scale=scale, **kw)
    if op == "joint":
        return reference.joint_attention(q, k, v, scale=scale, **kw)
    return reference.spatial_attention(q, k, v, cls=tuple(c.double() for c in cls) if cls else None, scale=scale)


def set_switches(raw, whole):
    ta._TILED_FWD_RAW_MAX = raw
    ta._TILED_FWD_EVEN = whole
    sa._WHOLE_BLOCKS_FORCE = whole


def backward_calls(op, inputs, kw):
    """Backward op calls on saved forward outputs, one per input set, and each set's douts."""
    ops = torch.ops.temporal_kernels
    scale = inputs[0][0].shape[-1] ** -0.5
    causal = kw.get("causal", False)
    calls, douts = [], []
    for q, k, v, cls in inputs:
        dout = torch.randn_like(q)
        if op == "joint":
            out, lse = ops.triton_joint_fwd(q, k, v, None, causal, scale)
            calls.append(lambda q=q, k=k, v=v, out=out, lse=lse, dout=dout:
                         ops.triton_joint_bwd(dout, q, k, v, out, lse, None, causal, scale))
            douts.append((dout,))
        else:
            c = cls or (None, None, None)
            out, cls_out, lse, lse_cls = ops.triton_spatial_fwd(q, k, v, *c, scale)
            dcls = torch.randn_like(cls_out) if cls else None
            calls.append(lambda q=q, k=k, v=v, c=c, out=out, cls_out=cls_out, lse=lse, lse_cls=lse_cls, dout=dout,
                         dcls=dcls: ops.triton_spatial_bwd(dout, dcls, q, k, v, *c, out, cls_out if cls else None, lse,
                                                           lse_cls if cls else None, scale))
            douts.append((dout, dcls) if cls else (dout,))
    return calls, douts


def grad_error(op, first, douts, kw, grads):
    """Worst relative error of a backward op's gradients against float64 autograd of the reference."""
    q, k, v, cls = first
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v) + (cls or ())]
    out = reference_out(op, *leaves[:3], tuple(leaves[3:]) or None, kw)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * d.double()).sum() for o, d in zip(outs, douts))
    want = torch.autograd.grad(loss, leaves)
    return max(((g.double() - w).norm() / w.norm()).item() for g, w in zip(grads, want))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bwd", action="store_true")
    args = ap.parse_args()
    defaults = (ta._TILED_FWD_RAW_MAX, ta._TILED_FWD_EVEN, sa._WHOLE_BLOCKS_FORCE)
    print(f"{'backward' if args.bwd else 'forward'}: case       raw  whole   time us   rel err")
    for name, op, (B, T, N, H, D), kw in CASES:
        if args.bwd and op == "temporal":
            continue
        sets = max(1, min(16, (256 * 2**20) // (8 * B * T * N * H * D * 2)))
        inputs = []
        for _ in range(sets):
            x = torch.randn(B, N, T, 3, H, D, device="cuda", dtype=torch.bfloat16)
            q, k, v = x.permute(0, 2, 1, 3, 4, 5).unbind(3)
            cls = tuple(torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)) \
                if op == "spatial_cls" else None
            inputs.append((q, k, v, cls))
        op_name = "spatial" if op == "spatial_cls" else op
        q, k, v, cls = inputs[0]
        if args.bwd:
            for whole in (False, True):
                set_switches(False, whole)
                calls, douts = backward_calls(op_name, inputs, kw)
                err = grad_error(op_name, inputs[0], douts[0], kw, calls[0]())
                us = graph_time_ms(calls) * 1e3
                print(f"{name:20s}  {0:3d}  {int(whole):5d}  {us:8.1f}  {err:8.1e}", flush=True)
            ta._TILED_FWD_RAW_MAX, ta._TILED_FWD_EVEN, sa._WHOLE_BLOCKS_FORCE = defaults
            continue
        ref = reference_out(op_name, q, k, v, cls, kw)
        ref = ref[0] if isinstance(ref, tuple) else ref
        raws = (False, True) if op == "temporal" else (False,)
        for raw, whole in itertools.product(raws, (False, True)):
            set_switches(raw, whole)
            out = run_op(op_name, q, k, v, cls, kw)
            out = out[0] if isinstance(out, tuple) else out
            err = ((out.double() - ref).norm() / ref.norm()).item()
            fns = [(lambda i=i: run_op(op_name, i[0], i[1], i[2], i[3], kw)) for i in inputs]
            us = graph_time_ms(fns) * 1e3
            print(f"{name:20s}  {int(raw):3d}  {int(whole):5d}  {us:8.1f}  {err:8.1e}", flush=True)
        ta._TILED_FWD_RAW_MAX, ta._TILED_FWD_EVEN, sa._WHOLE_BLOCKS_FORCE = defaults


if __name__ == "__main__":
    main()
