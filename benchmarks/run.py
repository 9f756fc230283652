"""The main job (issue 3): every op x every backend x every peer, forward and forward+backward.

    python -m benchmarks.run [--out DIR] [--quick] [--ops temporal,spatial] [--no-plots]

On a GPU: the shapes of SPEC §5 plus a T sweep, timed with ``triton.testing.do_bench``
(median; it flushes L2 before every call) and, for short calls where Python/launch overhead
would dominate, also by replaying a CUDA graph (the lower of the two is reported, both are
kept), each output and gradient checked against the float64 reference, figures per row (ms,
% of the memory floor, TFLOP/s, speedups over the best peer and the naive loops, peak memory).
A row that raises is n/a; a wrong result is WRONG and gets no speedup. On a CPU-only machine: a correctness pass of the
reference and of the Triton interpreter at small float32 shapes, plus CPU timings of the
reference against the peers, labelled "CPU (no GPU claims)".

Results: ``<out>/results.csv``, ``results.json``, ``PERFORMANCE.md`` and PNG plots, where
``<out>`` defaults to ``benchmarks/results/<gpu-slug>/`` (``cpu`` without a GPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import statistics
import sys
import time
import traceback
import warnings

import torch

# The interpreter must be chosen before triton is first imported (kernels are decorated at import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import temporal_kernels as tk  # noqa: E402
from temporal_kernels._layout import empty_like_video  # noqa: E402

from . import env, report  # noqa: E402
from .peers import Method, backend_op_names, peer_methods, tk_methods  # noqa: E402
from .shapes import OPS, Case, cpu_cases, gpu_cases, quick_cases, select_ops  # noqa: E402

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BOUNDS = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}  # SPEC §3
PASSES = {"fwd": 4, "fwd+bwd": 11}  # SPEC §5: tensors of B*T*N*H*D elements that must move
L2_BYTES = 50 * 2**20
FLEX_BUDGET_S = 150.0
# Peers compute softmax in the input dtype; within this many times the SPEC §3 bound they stay
# baselines (status LOOSE); beyond it they are WRONG and not counted as the best peer.
PEER_SLACK = 10.0  # torch.compile of FlexAttention: stop trying after this much time


# ---------------------------------------------------------------------------------------------
# inputs


class Inputs:
    """One input set: a packed projection ``[B, T, N, 3, H, D]`` (and a packed CLS ``[B, 3, H, D]``)."""

    def __init__(self, case: Case, dtype: torch.dtype, device: str):
        B, T, N, H, D = case.B, case.T, case.N, case.H, case.D
        if case.layout == "nt":  # TimeSformer: tokens b (n t), projected to (3 h d)
            x = torch.randn(B, N, T, 3, H, D, device=device, dtype=dtype).permute(0, 2, 1, 3, 4, 5)
        else:
            x = torch.randn(B, T, N, 3, H, D, device=device, dtype=dtype)
        self.qkv = x.requires_grad_()
        self.cls_qkv = torch.randn(B, 3, H, D, device=device, dtype=dtype).requires_grad_() if case.cls else None


def input_sets(case: Case, dtype: torch.dtype, device: str) -> list[Inputs]:
    """A few sets when a few calls' data would fit in L2, so no call reads the previous call's data
    from L2 (do_bench also flushes L2; CUDA-graph replays do not)."""
    working_set = PASSES["fwd"] * case.numel() * torch.finfo(dtype).bits // 8
    if device == "cpu" or working_set >= 4 * L2_BYTES:
        return [Inputs(case, dtype, device)]
    count = min(4, 1 + math.ceil(3 * L2_BYTES / working_set))
    return [Inputs(case, dtype, device) for _ in range(count)]


def make_douts(case: Case, inputs: Inputs) -> tuple:
    q = inputs.qkv.select(3, 0)
    dout = empty_like_video(q)
    dout.normal_()
    if not case.cls:
        return (dout,)
    return dout, torch.randn(case.B, case.T, case.H, case.D, device=q.device, dtype=q.dtype)


def call(method: Method, case: Case, inputs: Inputs, douts, grad: bool):
    """One forward (and backward): returns ``(outputs, grads)``; grads in (q, k, v[, cls q, k, v]) order."""
    qkv, cls_qkv = inputs.qkv, inputs.cls_qkv
    if method.packed:
        outs = method.fn(case, qkv, cls_qkv)
        targets = (qkv,) if cls_qkv is None else (qkv, cls_qkv)
    else:
        q, k, v = qkv.unbind(3)
        cls = None if cls_qkv is None else tuple(cls_qkv.unbind(1))
        outs = method.fn(case, q, k, v, cls)
        targets = (q, k, v) + (cls or ())
    if not grad:
        return outs, None
    # Gradients of the views themselves: the packed leaf's gradient would add a stack copy.
    grads = torch.autograd.grad(outs, targets, douts[: len(outs)])
    if method.packed:
        grads = tuple(grads[0].unbind(3)) + (tuple(grads[1].unbind(1)) if len(grads) > 1 else ())
    return outs, grads


def reference(case: Case, inputs: Inputs, douts, grad: bool):
    """The float64 reference on the same inputs (outputs and, for fwd+bwd, gradients)."""
    ref_inputs = Inputs.__new__(Inputs)
    ref_inputs.qkv = inputs.qkv.detach().double().requires_grad_()
    ref_inputs.cls_qkv = None if inputs.cls_qkv is None else inputs.cls_qkv.detach().double().requires_grad_()
    ref_method = tk_methods(case, ["reference"])[0]
    with torch.enable_grad() if grad else torch.no_grad():
        outs, grads = call(ref_method, case, ref_inputs, tuple(d.double() for d in douts), grad)
    return tuple(o.detach() for o in outs), grads


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64; non-finite values or a wrong shape give inf."""
    if tuple(out.shape) != tuple(ref.shape):
        return float("inf")
    out = out.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    return num / denom if denom > 0 else num


