"""Pure-PyTorch reference: the single oracle of tests and benchmarks.

Every function here takes validated arguments (see ``functional.py``) in the video layout
``[B, T, N, H, D]`` with any strides and implements the semantics of SPEC §2 literally, with plain
PyTorch autograd. It copies freely (it is not the fast path). Low-precision inputs are computed
with fp32 logits and softmax; float64 inputs are computed in float64. Outputs follow ``q``'s axis
memory order (SPEC §1), like every backend.
"""

from __future__ import annotations

import torch

from ._layout import empty_like_cls_out, empty_like_video


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    visible: torch.Tensor | None = None,
    query_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked softmax attention ``[..., Lq, D] x [..., Lk, D] -> [..., Lq, D]`` in compute precision.

    ``visible`` (bool, broadcast to ``[..., Lq, Lk]``) marks the keys a query may see; a row that
    sees no key outputs 0. ``query_valid`` (bool, broadcast to ``[..., Lq, 1]``) zeroes padded
    query rows. Never produces NaN for finite inputs, in the forward or the backward pass.
    """
    cdtype = _compute_dtype(q.dtype)
    q, k, v = q.to(cdtype), k.to(cdtype), v.to(cdtype)
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return torch.zeros(
            torch.broadcast_shapes(q.shape[:-2], v.shape[:-2]) + (q.shape[-2], v.shape[-1]),
            dtype=cdtype,
            device=q.device,
        ) + 0 * (q.sum() + k.sum() + v.sum())
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if visible is not None:
        logits = logits.masked_fill(~visible, float("-inf"))
    # Softmax is shift-invariant, so the shift carries no gradient; a row with no visible key
    # gets shift 0, all-zero weights, and a zero output.
    row_max = logits.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(logits - row_max)
    row_sum = weights.sum(dim=-1, keepdim=True)
    out = torch.matmul(weights, v) / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
    if query_valid is not None:
        out = out.masked_fill(~query_valid, 0.0)
    return out


def _frame_masks(
    T: int, causal: bool, frame_lens: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Key visibility ``[B|1, T, T]`` and query validity ``[B|1, T, 1]`` over frames."""
    frames = torch.arange(T, device=device)
    visible = None
    query_valid = None
    if causal:
        visible = (frames[None, :] <= frames[:, None])[None]
    if frame_lens is not None:
        lens = frame_lens.to(device=device, dtype=torch.long)
        in_clip = frames[None, :] < lens[:, None]  # [B, T]
        key_ok = in_clip[:, None, :].expand(-1, T, -1)
        visible = key_ok if visible is None else (visible & key_ok)
        query_valid = in_clip[:, :, None]
    return visible, query_valid


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    frame_lens: torch.Tensor | None = None,
    scale: float,
) -> torch.Tensor:
    """Attention over T for every (b, n, h): see ``temporal_kernels.temporal_attention``."""
    T = q.shape[1]
    to_groups = (0, 2, 3, 1, 4)  # [B, N, H, T, D]
    visible, query_valid = _frame_masks(T, causal, frame_lens, q.device)
    if visible is not None:
        visible = visible[:, None, None]  # [B|1, 1, 1, T, T]
    if query_valid is not None:
        query_valid = query_valid[:, None, None]
    o = attend(q.permute(to_groups), k.permute(to_groups), v.permute(to_groups), scale, visible, query_valid)
    out = empty_like_video(q)
    out.copy_(o.permute(0, 3, 1, 2, 4))
    return out


def spatial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cls: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    scale: float,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention over N for every (b, t, h), optionally with a CLS token: see
    ``temporal_kernels.spatial_attention``."""
    B, T, N, H, D = q.shape
    to_groups = (0, 1, 3, 2, 4)  # [B, T, H, N, D]
    qg, kg, vg = q.permute(to_groups), k.permute(to_groups), v.permute(to_groups)
    out = empty_like_video(q)
    if cls is None:
        out.copy_(attend(qg, kg, vg, scale).permute(to_groups))
        return out
    q_cls, k_cls, v_cls = (c[:, None, :, None, :].expand(B, T, H, 1, c.shape[-1]) for c in cls)
    o = attend(
        torch.cat([q_cls, qg], dim=3),
        torch.cat([k_cls, kg], dim=3),
        torch.cat([v_cls, vg], dim=3),
        scale,
    )
    out.copy_(o[:, :, :, 1:].permute(to_groups))
    cls_out = empty_like_cls_out(q)
    cls_out.copy_(o[:, :, :, 0])
    return out, cls_out


def joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    frame_lens: torch.Tensor | None = None,
    scale: float,
) -> torch.Tensor:
    """Attention over all T*N tokens of every (b, h): see ``temporal_kernels.joint_attention``."""
    B, T, N, H, D = q.shape

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2, 4).reshape(B, H, T * N, x.shape[-1])  # [B, H, T*N, D]

    visible, query_valid = _frame_masks(T, causal, frame_lens, q.device)
    if visible is not None:  # frame-level masks, expanded to tokens (frame of token i = i // N)
        visible = visible.repeat_interleave(N, dim=1).repeat_interleave(N, dim=2)[:, None]
    if query_valid is not None:
        query_valid = query_valid.repeat_interleave(N, dim=1)[:, None]
    o = attend(tokens(q), tokens(k), tokens(v), scale, visible, query_valid)
    out = empty_like_video(q)
    out.copy_(o.reshape(B, H, T, N, D).permute(0, 2, 3, 1, 4))
    return out


def factorized_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    temporal_heads: int,
    causal: bool = False,
    scale: float,
) -> torch.Tensor:
    """ViViT model-4 attention: heads ``[0, temporal_heads)`` over T, the rest over N."""
    th = temporal_heads
    out = empty_like_video(q)
    if th > 0:
        out[:, :, :, :th].copy_(
            temporal_attention(q[:, :, :, :th], k[:, :, :, :th], v[:, :, :, :th], causal=causal, scale=scale)
        )
    if th < q.shape[3]:
        out[:, :, :, th:].copy_(spatial_attention(q[:, :, :, th:], k[:, :, :, th:], v[:, :, :, th:], scale=scale))
    if q.shape[3] == 0:  # no heads: an empty result, still connected to the inputs for autograd
        return out + (q.sum() + k.sum() + v.sum()) * 0
    return out
