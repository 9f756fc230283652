"""``backend=None`` on CUDA tensors: Triton or CUDA C++ per op and shape, from measured data
(temporal_kernels/_choice.py on the table benchmarks/backend_table.py generates). CPU only: the
chooser is plain Python, and ``select`` is exercised with monkeypatched availability."""

from __future__ import annotations

import csv
import importlib

import pytest
import torch

import temporal_kernels as tk
from benchmarks import backend_table
from temporal_kernels import _backends, _choice, _measured

PUBLIC_OPS = (
    "temporal_attention", "temporal_attention_qkvpacked", "spatial_attention", "spatial_attention_qkvpacked",
    "joint_attention", "factorized_attention",
)
SHAPE = (2, 8, 196, 8, 64)  # B, T, N, H, D of the synthetic rows


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)


def use_table(monkeypatch, rows):
    monkeypatch.setattr(_choice, "TABLE", _choice.index_rows(rows))
    monkeypatch.setattr(_choice, "_PICKS", {})


def row(op="temporal", mode="fwd", packed=False, shape=SHAPE, triton_ms=1.0, cuda_ms=0.5, triton_eager_ms=None,
        cuda_eager_ms=None):
    """A table row; eager times default to the kernel times (then eager calls decide alike)."""
    eager = (triton_ms if triton_eager_ms is None else triton_eager_ms, cuda_ms if cuda_eager_ms is None else cuda_eager_ms)
    return (op, mode, packed) + tuple(shape) + (triton_ms, cuda_ms) + eager


def pick(op="temporal_attention", *, causal=False, has_cls=False, training=False, dtype=torch.bfloat16,
         shape=SHAPE, aligned=True, eager=False):
    return _choice.pick(op, causal=causal, has_cls=has_cls, training=training, dtype=dtype, shape=shape,
                        aligned=aligned, eager=eager)


def with_dims(**dims):
    B, T, N, H, D = SHAPE
    values = {"B": B, "T": T, "N": N, "H": H, "D": D, **dims}
    return tuple(values[axis] for axis in "BTNHD")


# ---------------------------------------------------------------------------------------------
# the decision on synthetic tables


@pytest.mark.parametrize(
    "triton_ms, cuda_ms, expected",
    [
        pytest.param(1.0, 0.97, "cuda", id="cuda-3pct-faster-picks-cuda"),
        pytest.param(1.0, 0.99, "triton", id="cuda-1pct-faster-within-margin-keeps-triton"),
        pytest.param(1.0, 1.0, "triton", id="tie-keeps-triton"),
        pytest.param(1.0, 1.5, "triton", id="triton-faster-keeps-triton"),
    ],
)
def test_cuda_only_when_faster_by_more_than_the_margin(monkeypatch, triton_ms, cuda_ms, expected):
    use_table(monkeypatch, [row(triton_ms=triton_ms, cuda_ms=cuda_ms)])
    assert pick() == expected


@pytest.mark.parametrize(
    "shape, expected",
    [
        pytest.param(SHAPE, "cuda", id="measured-shape"),
        pytest.param(with_dims(T=16), "cuda", id="T-2x-is-near"),
        pytest.param(with_dims(T=4), "cuda", id="T-half-is-near"),
        pytest.param(with_dims(T=32), "triton", id="T-4x-is-far"),
        pytest.param(with_dims(D=128), "cuda", id="D-2x-is-near"),
        pytest.param(with_dims(D=16), "triton", id="D-quarter-is-far"),
        pytest.param(with_dims(N=784), "cuda", id="N-4x-is-near"),
        pytest.param(with_dims(N=4096), "triton", id="N-20x-is-far"),
        pytest.param(with_dims(B=64, H=16), "cuda", id="BH-64x-still-near"),
    ],
)
def test_far_shapes_keep_triton(monkeypatch, shape, expected):
    use_table(monkeypatch, [row()])
    assert pick(shape=shape) == expected


