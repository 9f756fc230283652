"""Drop-in modules on the fused kernels (SPEC §4).

Every module here keeps the parameter names of the model it replaces, so the original
``state_dict`` loads unchanged, and feeds the kernels zero-copy: the packed projection output is
viewed as ``[B, T, N, 3, H, D]`` (frame-major) or as TimeSformer's patch-major ``(n t)`` token
order, the ``*_qkvpacked`` ops read those strides directly, and their output (dense, in ``q``'s
axis memory order) reshapes back to the token sequence as a view for the output projection.

- ``TemporalAttention`` / ``SpatialAttention``: attention across frames / within frames of
  ``x [B, T, N, C]`` (any strides: a patch-major view costs no copy either).
- ``DividedSpaceTimeBlock``: TimeSformer's ``Block(attention_type='divided_space_time')``.
- ``TemporalTransformer``: the seed's post-norm temporal block over ``x [T, B, D]``.
- ``MiniSpaceTimeTransformer``: the seed's toy spatial-then-temporal model, fixed (see its docstring).

``backend`` is passed to the functional API (``"cuda"``, ``"triton"``, ``"reference"`` or None).
With None the functional API picks the kernel backend per call, the one measured faster for the
op and shape; the reference runs on CPU and for head dims the kernels do not support (``D > 256``).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _backends, _lean
from . import functional as _tkf
from ._layout import axis_order

__all__ = [
    "TemporalAttention",
    "SpatialAttention",
    "DividedSpaceTimeBlock",
    "TemporalTransformer",
    "MiniSpaceTimeTransformer",
    "DropPath",
    "Mlp",
    "divided_space_time",
]

_TEMPORAL = ("temporal_attention_qkvpacked",)
_SPATIAL = ("spatial_attention_qkvpacked",)
_DIVIDED = _TEMPORAL + _SPATIAL


# ---------------------------------------------------------------------------------------------
# backend choice shared with convert.py


def _kernel_backend(ops: tuple[str, ...], device_type: str, head_dim: int) -> Optional[str]:
    """The first kernel backend, in the order of preference of ``_backends.BACKEND_NAMES``,
    implementing all ``ops`` for CUDA tensors of this head dim, or None. CPU tensors never get
    one implicitly (SPEC §2)."""
    if device_type != "cuda":
        return None
    from .ops import MAX_HEAD_DIM

    if head_dim > MAX_HEAD_DIM:
        return None
    device = torch.device(device_type)
    for name in _backends.BACKEND_NAMES:
        if name != "reference" and _backends._unavailable_reason(name, device) is None and all(op in _backends._ops_of(name) for op in ops):
            return name
    return None


def _module_backend(backend: Optional[str], ops: tuple[str, ...], x: Tensor, head_dim: int) -> Optional[str]:
    """What a drop-in module passes as ``backend``: its own setting, else the environment
    variable (left to the functional API), else None where a kernel backend serves (the
    functional API then picks one per op and shape), else the reference."""
    if backend is not None or os.environ.get(_backends.ENV_VAR):
        return backend
    return None if _kernel_backend(ops, x.device.type, head_dim) else "reference"


# ---------------------------------------------------------------------------------------------
# zero-copy helpers


def _linear_in_memory_order(linear: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``linear(x)`` for ``x [..., C]`` with the leading axes in any memory order.

    A permuted view of a dense tensor (e.g. TimeSformer's patch-major tokens seen as
    ``[B, T, N, C]``) is projected in its memory order, where it is dense, so no copy is made; the
    result is returned with ``x``'s logical axes and the same memory order.
    """
    if x.dim() < 2 or x.stride(-1) != 1:
        return linear(x)
    lead = axis_order(x.stride()[:-1])
    last = x.dim() - 1
    dense = x.permute(*lead, last)
    if not dense.is_contiguous():
        return linear(x)
    y = linear(dense)
    inverse = [0] * len(lead)
    for pos, axis in enumerate(lead):
        inverse[axis] = pos
    return y.permute(*inverse, last)


def _drop_path_scale(drop_path: nn.Module, groups: int, like: Tensor) -> Optional[Tensor]:
    """``[groups, 1, 1]`` factors that ``drop_path`` would apply to a batch of ``groups`` samples.

    Running the module itself on ones keeps its semantics and its random draws (one per sample,
    as in TimeSformer and timm), while the activations stay in whatever layout they are in.
    None when the module is a no-op.
    """
    if isinstance(drop_path, nn.Identity) or not drop_path.training:
        return None
    if getattr(drop_path, "drop_prob", None) == 0:
        return None
    return drop_path(like.new_ones(groups, 1, 1))


