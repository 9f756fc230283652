"""Matplotlib figures of one run: time vs T per method (the sweep) and speedup bars."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _ok(r: dict) -> bool:
    return r["ms"] is not None and r["status"] in ("ok", "LOOSE")


def time_vs_t(out_dir: str, meta: dict, rows: list[dict]) -> str | None:
    sweep = [r for r in rows if r["group"] == "sweep" and _ok(r)]
    if not sweep:
        return None
    modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in sweep)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for method in dict.fromkeys(r["method"] for r in sweep):
            pts = sorted((r["T"], r["ms"]) for r in sweep if r["mode"] == mode and r["method"] == method)
            if pts:
                style = "-o" if method.startswith("tk-") and "reference" not in method else "--."
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=method, linewidth=1.2, markersize=4)
        floor = sorted({(r["T"], r["floor_ms"]) for r in sweep if r["mode"] == mode and r["floor_ms"]})
        if floor:
            ax.plot([p[0] for p in floor], [p[1] for p in floor], "k:", label="memory floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (frames); N=196, H=12, D=64, B=max(1, 64/T)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"temporal attention {mode}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{meta.get('label', '')} · commit {meta.get('commit', '')}", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, "time_vs_T.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speedup_bars(out_dir: str, meta: dict, rows: list[dict]) -> str | None:
    """Best of our backends over the best peer (and the naive loops), per case and mode."""
    entries = []
    seen = {}
    for r in rows:
        if r["group"] in ("sweep", "interp"):
            continue
        seen.setdefault((r["case"], r["mode"]), []).append(r)
    for (case, mode), group in seen.items():
        ours = [r for r in group if r["kind"] in ("ours",) and _ok(r)]
        if not ours:
            ours = [r for r in group if r["kind"] == "reference" and _ok(r)]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["ms"])
        entries.append((f"{case} · {mode}", best["speedup_best_peer"], best["speedup_naive"]))
    if not entries:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(entries) + 1.5))
    ys = range(len(entries))
    ax.barh([y - 0.2 for y in ys], [e[1] or 0 for e in entries], height=0.4, label="× best peer")
    ax.barh([y + 0.2 for y in ys], [e[2] or 0 for e in entries], height=0.4, label="× naive loops")
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([e[0] for e in entries], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("speedup (log scale; > 1 is faster)")
    ax.set_title(f"{meta.get('label', '')}: best of our backends", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "speedup.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(out_dir: str, meta: dict, rows: list[dict]) -> list[str]:
    return [p for p in (time_vs_t(out_dir, meta, rows), speedup_bars(out_dir, meta, rows)) if p]