def test_nearest_row_decides(monkeypatch):
    use_table(monkeypatch, [row(shape=with_dims(T=8), triton_ms=1.0, cuda_ms=0.5),
                            row(shape=with_dims(T=16), triton_ms=1.0, cuda_ms=2.0)])
    assert pick(shape=with_dims(T=9)) == "cuda"
    assert pick(shape=with_dims(T=15)) == "triton"


def test_rows_at_the_same_distance_are_summed(monkeypatch):
    # T=8 sits one octave from both rows: 1.0 + 1.0 triton against 0.5 + 2.0 cuda
    use_table(monkeypatch, [row(shape=with_dims(T=4), triton_ms=1.0, cuda_ms=0.5),
                            row(shape=with_dims(T=16), triton_ms=1.0, cuda_ms=2.0)])
    assert pick(shape=with_dims(T=8)) == "triton"
    use_table(monkeypatch, [row(shape=with_dims(T=4), triton_ms=1.0, cuda_ms=0.5),
                            row(shape=with_dims(T=16), triton_ms=1.0, cuda_ms=1.0)])
    assert pick(shape=with_dims(T=8)) == "cuda"


def test_D_and_T_weigh_more_than_N_and_N_more_than_BH(monkeypatch):
    # one row off by 2x in N, one off by 2x in D: the N row is nearer
    use_table(monkeypatch, [row(shape=with_dims(N=392), cuda_ms=0.5), row(shape=with_dims(D=128), cuda_ms=2.0)])
    assert pick() == "cuda"
    # one row off by 2x in N, one off by 2x in B*H: the B*H row is nearer
    use_table(monkeypatch, [row(shape=with_dims(N=392), cuda_ms=0.5), row(shape=with_dims(B=4), cuda_ms=2.0)])
    assert pick() == "triton"


def test_training_uses_fwd_bwd_rows(monkeypatch):
    use_table(monkeypatch, [row(mode="fwd", cuda_ms=0.5), row(mode="fwd+bwd", cuda_ms=2.0)])
    assert pick(training=False) == "cuda"
    assert pick(training=True) == "triton"


# Every ineligible call, next to the eligible call it differs from in one respect (so that a
# "triton" answer means the rule, not a table that never says cuda).
INELIGIBLE = [
    pytest.param({"dtype": torch.float32}, {"dtype": torch.float16}, id="fp32"),
    pytest.param({"dtype": torch.float64}, {"dtype": torch.bfloat16}, id="fp64"),
    pytest.param({"shape": with_dims(D=44)}, {"shape": with_dims(D=40)}, id="D44-not-multiple-of-8"),
    pytest.param({"shape": with_dims(D=168)}, {"shape": with_dims(D=160)}, id="D168-above-160"),
    pytest.param({"aligned": False}, {"aligned": True}, id="misaligned-strides"),
    pytest.param({"op": "spatial_attention", "training": True, "shape": with_dims(D=96)},
                 {"op": "spatial_attention", "training": True, "shape": with_dims(D=64)},
                 id="training-spatial-D96-no-tensor-core-backward"),
    pytest.param({"training": True, "shape": with_dims(D=160)}, {"training": True, "shape": with_dims(D=128)},
                 id="training-temporal-D160-no-tensor-core-backward"),
    pytest.param({"training": True, "shape": with_dims(T=64, D=96)}, {"training": True, "shape": with_dims(T=32, D=96)},
                 id="training-temporal-T64-D96-no-tensor-core-backward"),
    pytest.param({"op": "factorized_attention"}, {"op": "temporal_attention"}, id="factorized-no-cuda-op"),
]


@pytest.mark.parametrize("ineligible, eligible", INELIGIBLE)
def test_calls_outside_the_tensor_core_path_keep_triton(monkeypatch, ineligible, eligible):
    # cuda far faster at every shape and family the calls above could look up
    rows = [row(op=op, mode=mode, shape=with_dims(T=T, D=D))
            for op in ("temporal", "spatial", "joint") for mode in ("fwd", "fwd+bwd")
            for T in (8, 32, 64) for D in (40, 48, 64, 96, 128, 160)]
    use_table(monkeypatch, rows)
    assert pick(**eligible) == "cuda"
    assert pick(**ineligible) == "triton"


