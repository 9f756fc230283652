"""Public functional API (SPEC §2): validation and backend choice, nothing else.

Layout: ``q, k, v`` are ``[B, T, N, H, D]`` (batch, frames, patches per frame, heads, head dim)
with any strides, e.g. views of one packed projection ``[B, T, N, 3, H, D]`` (frame-major tokens)
or of TimeSformer's patch-major tokens, ``x.view(B, N, T, 3, H, D).permute(0, 2, 1, 3, 4, 5)``.
Outputs are dense with ``q``'s axis memory order, so reshaping them back to the token sequence
they came from is a view. ``scale`` defaults to ``D ** -0.5`` and multiplies the logits.

Every function validates its arguments before any backend runs (SPEC §6) and raises
``TypeError``/``ValueError`` naming the argument, or ``RuntimeError`` for an unavailable backend.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import _backends

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def available_backends() -> list[str]:
    """Backends usable in this process, in order of preference for CUDA tensors.

    Example::

        >>> tk.available_backends()   # on a GPU machine with the extension built
        ['triton', 'cuda', 'reference']
    """
    return _backends.available_backends()


# ---------------------------------------------------------------------------------------------
# validation (SPEC §6), shared by every backend


def _check_tensor(name: str, x, rank: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name}: expected a rank-{rank} tensor {what}, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected dtype float16, bfloat16, float32 or float64, got {x.dtype}"
        )


def _check_like(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor, shape) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (from {ref_name}), got {tuple(x.shape)}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (the device of {ref_name}), got {x.device}")


def _check_qkv(q, k, v) -> None:
    _check_tensor("q", q, 5, "[B, T, N, H, D]")
    for name, x in (("k", k), ("v", v)):
        _check_tensor(name, x, 5, "[B, T, N, H, D]")
        _check_like(name, x, "q", q, q.shape)


def _check_packed(name: str, qkv) -> None:
    _check_tensor(name, qkv, 6, "[B, T, N, 3, H, D]")
    if qkv.shape[3] != 3:
        raise ValueError(f"{name}: expected shape [B, T, N, 3, H, D] with 3 at dim 3, got {tuple(qkv.shape)}")


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")


def _resolve_scale(scale, head_dim: int) -> float:
    if scale is None:
        return head_dim ** -0.5 if head_dim > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a real number or None, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale!r}")
    return float(scale)


def _check_frame_lens(frame_lens, q: torch.Tensor) -> None:
    if frame_lens is None:
        return
    B, T = q.shape[0], q.shape[1]
    if not isinstance(frame_lens, torch.Tensor):
        raise TypeError(f"frame_lens: expected an integer torch.Tensor of shape [{B}] or None, got {type(frame_lens).__name__}")
    if frame_lens.dtype.is_floating_point or frame_lens.dtype.is_complex or frame_lens.dtype == torch.bool:
        raise TypeError(f"frame_lens: expected an integer dtype (int32 or int64), got {frame_lens.dtype}")
    if tuple(frame_lens.shape) != (B,):
        raise ValueError(f"frame_lens: expected shape [{B}] (the batch size of q), got {tuple(frame_lens.shape)}")
    if frame_lens.device != q.device:
        raise ValueError(f"frame_lens: expected device {q.device} (the device of q), got {frame_lens.device}")
    # Checking the values reads them back (a device sync); a compiled graph skips it.
    if B > 0 and not torch.compiler.is_compiling():
        lo, hi = int(frame_lens.min()), int(frame_lens.max())
        if lo < 0 or hi > T:
            raise ValueError(f"frame_lens: expected values in [0, T={T}], got values in [{lo}, {hi}]")


def _check_cls(cls, q: torch.Tensor) -> None:
    if cls is None:
        return
    if not isinstance(cls, (tuple, list)) or len(cls) != 3:
        given = f"a {type(cls).__name__} of length {len(cls)}" if isinstance(cls, (tuple, list)) else type(cls).__name__
        raise TypeError(f"cls: expected a tuple (q_cls, k_cls, v_cls) of [B, H, D] tensors or None, got {given}")
    B, _, _, H, D = q.shape
    for name, c in zip(("cls[0] (q_cls)", "cls[1] (k_cls)", "cls[2] (v_cls)"), cls):
        _check_tensor(name, c, 3, "[B, H, D]")
        _check_like(name, c, "q", q, (B, H, D))


def _select(op: str, backend, tensors: tuple, *, causal: bool = False, has_cls: bool = False):
    """``tensors``: the validated inputs, ``q`` (or ``qkv``) first; with ``causal`` and ``has_cls``
    they are what ``backend=None`` chooses by on CUDA tensors."""
    first = tensors[0]
    impl = _backends.select(op, backend, first.device, tensors, causal=causal, has_cls=has_cls)
    # Empty inputs produce empty outputs without launching anything; the reference does that.
    return _backends.select(op, "reference", first.device) if first.numel() == 0 else impl


# ---------------------------------------------------------------------------------------------
# public functions


def temporal_attention(q, k, v, *, causal=False, frame_lens=None, scale=None, backend=None):
    """Attention across frames for every patch (TimeSformer's time attention).

    For every ``(b, n, h)``:
    ``out[b, t, n, h] = softmax_t'(scale * q[b, t, n, h] · k[b, t', n, h] + mask) @ v[b, :, n, h]``.

    Args:
        q, k, v: ``[B, T, N, H, D]``, same shape, dtype (float16/bfloat16/float32/float64) and
            device, any strides.
        causal: key frame ``t'`` is visible to query frame ``t`` only if ``t' <= t``.
        frame_lens: int tensor ``[B]`` with ``0 <= frame_lens[b] <= T``, on q's device; frames
            ``t >= frame_lens[b]`` are padding: never keys, their outputs (and gradients) are 0.
        scale: multiplies the logits; default ``D ** -0.5``.
        backend: ``"cuda"``, ``"triton"``, ``"reference"`` or None (on CUDA tensors the kernel
            backend measured faster for this op and shape, see ``_choice``; on CPU the reference;
            ``TEMPORAL_KERNELS_BACKEND`` overrides).

    Returns:
        ``[B, T, N, H, D]``, dense, in q's axis memory order.

    Example::

        >>> qkv = proj(x).view(B, T, N, 3, H, D)          # x: [B, T, N, C]
        >>> out = tk.temporal_attention(*qkv.unbind(3), causal=True)
        >>> out.reshape(B, T, N, H * D)                   # a view
    """
    _check_qkv(q, k, v)
    _check_flag("causal", causal)
    _check_frame_lens(frame_lens, q)
    scale = _resolve_scale(scale, q.shape[-1])
    impl = _select("temporal_attention", backend, (q, k, v), causal=causal)
    return impl(q, k, v, causal=causal, frame_lens=frame_lens, scale=scale)


def temporal_attention_qkvpacked(qkv, *, causal=False, frame_lens=None, scale=None, backend=None):
    """``temporal_attention`` on a packed ``qkv`` ``[B, T, N, 3, H, D]`` (any strides).

    The gradient reaches ``qkv`` as one packed tensor. Same keyword arguments and result as
    ``temporal_attention(*qkv.unbind(3), ...)``.
    """
    _check_packed("qkv", qkv)
    _check_flag("causal", causal)
    q = qkv.select(3, 0)
    _check_frame_lens(frame_lens, q)
    scale = _resolve_scale(scale, qkv.shape[-1])
    impl = _select("temporal_attention_qkvpacked", backend, (qkv,), causal=causal)
    return impl(qkv, causal=causal, frame_lens=frame_lens, scale=scale)


def spatial_attention(q, k, v, *, cls=None, scale=None, backend=None):
    """Attention within each frame, optionally with TimeSformer's CLS token.

    For every ``(b, t, h)``, the N patch queries of frame t attend over its N patches. With
    ``cls=(q_cls, k_cls, v_cls)``, each ``[B, H, D]``, every frame's key/value set is
    ``{cls} ∪ {its N patches}``: patch queries attend over those N+1 keys, and the CLS query
    attends over them once per frame (no repeat/cat of the CLS token is materialized).

    Args:
        q, k, v: ``[B, T, N, H, D]``, same shape, dtype and device, any strides.
        cls: None or a tuple of three ``[B, H, D]`` tensors of q's dtype and device.
        scale, backend: as in ``temporal_attention``.

    Returns:
        ``out`` ``[B, T, N, H, D]``; with ``cls``, ``(out, cls_out)`` where ``cls_out`` is
        ``[B, T, H, D]`` (the CLS query's output per frame; TimeSformer averages it over T).

    Example::

        >>> out, cls_out = tk.spatial_attention(q, k, v, cls=(q_cls, k_cls, v_cls))
    """
    _check_qkv(q, k, v)
    _check_cls(cls, q)
    scale = _resolve_scale(scale, q.shape[-1])
    impl = _select("spatial_attention", backend, (q, k, v) + tuple(cls or ()), has_cls=cls is not None)
    return impl(q, k, v, cls=None if cls is None else tuple(cls), scale=scale)


def spatial_attention_qkvpacked(qkv, *, cls_qkv=None, scale=None, backend=None):
    """``spatial_attention`` on a packed ``qkv`` ``[B, T, N, 3, H, D]``; ``cls_qkv`` is ``[B, 3, H, D]``.

    Gradients reach ``qkv`` (and ``cls_qkv``) as packed tensors.
    """
    _check_packed("qkv", qkv)
    if cls_qkv is not None:
        B, _, _, _, H, D = qkv.shape
        _check_tensor("cls_qkv", cls_qkv, 4, "[B, 3, H, D]")
        _check_like("cls_qkv", cls_qkv, "qkv", qkv, (B, 3, H, D))
    scale = _resolve_scale(scale, qkv.shape[-1])
    inputs = (qkv,) if cls_qkv is None else (qkv, cls_qkv)
    impl = _select("spatial_attention_qkvpacked", backend, inputs, has_cls=cls_qkv is not None)
    return impl(qkv, cls_qkv=cls_qkv, scale=scale)


def joint_attention(q, k, v, *, causal=False, frame_lens=None, scale=None, backend=None):
    """Joint space-time attention over all ``T*N`` tokens of every ``(b, h)``.

    ``causal=True`` is frame-causal (block-causal): token ``(t, n)`` sees ``(t', n')`` iff
    ``t' <= t``. ``frame_lens`` as in ``temporal_attention`` (padded frames are never keys and
    their outputs are 0).

    Example::

        >>> out = tk.joint_attention(q, k, v, causal=True)   # [B, T, N, H, D]
    """
    _check_qkv(q, k, v)
    _check_flag("causal", causal)
    _check_frame_lens(frame_lens, q)
    scale = _resolve_scale(scale, q.shape[-1])
    impl = _select("joint_attention", backend, (q, k, v), causal=causal)
    return impl(q, k, v, causal=causal, frame_lens=frame_lens, scale=scale)


def factorized_attention(q, k, v, *, temporal_heads, causal=False, scale=None, backend=None):
    """ViViT model 4 ("factorized dot-product attention") in one call.

    Heads ``[0, temporal_heads)`` attend over T (``causal`` applies), the other heads over N;
    the output holds all heads in place: ``[B, T, N, H, D]``.

    Example::

        >>> out = tk.factorized_attention(q, k, v, temporal_heads=H // 2)
    """
    _check_qkv(q, k, v)
    H = q.shape[3]
    if isinstance(temporal_heads, bool) or not isinstance(temporal_heads, numbers.Integral):
        raise TypeError(f"temporal_heads: expected an int in [0, H={H}], got {type(temporal_heads).__name__} {temporal_heads!r}")
    if not 0 <= temporal_heads <= H:
        raise ValueError(f"temporal_heads: expected an int in [0, H={H}], got {temporal_heads}")
    _check_flag("causal", causal)
    scale = _resolve_scale(scale, q.shape[-1])
    impl = _select("factorized_attention", backend, (q, k, v), causal=causal)
    return impl(q, k, v, temporal_heads=int(temporal_heads), causal=causal, scale=scale)
