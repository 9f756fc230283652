"""Where the host time of one eager op call goes, layer by layer (GPU machine).

    python scripts/profile_dispatch.py [--iters 300]

A small bf16 problem (the GPU finishes each kernel before the host queues the next), so the time
per call of a loop without syncs is the host's. Layers, from the inside out: a bare
``torch.empty_like``; a trivial ``custom_op`` / ``triton_op`` on CUDA tensors (dispatch alone);
the temporal launcher into preallocated buffers; the op's Python body without dispatch; the op
through ``torch.ops`` (no grad, then with autograd); the public function; forward+backward. The
same for the packed spatial backward op (the heaviest backward). Then cProfile by self time.
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch
from torch import Tensor

import temporal_kernels as tk
from temporal_kernels import ops
from temporal_kernels._layout import empty_like_video
from temporal_kernels.triton.temporal_attn import temporal_attn_fwd

from profile_layers import cprofile_report, per_call_us  # shared with profile_layers (scripts/ is on sys.path)


@torch.library.custom_op("tk_profile::trivial", mutates_args=())
def _trivial(q: Tensor, k: Tensor, v: Tensor, lens: Optional[Tensor], causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k)


@torch.library.triton_op("tk_profile::trivial_triton", mutates_args=())
def _trivial_triton(q: Tensor, k: Tensor, v: Tensor, lens: Optional[Tensor], causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--profile", type=int, nargs="*", default=[5, 6, 8, 9, 10, 11], help="rows to cProfile (indices)")
    args = ap.parse_args()
    B, T, N, H, D = 1, 8, 16, 2, 64
    dt = torch.bfloat16
    qkv = torch.randn(B, N, T, 3, H, D, device="cuda", dtype=dt).permute(0, 2, 1, 3, 4, 5)
    q, k, v = qkv.unbind(3)
    out, lse = empty_like_video(q), torch.empty(B, H, T, N, device="cuda")  # the ops' buffers
    qg = q.detach().clone().requires_grad_()
    qkv_g = qkv.detach().clone().requires_grad_()
    cls_qkv = torch.randn(B, 3, H, D, device="cuda", dtype=dt, requires_grad=True)
    scale = D ** -0.5
    s_out, s_cls, s_lse, s_lse_cls = torch.ops.temporal_kernels.triton_spatial_qkvpacked_fwd(qkv, cls_qkv.detach(), scale)
    dout, dcls = torch.randn_like(s_out), torch.randn_like(s_cls)

    def fwd_bwd_temporal():
        o = tk.temporal_attention_qkvpacked(qkv_g)
        o.backward(dout)
        qkv_g.grad = None

    def fwd_bwd_spatial():
        o, c = tk.spatial_attention_qkvpacked(qkv_g, cls_qkv=cls_qkv)
        torch.autograd.backward((o, c), (dout, dcls))
        qkv_g.grad = cls_qkv.grad = None

    spatial_bwd_args = (dout, dcls, qkv, cls_qkv.detach(), s_out, s_cls, s_lse, s_lse_cls, scale)
    rows = [
        ("torch.empty_like", lambda: torch.empty_like(q)),
        ("trivial custom_op (2 empty_like)", lambda: _trivial(q, k, v, None, False, scale)),
        ("trivial triton_op (2 empty_like)", lambda: _trivial_triton(q, k, v, None, False, scale)),
        ("temporal launcher (prealloc)", lambda: temporal_attn_fwd(q, k, v, out, lse, None, False, scale)),
        ("temporal op body, no dispatch", lambda: ops._triton_temporal_fwd._init_fn(q, k, v, None, False, scale)),
        ("temporal op via torch.ops, no grad", lambda: torch.ops.temporal_kernels.triton_temporal_fwd(q, k, v, None, False, scale)),
        ("temporal op via torch.ops, autograd", lambda: torch.ops.temporal_kernels.triton_temporal_fwd(qg, k, v, None, False, scale)),
        ("tk.temporal_attention, no grad", lambda: tk.temporal_attention(q, k, v)),
        ("tk.temporal_attention_qkvpacked fwd+bwd", fwd_bwd_temporal),
        ("spatial packed bwd body, no dispatch", lambda: ops._triton_spatial_qkvpacked_bwd._init_fn(*spatial_bwd_args)),
        ("spatial packed bwd via torch.ops", lambda: torch.ops.temporal_kernels.triton_spatial_qkvpacked_bwd(*spatial_bwd_args)),
        ("tk.spatial_attention_qkvpacked+CLS fwd+bwd", fwd_bwd_spatial),
    ]
    print(f"host time per call, {torch.cuda.get_device_name()}, torch {torch.__version__}, B{B} T{T} N{N} H{H} D{D} bf16")
    for name, fn in rows:
        print(f"  {name:45s} {per_call_us(fn, args.iters):8.1f} us", flush=True)
    for name, fn in [rows[i] for i in args.profile]:
        ((_, report),) = cprofile_report(fn, args.iters, 18)
        print(f"== cProfile, {name}, {args.iters} calls, by self time")
        print(report[:5000], flush=True)


if __name__ == "__main__":
    main()