def _check_video(name: str, x, dim: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[-1] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a [B, T, N, C={dim}] tensor, got {got}")


def _split_heads(dim: int, num_heads: int) -> int:
    if num_heads <= 0 or dim % num_heads != 0:
        raise ValueError(f"num_heads: expected a positive divisor of dim={dim}, got {num_heads}")
    return dim // num_heads


# ---------------------------------------------------------------------------------------------
# attention layers on x [B, T, N, C]


class TemporalAttention(nn.Module):
    """Multi-head attention across the T frames of every patch of ``x [B, T, N, C]``.

    Parameters: ``qkv`` (``Linear(dim, 3 * dim)``, output features ordered ``[3][heads][head_dim]``
    like TimeSformer's ``Attention.qkv``) and ``proj`` (``Linear(dim, dim)``).

    ``forward(x, frame_lens=None) -> [B, T, N, C]``; ``frame_lens`` (int ``[B]``) marks frames
    ``t >= frame_lens[b]`` as padding (never keys, zero attention output). ``x`` may be any
    view, e.g. patch-major tokens ``tokens.view(B, N, T, C).transpose(1, 2)``: the projections run
    in its memory order and the output has the same layout, without copies.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, causal: bool = False, backend: Optional[str] = None
    ):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = _split_heads(dim, num_heads)
        self.causal = causal
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, frame_lens: Optional[Tensor] = None) -> Tensor:
        _check_video("x", x, self.dim)
        qkv = _linear_in_memory_order(self.qkv, x).unflatten(-1, (3, self.num_heads, self.head_dim))
        out = _tkf.temporal_attention_qkvpacked(
            qkv,
            causal=self.causal,
            frame_lens=frame_lens,
            backend=_module_backend(self.backend, _TEMPORAL, x, self.head_dim),
        )
        return _linear_in_memory_order(self.proj, out.flatten(-2))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}, backend={self.backend!r}"


class SpatialAttention(nn.Module):
    """Multi-head attention among the N patches of every frame of ``x [B, T, N, C]``.

    Parameters as ``TemporalAttention`` (``qkv``, ``proj``).

    ``forward(x, cls=None)``: without ``cls`` returns ``[B, T, N, C]``. With TimeSformer's CLS
    token ``cls [B, C]``, every frame's keys are ``{cls} ∪ {its patches}`` and the result is
    ``(out, cls_out)``: ``cls_out [B, C]`` is the CLS query's projected output averaged over the
    T frames (TimeSformer's ``mean`` after the projection). The CLS q/k/v are projected once, not
    once per frame.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: Optional[str] = None):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = _split_heads(dim, num_heads)
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cls: Optional[Tensor] = None):
        _check_video("x", x, self.dim)
        B, T = x.shape[:2]
        qkv = _linear_in_memory_order(self.qkv, x).unflatten(-1, (3, self.num_heads, self.head_dim))
        backend = _module_backend(self.backend, _SPATIAL, x, self.head_dim)
        if cls is None:
            out = _tkf.spatial_attention_qkvpacked(qkv, backend=backend)
            return _linear_in_memory_order(self.proj, out.flatten(-2))
        if not isinstance(cls, Tensor) or tuple(cls.shape) != (B, self.dim):
            got = tuple(cls.shape) if isinstance(cls, Tensor) else type(cls).__name__
            raise ValueError(f"cls: expected a [B={B}, C={self.dim}] tensor, got {got}")
        cls_qkv = self.qkv(cls).view(B, 3, self.num_heads, self.head_dim)
        out, cls_out = _tkf.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend=backend)
        cls_out = self.proj(cls_out.flatten(-2)).mean(1)  # [B, T, C] -> [B, C]
        return _linear_in_memory_order(self.proj, out.flatten(-2)), cls_out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend!r}"


# ---------------------------------------------------------------------------------------------
# TimeSformer's divided space-time block


