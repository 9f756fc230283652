"""Where the 16-bit spatial backward's error comes from (GPU): the Triton gradients of one test
case against the float64 reference and against a float64 emulation of the kernel's roundings
(dout, dS and P rounded to the dtype, fp32 accumulation), with the error of dK located by key
position, sequence and head-dim index, and re-run under other tile configurations.

    python scripts/diag_spatial_16bit.py [--dtype f16] [--shape 8,8,196,12,64] [--layout packed_nt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import temporal_kernels as tk  # noqa: E402
from temporal_kernels.triton import spatial_attn as sa  # noqa: E402
from helpers import make_qkv, rel_err  # noqa: E402

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def seqs(x):
    B, T, N, H, D = x.shape
    return x.double().permute(0, 1, 3, 2, 4).reshape(B * T * H, N, D)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="f16")
    ap.add_argument("--shape", default="8,8,196,12,64")
    ap.add_argument("--layout", default="packed_nt")
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    B, T, N, H, D = map(int, args.shape.split(","))
    gen = torch.Generator().manual_seed(0)
    q, k, v = make_qkv(args.layout, B, T, N, H, D, dtype, requires_grad=True, generator=gen)
    dout = torch.randn(q.shape, dtype=torch.float64, generator=gen).to("cuda")
    sc = D ** -0.5

    Q, K, V, DO = seqs(q.detach()), seqs(k.detach()), seqs(v.detach()), seqs(dout)
    P = torch.softmax(Q @ K.transpose(1, 2) * sc, -1)
    dP = DO @ V.transpose(1, 2)
    dS = P * (dP - (P * dP).sum(-1, keepdim=True))
    ref = {"dq": sc * dS @ K, "dk": sc * dS.transpose(1, 2) @ Q, "dv": P.transpose(1, 2) @ DO}
    DO16 = DO.to(dtype).double()
    dP16 = DO16 @ V.transpose(1, 2)
    dS16 = (P * (dP16 - (P * dP16).sum(-1, keepdim=True))).float().to(dtype).double()
    P16 = P.float().to(dtype).double()
    sim = {"dq": sc * dS16 @ K, "dk": sc * dS16.transpose(1, 2) @ Q, "dv": P16.transpose(1, 2) @ DO16}
    sim = {n: x.float().to(dtype) for n, x in sim.items()}
    print(f"{args.dtype} {args.layout} B{B} T{T} N{N} H{H} D{D}")
    print("emulated roundings vs reference:", {n: f"{rel_err(sim[n], ref[n]):.3e}" for n in ref})

    configs = [("default", None), ("stages1", ((32, 64, 8, 1), (64, 32, 8, 1))),
               ("small", ((16, 16, 4, 1), (16, 16, 4, 1))), ("dkdv 64x64", ((64, 64, 8, 2), (64, 32, 8, 2)))]
    default_cfg = sa._bwd_configs
    for name, cfg in configs:
        sa._bwd_configs = default_cfg if cfg is None else (lambda D, dtype, mode, N, cfg=cfg: cfg)
        out = tk.spatial_attention(q, k, v, backend="triton")
        grads = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
        got = dict(zip(("dq", "dk", "dv"), (seqs(g) for g in grads)))
        print(f"[{name}] triton vs reference:", {n: f"{rel_err(got[n], ref[n]):.3e}" for n in ref},
              " vs emulation:", {n: f"{rel_err(got[n], sim[n].double()):.3e}" for n in ref})
        if name == "default":
            err = (got["dk"] - ref["dk"])
            by_n = err.norm(dim=(0, 2)) / ref["dk"].norm(dim=(0, 2))
            top = torch.topk(by_n, 8)
            print("  dk rel err by key position, top 8:", [(int(i), f"{x:.2e}") for x, i in zip(top.values, top.indices)])
            print("  dk rel err by key position, median:", f"{by_n.median():.2e}")
            by_s = err.norm(dim=(1, 2)) / ref["dk"].norm(dim=(1, 2))
            top = torch.topk(by_s, 5)
            print("  dk rel err by sequence (b,t,h), top 5:", [(int(i), f"{x:.2e}") for x, i in zip(top.values, top.indices)],
                  "median", f"{by_s.median():.2e}")
            by_d = err.norm(dim=(0, 1)) / ref["dk"].norm(dim=(0, 1))
            print("  dk rel err by head-dim index:", " ".join(f"{x:.1e}" for x in by_d.tolist()))
            worst = err.abs().flatten().topk(5)
            print("  dk largest abs errors:", [f"{x:.2e}" for x in worst.values.tolist()], "dk rms",
                  f"{ref['dk'].pow(2).mean().sqrt():.2e}")
    sa._bwd_configs = default_cfg


if __name__ == "__main__":
    main()