# ---------------------------------------------------------------------------------------------
# timing


def gpu_time_ms(fn, warmup: int, rep: int) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def graph_time_ms(fn, estimate_ms: float, target_ms: float = 4.0, replays: int = 5) -> float:
    """Median time per call of ``fn`` replayed from a CUDA graph of ~``target_ms`` of calls.

    Removes Python/launch overhead (which dominates small kernels under eager timing). No L2
    flush: the caller rotates input sets so that consecutive calls do not share L2 contents.
    """
    n = max(1, min(500, int(target_ms / max(estimate_ms, 1e-3))))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graph requires
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / n)
    del graph
    return statistics.median(times)


def cpu_time_ms(fn, min_s: float = 0.05, max_reps: int = 9) -> float:
    """Best of a few calls: on a shared CPU the minimum is the least noisy estimate."""
    fn()
    times = []
    while len(times) < 5 or (sum(times) < min_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def copy_bandwidth(device: str, warmup: int, rep: int) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written over time), 1 GiB copy."""
    if device != "cuda":
        return None
    src = torch.randn(2**28, device=device)  # 1 GiB of float32
    dst = torch.empty_like(src)
    ms = gpu_time_ms(lambda: dst.copy_(src), warmup, rep)
    del src, dst
    return 2 * 2**30 / (ms * 1e-3)


# ---------------------------------------------------------------------------------------------
# one row


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def measure(method: Method, case: Case, sets, douts, ref, mode: str, args, device: str, timed: bool) -> dict:
    grad = mode == "fwd+bwd"
    row = {"method": method.name, "kind": method.kind, "ms": None, "ms_eager": None, "ms_graph": None, "timing": "",
           "peak_mem_mb": None, "max_err": None, "correct": "n/a", "status": "n/a", "note": ""}
    grad_ctx = torch.enable_grad if grad else torch.no_grad
    dtype = sets[0].qkv.dtype
    # correctness (also the warm-up call: autotuning and compilation happen here)
    try:
        with grad_ctx(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs, grads = call(method, case, sets[0], douts, grad)
            if device == "cuda":
                torch.cuda.synchronize()
        ref_outs, ref_grads = ref
        errs = [rel_err(o, r) for o, r in zip(outs, ref_outs)]
        if grad:
            errs += [rel_err(g, r) for g, r in zip(grads, ref_grads)]
        if len(outs) != len(ref_outs) or (grad and len(grads) != len(ref_grads)):
            errs.append(float("inf"))
        del outs, grads
    except Exception as exc:  # unsupported shape/backend/layout: n/a, never a crash
        row["note"] = _short(exc)
        if os.environ.get("TK_BENCH_TRACEBACK"):
            traceback.print_exc()
        return row
    max_err = max(errs)
    row["max_err"] = max_err
    row["correct"] = "yes" if max_err <= BOUNDS[dtype] else "no"
    row["status"] = "ok" if row["correct"] == "yes" else "WRONG"
    if method.kind in ("peer", "naive") and BOUNDS[dtype] < max_err <= PEER_SLACK * BOUNDS[dtype]:
        row["status"] = "LOOSE"  # low-precision softmax of a peer: flagged, still a valid baseline
    if not timed:
        row["note"] = "correctness only (Triton interpreter: timings mean nothing)"
        return row
    cycle = itertools.cycle(sets)

    def bench():
        call(method, case, next(cycle), douts, grad)

    try:
        with grad_ctx(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                result = call(method, case, sets[0], douts, grad)
                torch.cuda.synchronize()
                row["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                del result
                row["ms_eager"] = row["ms"] = gpu_time_ms(bench, args.warmup, args.rep)
                row["timing"] = "eager"
            else:
                row["ms"], row["timing"] = cpu_time_ms(bench), "cpu"
    except Exception as exc:
        row["status"], row["note"] = "n/a", "timing failed: " + _short(exc)
        return row
    # Launch overhead only matters for short calls. The naive loops would put thousands of
    # launches per call into a graph; their overhead is what they are.
    if device == "cuda" and method.kind != "naive" and not args.no_graphs and row["ms_eager"] < args.graph_below_ms:
        try:
            with grad_ctx(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row["ms_graph"] = graph_time_ms(bench, row["ms_eager"])
            if row["ms_graph"] < row["ms"]:
                row["ms"], row["timing"] = row["ms_graph"], "graph"
        except Exception as exc:
            row["note"] = "CUDA graph timing failed: " + _short(exc)
            torch.cuda.synchronize()
    return row


def derive(rows: list[dict], case: Case, mode: str, bandwidth: float | None, dtype: torch.dtype) -> None:
    """Floor, TFLOP/s and speedups of one (case, mode) group of rows, in place."""
    nbytes = PASSES[mode] * case.numel() * torch.finfo(dtype).bits // 8
    floor_ms = nbytes / bandwidth * 1e3 if bandwidth else None
    flops = case.flops_fwd() * (2.5 if mode == "fwd+bwd" else 1.0)
    valid = [r for r in rows if r["ms"] and r["status"] in ("ok", "LOOSE")]
    peers = [r for r in valid if r["kind"] == "peer"]
    best = min(peers, key=lambda r: r["ms"]) if peers else None
    naive = next((r for r in valid if r["kind"] == "naive"), None)
    for r in rows:
        r.update(floor_ms=floor_ms, pct_floor=None, tflops=None, best_peer=best["method"] if best else "",
                 best_peer_ms=best["ms"] if best else None, speedup_best_peer=None, speedup_naive=None)
        if r not in valid:
            continue  # a wrong result is never reported as fast
        r["tflops"] = flops / (r["ms"] * 1e-3) / 1e12
        if floor_ms:
            r["pct_floor"] = 100.0 * floor_ms / r["ms"]
        if best:
            r["speedup_best_peer"] = best["ms"] / r["ms"]
        if naive:
            r["speedup_naive"] = naive["ms"] / r["ms"]


# ---------------------------------------------------------------------------------------------


def run_case(case: Case, backends, modes, args, device, dtype, bandwidth, meta, flex_spent, write) -> list[dict]:
    """Every method of one case, in every mode: rows with figures derived."""
    torch.manual_seed(0)
    sets = input_sets(case, dtype, device)
    douts = make_douts(case, sets[0])
    interp_only = case.group == "interp"
    methods = tk_methods(case, backends)
    if device == "cpu":
        # the interpreter is checked on the tiny cases; timed cases compare the reference with peers
        methods = [m for m in methods if (m.kind == "ours") == interp_only]
    elif not args.with_reference:
        methods = [m for m in methods if m.kind != "reference"]  # the oracle, not a contender
    if not interp_only:
        methods += peer_methods(case, naive=not args.no_naive, flex=not args.no_flex and flex_spent < FLEX_BUDGET_S)
    if not methods:
        write(f"── {case.label()}: no backend implements {case.op} yet")
        return []
    rows = []
    for mode in modes:
        ref = reference(case, sets[0], douts, mode == "fwd+bwd")
        group = []
        for method in methods:
            t0 = time.time()
            row = measure(method, case, sets, douts, ref, mode, args, device, timed=not interp_only)
            row["seconds"] = round(time.time() - t0, 2)  # harness time spent on this row
            row.update(meta_row(meta, case, mode))
            group.append(row)
        derive(group, case, mode, bandwidth, dtype)
        rows += group
        write(report.console_block(case, mode, group))
        del ref
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="results folder (default benchmarks/results/<gpu-slug>/)")
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--ops", help="comma-separated ops (a family name selects its variants): " + ",".join(OPS))
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd, fwd+bwd or both (default)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="GPU dtype (CPU runs use fp32)")
    p.add_argument("--warmup", type=int, default=5, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=int, default=20, help="do_bench repetition time, ms")
    p.add_argument("--no-naive", action="store_true", help="skip the naive Python loops")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (torch.compile)")
    p.add_argument("--backends", help="comma-separated subset of tk.available_backends()")
    p.add_argument("--no-graphs", action="store_true", help="eager do_bench timings only (no CUDA-graph replay)")
    p.add_argument("--graph-below-ms", type=float, default=10.0,
                   help="also time a CUDA-graph replay of calls whose eager time is below this (default 10 ms: "
                        "eager fwd+bwd calls of the SPEC shapes take 1-3 ms of host time, more than their GPU work)")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of other cases already in <out>/results.json (split a suite over runs)")
    p.add_argument("--with-reference", action="store_true", help="also time the reference backend on the GPU")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = env.metadata(argv)
    out_dir = os.path.abspath(args.out or os.path.join(RESULTS_ROOT, env.gpu_slug()))
    os.makedirs(out_dir, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in PASSES for m in modes):
        raise SystemExit(f"--modes: expected fwd and/or fwd+bwd, got {args.modes!r}")

    if device == "cuda":
        dtype = DTYPES[args.dtype]
        cases = quick_cases() if args.quick else gpu_cases()
        meta["label"] = f"{meta['gpu']}, {args.dtype}"
    else:
        # One intra-op thread: on a shared (CI) machine, OpenMP barriers of several threads turn
        # any contention into 100x slowdowns of small ops; one thread measures the work itself.
        torch.set_num_threads(1)
        dtype = torch.float32
        cases = cpu_cases()
        if args.quick:
            cases = [c for c in cases if c.op in ("temporal", "spatial_cls")]
        meta["label"] = "CPU (no GPU claims), 1 thread"
    cases = select_ops(cases, args.ops)
    backends = tk.available_backends()
    if args.backends:
        backends = [b for b in backends if b in args.backends.split(",")]
    meta.update(dtype=str(dtype).replace("torch.", ""), device=device, backends=",".join(backends),
                implemented={b: sorted(backend_op_names(b)) for b in backends})
    print(f"temporal_kernels benchmarks: {meta['label']} | torch {meta['torch']} | triton {meta['triton']} | "
          f"commit {meta['commit']} | backends {backends} | {len(cases)} cases -> {out_dir}", flush=True)
    for b in backends:
        print(f"  {b}: {', '.join(meta['implemented'][b]) or '(no ops)'}", flush=True)

    bandwidth = copy_bandwidth(device, args.warmup, args.rep)
    meta["copy_bandwidth_GBps"] = bandwidth / 1e9 if bandwidth else None
    if bandwidth:
        print(f"device-to-device copy bandwidth: {bandwidth / 1e9:.0f} GB/s; ms* = CUDA-graph timing", flush=True)

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    # A log file (the GPU job tees the output) gets a progress line every 10 s, a terminal more often.
    interval = 0.5 if sys.stderr.isatty() else 10.0
    progress = tqdm(cases, unit="case", dynamic_ncols=True, mininterval=interval) if tqdm else cases
    write = tqdm.write if tqdm else print
    rows: list[dict] = []
    kept: list[dict] = []  # --append: earlier rows of cases this run does not measure
    if args.append and os.path.exists(os.path.join(out_dir, "results.json")):
        with open(os.path.join(out_dir, "results.json")) as f:
            previous = json.load(f)["rows"]
        measuring = {c.label() for c in cases}
        kept = [r for r in previous if r["case"] not in measuring]
        print(f"--append: keeping {len(kept)} earlier rows of {out_dir}/results.json", flush=True)
    flex_spent = 0.0
    # SIGINT (the GPU job's time budget, or Ctrl-C) stops after the current row even if the
    # KeyboardInterrupt lands somewhere that turns it into another exception (a CUDA-graph capture).
    stop = {"requested": False}

    def on_sigint(signum, frame):
        stop["requested"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    started = time.time()
    complete = False
    try:
        for case in progress:
            if tqdm:
                progress.set_description(case.label())
            try:
                rows += run_case(case, backends, modes, args, device, dtype, bandwidth, meta, flex_spent, write)
            except Exception as exc:  # e.g. out of memory in the float64 reference: skip the case, keep going
                write(f"── {case.label()}: case failed, skipped ({_short(exc)})")
                if os.environ.get("TK_BENCH_TRACEBACK"):
                    traceback.print_exc()
            if stop["requested"]:
                raise KeyboardInterrupt
            flex_spent = sum(r["seconds"] for r in rows if r["method"].startswith("flex"))
            if device == "cuda":
                torch.cuda.empty_cache()
            report.write_rows(out_dir, meta, kept + rows)  # after every case: a killed run keeps what it measured
        complete = True
    except KeyboardInterrupt:
        write("interrupted: writing the rows measured so far")
    finally:
        if tqdm:
            progress.close()
    meta["complete"] = complete
    meta["elapsed_s"] = round(time.time() - started, 1)
    rows = kept + rows
    report.write_rows(out_dir, meta, rows)
    report.write_markdown(os.path.join(out_dir, "PERFORMANCE.md"), meta, rows)
    if os.path.dirname(out_dir) == RESULTS_ROOT:
        report.write_combined(RESULTS_ROOT)
    if not args.no_plots:
        try:
            from . import plots

            for path in plots.make_plots(out_dir, meta, rows):
                print(f"plot: {path}")
        except ImportError as exc:
            print(f"plots skipped ({exc})")
    wrong = [r for r in rows if r["status"] == "WRONG" and r["kind"] in ("ours", "reference")]
    print(report.summary(meta, rows))
    print(f"done in {meta['elapsed_s']:.0f} s; results in {out_dir}")
    if wrong:
        print(f"WRONG results of our backends: {len(wrong)} rows (see status=WRONG in results.csv)")
    return 0 if complete else 130


def meta_row(meta: dict, case: Case, mode: str) -> dict:
    return {
        "gpu": meta["gpu"], "torch": meta["torch"], "triton": meta["triton"], "commit": meta["commit"],
        "date": meta["date"], "dtype": meta["dtype"], "op": case.op, "group": case.group, "layout": case.layout,
        "B": case.B, "T": case.T, "N": case.N, "H": case.H, "D": case.D, "cls": case.cls, "causal": case.causal,
        "mode": mode, "case": case.label(), "command": meta["command"], "label": meta["label"],
        "copy_GBps": meta.get("copy_bandwidth_GBps"),
    }


if __name__ == "__main__":
    sys.exit(main())
