"""The device-session tools run end to end on the CPU (a broken tool would waste a GPU call):
``scripts/tune_spatial.py --cpu-smoke`` sweeps two configs per kernel under the Triton interpreter,
with its correctness, determinism and per-slice checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU CI's check: on a GPU machine the tool runs its real sweep "
                    "(the interpreter's kernels are not triton.jit functions to torch 2.11's wrap_triton)")
def test_tune_spatial_cpu_smoke():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "scripts")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    run = subprocess.run([sys.executable, "scripts/tune_spatial.py", "--cpu-smoke", "--bwd", "--ops", "spatial_cls,joint"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = run.stdout.split("== best config", 1)[1]
    rows = [line for line in summary.splitlines() if "(" in line and "tried" not in line and "ok," in line]
    assert len(rows) == 9, summary  # spatial_cls, joint, joint causal x fwd, dK/dV, dQ
    assert all("0 wrong, 0 racy, 0 skip" in line for line in rows), summary


def test_host_overhead_runs():
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    run = subprocess.run([sys.executable, "scripts/host_overhead.py", "--iters", "2", "--repeats", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["temporal", "temporal_causal", "temporal_qkvpacked", "spatial", "spatial_cls",
                                    "spatial_qkvpacked_cls", "joint", "factorized"], run.stdout
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows), run.stdout
