"""Custom-op registration (torch.library) for the kernel backends, and their autograd.

Data flows one way: public function (``functional.py``: validation, backend choice) → the
backend's entry in ``TRITON_OPS`` / ``CUDA_OPS`` below → custom op → kernel launcher.

Every op comes as a forward/backward pair per backend, named ``{backend}_{op}_fwd`` and
``{backend}_{op}_bwd`` in the ``temporal_kernels`` namespace, with one schema shared by both
backends (the C++ schemas in ``csrc/ops.cpp`` mirror the annotations here):

    {b}_temporal_fwd(q, k, v, frame_lens?, causal, scale) -> (out, lse)
    {b}_temporal_bwd(dout, q, k, v, out, lse, frame_lens?, causal, scale) -> (dq, dk, dv)
    {b}_temporal_qkvpacked_fwd(qkv, frame_lens?, causal, scale) -> (out, lse)
    {b}_temporal_qkvpacked_bwd(dout, qkv, out, lse, frame_lens?, causal, scale) -> dqkv
    {b}_joint_fwd / _bwd: as temporal
    {b}_factorized_fwd(q, k, v, temporal_heads, causal, scale) -> (out, lse)
    {b}_factorized_bwd(dout, q, k, v, out, lse, temporal_heads, causal, scale) -> (dq, dk, dv)
    {b}_spatial_fwd(q, k, v, q_cls?, k_cls?, v_cls?, scale) -> (out, cls_out, lse, lse_cls)
    {b}_spatial_bwd(dout, dcls_out?, q, k, v, q_cls?, k_cls?, v_cls?, out, cls_out?, lse, lse_cls?, scale)
        -> (dq, dk, dv, dq_cls, dk_cls, dv_cls)
    {b}_spatial_qkvpacked_fwd(qkv, cls_qkv?, scale) -> (out, cls_out, lse, lse_cls)
    {b}_spatial_qkvpacked_bwd(dout, dcls_out?, qkv, cls_qkv?, out, cls_out?, lse, lse_cls?, scale)
        -> (dqkv, dcls_qkv)

Buffers: ``out``/``dq``/``dk``/``dv`` are dense in q's axis order (``_layout``); ``dqkv`` is
dense in qkv's axis order and the backward kernels write its q/k/v slices in place (no
zero-fill-and-scatter). ``lse`` is the log-sum-exp of the scaled logits, contiguous
``[B, H, T, N]`` (``lse_cls``: ``[B, H, T]``), float32, float64 for float64 inputs. Without CLS,
``cls_out``/``lse_cls``/``d*_cls`` are empty tensors (an op cannot return None).

Launchers (``triton/*.py``) take preallocated outputs and write every element of them; they
read any strides as long as the last one is 1 (the wrappers here copy once otherwise).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.library import triton_op

try:
    from torch._library.triton import set_wrap_triton_enabled as _set_wrap_triton_enabled
except ImportError:  # older torch: the launches go through wrap_triton's higher-order op
    _set_wrap_triton_enabled = None

from ._layout import empty_like_cls_out, empty_like_packed, empty_like_video

NS = "temporal_kernels"
MAX_HEAD_DIM = 256


# ---------------------------------------------------------------------------------------------
# buffers shared by the Triton bodies and the fake (meta) implementations of the C++ ops


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _lse(q: Tensor) -> Tensor:
    B, T, N, H, _ = q.shape
    return torch.empty((B, H, T, N), dtype=_stat_dtype(q), device=q.device)


def _lse_cls(q: Tensor, has_cls: bool) -> Tensor:
    B, T, _, H, _ = q.shape
    return torch.empty((B, H, T) if has_cls else (0,), dtype=_stat_dtype(q), device=q.device)


def _cls_out(q: Tensor, has_cls: bool) -> Tensor:
    return empty_like_cls_out(q) if has_cls else q.new_empty((0,))


def _unit_last(x: Optional[Tensor]) -> Optional[Tensor]:
    """Kernels need a unit stride on the head dim; any other stride is copied once (SPEC §1)."""
    if x is None or x.stride(-1) == 1 or x.shape[-1] <= 1:
        return x
    return x.contiguous()


def _check_head_dim(backend: str, D: int) -> None:
    if D > MAX_HEAD_DIM:
        raise ValueError(f"q: the {backend} backend supports head dims D <= {MAX_HEAD_DIM}, got D={D}")


# ---------------------------------------------------------------------------------------------
# Triton ops (launchers in triton/*.py; wrap_triton there makes them traceable by torch.compile)


@triton_op(f"{NS}::triton_temporal_fwd", mutates_args=())
def _triton_temporal_fwd(
    q: Tensor, k: Tensor, v: Tensor, frame_lens: Optional[Tensor], causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    from .triton.temporal_attn import temporal_attn_fwd

    out, lse = empty_like_video(q), _lse(q)
    temporal_attn_fwd(q, k, v, out, lse, frame_lens, causal, scale)
    return out, lse


@triton_op(f"{NS}::triton_temporal_bwd", mutates_args=())
def _triton_temporal_bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    frame_lens: Optional[Tensor], causal: bool, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    from .triton.temporal_attn import temporal_attn_bwd

    dq, dk, dv = empty_like_video(q), empty_like_video(k), empty_like_video(v)
    temporal_attn_bwd(dout, q, k, v, out, lse, frame_lens, causal, scale, dq, dk, dv)
    return dq, dk, dv


@triton_op(f"{NS}::triton_temporal_qkvpacked_fwd", mutates_args=())
def _triton_temporal_qkvpacked_fwd(
    qkv: Tensor, frame_lens: Optional[Tensor], causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    from .triton.temporal_attn import temporal_attn_fwd

    q, k, v = qkv.unbind(3)
    out, lse = empty_like_video(q), _lse(q)
    temporal_attn_fwd(q, k, v, out, lse, frame_lens, causal, scale)
    return out, lse


def _direct_launches():
    """Inside an opaque custom op the tensors are real and never traced: launch the kernels
    directly, as ``triton_op`` does for its body, instead of through ``wrap_triton``'s
    higher-order op (in eager, that dispatch cost ~1 ms of host time per backward call)."""
    return _set_wrap_triton_enabled(False) if _set_wrap_triton_enabled else contextlib.nullcontext()


# The packed backward ops are opaque custom ops, not triton_ops: their kernels write the q/k/v
# slices of one ``dqkv``, and inductor (torch 2.11) functionalizes such writes into non-dense
# views with a copy that reads past the end of its source (an illegal memory access, caught by
# compute-sanitizer: benchmarks/results/h100/logs/). Opaque, the op keeps its in-place slices.
@torch.library.custom_op(f"{NS}::triton_temporal_qkvpacked_bwd", mutates_args=())
def _triton_temporal_qkvpacked_bwd(
    dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor,
    frame_lens: Optional[Tensor], causal: bool, scale: float,
) -> Tensor:
    from .triton.temporal_attn import temporal_attn_bwd

    dqkv = empty_like_packed(qkv)
    with _direct_launches():
        temporal_attn_bwd(dout, *qkv.unbind(3), out, lse, frame_lens, causal, scale, *dqkv.unbind(3))
    return dqkv


def _cls_tuple(q_cls: Optional[Tensor], k_cls: Optional[Tensor], v_cls: Optional[Tensor]):
    return None if q_cls is None else (q_cls, k_cls, v_cls)


@triton_op(f"{NS}::triton_spatial_fwd", mutates_args=())
def _triton_spatial_fwd(
    q: Tensor, k: Tensor, v: Tensor, q_cls: Optional[Tensor], k_cls: Optional[Tensor], v_cls: Optional[Tensor],
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from .triton.spatial_attn import spatial_attn_fwd

    has_cls = q_cls is not None
    out, cls_out, lse, lse_cls = empty_like_video(q), _cls_out(q, has_cls), _lse(q), _lse_cls(q, has_cls)
    spatial_attn_fwd(q, k, v, _cls_tuple(q_cls, k_cls, v_cls), out, cls_out, lse, lse_cls, scale)
    return out, cls_out, lse, lse_cls


@triton_op(f"{NS}::triton_spatial_bwd", mutates_args=())
def _triton_spatial_bwd(
    dout: Tensor, dcls_out: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
    q_cls: Optional[Tensor], k_cls: Optional[Tensor], v_cls: Optional[Tensor],
    out: Tensor, cls_out: Optional[Tensor], lse: Tensor, lse_cls: Optional[Tensor], scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from .triton.spatial_attn import spatial_attn_bwd

    cls = _cls_tuple(q_cls, k_cls, v_cls)
    dq, dk, dv = empty_like_video(q), empty_like_video(k), empty_like_video(v)
    dcls = tuple(q.new_empty(c.shape if cls is not None else (0,)) for c in (cls or (None,) * 3))
    spatial_attn_bwd(dout, dcls_out, q, k, v, cls, out, cls_out, lse, lse_cls, scale, dq, dk, dv,
                     dcls if cls is not None else None)
    return (dq, dk, dv) + tuple(dcls)


@triton_op(f"{NS}::triton_spatial_qkvpacked_fwd", mutates_args=())
def _triton_spatial_qkvpacked_fwd(
    qkv: Tensor, cls_qkv: Optional[Tensor], scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from .triton.spatial_attn import spatial_attn_fwd

    q, k, v = qkv.unbind(3)
    has_cls = cls_qkv is not None
    out, cls_out, lse, lse_cls = empty_like_video(q), _cls_out(q, has_cls), _lse(q), _lse_cls(q, has_cls)
    spatial_attn_fwd(q, k, v, tuple(cls_qkv.unbind(1)) if has_cls else None, out, cls_out, lse, lse_cls, scale)
    return out, cls_out, lse, lse_cls


@torch.library.custom_op(f"{NS}::triton_spatial_qkvpacked_bwd", mutates_args=())  # opaque: see above
def _triton_spatial_qkvpacked_bwd(
    dout: Tensor, dcls_out: Optional[Tensor], qkv: Tensor, cls_qkv: Optional[Tensor],
    out: Tensor, cls_out: Optional[Tensor], lse: Tensor, lse_cls: Optional[Tensor], scale: float,
) -> tuple[Tensor, Tensor]:
    from .triton.spatial_attn import spatial_attn_bwd

    has_cls = cls_qkv is not None
    dqkv = empty_like_packed(qkv)
    dcls_qkv = empty_like_packed(cls_qkv) if has_cls else qkv.new_empty((0,))
    with _direct_launches():
        spatial_attn_bwd(dout, dcls_out, *qkv.unbind(3), tuple(cls_qkv.unbind(1)) if has_cls else None, out,
                         cls_out, lse, lse_cls, scale, *dqkv.unbind(3), tuple(dcls_qkv.unbind(1)) if has_cls else None)
    return dqkv, dcls_qkv


@_triton_temporal_qkvpacked_bwd.register_fake
def _(dout, qkv, out, lse, frame_lens, causal, scale):
    return empty_like_packed(qkv)


@_triton_spatial_qkvpacked_bwd.register_fake
def _(dout, dcls_out, qkv, cls_qkv, out, cls_out, lse, lse_cls, scale):
    return empty_like_packed(qkv), (empty_like_packed(cls_qkv) if cls_qkv is not None else qkv.new_empty((0,)))


@triton_op(f"{NS}::triton_joint_fwd", mutates_args=())
def _triton_joint_fwd(
    q: Tensor, k: Tensor, v: Tensor, frame_lens: Optional[Tensor], causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    from .triton.joint_attn import joint_attn_fwd

    out, lse = empty_like_video(q), _lse(q)
    joint_attn_fwd(q, k, v, out, lse, frame_lens, causal, scale)
    return out, lse


@triton_op(f"{NS}::triton_joint_bwd", mutates_args=())
def _triton_joint_bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    frame_lens: Optional[Tensor], causal: bool, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    from .triton.joint_attn import joint_attn_bwd

    dq, dk, dv = empty_like_video(q), empty_like_video(k), empty_like_video(v)
    joint_attn_bwd(dout, q, k, v, out, lse, frame_lens, causal, scale, dq, dk, dv)
    return dq, dk, dv


@triton_op(f"{NS}::triton_factorized_fwd", mutates_args=())
def _triton_factorized_fwd(
    q: Tensor, k: Tensor, v: Tensor, temporal_heads: int, causal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    from .triton.factorized_attn import factorized_attn_fwd

    out, lse = empty_like_video(q), _lse(q)
    factorized_attn_fwd(q, k, v, out, lse, temporal_heads, causal, scale)
    return out, lse


@triton_op(f"{NS}::triton_factorized_bwd", mutates_args=())
def _triton_factorized_bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    temporal_heads: int, causal: bool, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    from .triton.factorized_attn import factorized_attn_bwd

    dq, dk, dv = empty_like_video(q), empty_like_video(k), empty_like_video(v)
    factorized_attn_bwd(dout, q, k, v, out, lse, temporal_heads, causal, scale, dq, dk, dv)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# autograd, shared by the backends: ``bwd`` is the backend's matching backward op


def _wire_temporal_like(fwd, bwd) -> None:
    """Autograd of ``(q, k, v, <static>...) -> (out, lse)`` ops (temporal, joint, factorized)."""

    def setup_context(ctx, inputs, output):
        q, k, v, *static = inputs
        out, lse = output
        ctx.static = static
        tensors = [s for s in static if isinstance(s, Tensor)]
        ctx.save_for_backward(q, k, v, out, lse, *tensors)

    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, *tensors = ctx.saved_tensors
        it = iter(tensors)
        static = [next(it) if isinstance(s, Tensor) else s for s in ctx.static]
        dq, dk, dv = bwd(_unit_last(dout), q, k, v, out, lse, *static)
        return (dq, dk, dv) + (None,) * len(static)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _wire_temporal_packed(fwd, bwd) -> None:
    def setup_context(ctx, inputs, output):
        qkv, *static = inputs
        out, lse = output
        ctx.static = static
        tensors = [s for s in static if isinstance(s, Tensor)]
        ctx.save_for_backward(qkv, out, lse, *tensors)

    def backward(ctx, dout, _dlse):
        qkv, out, lse, *tensors = ctx.saved_tensors
        it = iter(tensors)
        static = [next(it) if isinstance(s, Tensor) else s for s in ctx.static]
        return (bwd(_unit_last(dout), qkv, out, lse, *static),) + (None,) * len(static)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _wire_spatial(fwd, bwd) -> None:
    """Autograd of ``(q, k, v, q_cls?, k_cls?, v_cls?, scale) -> (out, cls_out, lse, lse_cls)``."""

    def setup_context(ctx, inputs, output):
        q, k, v, q_cls, k_cls, v_cls, scale = inputs
        out, cls_out, lse, lse_cls = output
        ctx.scale = scale
        ctx.has_cls = q_cls is not None
        cls = (q_cls, k_cls, v_cls, cls_out, lse_cls) if ctx.has_cls else ()
        ctx.save_for_backward(q, k, v, out, lse, *cls)

    def backward(ctx, dout, dcls_out, _dlse, _dlse_cls):
        q, k, v, out, lse, *cls = ctx.saved_tensors
        if ctx.has_cls:
            q_cls, k_cls, v_cls, cls_out, lse_cls = cls
            dcls_out = _unit_last(dcls_out)
        else:
            q_cls = k_cls = v_cls = cls_out = lse_cls = dcls_out = None
        dq, dk, dv, dq_cls, dk_cls, dv_cls = bwd(
            _unit_last(dout), dcls_out, q, k, v, q_cls, k_cls, v_cls, out, cls_out, lse, lse_cls, ctx.scale
        )
        if not ctx.has_cls:
            dq_cls = dk_cls = dv_cls = None
        return dq, dk, dv, dq_cls, dk_cls, dv_cls, None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _wire_spatial_packed(fwd, bwd) -> None:
    """Autograd of ``(qkv, cls_qkv?, scale) -> (out, cls_out, lse, lse_cls)``."""

    def setup_context(ctx, inputs, output):
        qkv, cls_qkv, scale = inputs
        out, cls_out, lse, lse_cls = output
        ctx.scale = scale
        ctx.has_cls = cls_qkv is not None
        ctx.save_for_backward(qkv, out, lse, *((cls_qkv, cls_out, lse_cls) if ctx.has_cls else ()))

    def backward(ctx, dout, dcls_out, _dlse, _dlse_cls):
        qkv, out, lse, *cls = ctx.saved_tensors
        if ctx.has_cls:
            cls_qkv, cls_out, lse_cls = cls
            dcls_out = _unit_last(dcls_out)
        else:
            cls_qkv = cls_out = lse_cls = dcls_out = None
        dqkv, dcls_qkv = bwd(_unit_last(dout), dcls_out, qkv, cls_qkv, out, cls_out, lse, lse_cls, ctx.scale)
        return dqkv, (dcls_qkv if ctx.has_cls else None), None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _wire_backend(prefix: str, ops_namespace) -> None:
    """Register autograd for every op pair of backend ``prefix`` that exists."""
    for op, wire in (
        ("temporal", _wire_temporal_like),
        ("temporal_qkvpacked", _wire_temporal_packed),
        ("joint", _wire_temporal_like),
        ("factorized", _wire_temporal_like),
        ("spatial", _wire_spatial),
        ("spatial_qkvpacked", _wire_spatial_packed),
    ):
        fwd = getattr(ops_namespace, f"{prefix}_{op}_fwd", None)
        bwd = getattr(ops_namespace, f"{prefix}_{op}_bwd", None)
        if fwd is not None and bwd is not None:
            wire(fwd.default, bwd.default)


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.temporal_kernels, name)


# ---------------------------------------------------------------------------------------------
# backend entries: the callables ``functional.py`` dispatches to (validated arguments)


def _make_backend_ops(prefix: str) -> dict[str, Callable]:
    ns = torch.ops.temporal_kernels
    entries: dict[str, Callable] = {}

    if _has_op(f"{prefix}_temporal_fwd"):

        def temporal_attention(q, k, v, *, causal, frame_lens, scale):
            _check_head_dim(prefix, q.shape[-1])
            q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
            return getattr(ns, f"{prefix}_temporal_fwd")(q, k, v, frame_lens, causal, scale)[0]

        def temporal_attention_qkvpacked(qkv, *, causal, frame_lens, scale):
            _check_head_dim(prefix, qkv.shape[-1])
            return getattr(ns, f"{prefix}_temporal_qkvpacked_fwd")(_unit_last(qkv), frame_lens, causal, scale)[0]

        entries["temporal_attention"] = temporal_attention
        entries["temporal_attention_qkvpacked"] = temporal_attention_qkvpacked

    if _has_op(f"{prefix}_spatial_fwd"):

        def spatial_attention(q, k, v, *, cls, scale):
            _check_head_dim(prefix, q.shape[-1])
            q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
            q_cls, k_cls, v_cls = (None,) * 3 if cls is None else (_unit_last(c) for c in cls)
            out, cls_out, _, _ = getattr(ns, f"{prefix}_spatial_fwd")(q, k, v, q_cls, k_cls, v_cls, scale)
            return out if cls is None else (out, cls_out)

        def spatial_attention_qkvpacked(qkv, *, cls_qkv, scale):
            _check_head_dim(prefix, qkv.shape[-1])
            out, cls_out, _, _ = getattr(ns, f"{prefix}_spatial_qkvpacked_fwd")(
                _unit_last(qkv), _unit_last(cls_qkv), scale
            )
            return out if cls_qkv is None else (out, cls_out)

        entries["spatial_attention"] = spatial_attention
        entries["spatial_attention_qkvpacked"] = spatial_attention_qkvpacked

    if _has_op(f"{prefix}_joint_fwd"):

        def joint_attention(q, k, v, *, causal, frame_lens, scale):
            _check_head_dim(prefix, q.shape[-1])
            q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
            return getattr(ns, f"{prefix}_joint_fwd")(q, k, v, frame_lens, causal, scale)[0]

        entries["joint_attention"] = joint_attention

    if _has_op(f"{prefix}_factorized_fwd"):

        def factorized_attention(q, k, v, *, temporal_heads, causal, scale):
            _check_head_dim(prefix, q.shape[-1])
            q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
            return getattr(ns, f"{prefix}_factorized_fwd")(q, k, v, temporal_heads, causal, scale)[0]

        entries["factorized_attention"] = factorized_attention

    return entries


_wire_backend("triton", torch.ops.temporal_kernels)
TRITON_OPS: dict[str, Callable] = _make_backend_ops("triton")


# ---------------------------------------------------------------------------------------------
# CUDA backend: the compiled extension ``_C`` (csrc/ops.cpp) defines the ``cuda_*`` op schemas and
# their CUDA kernels when it loads. Their fake (meta) implementations allocate with the same
# helpers as the Triton bodies above, so fake and real outputs agree exactly (shapes, strides,
# dtypes) and torch.compile can trace the ops; autograd is the shared ``_wire_backend``.


def _register_cuda_fakes() -> None:
    def fake(name: str):
        return torch.library.register_fake(f"{NS}::{name}")

    @fake("cuda_temporal_fwd")
    def _(q, k, v, frame_lens, causal, scale):
        return empty_like_video(q), _lse(q)

    @fake("cuda_temporal_bwd")
    def _(dout, q, k, v, out, lse, frame_lens, causal, scale):
        return empty_like_video(q), empty_like_video(k), empty_like_video(v)

    @fake("cuda_temporal_qkvpacked_fwd")
    def _(qkv, frame_lens, causal, scale):
        q = qkv.select(3, 0)
        return empty_like_video(q), _lse(q)

    @fake("cuda_temporal_qkvpacked_bwd")
    def _(dout, qkv, out, lse, frame_lens, causal, scale):
        return empty_like_packed(qkv)

    @fake("cuda_spatial_fwd")
    def _(q, k, v, q_cls, k_cls, v_cls, scale):
        has_cls = q_cls is not None
        return empty_like_video(q), _cls_out(q, has_cls), _lse(q), _lse_cls(q, has_cls)

    @fake("cuda_spatial_bwd")
    def _(dout, dcls_out, q, k, v, q_cls, k_cls, v_cls, out, cls_out, lse, lse_cls, scale):
        cls = _cls_tuple(q_cls, k_cls, v_cls)
        dcls = tuple(q.new_empty(c.shape if cls is not None else (0,)) for c in (cls or (None,) * 3))
        return (empty_like_video(q), empty_like_video(k), empty_like_video(v)) + dcls

    @fake("cuda_spatial_qkvpacked_fwd")
    def _(qkv, cls_qkv, scale):
        q = qkv.select(3, 0)
        has_cls = cls_qkv is not None
        return empty_like_video(q), _cls_out(q, has_cls), _lse(q), _lse_cls(q, has_cls)

    @fake("cuda_spatial_qkvpacked_bwd")
    def _(dout, dcls_out, qkv, cls_qkv, out, cls_out, lse, lse_cls, scale):
        return empty_like_packed(qkv), (empty_like_packed(cls_qkv) if cls_qkv is not None else qkv.new_empty((0,)))

    @fake("cuda_joint_fwd")
    def _(q, k, v, frame_lens, causal, scale):
        return empty_like_video(q), _lse(q)

    @fake("cuda_joint_bwd")
    def _(dout, q, k, v, out, lse, frame_lens, causal, scale):
        return empty_like_video(q), empty_like_video(k), empty_like_video(v)


def _cuda_ops() -> dict[str, Callable]:
    from . import _extension

    if not _extension.available():
        return {}
    _register_cuda_fakes()
    _wire_backend("cuda", torch.ops.temporal_kernels)
    return _make_backend_ops("cuda")


CUDA_OPS: dict[str, Callable] = _cuda_ops()
