"""pytest-benchmark regression set (GPU only): ``pytest benchmarks/ --benchmark-only``.

A few headline shapes of SPEC §5, every kernel backend that implements the op, forward and
forward+backward, plus two peers for scale. Each benchmark first checks its result against the
float64 reference (SPEC §3), then times calls that end with ``torch.cuda.synchronize()``.
Compare runs with ``--benchmark-autosave`` / ``--benchmark-compare``. Lives outside ``tests/``
so ``pytest tests`` never collects it; without a GPU the whole module is skipped.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

# Collected everywhere, skipped without a GPU (a run that collects nothing would exit non-zero).
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="GPU benchmarks: no CUDA device (the CPU pass is `python -m benchmarks.run`)"
)

import temporal_kernels as tk  # noqa: E402

from .peers import peer_methods, tk_methods  # noqa: E402
from .run import BOUNDS, Inputs, call, make_douts, reference, rel_err  # noqa: E402
from .shapes import Case  # noqa: E402

CASES = [
    Case("temporal", 8, 8, 196, 12),
    Case("temporal", 2, 16, 4096, 5),
    Case("temporal_causal", 8, 8, 196, 12),
    Case("spatial_cls", 8, 8, 196, 12),
    Case("joint", 2, 8, 196, 12, layout="tn"),
]
MODES = ("fwd", "fwd+bwd")
PEERS = ("einsum", "sdpa-default-copy")


def _case_id(case: Case) -> str:
    return case.label().replace(" ", "-")


def _check_and_bench(benchmark, method, case: Case, mode: str, strict: bool) -> None:
    grad = mode == "fwd+bwd"
    torch.manual_seed(0)
    inputs = Inputs(case, torch.bfloat16, "cuda")
    douts = make_douts(case, inputs)
    ref_outs, ref_grads = reference(case, inputs, douts, grad)
    ctx = torch.enable_grad if grad else torch.no_grad
    with ctx():
        outs, grads = call(method, case, inputs, douts, grad)
    errs = [rel_err(o, r) for o, r in zip(outs, ref_outs)] + (
        [rel_err(g, r) for g, r in zip(grads, ref_grads)] if grad else [])
    benchmark.extra_info["max_err"] = max(errs)
    if strict:  # peers compute softmax in bf16 and are not held to our bound; they are only timed
        assert max(errs) <= BOUNDS[torch.bfloat16], f"{method.name} {case.label()} {mode}: errors {errs}"
    del outs, grads, ref_outs, ref_grads

    def run():
        with ctx():
            call(method, case, inputs, douts, grad)
        torch.cuda.synchronize()

    benchmark.extra_info.update(case=case.label(), mode=mode, method=method.name, gpu=torch.cuda.get_device_name())
    benchmark.pedantic(run, rounds=30, warmup_rounds=5, iterations=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernel(benchmark, case, backend, mode):
    if backend not in tk.available_backends():
        pytest.skip(f"backend {backend!r} unavailable here")
    methods = [m for m in tk_methods(case, [backend]) if not m.packed]
    if not methods:
        pytest.skip(f"backend {backend!r} does not implement {case.op} yet")
    _check_and_bench(benchmark, methods[0], case, mode, strict=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_peer(benchmark, case, peer, mode):
    method = next(m for m in peer_methods(case, naive=False, flex=False) if m.name == peer)
    _check_and_bench(benchmark, method, case, mode, strict=False)
