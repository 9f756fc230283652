"""Sweep the launch configurations of the Triton temporal kernels on the GPU present.

    python scripts/tune_temporal.py [--bwd] [--path auto|short|tiled|both] [--shapes B,T,N,H,D ...]

For every shape (SPEC §5 temporal rows by default) and every (BLOCK_G, num_warps) of the short
path — or (BLOCK_M, BLOCK_N, num_warps, num_stages) of the tiled path — it times the forward (and
with --bwd the backward) op on patch-major packed bf16 views, checks the output against the
float64 reference, and prints the time and % of the memory floor. ``--path`` forces a path
(``both``: each path the shape can take); the tiled forward's best config is also timed without
the base-2 softmax (``_TILED_FWD_EXP2``). The winners feed the heuristics in
``temporal_kernels/triton/temporal_attn.py``; this script is a tool, its output is not a result.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

import temporal_kernels.ops  # noqa: F401  (registers the custom ops)
from temporal_kernels import reference
from temporal_kernels.triton import temporal_attn as ta

SHAPES = [
    (8, 8, 196, 12, 64),
    (2, 16, 784, 12, 64),
    (1, 32, 196, 12, 64),
    (2, 16, 4096, 5, 64),
    (1, 64, 196, 12, 64),
    (1, 96, 196, 12, 64),
    (1, 256, 64, 12, 64),
    (2, 8, 196, 8, 40),
    (2, 8, 196, 8, 128),
    (2, 8, 196, 8, 160),
]


def copy_bandwidth() -> float:
    src = torch.randn(256 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def graph_time_ms(fns) -> float:
    """Median ms of one call, timed as CUDA-graph replays of ``fns`` run back to back (each on its
    own inputs, so the working set exceeds L2 as in a real model)."""
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    times = []
    for _ in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bwd", action="store_true")
    ap.add_argument("--bwd-only", action="store_true", help="time the backward only")
    ap.add_argument("--shapes", nargs="*", default=None)
    ap.add_argument("--path", choices=("auto", "short", "tiled", "both"), default="auto")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    ops = torch.ops.temporal_kernels
    orig_short, orig_tiled, orig_stages, orig_use = ta._short_config, ta._tiled_config, ta._tiled_stages, ta.use_short_path
    args.bwd = args.bwd or args.bwd_only
    modes = ("bwd",) if args.bwd_only else ("fwd", "bwd") if args.bwd else ("fwd",)
    for B, T, N, H, D in shapes:
        scale = D**-0.5
        sets = max(1, min(16, (256 * 2**20) // (8 * B * T * N * H * D * 2)))
        inputs = []
        for _ in range(sets):
            x = torch.randn(B, N, T, 3, H, D, device="cuda", dtype=torch.bfloat16)
            q, k, v = x.permute(0, 2, 1, 3, 4, 5).unbind(3)
            inputs.append((q, k, v, torch.randn(B, T, N, H, D, device="cuda", dtype=torch.bfloat16)))
        q, k, v, dout = inputs[0]
        leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
        ref = reference.temporal_attention(*leaves, scale=scale)
        ref_grads = torch.autograd.grad(ref, leaves, dout.double()) if args.bwd else None
        ref = ref.detach()
        elems = B * T * N * H * D * 2
        for mode in modes:
            backward = mode == "bwd"
            auto_short = orig_use(T, D, torch.bfloat16, backward=backward)
            if args.path == "auto":
                paths = ["short" if auto_short else "tiled"]
            elif args.path == "both":
                paths = (["short"] if ta._pad(T) <= ta.SHORT_T_MAX else []) + ["tiled"]
            else:
                paths = [args.path]
            for path in paths:
                short = path == "short"
                if short:
                    configs = list(itertools.product((1, 2, 4, 8), (1, 2, 4)))
                else:
                    blocks = ((32, 32), (64, 32), (32, 64), (64, 64), (128, 64), (64, 128)) if backward else \
                        ((64, 32), (64, 64), (128, 32), (128, 64), (64, 128))
                    configs = [(m, n, w, st) for m, n in blocks for w in (4, 8) for st in ((1, 2, 3) if backward else (2, 3, 4))]
                rows = []
                for cfg in configs:
                    rows += time_config(cfg, short, backward, True, inputs, (ref, ref_grads), scale, elems, bw, ops,
                                        orig_short, orig_tiled, orig_stages, orig_use)
                rows.sort(key=lambda r: r[0])
                if not short and not backward and rows:
                    rows += time_config(rows[0][1], short, backward, False, inputs, (ref, ref_grads), scale, elems, bw, ops,
                                        orig_short, orig_tiled, orig_stages, orig_use)
                default = (orig_short(ta._pad(T), ta._pad(D), torch.bfloat16, backward) if short
                           else (*orig_tiled(T, ta._pad(D), torch.bfloat16, backward),
                                 orig_stages(torch.bfloat16, backward, orig_tiled(T, ta._pad(D), torch.bfloat16, backward)[1], ta._pad(D))))
                print(f"== {mode} B{B} T{T} N{N} H{H} D{D} ({path}{'' if path == ('short' if auto_short else 'tiled') else ', forced'}), default {default}")
                shown = rows[:6] + ([rows[-1]] if not short and not backward and rows else [])
                # the default config too, wherever it ranks (the one the launchers pick today)
                shown += [r for r in rows[6:] if tuple(r[1]) == tuple(default) and r[4] and r not in shown]
                for ms, cfg, err, frac, exp2 in shown:
                    tag = "" if exp2 else "  (exp, not exp2)"
                    tag += "  <- default" if tuple(cfg) == tuple(default) and exp2 else ""
                    print(f"  {ms * 1e3:8.1f} us {100 * frac:5.1f}% floor  err {err:.1e}  cfg {cfg}{tag}")


def time_config(cfg, short, backward, exp2, inputs, ref, scale, elems, bw, ops, orig_short, orig_tiled, orig_stages, orig_use):
    """[(ms, cfg, err, fraction of the floor, exp2)] of one launch config, [] if it does not compile."""
    q, k, v, _ = inputs[0]

    def patched(orig, value):
        return lambda *a, **kw: value if kw.get("backward", a[-1]) == backward else orig(*a, **kw)

    def use_short_path(T_, D_, dtype, backward=False, forced=short, direction=backward):
        return forced if backward == direction else orig_use(T_, D_, dtype, backward)

    ta.use_short_path = use_short_path
    ta._TILED_FWD_EXP2 = exp2
    if short:
        ta._short_config = patched(orig_short, cfg)
    else:
        ta._tiled_config = patched(orig_tiled, cfg[:3])
        ta._tiled_stages = lambda *a, **kw: cfg[3]
    try:
        out, lse = ops.triton_temporal_fwd(q, k, v, None, False, scale)
        ref, ref_grads = ref
        err = ((out.double() - ref).norm() / ref.norm()).item()
        if backward:
            saved = [ops.triton_temporal_fwd(*i[:3], None, False, scale) for i in inputs]
            # the worst gradient error of the backward (a racy pipelined config shows here)
            grads = ops.triton_temporal_bwd(inputs[0][3], *inputs[0][:3], *saved[0], None, False, scale)
            err = max(((g.double() - r).norm() / r.norm()).item() for g, r in zip(grads, ref_grads))
            fns = [
                (lambda i=i, s=s: ops.triton_temporal_bwd(i[3], *i[:3], *s, None, False, scale))
                for i, s in zip(inputs, saved)
            ]
            floor_passes = 7
        else:
            fns = [(lambda i=i: ops.triton_temporal_fwd(*i[:3], None, False, scale)) for i in inputs]
            floor_passes = 4
        ms = graph_time_ms(fns)
    except Exception as exc:  # a config that does not compile (registers, shared memory)
        print(f"  {'bwd' if backward else 'fwd'} {cfg}: failed ({type(exc).__name__}: {str(exc)[:80]})")
        return []
    finally:
        ta._short_config, ta._tiled_config, ta._tiled_stages, ta.use_short_path = orig_short, orig_tiled, orig_stages, orig_use
        ta._TILED_FWD_EXP2 = True
    return [(ms, cfg, err, floor_passes * elems / bw * 1e3 / ms, exp2)]

if __name__ == "__main__":
    main()