class DropPath(nn.Module):
    """Stochastic depth per sample (dim 0), as in TimeSformer/timm: identity in eval or at p=0."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device))
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2`` (TimeSformer's ``Mlp`` without dropout)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def divided_space_time(
    x: Tensor,
    T: int,
    *,
    temporal_heads: int,
    temporal_norm: Callable[[Tensor], Tensor],
    temporal_qkv: Callable[[Tensor], Tensor],
    temporal_out: Callable[[Tensor], Tensor],
    temporal_fc: Callable[[Tensor], Tensor],
    heads: int,
    norm: Callable[[Tensor], Tensor],
    qkv: Callable[[Tensor], Tensor],
    out: Callable[[Tensor], Tensor],
    mlp: Callable[[Tensor], Tensor],
    drop_path: nn.Module,
    temporal_scale: Optional[float] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """TimeSformer's divided space-time block on ``x [B, 1 + N*T, C]`` (CLS, then ``(n t)`` tokens).

    The callables are the block's own submodules: ``temporal_out``/``out`` are the attention
    output projections (with their dropout), ``mlp`` is the whole MLP branch including its norm.
    ``drop_path`` is applied per (b, n) to the temporal branch, per (b, t) to the spatial branch
    (CLS included, before averaging over frames) and per b to the MLP branch, as in TimeSformer.

    Data flow: the qkv projections are viewed as ``[B, T, N, 3, H, D]`` over the patch-major
    tokens, the kernels return patch-major outputs, so every reshape here is a view; the CLS
    token's q/k/v are projected once (``[B, 3, H, D]``) and served by the spatial kernel's CLS
    path. The only copy is the final assembly of ``[CLS, patches]`` for the MLP branch.

    Memory: the two norm -> qkv projections (and the MLP, where the caller builds it with
    ``_lean.mlp``) save their input only and recompute the norm in the backward (``_lean``).
    """
    B, L, C = x.shape
    N = (L - 1) // T
    if L != 1 + N * T:
        raise ValueError(f"x: expected [B, 1 + N*T, C] tokens with T={T}, got shape {tuple(x.shape)}")
    Dt, Ds = C // temporal_heads, C // heads

    # Temporal: the norm and projection also run on the CLS row (1 of 1 + N*T rows) so that they
    # read dense memory; the CLS row is then sliced off by a view.
    qkv_t = _lean.norm_linear(temporal_norm, temporal_qkv, x)[:, 1:].view(B, N, T, 3, temporal_heads, Dt).transpose(1, 2)
    o_t = _tkf.temporal_attention_qkvpacked(qkv_t, scale=temporal_scale, backend=backend)  # [B, T, N, H, D]
    r_t = temporal_out(o_t.transpose(1, 2).reshape(B, N * T, C))
    keep = _drop_path_scale(drop_path, B * N, x)
    if keep is not None:
        r_t = (r_t.view(B, N, T, C) * keep.view(B, N, 1, 1)).view(B, N * T, C)
    xt = x[:, 1:] + temporal_fc(r_t)  # [B, N*T, C]

    # Spatial, with the block input's CLS token joining every frame.
    qkv_s = _lean.norm_linear(norm, qkv, xt).view(B, N, T, 3, heads, Ds).transpose(1, 2)
    cls_qkv = qkv(norm(x[:, 0])).view(B, 3, heads, Ds)
    o_s, o_cls = _tkf.spatial_attention_qkvpacked(qkv_s, cls_qkv=cls_qkv, scale=scale, backend=backend)
    r_s = out(o_s.transpose(1, 2).reshape(B, N * T, C))
    r_cls = out(o_cls.reshape(B, T, C))  # projected per frame, averaged below (TimeSformer's order)
    keep = _drop_path_scale(drop_path, B * T, x)
    if keep is not None:
        r_s = (r_s.view(B, N, T, C) * keep.view(B, 1, T, 1)).view(B, N * T, C)
        r_cls = r_cls * keep.view(B, T, 1)

    h = torch.cat((x[:, :1] + r_cls.mean(1, keepdim=True), xt + r_s), dim=1)
    return h + drop_path(mlp(h))


class DividedSpaceTimeBlock(nn.Module):
    """TimeSformer's ``Block`` with ``attention_type='divided_space_time'`` on the fused kernels.

    Same parameter names as the original (``norm1, attn.qkv, attn.proj, temporal_norm1,
    temporal_attn.qkv, temporal_attn.proj, temporal_fc, norm2, mlp.fc1, mlp.fc2``), so its
    ``state_dict`` loads unchanged, and the same ``forward(x, B, T, W)`` with ``x [B, 1 + N*T, C]``
    in TimeSformer's token order (CLS first, then patch-major ``(n t)``). Temporal attention per
    patch (then ``temporal_fc``), spatial attention per frame with the CLS token (its per-frame
    outputs averaged over T after the projection), then the MLP; ``drop_path`` as in TimeSformer.
    Dropout inside the attention/MLP is not part of this block (TimeSformer's defaults are 0).
    """

    attention_type = "divided_space_time"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        backend: Optional[str] = None,
    ):
        super().__init__()
        self.backend = backend
        # Submodules in TimeSformer's order, so one seed gives both blocks the same init.
        self.norm1 = norm_layer(dim)
        self.attn = SpatialAttention(dim, num_heads, qkv_bias=qkv_bias, backend=backend)
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_attn = TemporalAttention(dim, num_heads, qkv_bias=qkv_bias, backend=backend)
        self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, B: int, T: int, W: int) -> Tensor:
        if x.dim() != 3 or x.shape[0] != B or T <= 0 or (x.shape[1] - 1) % T != 0:
            raise ValueError(
                f"x: expected [B={B}, 1 + N*T, C] tokens with T={T}, got shape {tuple(x.shape)}"
            )
        head_dim = max(self.attn.head_dim, self.temporal_attn.head_dim)
        return divided_space_time(
            x,
            T,
            temporal_heads=self.temporal_attn.num_heads,
            temporal_norm=self.temporal_norm1,
            temporal_qkv=self.temporal_attn.qkv,
            temporal_out=self.temporal_attn.proj,
            temporal_fc=self.temporal_fc,
            heads=self.attn.num_heads,
            norm=self.norm1,
            qkv=self.attn.qkv,
            out=self.attn.proj,
            mlp=lambda h: _lean.mlp(
                h, norm=self.norm2, fc1=self.mlp.fc1, act=self.mlp.act, fc2=self.mlp.fc2, dropouts=(),
                plain=lambda u: self.mlp(self.norm2(u)),
            ),
            drop_path=self.drop_path,
            backend=_module_backend(self.backend, _DIVIDED, x, head_dim),
        )


# ---------------------------------------------------------------------------------------------
# the seed's models


def _mha_packed_qkv(mha: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """``x @ in_proj_weight.T + in_proj_bias`` of a ``nn.MultiheadAttention`` (features ``[3][H][D]``)."""
    return F.linear(x, mha.in_proj_weight, mha.in_proj_bias)


def _mha(dim: int, num_heads: int) -> nn.MultiheadAttention:
    """A ``nn.MultiheadAttention`` used only as the holder of the seed's parameters (its names and
    its initialization); its own forward is not called."""
    _split_heads(dim, num_heads)
    return nn.MultiheadAttention(dim, num_heads)


class TemporalTransformer(nn.Module):
    """The seed's temporal block on the temporal kernel: ``x [T, B, D] -> [T, B, D]``.

    ``x = norm1(x + attn(x)); x = norm2(x + ffn(x))`` with self-attention over the T frames of
    every batch element, exactly as the seed's ``nn.MultiheadAttention`` (sequence-first) does.
    Parameter names are the seed's (``attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*,
    ffn.0.*, ffn.2.*, norm1.*, norm2.*``).

    Zero-copy mapping: the projection of ``x [T, B, D]`` is viewed as ``[1, T, B, 3, H, D/H]``,
    i.e. frames on the kernel's T axis and the seed's batch on its N axis; the output
    ``[1, T, B, H, D/H]`` is dense and views back to ``[T, B, D]``.
    """

    def __init__(self, dim: int, num_heads: int, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend
        self.attn = _mha(dim, num_heads)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.attn.embed_dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a [T, B, D={self.attn.embed_dim}] tensor, got {got}")
        T, B, D = x.shape
        H, hd = self.attn.num_heads, self.attn.head_dim
        qkv = _mha_packed_qkv(self.attn, x).view(1, T, B, 3, H, hd)
        o = _tkf.temporal_attention_qkvpacked(qkv, backend=_module_backend(self.backend, _TEMPORAL, x, hd))
        x = self.norm1(x + self.attn.out_proj(o.reshape(T, B, D)))
        return self.norm2(x + self.ffn(x))


class MiniSpaceTimeTransformer(nn.Module):
    """The seed's toy space-time model, as its text describes it: ``x [B, T, N, D] -> [B, T, N, D]``.

    Spatial self-attention among the N patches of every frame (``spatial``), then temporal
    self-attention across the T frames of every patch (``temporal``); both are
    ``nn.MultiheadAttention`` parameter sets (``spatial.in_proj_weight``, ``spatial.out_proj.*``,
    ...), so the seed's ``state_dict`` loads unchanged. No Python loops: one spatial and one
    temporal kernel call on views of the packed projections.

    Difference from the seed's code: the seed feeds ``x[:, t]`` (``[B, N, D]``) to a
    sequence-first ``nn.MultiheadAttention``, which therefore attends over the *batch* axis with
    the patches as its batch (and likewise over the batch for the temporal step). This module
    implements what the text says, i.e. the seed's loops with batch-first attention.
    """

    def __init__(self, dim: int = 3, num_heads: int = 1, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend
        self.spatial = _mha(dim, num_heads)
        self.temporal = _mha(dim, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        _check_video("x", x, self.spatial.embed_dim)
        B, T, N, D = x.shape
        H, hd = self.spatial.num_heads, self.spatial.head_dim
        qkv = _mha_packed_qkv(self.spatial, x).view(B, T, N, 3, H, hd)
        o = _tkf.spatial_attention_qkvpacked(qkv, backend=_module_backend(self.backend, _SPATIAL, x, hd))
        x = self.spatial.out_proj(o.reshape(B, T, N, D))
        H, hd = self.temporal.num_heads, self.temporal.head_dim
        qkv = _mha_packed_qkv(self.temporal, x).view(B, T, N, 3, H, hd)
        o = _tkf.temporal_attention_qkvpacked(qkv, backend=_module_backend(self.backend, _TEMPORAL, x, hd))
        return self.temporal.out_proj(o.reshape(B, T, N, D))