@pytest.mark.parametrize("op", ["temporal_attention_qkvpacked", "spatial_attention_qkvpacked"])
def test_packed_ops_fall_back_to_unpacked_rows(monkeypatch, op):
    family = op.split("_")[0]
    use_table(monkeypatch, [row(op=family, packed=False, cuda_ms=0.5)])
    assert pick(op) == "cuda"


@pytest.mark.parametrize("op", ["temporal_attention_qkvpacked", "spatial_attention_qkvpacked"])
def test_packed_ops_prefer_packed_rows(monkeypatch, op):
    family = op.split("_")[0]
    use_table(monkeypatch, [row(op=family, packed=False, cuda_ms=0.5), row(op=family, packed=True, cuda_ms=2.0)])
    assert pick(op) == "triton"
    assert pick(op.removesuffix("_qkvpacked")) == "cuda"


@pytest.mark.parametrize("op", ["temporal_attention", "temporal_attention_qkvpacked"])
def test_causal_temporal_falls_back_to_temporal_rows(monkeypatch, op):
    use_table(monkeypatch, [row(op="temporal", cuda_ms=0.5)])
    assert pick(op, causal=True) == "cuda"
    use_table(monkeypatch, [row(op="temporal", cuda_ms=0.5), row(op="temporal_causal", cuda_ms=2.0)])
    assert pick(op, causal=True) == "triton"
    assert pick(op, causal=False) == "cuda"


def test_causal_temporal_falls_back_when_its_rows_are_far(monkeypatch):
    use_table(monkeypatch, [row(op="temporal", shape=with_dims(T=64), cuda_ms=0.5),
                            row(op="temporal_causal", shape=with_dims(T=8), cuda_ms=2.0)])
    assert pick(causal=True, shape=with_dims(T=64)) == "cuda"


@pytest.mark.parametrize(
    "op, flags, own, plain",
    [
        pytest.param("spatial_attention", {"has_cls": True}, "spatial_cls", "spatial", id="spatial-cls"),
        pytest.param("spatial_attention_qkvpacked", {"has_cls": True}, "spatial_cls", "spatial",
                     id="spatial-packed-cls"),
        pytest.param("joint_attention", {"causal": True}, "joint_causal", "joint", id="joint-causal"),
    ],
)
def test_cls_and_causal_select_their_own_rows(monkeypatch, op, flags, own, plain):
    use_table(monkeypatch, [row(op=own, cuda_ms=0.5), row(op=plain, cuda_ms=2.0)])
    assert pick(op, **flags) == "cuda"
    assert pick(op) == "triton"


def test_no_rows_keep_triton(monkeypatch):
    use_table(monkeypatch, [])
    assert pick() == "triton"


@pytest.mark.parametrize("shape", [with_dims(B=0), with_dims(T=0), with_dims(N=0)], ids=["B0", "T0", "N0"])
def test_empty_shapes_keep_triton(monkeypatch, shape):
    use_table(monkeypatch, [row(shape=with_dims(T=T, N=N, B=B)) for T in (1, 8) for N in (1, 196) for B in (1, 2)])
    assert pick(shape=shape) == "triton"


@pytest.mark.parametrize(
    "times, kernel_pick, eager_pick",
    [
        # spatial (8,8,196,12) fwd+bwd as measured: Triton's kernels faster, its launches ~1 ms slower
        pytest.param((0.30, 0.42, 1.45, 0.49), "triton", "cuda", id="host-bound-call-takes-cuda-eagerly"),
        # spatial+CLS (2,16,784+1,12): CUDA's kernels 0.65 ms slower, Triton's eager time 0.14 ms slower
        pytest.param((1.29, 1.94, 2.08, 1.94), "triton", "triton", id="gpu-bound-call-keeps-triton"),
        pytest.param((1.0, 0.5, 1.0, 5.0), "cuda", "triton", id="cuda-faster-kernels-slow-launches"),
    ],
)
def test_eager_calls_weigh_kernel_and_eager_time(monkeypatch, times, kernel_pick, eager_pick):
    triton_ms, cuda_ms, triton_eager_ms, cuda_eager_ms = times
    use_table(monkeypatch, [row(triton_ms=triton_ms, cuda_ms=cuda_ms, triton_eager_ms=triton_eager_ms,
                                cuda_eager_ms=cuda_eager_ms)])
    assert pick(eager=False) == kernel_pick
    assert pick(eager=True) == eager_pick


