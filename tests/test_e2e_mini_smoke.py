"""Smoke test of ``benchmarks/e2e_mini.py`` (issue 7): ``--quick`` on a tiny video, CPU or GPU.

The timings are not checked (no timed tests); the run's JSON is: every row measured, the fused
model's output within SPEC §3 of the float64 reference, the seed's verbatim code different from
ours (it attends over the batch axis) and its batch-first loop equal to ours.
"""

from __future__ import annotations

import json
import math

import pytest

import temporal_kernels as tk
from benchmarks import e2e_mini


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_e2e_mini_quick(backend, tmp_path, monkeypatch, capsys):
    if backend not in tk.available_backends():
        pytest.skip(f"backend {backend!r} is not available here")
    monkeypatch.setenv("TK_COMMIT", "smoke-commit")
    out = tmp_path / "results" / "e2e_mini.json"
    argv = ["--quick", "--dtypes", "fp32", "--backend", backend, "--budget", "0.01", "--max-iters", "2",
            "--out", str(out)]
    returned = e2e_mini.main(argv)
    with open(out) as f:
        result = json.load(f)
    assert result == json.loads(json.dumps(returned))

    meta = result["meta"]
    assert meta["commit"] == "smoke-commit"
    assert meta["command"] == "python -m benchmarks.e2e_mini " + " ".join(argv)
    assert meta["quick"] is True and meta["tk_backend"] == backend
    for key in ("device", "torch", "triton", "date"):
        assert meta[key]

    assert [(r["model"], r["dtype"]) for r in result["rows"]] == [
        ("seed-loop", "fp32"), ("seed-loop-batch-first", "fp32"), ("tk-fused", "fp32"),
    ]
    for row in result["rows"]:
        for key in ("fwd_ms", "fwd_bwd_ms"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["model"], key)
    speedups = result["speedups"]["fp32"]
    assert set(speedups) == {"vs_seed-loop", "vs_seed-loop-batch-first"}
    assert result["meets_bar"] is None and result["verdict"].startswith("no claim")

    check = result["correctness"]["fp32"]
    assert check["out_ok"] and check["tk_fused"]["out_rel_err"] <= 1e-5
    assert check["grads_within_bound"]
    semantics = result["seed_semantics"]
    assert semantics["seed_loop_vs_tk_rel_diff"] > 1e-2
    assert semantics["seed_loop_batch_first_vs_tk_rel_diff"] <= 1e-10

    printed = capsys.readouterr().out
    assert "| tk-fused | fp32 |" in printed and result["verdict"] in printed
