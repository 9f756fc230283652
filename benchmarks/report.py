"""Results out: CSV/JSON rows, the console table, and the performance section of README.

``python -m benchmarks.report [RESULTS_ROOT]`` regenerates ``benchmarks/results/PERFORMANCE.md``
from the committed ``benchmarks/results/<gpu>/results.csv`` files (GPUs first, CPU last).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys

FIELDS = [
    "gpu", "label", "dtype", "op", "group", "layout", "B", "T", "N", "H", "D", "cls", "causal", "mode", "method",
    "kind", "status", "correct", "max_err", "ms", "timing", "ms_eager", "ms_graph", "floor_ms", "pct_floor", "tflops", "best_peer", "best_peer_ms",
    "speedup_best_peer", "speedup_naive", "peak_mem_mb", "note", "seconds", "case", "copy_GBps", "torch", "triton", "commit",
    "date", "command",
]
NUMERIC = {"B", "T", "N", "H", "D", "max_err", "ms", "ms_eager", "ms_graph", "floor_ms", "pct_floor", "tflops", "best_peer_ms",
           "speedup_best_peer", "speedup_naive", "peak_mem_mb", "copy_GBps", "seconds"}

# SPEC §5: (groups, ops, mode) -> (minimum % of floor, minimum x best peer); None = no bar.
BARS = [
    ("temporal", ("temporal",), "fwd", 85.0, 6.0),
    ("temporal", ("temporal",), "fwd+bwd", 60.0, 5.0),
    ("long_T", ("temporal",), "fwd", 70.0, None),
    ("other_D", ("temporal",), "fwd", 70.0, None),
    ("spatial", ("spatial", "spatial_cls"), "fwd", None, 1.3),
    ("spatial", ("spatial", "spatial_cls"), "fwd+bwd", None, 1.5),
    ("joint", ("joint", "joint_causal"), "fwd", None, 1.0),
    ("joint", ("joint", "joint_causal"), "fwd+bwd", None, 1.0),
    # factorized: faster than the temporal and spatial kernels one after the other (the
    # tk-*-split peer), hence at least 1x the best peer
    ("factorized", ("factorized",), "fwd", None, 1.0),
    ("factorized", ("factorized",), "fwd+bwd", None, 1.0),
]
CUDA_VS_TRITON = 1.15  # SPEC §5: the CUDA backend within 15% of Triton, or faster


def _fmt(x, spec=".3f", none="—"):
    if x is None or x == "":
        return none
    return format(x, spec)


# ---------------------------------------------------------------------------------------------
# files


def write_rows(out_dir: str, meta: dict, rows: list[dict]) -> None:
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in FIELDS})
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)


def read_csv(path: str) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in NUMERIC:
                v = r.get(k, "")
                r[k] = (int(v) if k in "BTNHD" else float(v)) if v not in ("", None) else None
            r["cls"] = r.get("cls") == "True"
            r["causal"] = r.get("causal") == "True"
            rows.append(r)
    return rows


# ---------------------------------------------------------------------------------------------
# console


def console_block(case, mode: str, group: list[dict]) -> str:
    lines = [f"── {case.label()} · {mode}"]
    for r in sorted(group, key=lambda r: (r["ms"] is None, r["ms"] or 0)):
        if r["ms"] is None and r["status"] == "n/a":
            lines.append(f"   {r['method']:<22} n/a  {r['note'][:90]}")
            continue
        ms = _fmt(r["ms"], "9.4f", "        —")
        err = _fmt(r["max_err"], ".1e")
        flag = "" if r["status"] == "ok" else f"  {r['status']}"
        extra = ""
        if r["pct_floor"] is not None:
            extra += f" {r['pct_floor']:5.1f}% floor"
        if r["tflops"] is not None and r["gpu"] != "cpu":
            extra += f" {r['tflops']:6.1f} TFLOP/s"
        if r["speedup_best_peer"] is not None:
            extra += f"  x{r['speedup_best_peer']:.2f} best peer"
        if r["speedup_naive"] is not None:
            extra += f"  x{r['speedup_naive']:.1f} naive"
        if r["peak_mem_mb"] is not None:
            extra += f"  {r['peak_mem_mb']:.0f} MB"
        note = f"  ({r['note'][:60]})" if r["note"] else ""
        star = "*" if r.get("timing") == "graph" else " "
        lines.append(f"   {r['method']:<22} {ms} ms{star} err {err}{extra}{flag}{note}")
    return "\n".join(lines)


def _best_ours(rows: list[dict]) -> dict | None:
    ours = [r for r in rows if r["kind"] == "ours" and r["ms"] and r["status"] == "ok"]
    return min(ours, key=lambda r: r["ms"]) if ours else None


def _groups(rows: list[dict]) -> dict:
    """Rows keyed by (case, mode), in first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["case"], r["mode"]), []).append(r)
    return out