# ---------------------------------------------------------------------------------------------
# what pick_for reads off the tensors


def _qkv(shape=(1, 8, 16, 2, 64), dtype=torch.bfloat16, requires_grad=False):
    return tuple(torch.randn(shape, dtype=dtype, requires_grad=requires_grad) for _ in range(3))


@pytest.fixture
def small_table(monkeypatch):
    """cuda faster forward, triton faster forward+backward, at the shape of ``_qkv``."""
    shape = (1, 8, 16, 2, 64)
    use_table(monkeypatch, [row(mode="fwd", shape=shape, cuda_ms=0.5), row(mode="fwd+bwd", shape=shape, cuda_ms=2.0),
                            row(op="spatial", mode="fwd", shape=shape, cuda_ms=0.5)])


def test_pick_for_dense_inputs(small_table):
    assert _choice.pick_for("temporal_attention", _qkv(), causal=False, has_cls=False) == "cuda"


def test_pick_for_training_needs_grad_enabled_and_an_input_requiring_grad(small_table):
    q, k, v = _qkv(requires_grad=True)
    assert _choice.pick_for("temporal_attention", (q, k, v), causal=False, has_cls=False) == "triton"
    with torch.no_grad():
        assert _choice.pick_for("temporal_attention", (q, k, v), causal=False, has_cls=False) == "cuda"
    q2, k2, v2 = _qkv()
    k2.requires_grad_(True)
    assert _choice.pick_for("temporal_attention", (q2, k2, v2), causal=False, has_cls=False) == "triton"


def test_pick_for_misaligned_strides(small_table):
    wide = torch.randn(1, 8, 16, 2, 68, dtype=torch.bfloat16)
    q = wide[..., :64]  # rows 68 elements apart: not 16-byte aligned
    _, k, v = _qkv()
    assert _choice.pick_for("temporal_attention", (q, k, v), causal=False, has_cls=False) == "triton"


def test_pick_for_non_unit_last_stride(small_table):
    q = torch.randn(1, 8, 16, 2, 64, 8, dtype=torch.bfloat16)[..., 0]  # every stride a multiple of 8
    _, k, v = _qkv()
    assert q.shape == k.shape and q.stride(-1) == 8
    assert _choice.pick_for("temporal_attention", (q, k, v), causal=False, has_cls=False) == "triton"


def test_pick_for_packed_qkv_reads_B_T_N_H_D(small_table):
    qkv = torch.randn(1, 8, 16, 3, 2, 64, dtype=torch.bfloat16)
    assert _choice.pick_for("temporal_attention_qkvpacked", (qkv,), causal=False, has_cls=False) == "cuda"
    # the same buffer seen patch-major (TimeSformer's token order) is aligned too
    nt = torch.randn(1, 16, 8, 3, 2, 64, dtype=torch.bfloat16).transpose(1, 2)
    assert _choice.pick_for("temporal_attention_qkvpacked", (nt,), causal=False, has_cls=False) == "cuda"


def test_pick_for_eager_calls_weigh_eager_times(monkeypatch):
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), triton_ms=1.0, cuda_ms=0.5, triton_eager_ms=1.0,
                                cuda_eager_ms=5.0)])
    assert _choice.pick_for("temporal_attention", _qkv(), causal=False, has_cls=False) == "triton"
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), triton_ms=0.3, cuda_ms=0.4, triton_eager_ms=1.5,
                                cuda_eager_ms=0.5)])
    assert _choice.pick_for("temporal_attention", _qkv(), causal=False, has_cls=False) == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_pick_for_in_cuda_graph_capture_weighs_kernel_times(monkeypatch):
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), triton_ms=1.0, cuda_ms=0.5, triton_eager_ms=1.0,
                                cuda_eager_ms=5.0)])
    q, k, v = (x.cuda() for x in _qkv())
    assert _choice.pick_for("temporal_attention", (q, k, v), causal=False, has_cls=False) == "triton"
    picks = []
    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            picks.append(_choice.pick_for("temporal_attention", (q, k, v), causal=False, has_cls=False))
            q.add_(0)  # a captured kernel, so the graph is not empty
    assert picks == ["cuda"]


