"""End-to-end: the seed's ``MiniSpaceTimeTransformer`` against ``tk.nn.MiniSpaceTimeTransformer`` (SPEC §5, issue 7).

    python -m benchmarks.e2e_mini [--out FILE] [--quick] [--dtypes bf16,fp32] [--backend NAME] [--profile]

SPEC §5's row: B=8, T=8, N=196, D=768 (12 heads of 64), one H100, "≥ 100× the seed's Python-loop
version". Times, per dtype, forward (eval, no grad) and forward+backward (train, gradients of the
input and of every parameter) of three models sharing one set of parameters:

- ``seed-loop``: the seed note's code verbatim (``/work/shared/seed/temporal-transformer.md``,
  "PyTorch-like Illustration"): a Python loop over the T frames calling ``self.spatial`` on
  ``x[:, t]``, then a loop over the N patches calling ``self.temporal`` on ``x_spatial[:, :, n]``,
  both ``nn.MultiheadAttention(dim, num_heads)``. That module is sequence-first, so on ``[B, N, D]``
  / ``[B, T, D]`` the seed attends over the *batch* axis B (N resp. T act as its batch): the wrong
  axis. It is the program the 100× bar is measured against, so it is timed as written.
- ``seed-loop-batch-first``: the same loops with ``batch_first=True``, i.e. what the seed's text
  describes (attention among the patches of a frame, then across the frames of a patch).
- ``tk-fused``: ``tk.nn.MiniSpaceTimeTransformer`` (``backend=None``: on the GPU, the kernel backend
  measured faster per op and shape), loaded from the seed's ``state_dict``; it computes what
  ``seed-loop-batch-first`` does.

Correctness, in the same run and reported (the run fails on nothing): the fused model's output
(and, for information, its gradients) against the float64 reference backend on the same rounded
parameters and input, against SPEC §3's bound of the dtype; and, in float64, how far each seed
loop is from ours (``seed-loop`` should differ by O(1), ``seed-loop-batch-first`` by rounding).

Timing: CUDA events around a loop of calls after warm-up (the wall clock on CPU), as many calls as
fit in ``--budget`` seconds (at least one, at most ``--max-iters``): the seed loops take ~0.1 s a
call, so each of their measurements is a few calls. ``--quick`` (forced on a machine without a
GPU, labelled, no GPU claims) uses a tiny video so the whole run takes seconds on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
from torch import nn

# The interpreter must be chosen before triton is first imported (kernels are decorated at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import temporal_kernels as tk  # noqa: E402

from . import env  # noqa: E402

BAR = 100.0  # SPEC §5: ≥ 100x the seed's Python-loop version
BOUNDS = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}  # SPEC §3
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
FULL = dict(B=8, T=8, N=196, D=768, H=12)  # SPEC §5 (head dim 64)
QUICK = dict(B=2, T=2, N=4, D=12, H=2)  # B=2: with B=1 the seed's batch-axis attention is trivial
SEED_SEMANTICS = (
    "seed-loop is the seed's code verbatim: nn.MultiheadAttention (sequence-first) gets x[:, t] "
    "[B, N, D] and x_spatial[:, :, n] [B, T, D], so both of its steps attend over the batch axis B "
    "(sequence length B; N resp. T act as the batch), not over patches/frames as the seed's text says. "
    "seed-loop-batch-first runs the same loops with batch_first=True (what the text describes); "
    "tk-fused computes the latter."
)


class SeedMiniSpaceTimeTransformer(nn.Module):
    """The seed note's ``MiniSpaceTimeTransformer``, line for line (its comments kept).

    ``batch_first=True`` is the one change, used for ``seed-loop-batch-first``; the default is the
    seed's code, whose ``nn.MultiheadAttention`` is sequence-first and so attends over ``B``.
    """

    def __init__(self, dim=3, num_heads=1, batch_first=False):
        super().__init__()
        self.spatial = nn.MultiheadAttention(dim, num_heads, batch_first=batch_first)
        self.temporal = nn.MultiheadAttention(dim, num_heads, batch_first=batch_first)

    def forward(self, x):
        # x: [B, T, N, D]
        B, T, N, D = x.shape
        # --- Spatial attention (per frame) ---
        spatial_out = []
        for t in range(T):
            xt = x[:, t]            # [B, N, D]
            yt, _ = self.spatial(xt, xt, xt)
            spatial_out.append(yt)
        x_spatial = torch.stack(spatial_out, dim=1)  # [B, T, N, D]

        # --- Temporal attention (per patch index) ---
        temporal_out = []
        for n in range(N):
            xn = x_spatial[:, :, n]                 # [B, T, D]
            yn, _ = self.temporal(xn, xn, xn)
            temporal_out.append(yn)
        x_temporal = torch.stack(temporal_out, dim=2)  # [B, T, N, D]
        return x_temporal


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64; inf where ``out`` is not finite."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    return num / denom if denom > 0 else num


# ---------------------------------------------------------------------------------------------
# timing


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn, budget_s: float, max_iters: int) -> tuple[float, int]:
    """Mean ms per call of ``fn`` over a loop of calls after warm-up, and the number of calls.

    The first call compiles/autotunes (the fused kernels) and is not timed; the loop length is
    what fits in ``budget_s`` after a timed estimate, so a seed loop at ~0.1 s a call runs a few
    times and the whole measurement stays within a few budgets.
    """
    fn()
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    estimate = time.perf_counter() - t0
    iters = max(1, min(max_iters, int(budget_s / max(estimate, 1e-9))))
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters, iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters, iters


def time_model(model: nn.Module, x: torch.Tensor, dout: torch.Tensor, budget_s: float, max_iters: int) -> dict:
    model.eval()

    def forward():
        with torch.no_grad():
            model(x)

    fwd, fwd_iters = time_ms(forward, budget_s, max_iters)
    model.train()  # a training step; these models have no dropout, so only MHA's code path changes
    params = list(model.parameters())
    xg = x.detach().requires_grad_()

    def step():
        for p in params:
            p.grad = None
        xg.grad = None
        model(xg).backward(dout)

    fwd_bwd, fwd_bwd_iters = time_ms(step, budget_s, max_iters)
    model.zero_grad(set_to_none=True)
    return dict(fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, fwd_iters=fwd_iters, fwd_bwd_iters=fwd_bwd_iters)


def profile_step(model: nn.Module, x: torch.Tensor, dout: torch.Tensor, name: str) -> None:
    """One training step of ``model`` under torch.profiler: is it bound by the GPU or the host?"""
    from .e2e_timesformer import _profile

    model.train()
    xg = x.detach().requires_grad_()

    def step():
        model.zero_grad(set_to_none=True)
        model(xg).backward(dout)

    _profile(name, step)
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------
# correctness


def _fwd_bwd(model: nn.Module, x: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.train()
    model.zero_grad(set_to_none=True)
    xg = x.detach().requires_grad_()
    out = model(xg)
    out.backward(dout.to(out.dtype))
    grads = {name: p.grad for name, p in model.named_parameters()}
    grads["x"] = xg.grad
    return out.detach(), grads


def check_against_reference(fused: nn.Module, x: torch.Tensor, dout: torch.Tensor) -> dict:
    """The fused model and the reference backend in ``x``'s dtype against the float64 reference.

    The float64 model is a copy of the fused one (parameters already rounded to the dtype), fed the
    same rounded input, so only the computation differs. The bound applies to the output
    (SPEC §3); gradients are reported next to the reference backend's own in the same dtype, the
    floor that the model's low-precision linears set.
    """
    dtype = x.dtype
    ref64 = copy.deepcopy(fused).double()
    ref64.backend = "reference"
    same = copy.deepcopy(fused)
    same.backend = "reference"
    want, want_grads = _fwd_bwd(ref64, x.double(), dout.double())
    result = {"bound": BOUNDS[dtype]}
    for name, model in (("tk_fused", fused), ("tk_reference_same_dtype", same)):
        out, grads = _fwd_bwd(model, x, dout)
        result[name] = dict(
            out_rel_err=rel_err(out, want),
            grad_max_rel_err=max(rel_err(grads[k], want_grads[k]) for k in want_grads),
        )
    fused.zero_grad(set_to_none=True)
    result["out_ok"] = result["tk_fused"]["out_rel_err"] <= BOUNDS[dtype]
    result["grads_within_bound"] = result["tk_fused"]["grad_max_rel_err"] <= BOUNDS[dtype]
    return result


def compare_seed_semantics(seed: nn.Module, batch_first: nn.Module, ours: nn.Module, x: torch.Tensor) -> dict:
    """In float64, on ``x``'s device: how far each seed loop's output is from ours (the reference backend)."""
    # train(): no dropout here, and it keeps MHA off its inference fast path, whatever that supports in float64
    models = [copy.deepcopy(m).to(x.device, torch.float64).train() for m in (seed, batch_first, ours)]
    models[2].backend = "reference"
    with torch.no_grad():
        seed_out, bf_out, ours_out = (m(x.double()) for m in models)
    return {
        "seed_loop_vs_tk_rel_diff": rel_err(seed_out, ours_out),
        "seed_loop_batch_first_vs_tk_rel_diff": rel_err(bf_out, ours_out),
    }


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e_mini", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the results as JSON here (e.g. benchmarks/results/h100/e2e_mini.json)")
    p.add_argument("--quick", action="store_true", help=f"tiny video {QUICK} (forced without a GPU)")
    p.add_argument("--dtypes", help="comma-separated, of " + ",".join(DTYPES)
                   + " (default: bf16,fp32 on GPU, fp32 on CPU)")
    p.add_argument("--backend", default=None, help="backend of tk-fused (default None: per op and shape on the GPU)")
    p.add_argument("--budget", type=float, default=None, help="seconds per measurement (default 2 on GPU, 0.2 on CPU)")
    p.add_argument("--max-iters", type=int, default=200, help="most calls per measurement")
    p.add_argument("--profile", action="store_true",
                   help="also print tk-fused's training step under torch.profiler (GPU kernel time, host time)")
    return p.parse_args(argv)


def _speedup(base: float, ours: float) -> float:
    return base / ours if ours > 0 else math.inf


def _x(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    quick = args.quick or not gpu
    shape = QUICK if quick else FULL
    B, T, N, D, H = (shape[k] for k in "BTNDH")
    dtype_names = (args.dtypes or ("bf16,fp32" if gpu else "fp32")).split(",")
    if any(d not in DTYPES for d in dtype_names):
        raise SystemExit(f"--dtypes: expected names of {sorted(DTYPES)}, got {args.dtypes!r}")
    budget = args.budget if args.budget is not None else (2.0 if gpu else 0.2)

    meta = env.metadata(argv)
    meta.update(
        device=env.gpu_name(),
        command=" ".join(["python -m benchmarks.e2e_mini"] + argv),
        shape=dict(shape),
        quick=quick,
        label=f"{env.gpu_name()}" if gpu and not quick else f"{device}, tiny video (smoke run, no GPU claims)",
        tk_backend=args.backend or ("None (per-shape)" if tk.nn._kernel_backend(tk.nn._DIVIDED, device, D // H)
                                    else "None -> reference"),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        budget_s=budget,
        forward_mode="eval, torch.no_grad()",
        fwd_bwd_mode="train, out.backward(dout): gradients of x and of every parameter",
    )
    print(f"e2e_mini: {meta['label']} | torch {meta['torch']} | triton {meta['triton']} | commit {meta['commit']} | "
          f"B={B} T={T} N={N} D={D} H={H} | tk-fused backend {meta['tk_backend']}", flush=True)

    torch.manual_seed(0)
    seed = SeedMiniSpaceTimeTransformer(D, H)
    with torch.no_grad():  # the seed's init leaves every bias at 0; random ones test more
        for name, p in seed.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.3)
    batch_first = SeedMiniSpaceTimeTransformer(D, H, batch_first=True)
    batch_first.load_state_dict(seed.state_dict())
    fused = tk.nn.MiniSpaceTimeTransformer(D, H, backend=args.backend)
    fused.load_state_dict(seed.state_dict())  # the seed's parameter names load unchanged
    g = torch.Generator().manual_seed(1)
    x_master = torch.randn(B, T, N, D, generator=g, dtype=torch.float64)
    dout_master = torch.randn(B, T, N, D, generator=g, dtype=torch.float64)

    semantics = compare_seed_semantics(seed, batch_first, fused, x_master.to(device))
    semantics["note"] = SEED_SEMANTICS
    print(f"seed semantics (float64): seed-loop vs tk rel diff {semantics['seed_loop_vs_tk_rel_diff']:.3g} "
          f"(attends over the batch axis); seed-loop-batch-first vs tk "
          f"{semantics['seed_loop_batch_first_vs_tk_rel_diff']:.3g}", flush=True)

    rows, speedups, correctness = [], {}, {}
    for dname in dtype_names:
        dtype = DTYPES[dname]
        x = x_master.to(device, dtype)
        dout = dout_master.to(device, dtype)
        models = {
            "seed-loop": copy.deepcopy(seed).to(device, dtype),
            "seed-loop-batch-first": copy.deepcopy(batch_first).to(device, dtype),
            "tk-fused": copy.deepcopy(fused).to(device, dtype),
        }
        correctness[dname] = check_against_reference(models["tk-fused"], x, dout)
        if args.profile and gpu:
            profile_step(models["tk-fused"], x, dout, f"tk-fused {dname}")
        times = {}
        for name, model in models.items():
            times[name] = time_model(model, x, dout, budget, args.max_iters)
            rows.append(dict(model=name, dtype=dname, **times[name]))
            print(f"  {dname} {name:22s} fwd {times[name]['fwd_ms']:9.3f} ms ({times[name]['fwd_iters']} calls)  "
                  f"fwd+bwd {times[name]['fwd_bwd_ms']:9.3f} ms ({times[name]['fwd_bwd_iters']} calls)", flush=True)
        ours = times["tk-fused"]
        speedups[dname] = {
            f"vs_{base}": dict(fwd=_speedup(times[base]["fwd_ms"], ours["fwd_ms"]),
                               fwd_bwd=_speedup(times[base]["fwd_bwd_ms"], ours["fwd_bwd_ms"]))
            for base in ("seed-loop", "seed-loop-batch-first")
        }
        del models

    bar_dtype = "bf16" if "bf16" in speedups else dtype_names[0]
    s = speedups[bar_dtype]["vs_seed-loop"]
    sb = speedups[bar_dtype]["vs_seed-loop-batch-first"]
    ok = all(c["out_ok"] for c in correctness.values())
    ratios = (
        f"tk-fused is {_x(s['fwd'])} (fwd) / {_x(s['fwd_bwd'])} (fwd+bwd) the seed's Python loop "
        f"({_x(sb['fwd'])} / {_x(sb['fwd_bwd'])} its batch-first fix); outputs "
        f"{'within' if ok else 'OUTSIDE'} SPEC §3 bounds"
    )
    if quick:  # a tiny video measures Python overheads only: no verdict on the bar
        meets = None
        verdict = f"no claim (smoke run on a tiny video, not SPEC §5's shape): {ratios}"
    else:
        meets = s["fwd"] >= BAR and s["fwd_bwd"] >= BAR
        verdict = f"{'MEETS' if meets else 'MISSES'} the >= {BAR:.0f}x bar ({bar_dtype}): {ratios}"
    if bar_dtype != "bf16":
        verdict += f" (SPEC §5 is measured in bf16; this run had {bar_dtype})"

    print()
    print("| model | dtype | fwd ms | fwd+bwd ms | fwd × seed-loop | fwd+bwd × seed-loop |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        base = next(r for r in rows if r["dtype"] == row["dtype"] and r["model"] == "seed-loop")
        fwd_x = _x(_speedup(base["fwd_ms"], row["fwd_ms"]))
        fwd_bwd_x = _x(_speedup(base["fwd_bwd_ms"], row["fwd_bwd_ms"]))
        print(f"| {row['model']} | {row['dtype']} | {row['fwd_ms']:.3f} | {row['fwd_bwd_ms']:.3f} | "
              f"{fwd_x} | {fwd_bwd_x} |")
    print()
    print("| dtype | tk-fused out vs f64 ref | bound | tk-fused grads (max) | reference in dtype: out / grads |")
    print("| --- | --- | --- | --- | --- |")
    for dname, c in correctness.items():
        f, r = c["tk_fused"], c["tk_reference_same_dtype"]
        print(f"| {dname} | {f['out_rel_err']:.2e} ({'ok' if c['out_ok'] else 'WRONG'}) | {c['bound']:g} | "
              f"{f['grad_max_rel_err']:.2e} | {r['out_rel_err']:.2e} / {r['grad_max_rel_err']:.2e} |")
    print()
    print(f"seed-loop vs tk (float64): rel diff {semantics['seed_loop_vs_tk_rel_diff']:.3g}: the seed attends over "
          f"the batch axis; seed-loop-batch-first vs tk: {semantics['seed_loop_batch_first_vs_tk_rel_diff']:.3g}")
    print(verdict, flush=True)

    result = dict(meta=meta, seed_semantics=semantics, rows=rows, speedups=speedups, correctness=correctness,
                  bar=BAR, meets_bar=meets, verdict=verdict)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
