"""Unit tests of ``temporal_kernels/_layout.py``: outputs follow the source's axis memory order."""

from __future__ import annotations

import itertools

import pytest
import torch

from temporal_kernels._layout import (
    axis_order,
    empty_in_order_of,
    empty_like_cls_out,
    empty_like_packed,
    empty_like_video,
)
from tests.helpers import LAYOUTS, make_qkv, packed_qkv

B, T, N, H, D = 2, 3, 5, 4, 6  # all distinct and > 1, so no stride ties


def _dense_strides(sizes, order):
    """Strides of a dense tensor of logical ``sizes`` whose axes lie in memory in ``order``."""
    strides = [0] * len(sizes)
    step = 1
    for axis in reversed(order):
        strides[axis] = step
        step *= sizes[axis]
    return tuple(strides)


def test_axis_order_basic():
    assert axis_order((60, 20, 4, 1)) == [0, 1, 2, 3]
    assert axis_order((1, 4, 20, 60)) == [3, 2, 1, 0]
    assert axis_order((20, 60, 1, 4)) == [1, 0, 3, 2]


def test_axis_order_ties_keep_logical_order():
    # size-1 axes give equal strides: [B, 1, N, H, D] contiguous
    assert axis_order((30, 30, 6, 3, 1)) == [0, 1, 2, 3, 4]
    assert axis_order((5, 5, 5)) == [0, 1, 2]


@pytest.mark.parametrize("perm", list(itertools.permutations(range(5)))[::7], ids=lambda p: "".join(map(str, p)))
def test_axis_order_of_permuted_dense(perm):
    """A dense tensor stored as ``perm`` (outer to inner) reports that order."""
    sizes = (B, T, N, H, D)
    x = torch.empty([sizes[a] for a in perm]).permute([perm.index(i) for i in range(5)])
    assert x.shape == sizes
    assert axis_order(x.stride()) == list(perm)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(5)))[::5], ids=lambda p: "".join(map(str, p)))
def test_empty_in_order_of(perm):
    like = torch.empty(1, dtype=torch.float64)
    out = empty_in_order_of(like, (B, T, N, H, D), perm)
    assert out.shape == (B, T, N, H, D) and out.dtype == torch.float64 and out.device == like.device
    assert out.stride() == _dense_strides((B, T, N, H, D), perm)
    out16 = empty_in_order_of(like, (B, T, N, H, D), perm, dtype=torch.float16)
    assert out16.dtype == torch.float16 and out16.stride() == out.stride()


@pytest.mark.parametrize("perm", list(itertools.permutations(range(5)))[::11], ids=lambda p: "".join(map(str, p)))
def test_empty_like_video_of_dense_keeps_strides(perm):
    sizes = (B, T, N, H, D)
    q = torch.empty([sizes[a] for a in perm]).permute([perm.index(i) for i in range(5)])
    out = empty_like_video(q)
    assert out.shape == q.shape and out.stride() == q.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_like_video_of_layouts(layout):
    q, _, _ = make_qkv(layout, B, T, N, H, D, device="cpu")
    out = empty_like_video(q)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    if layout == "packed_nt":  # N outer to T, as in q: the token sequence (n t) is a view
        assert out.permute(0, 2, 1, 3, 4).is_contiguous() and not out.is_contiguous()
        tokens = out.permute(0, 2, 1, 3, 4).reshape(B, N * T, H * D)
        assert tokens.data_ptr() == out.data_ptr() and tokens._base is not None
    else:
        assert out.is_contiguous()
    assert empty_like_video(q, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("layout", LAYOUTS + ("heads_major",))
def test_empty_like_cls_out(layout):
    if layout == "heads_major":
        q = torch.empty(B, H, T, N, D).permute(0, 2, 3, 1, 4)
    else:
        q, _, _ = make_qkv(layout, B, T, N, H, D, device="cpu")
    out = empty_like_cls_out(q)
    assert out.shape == (B, T, H, D) and out.dtype == q.dtype
    order5 = [a for a in axis_order(q.stride()) if a != 2]  # q's order without the N axis
    order4 = [{0: 0, 1: 1, 3: 2, 4: 3}[a] for a in order5]
    assert axis_order(out.stride()) == order4
    assert out.stride() == _dense_strides((B, T, H, D), order4)
    if layout == "heads_major":
        assert out.permute(0, 2, 1, 3).is_contiguous() and not out.is_contiguous()
    else:
        assert out.is_contiguous()
    assert empty_like_cls_out(q, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("layout", ["packed_tn", "packed_nt", "strided_d"])
def test_empty_like_packed(layout):
    qkv = packed_qkv(layout, B, T, N, H, D, device="cpu")
    out = empty_like_packed(qkv)
    assert out.shape == qkv.shape and out.dtype == qkv.dtype
    if layout == "strided_d":  # not dense: the buffer is the dense frame-major version
        assert out.is_contiguous()
    else:  # dense sources are matched stride for stride
        assert out.stride() == qkv.stride()
    # its q/k/v slices are laid out like the unpacked outputs
    for i in range(3):
        assert axis_order(out.select(3, i).stride()) == axis_order(empty_like_video(qkv.select(3, 0)).stride())


def test_empty_like_packed_cls_qkv():
    cls_qkv = torch.empty(B, H, 3, D).transpose(1, 2)  # [B, 3, H, D] stored as [B, H, 3, D]
    out = empty_like_packed(cls_qkv)
    assert out.shape == cls_qkv.shape and out.stride() == cls_qkv.stride()


def test_size_one_axes():
    """Size-1 axes may report any stride; the result stays dense with the right shape."""
    q = torch.empty(1, N, 1, H, D).permute(0, 2, 1, 3, 4)  # B = T = 1, patch-major
    out = empty_like_video(q)
    assert out.shape == q.shape and out.is_contiguous()
    c = empty_like_cls_out(q)
    assert c.shape == (1, 1, H, D) and c.is_contiguous()


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_broadcast_axis_keeps_head_dim_innermost(axis):
    """An expanded (stride-0) axis has no memory position; the output stays dense with the head
    dim innermost (kernels write rows of D contiguous elements)."""
    sizes = [B, T, N, H, D]
    small = list(sizes)
    small[axis] = 1
    q = torch.empty(small).expand(sizes)
    out = empty_like_video(q)
    assert out.shape == q.shape and out.stride(-1) == 1
    assert out.permute(axis_order(out.stride())).is_contiguous()  # dense
    c = empty_like_cls_out(q)
    assert c.shape == (B, T, H, D) and c.stride(-1) == 1