def test_pick_for_checks_the_cls_tensors_too(small_table):
    q, k, v = _qkv()
    cls = tuple(torch.randn(1, 2, 64, dtype=torch.bfloat16) for _ in range(3))
    assert _choice.pick_for("spatial_attention", (q, k, v) + cls, causal=False, has_cls=False) == "cuda"
    odd = torch.randn(1, 2, 68, dtype=torch.bfloat16)[..., :64]
    misaligned = (q, k, v, odd, cls[1], cls[2])
    assert _choice.pick_for("spatial_attention", misaligned, causal=False, has_cls=False) == "triton"


# ---------------------------------------------------------------------------------------------
# the committed table


def test_committed_table_is_in_sync_with_the_committed_csv():
    problem = backend_table.check()
    assert problem is None, problem


def test_check_reports_a_stale_table(tmp_path):
    stale = tmp_path / "_measured.py"
    stale.write_text(backend_table.render(backend_table.DEFAULT_CSV).replace("ROWS = (", "ROWS = (\n    ('x',),", 1))
    problem = backend_table.check(backend_table.DEFAULT_CSV, str(stale))
    assert problem is not None and "stale" in problem and "line" in problem
    assert backend_table.main(["--check", "--out", str(stale)]) == 1


def _csv_row(method, ms, *, op="temporal", mode="fwd", layout="nt", status="ok", correct="yes", T=8, commit="abc1234",
             ms_eager=""):
    return {"gpu": "GPU X", "dtype": "bfloat16", "op": op, "layout": layout, "B": 2, "T": T, "N": 196, "H": 8, "D": 64,
            "mode": mode, "method": method, "status": status, "correct": correct, "ms": ms, "ms_eager": ms_eager,
            "commit": commit}