def summary(meta: dict, rows: list[dict]) -> str:
    lines = [f"summary ({meta.get('label', '')}): best of our backends per row"]
    for (case, mode), group in _groups(rows).items():
        best = _best_ours(group)
        wrong = [r["method"] for r in group if r["kind"] == "ours" and r["status"] == "WRONG"]
        if best is None and not wrong:
            best = next((r for r in group if r["kind"] == "reference" and r["ms"] and r["status"] == "ok"), None)
        if best is None:
            checked = [f"{r['method']} {r['correct']} (err {_fmt(r['max_err'], '.1e')})" for r in group if r["kind"] == "ours"]
            tag = ("WRONG: " + ",".join(wrong)) if wrong else ("correct: " + ", ".join(checked) if checked else "no kernel backend")
            lines.append(f"  {case:<48} {mode:<8} {tag}")
            continue
        lines.append(
            f"  {case:<48} {mode:<8} {best['method']:<18} {best['ms']:.4f} ms"
            f"  {_fmt(best['pct_floor'], '.0f')}% floor  x{_fmt(best['speedup_best_peer'], '.2f')} vs "
            f"{best['best_peer'] or '—'}  x{_fmt(best['speedup_naive'], '.1f')} vs naive"
            + (f"  WRONG: {','.join(wrong)}" if wrong else "")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# markdown


def _shape(r: dict) -> str:
    n = f"{r['N']}+1" if r["cls"] else f"{r['N']}"
    return f"({r['B']},{r['T']},{n},{r['H']}) D{r['D']} {r['layout']}"


def _bars_table(rows: list[dict]) -> list[str]:
    lines = [
        "| op | shape (B,T,N,H) | mode | ours | ms | % floor | best peer | × best peer | bar | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for grp, ops, mode, min_pct, min_x in BARS:
        for (case, m), group in _groups(rows).items():
            head = group[0]
            if head["group"] != grp or head["op"] not in ops or m != mode:
                continue
            best = _best_ours(group)
            bar = " and ".join(([f"≥ {min_pct:.0f}% floor"] if min_pct else []) + ([f"≥ {min_x}×"] if min_x else []))
            peer = f"{head['best_peer']} {_fmt(head['best_peer_ms'], '.3f')}" if head["best_peer"] else "—"
            if best is None:
                wrong = any(r["kind"] == "ours" and r["status"] == "WRONG" for r in group)
                lines.append(f"| {head['op']} | {_shape(head)} | {mode} | {'WRONG' if wrong else 'not implemented'} "
                             f"| — | — | {peer} | — | {bar} | no |")
                continue
            met = (min_pct is None or (best["pct_floor"] or 0) >= min_pct) and (
                min_x is None or (best["speedup_best_peer"] or 0) >= min_x)
            verdict = "yes" if met else "**no**"
            if grp == "factorized" and not any(r["method"].endswith("-split") and r["status"] == "ok" for r in group):
                verdict = "not measured (no tk-*-split row: the bar is against our kernels run one after the other)"
            lines.append(
                f"| {head['op']} | {_shape(head)} | {mode} | {best['method']} | {best['ms']:.4f} "
                f"| {_fmt(best['pct_floor'], '.0f')} | {peer} | {_fmt(best['speedup_best_peer'], '.2f')} "
                f"| {bar} | {verdict} |"
            )
    cuda_lines = []
    for (case, mode), group in _groups(rows).items():
        by = {r["method"]: r for r in group if r["status"] == "ok" and r["ms"]}
        for suffix in ("", "-packed"):
            c, t = by.get(f"tk-cuda{suffix}"), by.get(f"tk-triton{suffix}")
            if c and t:
                ok = c["ms"] <= CUDA_VS_TRITON * t["ms"]
                auto = by.get(f"tk-auto{suffix}")
                cuda_lines.append(f"| {case}{' packed' if suffix else ''} | {mode} | {t['ms']:.4f} | {c['ms']:.4f} "
                                  f"| {t['ms'] / c['ms']:.2f} | {'yes' if ok else '**no**'} "
                                  f"| {_auto_pick(t, packed=bool(suffix))} | {_fmt(auto and auto['ms'], '.4f')} |")
    if cuda_lines:
        lines += ["", "CUDA C++ backend against Triton (bar: within 15%, or faster); \"auto picks\": what "
                  "`backend=None` runs there by the committed table (`temporal_kernels/_measured.py`), "
                  "\"auto ms\": its row in this run (tk-auto), where measured:", "",
                  "| case | mode | triton ms | cuda ms | triton/cuda | met | auto picks | auto ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += cuda_lines
    return lines


def _auto_pick(row: dict, packed: bool) -> str:
    """The backend ``backend=None`` picks for ``row``'s call with both kernel backends available."""
    # imported here: reports without CUDA rows (the CPU results) need neither torch nor the package
    import torch

    from temporal_kernels import _choice

    from .peers import FAMILY_FN, PACKED_FN
    from .shapes import OPS

    family, causal, cls = OPS[row["op"]]
    op = PACKED_FN[family] if packed else FAMILY_FN[family]
    return _choice.pick(op, causal=causal, has_cls=cls, training=row["mode"] == "fwd+bwd",
                        dtype=getattr(torch, row["dtype"]), shape=tuple(row[axis] for axis in "BTNHD"), aligned=True)


def _all_table(rows: list[dict], gpu: bool) -> list[str]:
    if gpu:
        lines = ["| op | shape (B,T,N,H) D layout | mode | ours | ms | % floor | TFLOP/s | best peer (ms) "
                 "| × best peer | naive ms | × naive | peak MB | correct |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    else:
        lines = ["| op | shape (B,T,N,H) D | mode | method | ms | best peer (ms) | naive ms | × naive | max err | correct |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (case, mode), group in _groups(rows).items():
        head = group[0]
        naive = next((r for r in group if r["kind"] == "naive"), None)
        naive_ms = _fmt(naive["ms"], ".3f") if naive else "—"
        peer = f"{head['best_peer']} ({_fmt(head['best_peer_ms'], '.3f')})" if head["best_peer"] else "—"
        if gpu:
            best = _best_ours(group)
            ours = [r for r in group if r["kind"] == "ours"]
            correct = "yes" if ours and all(r["correct"] == "yes" for r in ours) else (
                "—" if not ours else "**no** (" + ",".join(r["method"] for r in ours if r["correct"] != "yes") + ")")
            if best is None:
                lines.append(f"| {head['op']} | {_shape(head)} | {mode} | — | — | — | — | {peer} | — | {naive_ms} | — "
                             f"| — | {correct} |")
                continue
            lines.append(
                f"| {head['op']} | {_shape(head)} | {mode} | {best['method']} | {best['ms']:.4f} "
                f"| {_fmt(best['pct_floor'], '.0f')} | {_fmt(best['tflops'], '.1f')} | {peer} "
                f"| {_fmt(best['speedup_best_peer'], '.2f')} | {naive_ms} | {_fmt(best['speedup_naive'], '.1f')} "
                f"| {_fmt(best['peak_mem_mb'], '.0f')} | {correct} |"
            )
        else:
            for r in group:
                if r["kind"] not in ("ours", "reference"):
                    continue
                lines.append(
                    f"| {head['op']} | {_shape(head)} | {mode} | {r['method']} | {_fmt(r['ms'], '.3f')} | {peer} "
                    f"| {naive_ms} | {_fmt(r['speedup_naive'], '.1f')} | {_fmt(r['max_err'], '.1e')} "
                    f"| {r['correct']} |"
                )
    return lines


def _peer_table(rows: list[dict]) -> list[str]:
    """Every method at the headline shapes: what the best peer was chosen from."""
    headline = ("temporal B8 T8 N196 H12 D64 nt", "spatial_cls B8 T8 N196+cls H12 D64 nt",
                "joint B2 T8 N196 H12 D64 tn")
    lines = []
    for case in headline:
        group = [r for r in rows if r["case"] == case]
        if not group:
            continue
        lines += ["", f"`{case}`:", "", "| method | fwd ms | fwd+bwd ms | fwd peak MB | fwd+bwd peak MB | correct |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for method in dict.fromkeys(r["method"] for r in group):
            by_mode = {r["mode"]: r for r in group if r["method"] == method}
            f, b = by_mode.get("fwd"), by_mode.get("fwd+bwd")

            def cell(r, key, spec):
                if r is None:
                    return "—"
                if r[key] is None:
                    return "n/a" if r["status"] == "n/a" else "—"
                return format(r[key], spec)

            correct = "/".join(r["status"] if r["status"] in ("WRONG", "LOOSE") else r["correct"] for r in (f, b) if r)
            lines.append(f"| {method} | {cell(f, 'ms', '.4f')} | {cell(b, 'ms', '.4f')} | {cell(f, 'peak_mem_mb', '.0f')} "
                         f"| {cell(b, 'peak_mem_mb', '.0f')} | {correct} |")
    return lines


def markdown_section(rows: list[dict], folder: str, image_prefix: str) -> list[str]:
    head = rows[0]
    gpu = head["gpu"] != "cpu"
    lines = [f"## {head['label'] or head['gpu']}", ""]
    runs: dict[tuple, int] = {}  # (commit, date) -> rows; --append runs keep earlier rows
    for r in rows:
        runs[(r["commit"], r["date"])] = runs.get((r["commit"], r["date"]), 0) + 1
    where = "; ".join(f"commit {c} on {d} ({n} rows)" for (c, d), n in runs.items()) if len(runs) > 1 else (
        f"commit {head['commit']} on {head['date']}")
    lines.append(
        f"Produced by {' + '.join(f'`{c}`' for c in dict.fromkeys(r['command'] for r in rows))}: {where} "
        f"(torch {head['torch']}, triton {head['triton']}); every row names its commit; "
        f"raw rows: [`{folder}/results.csv`]({image_prefix}results.csv)."
    )
    if gpu:
        lines += [
            "",
            f"Device-to-device copy bandwidth measured in the same run: {_fmt(head['copy_GBps'], '.0f')} GB/s. "
            "\"% floor\" = (bytes that must move: 4 tensors of B·T·N·H·D elements forward, 11 forward+backward) / "
            "that bandwidth / measured time. \"Best peer\" = the fastest, in the same run, of the TimeSformer einsum "
            "path, PyTorch SDPA (default, flash, efficient, cudnn; on permuted copies and zero-copy views) and "
            "FlexAttention (joint). Peers compute softmax in bf16: a peer within 10× the SPEC §3 bound is marked LOOSE "
            "and still counts; beyond that it is WRONG and does not. "
            "Times (ms): for every method, the lower of the `triton.testing.do_bench` median (L2 flushed before "
            "every call; includes Python/launch overhead where it exceeds the flush) and the median of a CUDA-graph "
            "replay (no launch overhead; inputs rotated so no call finds its data in L2; for calls under 10 ms "
            "eager) — both are in the CSV (`ms_eager`, `ms_graph`); the naive loops are timed eagerly only. Every output and gradient is "
            "checked against the float64 reference (SPEC §3); a wrong result gets no speedup.",
            "",
            "### SPEC §5 bars",
            "",
        ]
        lines += _bars_table(rows)
        lines += ["", "### Every row (best of our backends)", ""]
        lines += _all_table(rows, gpu=True)
        lines += ["", "### Every method at the headline shapes"]
        lines += _peer_table(rows)
        lines += ["", "### Plots", ""]
        for name, title in (("time_vs_T.png", "time vs T"), ("speedup.png", "speedup over the best peer")):
            lines.append(f"![{title}]({image_prefix}{name})")
    else:
        lines += [
            "",
            "**CPU (no GPU claims).** A CPU-only machine checks the reference and the Triton interpreter "
            "(float32, small shapes; interpreter rows are correctness only) and times the reference against the "
            "peers and the naive loops. These timings say nothing about GPU performance.",
            "",
        ]
        lines += _all_table(rows, gpu=False)
    return lines + [""]


def write_markdown(path: str, meta: dict, rows: list[dict], image_prefix: str = "") -> None:
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    lines = ["# Performance", "", "Generated by `python -m benchmarks.run`; do not edit by hand.", ""]
    if meta.get("complete") is False:
        lines += [f"**Incomplete run** (stopped after {meta.get('elapsed_s')} s): only the rows below were measured.", ""]
    lines += markdown_section(rows, folder, image_prefix) if rows else ["(no rows measured)"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_combined(root: str) -> str:
    """``root/PERFORMANCE.md`` from every ``root/<gpu>/results.csv`` (GPUs first, CPU last)."""
    paths = sorted(glob.glob(os.path.join(root, "*", "results.csv")), key=lambda p: (os.path.basename(os.path.dirname(p)) == "cpu", p))
    lines = [
        "# Performance",
        "",
        "Generated by `python -m benchmarks.report` from the committed `benchmarks/results/<gpu>/results.csv`; "
        "each section names the command that produced its rows (`make bench` runs `python -m benchmarks.run`). "
        "Do not edit by hand.",
        "",
    ]
    for path in paths:
        rows = read_csv(path)
        if rows:
            folder = os.path.basename(os.path.dirname(path))
            lines += markdown_section(rows, folder, f"{folder}/")
    out = os.path.join(root, "PERFORMANCE.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    print(write_combined(root))
