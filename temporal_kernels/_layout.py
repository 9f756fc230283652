"""Memory-layout helpers shared by every backend.

The output of every op is dense, with the axes laid out in memory in the same order as ``q``'s
(SPEC §1): if ``q`` is a patch-major view (N outer to T), so is the output, and reshaping it back
to the token sequence it came from is a view.
"""

from __future__ import annotations

from typing import Sequence

import torch

# Per-axis stride convention shared by the Triton and CUDA launchers: (b, t, n, h, d).
VIDEO_AXES = ("b", "t", "n", "h", "d")


def axis_order(strides: Sequence[int]) -> list[int]:
    """Axes sorted from outermost to innermost in memory (ties keep the logical order).

    A size-1 axis may sit anywhere: its position changes no address, so it cannot break the
    "reshape back is a view" property. An expanded (stride-0) axis has no place in memory; it goes
    outermost, so the other axes keep their order and the head dim stays innermost (a stride-0
    axis sorted by stride would land inside it).
    """
    return sorted(range(len(strides)), key=lambda i: (strides[i] != 0, -strides[i]))


def empty_in_order_of(
    like: torch.Tensor,
    sizes: Sequence[int],
    order: Sequence[int],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A dense tensor of logical shape ``sizes`` whose axes lie in memory in ``order``."""
    physical = [sizes[i] for i in order]
    buf = torch.empty(physical, dtype=dtype or like.dtype, device=like.device)
    inverse = [0] * len(order)
    for pos, axis in enumerate(order):
        inverse[axis] = pos
    return buf.permute(inverse)


def empty_like_video(q: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense ``[B, T, N, H, D]`` output following ``q``'s axis memory order."""
    return empty_in_order_of(q, q.shape, axis_order(q.stride()), dtype)


def empty_like_cls_out(q: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense ``[B, T, H, D]`` per-frame CLS output, its axes in the order of q's (b, t, h, d)."""
    order5 = axis_order(q.stride())
    order4 = [{0: 0, 1: 1, 3: 2, 4: 3}[a] for a in order5 if a != 2]
    B, T, _, H, D = q.shape
    return empty_in_order_of(q, (B, T, H, D), order4, dtype)


def empty_like_packed(qkv: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense buffer shaped like a packed ``qkv`` (any rank) following its axis memory order."""
    return empty_in_order_of(qkv, qkv.shape, axis_order(qkv.stride()), dtype)