def test_generator_takes_medians_of_correct_rows_where_both_backends_ran(tmp_path):
    path = tmp_path / "results.csv"
    rows = [
        _csv_row("tk-triton", 1.0, layout="nt", ms_eager=4.0), _csv_row("tk-triton", 3.0, layout="tn", ms_eager=6.0),
        _csv_row("tk-triton", 2.0, layout="nt", commit="def5678", ms_eager=5.0),
        _csv_row("tk-cuda", 0.5, ms_eager=0.75), _csv_row("tk-cuda", 9.0, status="WRONG", correct="no", ms_eager=1.0),
        _csv_row("tk-triton-packed", 1.25), _csv_row("tk-cuda-packed", 1.5),
        _csv_row("sdpa-flash-copy", 0.1), _csv_row("tk-auto", 0.1),
        _csv_row("tk-triton", 1.0, T=16),  # no cuda row at T=16
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table, source = backend_table.measured_rows(str(path))
    # eager medians where rows have them, else the kernel time (the packed rows here)
    assert table == [("temporal", "fwd", False, 2, 8, 196, 8, 64, 2.0, 0.5, 5.0, 0.75),
                     ("temporal", "fwd", True, 2, 8, 196, 8, 64, 1.25, 1.5, 1.25, 1.5)]
    assert source == {"gpus": ["GPU X"], "dtypes": ["bfloat16"], "commits": ["abc1234", "def5678"]}
    text = backend_table.render(str(path))
    assert "do not edit by hand" in text and "GPU X" in text and "abc1234, def5678" in text
    namespace: dict = {}
    exec(compile(text, "_measured.py", "exec"), namespace)
    assert list(namespace["ROWS"]) == table


def _csv_op_call(op: str, packed: bool) -> tuple[str, dict]:
    family = op.split("_")[0]
    public = f"{family}_attention" + ("_qkvpacked" if packed else "")
    return public, {"causal": op.endswith("_causal"), "has_cls": op.endswith("_cls")}


@pytest.mark.parametrize("case", _measured.ROWS, ids=lambda r: "-".join(map(str, r[:8])))
def test_every_measured_case_picks_its_faster_backend(case):
    op, mode, packed, B, T, N, H, D, triton_ms, cuda_ms, triton_eager_ms, cuda_eager_ms = case
    public, flags = _csv_op_call(op, packed)
    training = mode == "fwd+bwd"
    backward_ok = D <= 64 or (op.startswith("temporal") and T <= 32 and D <= 128)
    eligible = D % 8 == 0 and D <= 160 and (not training or backward_ok)
    expected = "cuda" if eligible and triton_ms > 1.02 * cuda_ms else "triton"
    assert pick(public, training=training, shape=(B, T, N, H, D), **flags) == expected
    eager_triton, eager_cuda = triton_ms + triton_eager_ms, cuda_ms + cuda_eager_ms
    expected = "cuda" if eligible and eager_triton > 1.02 * eager_cuda else "triton"
    assert pick(public, training=training, shape=(B, T, N, H, D), eager=True, **flags) == expected


@pytest.mark.parametrize("eager", [False, True], ids=["kernel-times", "eager"])
def test_committed_table_has_cases_for_both_answers(eager):
    picks = set()
    for op, mode, packed, *shape, _, _, _, _ in _measured.ROWS:
        public, flags = _csv_op_call(op, packed)
        picks.add(pick(public, training=mode == "fwd+bwd", shape=tuple(shape), eager=eager, **flags))
    assert picks == {"cuda", "triton"}


# ---------------------------------------------------------------------------------------------
# select and the functional API


def _fake_backends(monkeypatch, available=("triton", "cuda", "reference"), cuda_ops=None):
    """Every backend able to run on any device; kernel ops are named fakes."""
    ops = {
        "triton": {op: f"triton:{op}" for op in PUBLIC_OPS},
        "cuda": {op: f"cuda:{op}" for op in (cuda_ops if cuda_ops is not None else PUBLIC_OPS)},
        "reference": _backends._reference_ops(),
    }
    monkeypatch.setattr(_backends, "_ops_of", lambda name: ops[name])
    monkeypatch.setattr(_backends, "_unavailable_reason", lambda name, device: None if name in available else "fake")
    return ops


CUDA = torch.device("cuda")


@pytest.mark.parametrize("op", PUBLIC_OPS)
def test_select_none_on_cpu_is_the_reference(monkeypatch, op):
    _fake_backends(monkeypatch)
    use_table(monkeypatch, [row(op=o, packed=p) for o in ("temporal", "spatial", "joint") for p in (False, True)])
    q, k, v = _qkv()
    assert _backends.select(op, None, q.device, (q, k, v)) is _backends._reference_ops()[op]


def test_select_none_on_cuda_runs_the_pick(monkeypatch):
    _fake_backends(monkeypatch)
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=0.5)])
    assert _backends.select("temporal_attention", None, CUDA, _qkv()) == "cuda:temporal_attention"
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=2.0)])
    assert _backends.select("temporal_attention", None, CUDA, _qkv()) == "triton:temporal_attention"


def test_select_needs_both_kernel_backends_to_choose(monkeypatch):
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=0.5)])
    _fake_backends(monkeypatch, available=("triton", "reference"))
    assert _backends.select("temporal_attention", None, CUDA, _qkv()) == "triton:temporal_attention"
    _fake_backends(monkeypatch, available=("cuda", "reference"))
    assert _backends.select("temporal_attention", None, CUDA, _qkv()) == "cuda:temporal_attention"
    _fake_backends(monkeypatch, cuda_ops=("spatial_attention",))
    assert _backends.select("temporal_attention", None, CUDA, _qkv()) == "triton:temporal_attention"


