"""``torch.autograd.gradcheck`` in float64 for every public function and option, on every backend
that implements the op and runs on the test device.

On CPU that is the reference, plus the Triton ops of ``temporal_kernels.ops.TRITON_OPS`` when the
Triton interpreter is on (tests/conftest.py turns it on without a GPU); on a GPU, every available
backend. Shapes are tiny and ``fast_mode`` (one random directional derivative) runs on one leaf
holding all inputs, because the interpreter is slow: its cost grows with the number of programs
(B*N*H for temporal, B*T*H for spatial), so the spatial and factorized cases of the kernel
backends shrink T and H further on CPU. (The reference's gradients are also compared element by
element with an independent formulation in test_reference.py.)
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import temporal_kernels as tk
from temporal_kernels import _backends
from temporal_kernels._layout import axis_order
from tests.helpers import DEVICE, case_id, interpreter, packed_qkv

F64 = torch.float64


class Dims(NamedTuple):
    B: int
    T: int
    N: int
    H: int
    D: int


DIMS = Dims(2, 3, 3, 2, 4)
# Under the interpreter: B*T*H = 4 spatial programs instead of 12; factorized needs H > 1 to split
# heads, and the batch strides are covered by the spatial and temporal cases.
INTERPRETER_DIMS = {"spatial": Dims(2, 2, 3, 1, 4), "factorized": Dims(1, 2, 3, 2, 4)}


def dims_for(op: str, backend: str) -> Dims:
    if backend == "reference" or DEVICE == "cuda":
        return DIMS
    return INTERPRETER_DIMS.get(op.split("_")[0], DIMS)


def _runs_here(name: str) -> bool:
    if name == "reference" or DEVICE == "cuda":
        return True
    return name == "triton" and interpreter()  # "cuda" never runs on CPU tensors


def backends_for(op: str) -> list[str]:
    """Backends that implement ``op`` and run on the test device, in preference order."""
    return [name for name in tk.available_backends() if _runs_here(name) and op in _backends._ops_of(name)]


def _leaf(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=F64, generator=g).to(DEVICE).requires_grad_()


def _qkv(s: Dims, seed=0):
    return tuple(_leaf(*s, seed=seed + i) for i in range(3))


def _cls(s: Dims, seed=20):
    return tuple(_leaf(s.B, s.H, s.D, seed=seed + i) for i in range(3))


def _packed(s: Dims, layout, seed=10):
    g = torch.Generator().manual_seed(seed)
    return packed_qkv(layout, *s, dtype=F64, device=DEVICE, generator=g).detach().requires_grad_()


def _lens(s: Dims, full_first: bool):
    """Frame lengths for B=2 covering T, 0 and partial clips across the cases."""
    values = (s.T, 1) if full_first else (s.T - 1, 0)
    return torch.tensor(values, device=DEVICE)


# (op, option id, builder(backend, dims) -> (fn, inputs), kernels); ``fn`` takes exactly the
# gradcheck inputs. ``kernels=False`` marks cases whose options another case of the op already
# combines: they run on the reference only, to keep the interpreter's share of the CI budget small.
CASES = []


def case(op, name, kernels=True):
    def register(builder):
        CASES.append(pytest.param(op, builder, kernels, id=f"{op}-{name}"))
        return builder

    return register


@case("temporal_attention", "plain", kernels=False)
def _(backend, s):
    return lambda q, k, v: tk.temporal_attention(q, k, v, backend=backend), _qkv(s)


@case("temporal_attention", "causal-scale", kernels=False)
def _(backend, s):
    return lambda q, k, v: tk.temporal_attention(q, k, v, causal=True, scale=0.7, backend=backend), _qkv(s)


@case("temporal_attention", "lens-scale")
def _(backend, s):
    fl = _lens(s, full_first=False)
    return lambda q, k, v: tk.temporal_attention(q, k, v, frame_lens=fl, scale=1.3, backend=backend), _qkv(s)


@case("temporal_attention", "causal-lens-packed_nt_views")
def _(backend, s):
    fl = _lens(s, full_first=True)

    def fn(qkv):
        return tk.temporal_attention(*qkv.unbind(3), causal=True, frame_lens=fl, backend=backend)

    return fn, (_packed(s, "packed_nt"),)


@case("temporal_attention_qkvpacked", "plain-packed_tn", kernels=False)
def _(backend, s):
    return lambda qkv: tk.temporal_attention_qkvpacked(qkv, backend=backend), (_packed(s, "packed_tn"),)


@case("temporal_attention_qkvpacked", "causal-lens-packed_nt")
def _(backend, s):
    fl = _lens(s, full_first=False)

    def fn(qkv):
        return tk.temporal_attention_qkvpacked(qkv, causal=True, frame_lens=fl, backend=backend)

    return fn, (_packed(s, "packed_nt"),)


@case("spatial_attention", "plain")
def _(backend, s):
    return lambda q, k, v: tk.spatial_attention(q, k, v, backend=backend), _qkv(s)


@case("spatial_attention", "cls-scale")
def _(backend, s):
    def fn(q, k, v, q_cls, k_cls, v_cls):
        return tk.spatial_attention(q, k, v, cls=(q_cls, k_cls, v_cls), scale=0.4, backend=backend)

    return fn, _qkv(s) + _cls(s)


@case("spatial_attention_qkvpacked", "plain-packed_nt", kernels=False)
def _(backend, s):
    return lambda qkv: tk.spatial_attention_qkvpacked(qkv, backend=backend), (_packed(s, "packed_nt"),)


@case("spatial_attention_qkvpacked", "cls-packed_tn")
def _(backend, s):
    def fn(qkv, cls_qkv):
        return tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend=backend)

    return fn, (_packed(s, "packed_tn"), _leaf(s.B, 3, s.H, s.D, seed=30))


@case("joint_attention", "plain", kernels=False)
def _(backend, s):
    return lambda q, k, v: tk.joint_attention(q, k, v, backend=backend), _qkv(s)


@case("joint_attention", "causal", kernels=False)
def _(backend, s):
    return lambda q, k, v: tk.joint_attention(q, k, v, causal=True, backend=backend), _qkv(s)


@case("joint_attention", "causal-lens-scale")
def _(backend, s):
    fl = _lens(s, full_first=False)

    def fn(q, k, v):
        return tk.joint_attention(q, k, v, causal=True, frame_lens=fl, scale=1.3, backend=backend)

    return fn, _qkv(s)


@case("joint_attention", "lens-packed_nt_views")
def _(backend, s):
    fl = _lens(s, full_first=True)
    return lambda qkv: tk.joint_attention(*qkv.unbind(3), frame_lens=fl, backend=backend), (_packed(s, "packed_nt"),)


KERNEL_SPLITS = (("1", True), ("H", False))  # mixed heads (causal), and all heads temporal

for _th in ("0", "1", "H"):
    for _causal in (False, True):
        if _th == "0" and _causal:
            continue  # causal only affects the temporal heads

        @case("factorized_attention", case_id(th=_th, causal=_causal), kernels=(_th, _causal) in KERNEL_SPLITS)
        def _(backend, s, th=_th, causal=_causal):
            heads = s.H if th == "H" else int(th)

            def fn(q, k, v):
                return tk.factorized_attention(q, k, v, temporal_heads=heads, causal=causal, backend=backend)

            return fn, _qkv(s)


PARAMS = [
    pytest.param(backend, op, builder, id=f"{backend}-{p.id}")
    for p in CASES
    for op, builder, kernels in [p.values]
    for backend in backends_for(op)
    if kernels or backend == "reference"
]


def _one_leaf(fn, inputs):
    """``fn`` and its inputs re-expressed on one flat leaf holding every input in its memory order.

    Each input becomes a view of the leaf with its original strides (the layout under test is
    kept), and gradcheck's fast mode then needs two forward evaluations in all instead of two per
    input: that is most of a kernel backend's time under the interpreter.
    """
    orders = [axis_order(x.stride()) for x in inputs]
    flat = torch.cat([x.detach().permute(o).reshape(-1) for x, o in zip(inputs, orders)]).requires_grad_()

    def on_flat(leaf):
        views, offset = [], 0
        for x, order in zip(inputs, orders):
            chunk = leaf[offset: offset + x.numel()].view([x.shape[a] for a in order])
            views.append(chunk.permute([order.index(a) for a in range(x.dim())]))
            offset += x.numel()
        for view, x in zip(views, inputs):
            assert view.shape == x.shape and view.stride() == x.stride()
        return fn(*views)

    return on_flat, (flat,)


@pytest.mark.parametrize("backend,op,builder", PARAMS)
def test_gradcheck(backend, op, builder):
    fn, inputs = builder(backend, dims_for(op, backend))
    assert torch.autograd.gradcheck(*_one_leaf(fn, inputs), fast_mode=True)


def test_every_op_is_covered():
    ops = {p.values[0] for p in CASES}
    assert ops == {
        "temporal_attention", "temporal_attention_qkvpacked", "spatial_attention", "spatial_attention_qkvpacked",
        "joint_attention", "factorized_attention",
    }
    assert all("reference" in backends_for(op) for op in ops)
    assert all(dims_for(op, "reference") == DIMS for op in ops)
