"""End-to-end: HuggingFace Timesformer-base before and after ``tk.convert`` (SPEC §5, issue 7).

    python -m benchmarks.e2e_timesformer [--compile] [--lean-ab] [--profile] [--models M,...] [--out FILE]

Random weights (no hub download), B=8, T=8, 224x224, bf16 on the GPU; a tiny config on the CPU
(labelled, no GPU claims). Times forward (no grad) and forward+backward in train mode with CUDA
events after warm-up (the median of 5 windows of 4 calls: the device's host load moves), and the
peak memory of a training step; checks the converted model's logits against the original model run
in float64 (SPEC §3's bound of the dtype) next to the original model's own error in that dtype, and
prints the distance between the two models. In bf16 the whole model's error is mostly that of its
bf16 linears and norms (the original misses the bf16 bound on its own), so the converted model is
reported against both; the decisive whole-model check is float32 (tests/test_convert.py, 1e-4).
``--check-only`` runs the check alone. ``--profile`` prints, per model, the GPU kernels of one
training step by device time and the step's kernel time against its wall time (a gap means the
host, not the GPU, sets the pace). ``--lean-ab`` adds the converted model with
``temporal_kernels._lean`` off (the norm and GELU outputs saved, not recomputed), eager and, with
``--compile``, compiled: the time and memory of the recomputation.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

import temporal_kernels as tk
from temporal_kernels import _lean

from . import env


def _time_ms(fn, iters: int, windows: int = 5) -> tuple[float, list[float]]:
    """Per-call time of ``fn``: the median of ``windows`` windows of ``iters`` calls each (the
    device's host is shared and its load moves between windows), and every window's time."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(windows):
        if not torch.cuda.is_available():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - start) * 1e3 / iters)
            continue
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times), times


def _profile(name: str, step) -> float:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    events = prof.key_averages()
    kernel_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3
    print(f"--- profile {name}: one training step, wall {wall_ms:.2f} ms (under the profiler), GPU kernels {kernel_ms:.2f} ms")
    print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=70))
    print(f"--- profile {name}: host side, by self CPU time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
    return kernel_ms


def main() -> None:
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    ap.add_argument("--profile", action="store_true", help="print each model's top kernels of a training step")
    ap.add_argument("--models", default=None, help="comma-separated subset of the rows to time (hf-eager is the baseline)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--check-only", action="store_true", help="only compare the logits, time nothing")
    ap.add_argument("--lean-ab", action="store_true",
                    help="also time the converted model with temporal_kernels._lean off (norm/GELU outputs saved)")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    dev = "cuda" if gpu else "cpu"
    if gpu:
        cfg, (B, T, S), dtype = transformers.TimesformerConfig(), (8, 8, 224), torch.bfloat16
    else:
        small = dict(image_size=32, patch_size=16, num_frames=3, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64)
        cfg, (B, T, S), dtype = transformers.TimesformerConfig(**small), (2, 3, 32), torch.float32
    torch.manual_seed(0)
    eager = transformers.TimesformerForVideoClassification(cfg).to(dev, dtype)
    fused = tk.convert(copy.deepcopy(eager), backend=None if gpu else "reference")
    x = torch.randn(B, T, 3, S, S, device=dev, dtype=dtype)
    with torch.no_grad():
        exact = copy.deepcopy(eager).double().eval()(x.double()).logits
        ref = eager.eval()(x).logits.double()
        got = fused.eval()(x).logits.double()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    err, hf_err, tk_err = rel(got, ref), rel(ref, exact), rel(got, exact)
    bound = 1.5e-2 if dtype == torch.bfloat16 else 1e-4
    if tk_err <= bound:
        verdict = "within the bound"
    else:
        verdict = f"outside the bound; {tk_err / hf_err:.2f}x the original's own error"
    models = [] if args.check_only else [("hf-eager", eager), ("tk-convert", fused)]
    if args.lean_ab and not args.check_only:
        models.append(("tk-convert-nolean", fused))
    if args.compile and not args.check_only:
        models += [("hf-eager+compile", torch.compile(eager)), ("tk-convert+compile", torch.compile(fused))]
        if args.lean_ab:
            # The same module compiled again: dynamo guards on _lean.ENABLED (no second copy of
            # the parameters in memory, which every row's peak would carry).
            models.append(("tk-convert-nolean+compile", torch.compile(fused)))
    if args.models:
        keep = set(args.models.split(","))
        models = [(name, model) for name, model in models if name in keep]
    rows = []
    recompute = _lean.ENABLED  # TEMPORAL_KERNELS_RECOMPUTE's setting
    for name, model in models:
        _lean.ENABLED = recompute and "-nolean" not in name
        model.train()
        with torch.no_grad():
            fwd, fwd_windows = _time_ms(lambda: model(x).logits, 4)

        def step():
            model(x).logits.float().sum().backward()

        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fwd_bwd, fwd_bwd_windows = _time_ms(step, 4)
        peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
        model.zero_grad(set_to_none=True)
        row = dict(method=name, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, train_peak_gib=peak,
                   fwd_ms_windows=fwd_windows, fwd_bwd_ms_windows=fwd_bwd_windows)
        if args.profile and gpu:
            row["fwd_bwd_gpu_kernel_ms"] = _profile(name, step)
            model.zero_grad(set_to_none=True)
        rows.append(row)
        _lean.ENABLED = recompute
        print(f"{name:20s} fwd {fwd:8.2f} ms  fwd+bwd {fwd_bwd:8.2f} ms  train peak {peak:6.2f} GiB  "
              f"(windows: fwd {min(fwd_windows):.2f}-{max(fwd_windows):.2f}, "
              f"fwd+bwd {min(fwd_bwd_windows):.2f}-{max(fwd_bwd_windows):.2f} ms)", flush=True)
    for row in rows[1:] if rows and rows[0]["method"] == "hf-eager" else []:
        base = rows[0]
        print(f"{row['method']:20s} vs hf-eager: fwd x{base['fwd_ms'] / row['fwd_ms']:.2f}  "
              f"fwd+bwd x{base['fwd_bwd_ms'] / row['fwd_bwd_ms']:.2f}  "
              f"peak {100 * (1 - row['train_peak_gib'] / base['train_peak_gib']):.0f}% lower")
    print(f"logits against the original model in float64: original ({dtype}) rel err {hf_err:.2e}, "
          f"converted {tk_err:.2e} (bound {bound:.1e}: {verdict}); "
          f"converted vs original ({dtype}) {err:.2e}")
    if args.out:
        meta = env.metadata(sys.argv[1:])
        meta.update(
            command=" ".join(["python -m benchmarks.e2e_timesformer"] + sys.argv[1:]),
            device=torch.cuda.get_device_name() if gpu else "cpu",
            dtype=str(dtype), B=B, T=T, size=S, logits_rel_err=err, logits_rel_err_vs_f64=tk_err,
            original_logits_rel_err_vs_f64=hf_err, logits_check=verdict,
        )
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