def test_select_without_tensors_keeps_the_order(monkeypatch):
    _fake_backends(monkeypatch)
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=0.5)])
    assert _backends.select("temporal_attention", None, CUDA) == "triton:temporal_attention"


@pytest.mark.parametrize("name", ["triton", "cuda", "reference"])
def test_env_var_and_explicit_backend_override_the_pick(monkeypatch, name):
    ops = _fake_backends(monkeypatch)
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=0.5 if name != "cuda" else 2.0)])
    assert _backends.select("temporal_attention", name, CUDA, _qkv()) == ops[name]["temporal_attention"]
    monkeypatch.setenv(_backends.ENV_VAR, name)
    assert _backends.select("temporal_attention", None, CUDA, _qkv()) == ops[name]["temporal_attention"]


def test_functional_api_hands_select_the_call(monkeypatch):
    seen = []
    real_select = _backends.select

    def recording_select(op, backend, device, tensors=(), *, causal=False, has_cls=False):
        seen.append((op, tensors, causal, has_cls))
        return real_select(op, backend, device, tensors, causal=causal, has_cls=has_cls)

    monkeypatch.setattr(_backends, "select", recording_select)
    q, k, v = _qkv(dtype=torch.float32)
    qkv = torch.randn(1, 8, 16, 3, 2, 64)
    cls = tuple(torch.randn(1, 2, 64) for _ in range(3))
    cls_qkv = torch.randn(1, 3, 2, 64)
    tk.temporal_attention(q, k, v, causal=True)
    tk.temporal_attention_qkvpacked(qkv, causal=True)
    tk.spatial_attention(q, k, v, cls=cls)
    tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv)
    tk.spatial_attention_qkvpacked(qkv)
    tk.joint_attention(q, k, v, causal=True)
    tk.factorized_attention(q, k, v, temporal_heads=1)

    def same(a, b):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))

    expected = [
        ("temporal_attention", (q, k, v), True, False),
        ("temporal_attention_qkvpacked", (qkv,), True, False),
        ("spatial_attention", (q, k, v) + cls, False, True),
        ("spatial_attention_qkvpacked", (qkv, cls_qkv), False, True),
        ("spatial_attention_qkvpacked", (qkv,), False, False),
        ("joint_attention", (q, k, v), True, False),
        ("factorized_attention", (q, k, v), False, False),
    ]
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        assert got[0] == want[0] and same(got[1], want[1]) and got[2:] == want[2:], (got[0], want[0])


# ---------------------------------------------------------------------------------------------
# modules


def test_modules_leave_the_choice_to_the_functional_api(monkeypatch):
    x = torch.randn(1, 8, 16, 128)
    monkeypatch.setattr(tk.nn, "_kernel_backend", lambda ops, device_type, head_dim: "triton")
    assert tk.nn._module_backend(None, tk.nn._DIVIDED, x, 64) is None
    assert tk.nn._module_backend("cuda", tk.nn._DIVIDED, x, 64) == "cuda"
    monkeypatch.setattr(tk.nn, "_kernel_backend", lambda ops, device_type, head_dim: None)
    assert tk.nn._module_backend(None, tk.nn._DIVIDED, x, 64) == "reference"
    monkeypatch.setenv(_backends.ENV_VAR, "triton")
    assert tk.nn._module_backend(None, tk.nn._DIVIDED, x, 64) is None  # the functional API reads it


def test_converted_modules_leave_the_choice_to_the_functional_api(monkeypatch):
    tk_convert = importlib.import_module("temporal_kernels.convert")  # the package exports the function

    x = torch.randn(1, 8, 16, 128)
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    monkeypatch.setattr(tk_convert, "_kernel_backend", lambda ops, device_type, head_dim: "triton")
    assert tk_convert._serving_backend(None, tk.nn._DIVIDED, x, 64) == (True, None)
    assert tk_convert._serving_backend("reference", tk.nn._DIVIDED, x, 64) == (True, "reference")
    monkeypatch.setattr(tk_convert, "_kernel_backend", lambda ops, device_type, head_dim: None)
    assert tk_convert._serving_backend(None, tk.nn._DIVIDED, x, 64) == (False, None)  # the original path


