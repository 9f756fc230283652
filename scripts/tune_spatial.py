"""Sweep the launch configurations of the Triton flash core (spatial +CLS, spatial, joint) on the GPU present.

    python scripts/tune_spatial.py [--bwd] [--ops spatial_cls,spatial,joint] [--shapes B,T,N,H,D ...]
                                   [--kernels fwd,bwd_dkdv,bwd_dq] [--budget-s 400] [--dtype bf16]
                                   [--csv PATH] [--configs BM,BN,W,S ...]

Every (op, shape) case (SPEC §5 rows by default: spatial with and without CLS at (8,8,196,12,64)
and (2,16,784,12,64), joint at (2,8,196,12,64) with causal False and True) runs on patch-major
packed views (TimeSformer's ``b (n t) (3 h d)`` projection; the CLS token from a ``[B, 3, H, D]``
projection). One sweep per kernel: the forward, and with --bwd the dK/dV kernel and the dQ kernel,
each swept over (BLOCK_M, BLOCK_N, num_warps, num_stages) in {32,64,128}^2 x {4,8} x {1,2,3,4}
while the other backward kernel keeps its default (``--kernels`` picks a subset of the three).
The config is forced by monkeypatching ``_fwd_config`` / ``_bwd_configs`` of
``temporal_kernels.triton.spatial_attn`` (restored after every run; the run aborts if the launcher
never read the patched function).

Per config it prints the time of one op call (median of CUDA-graph replays over several input
sets, as tune_temporal.py) and TFLOP/s, or ``WRONG`` when the output (forward) or any gradient
(backward) is off the float64 reference by more than the SPEC §3 bound of the dtype, or
``RACY`` when two runs differ bitwise or one (b, t, h) slice differs from an unpipelined
(16, 16, 4, 1) run by more than two units of roundoff (a 16-bit dK/dV config corrupted a few slices
while the whole tensor stayed within the bound: scripts/diag_spatial_16bit.py), or
``skip: <reason>`` when the config does not compile or run (shared memory, registers). The
backward time is that of the registered backward op alone (``triton_{spatial,joint}_bwd`` on saved
forward outputs: the delta kernel, dK/dV, dQ and, with CLS, the CLS gradient sum), so a dK/dV sweep
and a dQ sweep differ only in the swept kernel. FLOPs: ``4*B*T*H*N_q*N_keys*D`` for the forward
(N_q = N_keys = N+1 with CLS; joint: N_q = N per frame, N_keys = T*N, or the visible (T+1)/2*N on
average when causal), 2.5x that for the backward.

The default config runs first in every sweep, the other candidates in a seeded random order, so a
sweep cut short is a uniform sample. ``--budget-s`` is shared evenly among the sweeps still to run
(time a sweep leaves unused goes to the later ones); a sweep out of time stops, and at the end
(or on Ctrl-C) the best config per (op, shape, kernel) is printed next to the default's time. The
winners feed ``_fwd_config`` / ``_bwd_configs``; this script is a tool, its output is not a result.
Compiles dominate the run time: rerunning on the same machine hits Triton's cache.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import os
import random
import sys
import time
from dataclasses import dataclass, field

OPS = ("spatial_cls", "spatial", "joint")
SPEC_SHAPES = {
    "spatial_cls": [(8, 8, 196, 12, 64), (2, 16, 784, 12, 64)],
    "spatial": [(8, 8, 196, 12, 64), (2, 16, 784, 12, 64)],
    "joint": [(2, 8, 196, 12, 64)],
}
BLOCKS = (32, 64, 128)
WARPS = (4, 8)
STAGES = (1, 2, 3, 4)
KERNELS_FWD = ("fwd",)
KERNELS_BWD = ("fwd", "bwd_dkdv", "bwd_dq")
# SPEC §3 relative-error bounds (tests/helpers.BOUNDS)
BOUNDS = {"bf16": 1.5e-2, "fp16": 2e-3, "fp32": 1e-5}
# an unpipelined configuration, the yardstick of the per-slice check, and that check's bound
SAFE_CFG = (16, 16, 4, 1)
SLICE_BOUND = {"bf16": 2 * 2**-8, "fp16": 2 * 2**-11, "fp32": 2 * 2**-24}  # two units of roundoff
# --cpu-smoke: one tiny case per op under the interpreter, the default config and one other
SMOKE_SHAPE = (1, 2, 20, 2, 8)
# The smoke's second config keeps the yardstick's 16 x 16 tiles (the interpreter ignores warps and
# stages): in float32 the interpreter's numpy sums other tile shapes' dots in another order, which
# on some machines exceeds the two-unit slice bound (1.5-2.7e-7 seen) without any race.
SMOKE_CONFIGS = {"fwd": (16, 16, 2, 2), "bwd_dkdv": (16, 16, 2, 2), "bwd_dq": (16, 16, 2, 2)}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Sweep (BLOCK_M, BLOCK_N, num_warps, num_stages) of the Triton spatial/joint flash core.",
        epilog="Needs a CUDA GPU. Example: python scripts/tune_spatial.py --bwd --ops spatial_cls --budget-s 540",
    )
    ap.add_argument("--bwd", action="store_true", help="also sweep the dK/dV and the dQ kernels of the backward")
    ap.add_argument("--ops", default=",".join(OPS),
                    help="comma-separated subset of %s (joint runs causal False and True)" % ",".join(OPS))
    ap.add_argument("--shapes", nargs="*", default=None, metavar="B,T,N,H,D",
                    help="shapes for every selected op (default: the SPEC §5 rows of each op)")
    ap.add_argument("--kernels", default=None, metavar="K,...",
                    help="comma-separated subset of fwd,bwd_dkdv,bwd_dq to sweep (default: fwd, plus both "
                         "backward kernels with --bwd); lets a run spend its budget on the backward only")
    ap.add_argument("--budget-s", type=float, default=400.0, help="wall budget of the whole run, seconds")
    ap.add_argument("--dtype", choices=sorted(BOUNDS), default="bf16")
    ap.add_argument("--seed", type=int, default=0, help="order of the candidates after the default")
    ap.add_argument("--csv", default=None, metavar="PATH", help="also write every measured row to PATH")
    ap.add_argument("--configs", nargs="*", default=None, metavar="BM,BN,W,S",
                    help="candidates to time after the default (default: the whole grid, shuffled)")
    ap.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.configs is not None:
        try:
            args.configs = [tuple(int(x) for x in c.split(",")) for c in args.configs]
        except ValueError:
            ap.error(f"--configs: expected BM,BN,W,S integers, got {args.configs}")
        if any(len(c) != 4 for c in args.configs):
            ap.error(f"--configs: expected four integers BM,BN,W,S per config, got {args.configs}")
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in args.ops if o not in OPS]
    if bad:
        ap.error(f"unknown op(s) {bad}; choose from {','.join(OPS)}")
    if args.kernels is None:
        args.kernels = list(KERNELS_BWD if args.bwd else KERNELS_FWD)
    else:
        args.kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
        bad = [k for k in args.kernels if k not in KERNELS_BWD]
        if bad or not args.kernels:
            ap.error(f"unknown kernel(s) {bad}; choose from {','.join(KERNELS_BWD)}")
        args.kernels = [k for k in KERNELS_BWD if k in args.kernels]
    args.bwd = any(k != "fwd" for k in args.kernels)
    if args.shapes:
        try:
            args.shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes]
        except ValueError:
            ap.error("--shapes takes B,T,N,H,D integers")
        if any(len(s) != 5 for s in args.shapes):
            ap.error("--shapes takes B,T,N,H,D (five integers)")
    return args


@dataclass
class Case:
    op: str
    shape: tuple
    causal: bool = False

    @property
    def name(self) -> str:
        B, T, N, H, D = self.shape
        tag = self.op + (" causal" if self.causal else "")
        return f"{tag} B{B} T{T} N{N} H{H} D{D}"

    def fwd_flops(self) -> float:
        B, T, N, H, D = self.shape
        if self.op == "joint":
            n_keys = N * (T + 1) / 2 if self.causal else T * N
            return 4.0 * B * T * H * N * n_keys * D
        L = N + (self.op == "spatial_cls")
        return 4.0 * B * T * H * L * L * D


@dataclass
class Row:
    case: str
    kernel: str
    cfg: tuple
    default: bool
    status: str  # ok | WRONG | RACY | skip
    us: float = float("nan")
    tflops: float = float("nan")
    err: float = float("nan")
    reason: str = ""


@dataclass
class Sweep:
    case: Case
    kernel: str
    default_cfg: tuple
    rows: list = field(default_factory=list)
    cut: bool = False


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.cpu_smoke:
        # before triton is imported: @triton.jit picks the interpreter at decoration time
        os.environ["TRITON_INTERPRET"] = "1"

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("tune_spatial.py: no CUDA GPU (torch.cuda.is_available() is False). This is a GPU tuning "
                 "tool; it does not run under the Triton interpreter.")

    import triton

    import temporal_kernels.ops  # noqa: F401  (registers the custom ops)
    from temporal_kernels import reference
    from temporal_kernels.triton import spatial_attn as sa

    if not args.cpu_smoke and sa._interpreting():
        sys.exit("tune_spatial.py: TRITON_INTERPRET is set; unset it to tune on the GPU.")

    device = "cpu" if args.cpu_smoke else "cuda"
    dtype_name = "fp32" if args.cpu_smoke else args.dtype
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    bound = BOUNDS[dtype_name]
    ops = torch.ops.temporal_kernels
    start = time.monotonic()
    budget = args.budget_s

    cases = []
    for op in args.ops:
        shapes = [SMOKE_SHAPE] if args.cpu_smoke else (args.shapes or SPEC_SHAPES[op])
        for shape in shapes:
            for causal in ((False, True) if op == "joint" else (False,)):
                cases.append(Case(op, shape, causal))
    kernels = args.kernels

    print(f"torch {torch.__version__}, triton {triton.__version__}, "
          f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU (TRITON_INTERPRET=1 smoke run)'}, "
          f"{dtype_name}, budget {budget:.0f} s, {len(cases)} cases x {len(kernels)} kernels", flush=True)

    # -----------------------------------------------------------------------------------------
    # inputs, op calls, reference

    def make_inputs(case: Case, sets: int):
        B, T, N, H, D = case.shape
        g = torch.Generator(device="cpu").manual_seed(1234)
        inputs = []
        for _ in range(sets):
            # TimeSformer's qkv projection: tokens patch-major ``b (n t)``, then (3 h d)
            x = torch.randn(B, N, T, 3, H, D, generator=g).to(device, dtype).permute(0, 2, 1, 3, 4, 5)
            q, k, v = x.unbind(3)
            cls = None
            if case.op == "spatial_cls":
                cls = tuple(torch.randn(B, 3, H, D, generator=g).to(device, dtype).unbind(1))
            dout = torch.randn(B, N, T, H, D, generator=g).to(device, dtype).permute(0, 2, 1, 3, 4)
            dcls_out = torch.randn(B, T, H, D, generator=g).to(device, dtype) if cls is not None else None
            inputs.append(dict(q=q, k=k, v=v, cls=cls, dout=dout, dcls_out=dcls_out))
        return inputs

    def run_fwd(case: Case, i: dict, scale: float):
        if case.op == "joint":
            return ops.triton_joint_fwd(i["q"], i["k"], i["v"], None, case.causal, scale)
        c = i["cls"] or (None, None, None)
        return ops.triton_spatial_fwd(i["q"], i["k"], i["v"], *c, scale)

    def fwd_outputs(case: Case, res) -> list:
        if case.op == "joint":
            return [res[0]]
        return [res[0], res[1]] if case.op == "spatial_cls" else [res[0]]

    def run_bwd(case: Case, i: dict, saved, scale: float):
        if case.op == "joint":
            out, lse = saved
            return ops.triton_joint_bwd(i["dout"], i["q"], i["k"], i["v"], out, lse, None, case.causal, scale)
        out, cls_out, lse, lse_cls = saved
        if i["cls"] is None:
            return ops.triton_spatial_bwd(i["dout"], None, i["q"], i["k"], i["v"], None, None, None,
                                          out, None, lse, None, scale)
        return ops.triton_spatial_bwd(i["dout"], i["dcls_out"], i["q"], i["k"], i["v"], *i["cls"],
                                      out, cls_out, lse, lse_cls, scale)

    def bwd_outputs(case: Case, res) -> list:
        return list(res[:6]) if case.op == "spatial_cls" else list(res[:3])

    def run_reference(case: Case, i: dict, scale: float, backward: bool):
        leaves = [i[n].detach().double().requires_grad_(backward) for n in ("q", "k", "v")]
        if case.op == "joint":
            outs = [reference.joint_attention(*leaves, causal=case.causal, scale=scale)]
            grads_out = [i["dout"].double()]
        elif case.op == "spatial":
            outs = [reference.spatial_attention(*leaves, scale=scale)]
            grads_out = [i["dout"].double()]
        else:
            cls = [c.detach().double().requires_grad_(backward) for c in i["cls"]]
            leaves += cls
            outs = list(reference.spatial_attention(*leaves[:3], cls=tuple(cls), scale=scale))
            grads_out = [i["dout"].double(), i["dcls_out"].double()]
        grads = None
        if backward:
            grads = list(torch.autograd.grad(outs, leaves, grads_out))
        return [o.detach() for o in outs], grads

    def slice_diff(got: list, base: list) -> float:
        """Worst relative difference of one (b, t, h) slice (one row of a CLS tensor)."""
        worst = 0.0
        for a, b in zip(got, base):
            a, b = a.double(), b.double()
            dims = (2, 4) if a.dim() == 5 else (a.dim() - 1,)
            diff = (a - b).norm(dim=dims) / b.norm(dim=dims).clamp_min(1e-30)
            worst = max(worst, diff.max().item())
        return worst

    def rel_err(got: list, ref: list) -> float:
        worst = 0.0
        for a, b in zip(got, ref):
            a = a.double()
            if not torch.isfinite(a).all():
                return float("inf")
            denom = b.norm().item()
            num = (a - b).norm().item()
            worst = max(worst, num / denom if denom > 0 else num)
        return worst

    # -----------------------------------------------------------------------------------------
    # config patching and timing

    @contextlib.contextmanager
    def forced(kernel: str, cfg: tuple):
        """Make the launchers use ``cfg`` for ``kernel``; yields a list whose [0] counts the reads."""
        calls = [0]
        orig_fwd, orig_bwd = sa._fwd_config, sa._bwd_configs

        def fwd_config(D, dt, mode, causal, has_cls):
            calls[0] += 1
            return cfg

        def bwd_configs(D, dt, mode, N):
            calls[0] += 1
            dkdv, dq = orig_bwd(D, dt, mode, N)
            return (cfg, dq) if kernel == "bwd_dkdv" else (dkdv, cfg)

        if kernel == "fwd":
            sa._fwd_config = fwd_config
        else:
            sa._bwd_configs = bwd_configs
        try:
            yield calls
        finally:
            sa._fwd_config, sa._bwd_configs = orig_fwd, orig_bwd

    def default_cfg(kernel: str, case: Case) -> tuple:
        D, N = case.shape[4], case.shape[2]
        if kernel == "fwd":
            mode = sa.MODE_JOINT if case.op == "joint" else sa.MODE_SPATIAL
            return tuple(sa._fwd_config(D, dtype, mode, case.causal, case.op == "spatial_cls"))
        dkdv, dq = sa._bwd_configs(D, dtype, sa.MODE_JOINT if case.op == "joint" else sa.MODE_SPATIAL, N)
        return tuple(dkdv if kernel == "bwd_dkdv" else dq)

    def time_ms(fns) -> float:
        if device == "cuda":
            from tune_temporal import graph_time_ms  # the same CUDA-graph timing as the temporal sweep

            return graph_time_ms(fns)
        t0 = time.perf_counter()
        for fn in fns:
            fn()
        return (time.perf_counter() - t0) * 1e3 / len(fns)

    def context_alive() -> bool:
        if device != "cuda":
            return True
        try:
            torch.cuda.synchronize()
            return True
        except Exception:  # an illegal access poisons the context: every later call fails
            return False

    # -----------------------------------------------------------------------------------------
    # the sweeps

    sweeps: list[Sweep] = []
    n_tasks_left = len(cases) * len(kernels)
    fatal = None

    def budget_left() -> float:
        return budget - (time.monotonic() - start)

    def run_sweep(sw: Sweep, check, fns_for, flops: float, deadline: float) -> None:
        nonlocal fatal
        rng = random.Random(args.seed)
        if args.cpu_smoke:
            others = [SMOKE_CONFIGS[sw.kernel]]
        elif args.configs is not None:
            others = list(args.configs)
        else:
            others = list(itertools.product(BLOCKS, BLOCKS, WARPS, STAGES))
            rng.shuffle(others)
        configs = [sw.default_cfg] + [c for c in others if tuple(c) != sw.default_cfg]
        print(f"== {sw.kernel} {sw.case.name}: default {sw.default_cfg}, {len(configs)} configs, "
              f"{max(0.0, deadline - time.monotonic()):.0f} s", flush=True)
        for n, cfg in enumerate(configs):
            cfg = tuple(cfg)
            is_default = n == 0
            now = time.monotonic()
            # the default always runs (it is the comparison) unless the whole budget is spent
            if (not is_default and now >= deadline) or budget_left() <= 0:
                sw.cut = True
                print(f"  budget: stopped after {n}/{len(configs)} configs", flush=True)
                return
            row = Row(sw.case.name, sw.kernel, cfg, is_default, "ok")
            try:
                with forced(sw.kernel, cfg) as calls:
                    got = check()
                    if calls[0] == 0:
                        fatal = (f"the launcher never read the patched spatial_attn."
                                 f"{'_fwd_config' if sw.kernel == 'fwd' else '_bwd_configs'}: the sweep "
                                 "would time the default only")
                        return
                    err = row.err = rel_err(got, ref_for(sw.kernel))
                    again = check()
                    same = all(torch.equal(a, b) for a, b in zip(got, again))
                    drift = slice_diff(got, base[sw.kernel])
                    if not err <= bound:
                        row.status = "WRONG"
                    elif not same or not drift <= SLICE_BOUND[dtype_name]:
                        row.status = "RACY"
                        row.reason = f"bitwise equal runs: {same}, worst slice vs {SAFE_CFG}: {drift:.1e}"
                    else:
                        ms = time_ms(fns_for())
                        row.us = ms * 1e3
                        row.tflops = flops / (ms * 1e-3) / 1e12
            except Exception as exc:  # a config that does not compile or launch (shared memory, registers)
                if not context_alive():
                    fatal = f"CUDA context lost at {sw.kernel} {cfg}: {type(exc).__name__}: {exc}"
                    return
                row.status = "skip"
                row.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
            sw.rows.append(row)
            tag = " (default)" if is_default else ""
            if row.status == "ok":
                print(f"  {str(cfg):18s} {row.us:9.1f} us {row.tflops:7.1f} TFLOP/s  err {row.err:.1e}{tag}",
                      flush=True)
            elif row.status == "WRONG":
                print(f"  {str(cfg):18s} WRONG (err {row.err:.1e} > {bound:g}){tag}", flush=True)
            elif row.status == "RACY":
                print(f"  {str(cfg):18s} RACY ({row.reason}){tag}", flush=True)
            else:
                print(f"  {str(cfg):18s} skip: {row.reason}{tag}", flush=True)

    try:
        for case in cases:
            if fatal or budget_left() <= 0:
                break
            B, T, N, H, D = case.shape
            scale = D**-0.5
            elems = B * T * N * H * D
            sets = 1 if args.cpu_smoke else max(1, min(16, (256 * 2**20) // (8 * elems * 2)))
            inputs = make_inputs(case, sets)
            ref_out, ref_grads = run_reference(case, inputs[0], scale, args.bwd)
            saved = None
            base = {}  # per kernel: the outputs of SAFE_CFG

            def ref_for(kernel):
                return ref_out if kernel == "fwd" else ref_grads
            for kernel in kernels:
                if fatal or budget_left() <= 0:
                    break
                deadline = time.monotonic() + budget_left() / n_tasks_left
                n_tasks_left -= 1
                sw = Sweep(case, kernel, default_cfg(kernel, case))
                sweeps.append(sw)
                if kernel == "fwd":
                    flops = case.fwd_flops()

                    def check(case=case):
                        return [x.clone() for x in fwd_outputs(case, run_fwd(case, inputs[0], scale))]

                    def fns_for(case=case):
                        return [(lambda i=i: run_fwd(case, i, scale)) for i in inputs]
                else:
                    flops = 2.5 * case.fwd_flops()
                    if saved is None:  # forward outputs of the default forward config
                        saved = [run_fwd(case, i, scale) for i in inputs]

                    def check(case=case):
                        return [x.clone() for x in bwd_outputs(case, run_bwd(case, inputs[0], saved[0], scale))]

                    def fns_for(case=case):
                        return [(lambda i=i, s=s: run_bwd(case, i, s, scale)) for i, s in zip(inputs, saved)]

                with forced(kernel, SAFE_CFG):
                    base[kernel] = check()
                run_sweep(sw, check, fns_for, flops, deadline)
            inputs = saved = ref_out = ref_grads = base = None  # free this case's buffers before the next one
            if device == "cuda":
                torch.cuda.empty_cache()
    except KeyboardInterrupt:
        print("interrupted: summary of what was measured", flush=True)

    # -----------------------------------------------------------------------------------------
    # summary

    if fatal:
        print(f"FATAL: {fatal}", flush=True)
    print(f"\n== best config per (op, shape, kernel), {dtype_name}, {time.monotonic() - start:.0f} s "
          f"(cfg = BLOCK_M, BLOCK_N, num_warps, num_stages; bwd times are the whole backward op)")
    print(f"{'case':34s} {'kernel':9s} {'best cfg':18s} {'us':>9s} {'TFLOP/s':>8s}   "
          f"{'default cfg':18s} {'us':>9s} {'speedup':>7s}  tried")
    for sw in sweeps:
        ok = [r for r in sw.rows if r.status == "ok"]
        dflt = next((r for r in sw.rows if r.default), None)
        d_cfg = str(sw.default_cfg)
        d_time = (f"{dflt.us:9.1f}" if dflt.status == "ok" else f"{dflt.status:>9s}") if dflt else f"{'-':>9s}"
        tried = f"{len(sw.rows)} ({sum(r.status == 'ok' for r in sw.rows)} ok, " \
                f"{sum(r.status == 'WRONG' for r in sw.rows)} wrong, {sum(r.status == 'RACY' for r in sw.rows)} racy, " \
                f"{sum(r.status == 'skip' for r in sw.rows)} skip)" \
                + (" cut by budget" if sw.cut else "")
        if not ok:
            print(f"{sw.case.name:34s} {sw.kernel:9s} {'no valid config':18s} {'':9s} {'':8s}   "
                  f"{d_cfg:18s} {d_time}          {tried}")
            continue
        best = min(ok, key=lambda r: r.us)
        speedup = f"{dflt.us / best.us:6.2f}x" if dflt is not None and dflt.status == "ok" else f"{'-':>7s}"
        print(f"{sw.case.name:34s} {sw.kernel:9s} {str(best.cfg):18s} {best.us:9.1f} {best.tflops:8.1f}   "
              f"{d_cfg:18s} {d_time} {speedup}  {tried}")
    swept = {(sw.case.name, sw.kernel) for sw in sweeps}
    not_run = [f"{c.name} {k}" for c in cases for k in kernels if (c.name, k) not in swept]
    if not_run:
        print(f"not run (budget): {'; '.join(not_run)}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "kernel", "block_m", "block_n", "num_warps", "num_stages", "default", "status",
                        "us", "tflops", "rel_err", "reason"])
            for sw in sweeps:
                for r in sw.rows:
                    w.writerow([r.case, r.kernel, *r.cfg, int(r.default), r.status, f"{r.us:.2f}",
                                f"{r.tflops:.2f}", f"{r.err:.3e}", r.reason])
        print(f"rows written to {args.csv}")
    if fatal:
        sys.exit(1)


if __name__ == "__main__":
    main()