def test_modules_on_cpu_still_get_the_reference():
    x = torch.randn(1, 8, 16, 128)
    assert tk.nn._module_backend(None, tk.nn._TEMPORAL, x, 64) == "reference"


# ---------------------------------------------------------------------------------------------
# torch.compile


def _compiled_choice(monkeypatch, **compile_kwargs):
    """A compiled function whose output says which fake backend ``select`` returned."""
    ops = {
        "triton": {"temporal_attention": lambda q, k, v: q * 3.0},
        "cuda": {"temporal_attention": lambda q, k, v: q * 2.0},
        "reference": _backends._reference_ops(),
    }
    monkeypatch.setattr(_backends, "_ops_of", lambda name: ops[name])
    monkeypatch.setattr(_backends, "_unavailable_reason", lambda name, device: None)

    def attention(q, k, v):
        return _backends.select("temporal_attention", None, CUDA, (q, k, v))(q, k, v)

    torch._dynamo.reset()
    return torch.compile(attention, fullgraph=True, backend="eager", **compile_kwargs)


def test_choice_traces_under_torch_compile_fullgraph(monkeypatch):
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=0.5)])
    compiled = _compiled_choice(monkeypatch)
    try:
        q, k, v = _qkv()
        assert torch.equal(compiled(q, k, v), q * 2.0)  # cuda picked
        far = _qkv(shape=(1, 64, 16, 2, 64))
        assert torch.equal(compiled(*far), far[0] * 3.0)  # T 8x off the table: triton
        with torch.no_grad():
            q32 = tuple(x.float() for x in (q, k, v))
            assert torch.equal(compiled(*q32), q32[0] * 3.0)  # fp32: triton
    finally:
        torch._dynamo.reset()


def test_choice_stays_per_shape_with_dynamic_shapes(monkeypatch):
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=0.5)])
    compiled = _compiled_choice(monkeypatch, dynamic=True)
    try:
        near = _qkv(shape=(2, 8, 16, 2, 64))
        assert torch.equal(compiled(*near), near[0] * 2.0)
        far = _qkv(shape=(2, 64, 16, 2, 64))
        assert torch.equal(compiled(*far), far[0] * 3.0)
        near_again = _qkv(shape=(3, 8, 16, 2, 64))
        assert torch.equal(compiled(*near_again), near_again[0] * 2.0)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("times, expected", [((1.0, 0.5, 1.0, 5.0), 3.0), ((0.3, 0.4, 1.5, 0.5), 2.0)],
                         ids=["triton-by-eager-time", "cuda-by-eager-time"])
def test_compiled_calls_weigh_eager_times_too(monkeypatch, times, expected):
    """torch.compile without CUDA graphs still pays each op's host cost per call."""
    triton_ms, cuda_ms, triton_eager_ms, cuda_eager_ms = times
    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), triton_ms=triton_ms, cuda_ms=cuda_ms,
                                triton_eager_ms=triton_eager_ms, cuda_eager_ms=cuda_eager_ms)])
    compiled = _compiled_choice(monkeypatch)
    try:
        q, k, v = _qkv()
        assert _backends.select("temporal_attention", None, CUDA, (q, k, v))(q, k, v).equal(q * expected)
        assert torch.equal(compiled(q, k, v), q * expected)
    finally:
        torch._dynamo.reset()


def test_symbolic_sizes_outside_dynamo_keep_triton(monkeypatch):
    from torch.fx.experimental.proxy_tensor import make_fx

    use_table(monkeypatch, [row(shape=(1, 8, 16, 2, 64), cuda_ms=0.5)])
    picks = []

    def attention(q):
        picks.append(_choice.pick_for("temporal_attention", (q,), causal=False, has_cls=False))
        return q * 2.0

    q = _qkv()[0]
    make_fx(attention, tracing_mode="symbolic")(q)
    attention(q)
    assert picks == ["triton", "cuda"]
