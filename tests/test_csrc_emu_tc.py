"""The tensor-core forward of csrc/flash_tc.cuh (float16 / bfloat16) on the host emulation.

tests/csrc_emu/emu.cpp emulates ldmatrix (.trans), mma.sync m16n8k16 and cp.async per warp from
their PTX fragment layouts, so the real kernel source runs here for temporal, spatial (+CLS) and
joint attention: every launch shape (1, 2 and 4 warps; one or two K/V stages; several row blocks),
every layout, causal and frame_lens, head dims padded to 32/64/96/128/160. The checks are those of
the scalar kernels' emulation tests (out, lse, padded rows exactly 0, lse of rows without keys,
NaN-poisoned outputs), and the backward that follows reads this forward's lse. Each case asserts
which kernel ran (emu_last_tc: 1 flash_fwd_tc_kernel, 2 temporal_fwd_tc_packed_kernel for T <= 32),
and the cases it must not take fall back to the scalar kernels (0).
"""

from __future__ import annotations

import pytest
import torch

from helpers import BOUNDS, case_id, LAYOUTS, MASKS, rel_err, seeded
from test_csrc_compiles import _check_emulated
from test_csrc_emu_spatial import check_joint, check_spatial

from temporal_kernels import reference

HALF = (torch.float16, torch.bfloat16)
SCALAR, FLASH, PACKED = 0, 1, 2


def _ran(tc, forward, D):
    """The forward kernel that ran, and the tensor-core backward wherever it applies: the fused
    temporal kernel where the forward was the packed one (temporal T <= 32; D <= 128), else the
    flash pair (D <= 64)."""
    assert tc.emu_last_tc() == forward
    applies = forward != SCALAR and D <= (128 if forward == PACKED else 64)
    assert tc.emu_last_tc_bwd() == (forward if applies else SCALAR)


@pytest.fixture
def tc(emu):
    """The emulator with flash_tc_fwd's dispatch on (as on the device), off again afterwards."""
    emu.emu_set_tc(1)
    try:
        yield emu
    finally:
        emu.emu_set_tc(0)


def _ids(x):
    if isinstance(x, tuple) and len(x) == 5:
        return case_id(B=x[0], T=x[1], N=x[2], H=x[3], D=x[4])
    if isinstance(x, torch.dtype):
        return case_id(dtype=x)
    return None


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("T", [7, 13, 27], ids=["T7-two-groups-per-warp", "T13-one-group-per-warp", "T27-two-warps"])
def test_temporal_short(tc, layout, dtype, T):
    """Every layout and mask: two (b, n, h) groups per warp at T=7 (rows 8 s + t), one at T=13
    (rows t, one 16-key tile); at T=27 one group per 2-warp block (rows t, one 32-key tile), forward
    and backward."""
    for causal, lens in MASKS:
        _check_emulated(tc, (2, T, 3, 2, 40), layout, causal, lens, dtype)
        _ran(tc, PACKED, 40)


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((1, 5, 3, 1, 64), torch.bfloat16),  # 3 groups: the last pair has one
        ((2, 8, 1, 2, 72), torch.float16),  # T=8 fills the rows; head dim 96
        ((3, 1, 1, 1, 32), torch.bfloat16),  # T=1
        ((1, 4, 2, 1, 160), torch.float16),  # head dim 160
    ],
    ids=_ids,
)
def test_temporal_packed_shapes(tc, shape, dtype):
    for causal, lens in ((False, False), (True, True)):
        _check_emulated(tc, shape, "packed_nt", causal, lens, dtype)
        _ran(tc, PACKED, shape[4])


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((2, 20, 2, 1, 72), torch.bfloat16),  # 2 warps, head dim 96 (fused 2-warp backward)
        ((1, 40, 2, 1, 16), torch.float16),  # 4 warps, one tile, head dim 32
        ((1, 70, 1, 2, 64), torch.bfloat16),  # 2 row blocks x 2 key tiles, 2 stages
        ((1, 9, 1, 1, 160), torch.float16),  # one group per warp, head dim 160
        ((2, 16, 1, 1, 128), torch.bfloat16),  # one group per warp, 16 frames
        ((1, 17, 2, 1, 64), torch.float16),  # 2 warps, one tile
        ((2, 32, 2, 1, 128), torch.bfloat16),  # 2 warps, 32 frames, head dim 128
    ],
    ids=_ids,
)
def test_temporal_shapes(tc, shape, dtype):
    for causal, lens in ((False, False), (True, True)):
        _check_emulated(tc, shape, "packed_tn", causal, lens, dtype)
        _ran(tc, (PACKED if shape[1] <= 32 else FLASH), shape[4])


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_spatial(tc, layout, with_cls, dtype):
    """N=13 (+CLS: 14 tokens) in one warp; the CLS row's output and lse from the same launch."""
    check_spatial(tc, (2, 2, 13, 2, 40), layout, dtype, with_cls)
    _ran(tc, FLASH, 40)


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((1, 2, 30, 2, 72), torch.float16),  # 31 tokens with CLS: 2 warps
        ((1, 1, 70, 1, 64), torch.bfloat16),  # 71 tokens: 2 row blocks x 2 key tiles, the CLS key in tile 2
        ((1, 2, 63, 1, 32), torch.bfloat16),  # 64 tokens with CLS: one full 4-warp tile
    ],
    ids=_ids,
)
def test_spatial_shapes(tc, shape, dtype):
    check_spatial(tc, shape, "packed_nt", dtype, True, scale=0.3)
    _ran(tc, FLASH, shape[4])
    check_spatial(tc, shape, "packed_tn", dtype, False)
    _ran(tc, FLASH, shape[4])


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: case_id(causal=m[0], lens=m[1]) or "nomask")
def test_joint(tc, mask, dtype):
    """21 tokens (2 warps) and 90 tokens (2 row blocks x 2 key tiles, frames split across tiles)."""
    causal, lens = mask
    check_joint(tc, (3, 3, 7, 1, 40), "packed_nt", dtype, causal, lens)
    _ran(tc, FLASH, 40)
    check_joint(tc, (2, 3, 30, 1, 32), "packed_tn", dtype, causal, lens)
    _ran(tc, FLASH, 32)


def test_many_key_tiles(tc):
    """150 and 210 tokens: three and four 64-key tiles. Pass 1 of the dQ kernel must restage tile 0
    (pass 0 left tile 2 in its buffer); the K/V buffers cycle, also in frame-causal blocks that see
    fewer tiles than the sequence has."""
    _check_emulated(tc, (1, 150, 1, 1, 32), "packed_tn", False, False, torch.bfloat16)
    _ran(tc, FLASH, 32)
    _check_emulated(tc, (1, 210, 1, 1, 32), "packed_nt", True, True, torch.float16)
    _ran(tc, FLASH, 32)
    check_joint(tc, (1, 7, 30, 1, 32), "packed_nt", torch.float16, True, True)
    _ran(tc, FLASH, 32)


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_joint_frame_edge_inside_a_warp(tc, dtype):
    """N=40, frame-causal: rows 32-39 (frame 0) see keys [0, 40), rows 40-47 (frame 1) the whole
    first 64-key tile, so one row half of warp 2 needs the tile's mask and the other does not."""
    check_joint(tc, (1, 2, 40, 1, 32), "packed_nt", dtype, True, False)
    _ran(tc, FLASH, 32)


def test_grid_stride(tc):
    """A grid capped below the work items walks every one of them."""
    _check_emulated(tc, (3, 8, 5, 2, 64), "packed_nt", True, True, torch.bfloat16, max_grid=2)
    _ran(tc, PACKED, 64)
    _check_emulated(tc, (3, 12, 5, 1, 64), "packed_nt", True, True, torch.float16, max_grid=2)
    _ran(tc, PACKED, 64)
    _check_emulated(tc, (2, 40, 3, 1, 32), "packed_nt", True, True, torch.float16, max_grid=2)
    _ran(tc, FLASH, 32)
    check_joint(tc, (2, 3, 30, 1, 32), "packed_tn", torch.float16, True, True, max_grid=3)
    _ran(tc, FLASH, 32)


def test_falls_back_where_it_does_not_apply(tc):
    """float32, D % 8 != 0, unaligned rows: the scalar kernels run (and pass the same checks)."""
    _check_emulated(tc, (2, 7, 3, 2, 40), "packed_tn", True, True, torch.float32)
    _ran(tc, SCALAR, 40)
    _check_emulated(tc, (2, 7, 3, 2, 20), "packed_tn", True, True, torch.bfloat16)
    _ran(tc, SCALAR, 20)
    _check_emulated(tc, (2, 7, 3, 2, 40), "packed_tn", True, True, torch.bfloat16, vec16=False)
    _ran(tc, SCALAR, 40)
    check_spatial(tc, (2, 2, 13, 2, 40), "packed_nt", torch.float16, True, vec16=False)
    _ran(tc, SCALAR, 40)


@pytest.mark.parametrize("poison", [("v", float("inf")), ("k", float("nan"))], ids=["v-inf", "k-nan"])
@pytest.mark.parametrize("dtype", HALF, ids=_ids)
def test_packed_groups_stay_apart(tc, dtype, poison):
    """An inf value or a NaN key in one group of a packed pair: the other group's rows never multiply
    it (a zero probability, or a zero dS, times inf or NaN would be NaN), so its output and
    gradients stay finite and right; the poisoned group's output is non-finite exactly where the
    float64 reference is."""
    from test_csrc_compiles import _emu_temporal

    gen = seeded("packed-inf", str(dtype))
    q, k, v = (torch.randn(1, 8, 2, 1, 64, dtype=torch.float64, generator=gen).to(dtype) for _ in range(3))
    {"k": k, "v": v}[poison[0]][0, 3, 0, 0, 5] = poison[1]
    dout = torch.randn(1, 8, 2, 1, 64, dtype=torch.float64, generator=gen).to(dtype)
    out, _, grads, _ = _emu_temporal(tc, q, k, v, dout, None, False, 0.125)
    _ran(tc, PACKED, 64)
    x64 = [x.double().requires_grad_() for x in (q, k, v)]
    ref = reference.temporal_attention(*x64, scale=0.125)
    ref_grads = torch.autograd.grad(ref, x64, dout.double())
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
    assert torch.isfinite(out[:, :, 1]).all()
    assert rel_err(out[:, :, 1], ref[:, :, 1]) <= BOUNDS[dtype]
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):  # the fused backward's pair too
        assert torch.isfinite(g[:, :, 1]).all(), name
        assert rel_err(g[:, :, 1], r[:, :, 1]) <= BOUNDS[dtype], name


# ---------------------------------------------------------------------------------------------
# csrc/flash_wgmma.cuh: the Hopper forward (wgmma from registers and swizzled shared memory), where
# the 4-warp flash kernel would run with head dims padded to 64 or 128. The emulator reads B
# through the matrix descriptors and the 128-byte swizzle as PTX defines them, so a tile layout,
# descriptor offset or accumulator mapping that disagrees with the kernel shows here; whether the
# hardware reads them that way is the GPU suite's part.

WGMMA = 3


@pytest.fixture(params=[2, 1], ids=["2wg", "1wg"])
def wg(tc, request):
    """The wgmma forward with two warpgroups per block (the default) and with one."""
    tc.emu_set_wgmma(request.param)
    try:
        yield tc
    finally:
        tc.emu_set_wgmma(0)


def _ran_wg(tc, D):
    """The wgmma forward ran; the backward is the flash pair's (D <= 64) or the scalar one."""
    assert tc.emu_last_tc() == WGMMA
    assert tc.emu_last_tc_bwd() == (FLASH if D <= 64 else SCALAR)


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_wgmma_temporal_layouts(wg, layout, dtype):
    """T=40 (one 64-key tile, one stage, rows 40-63 padding: warp 3 idle), every layout and mask."""
    for causal, lens in MASKS:
        _check_emulated(wg, (1, 40, 2, 1, 40), layout, causal, lens, dtype)
        _ran_wg(wg, 40)


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((1, 70, 1, 2, 64), torch.bfloat16),  # 2 row blocks x 2 key tiles, two stages
        ((1, 150, 1, 1, 128), torch.float16),  # head dim 128: two 64-column blocks; 3 tiles, buffers cycle
        ((1, 33, 2, 1, 120), torch.bfloat16),  # head dim 120 padded to 128 (zero-filled columns)
    ],
    ids=_ids,
)
def test_wgmma_temporal_shapes(wg, shape, dtype):
    for causal, lens in ((False, False), (True, True)):
        _check_emulated(wg, shape, "packed_tn", causal, lens, dtype)
        _ran_wg(wg, shape[4])


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((1, 1, 70, 1, 64), torch.bfloat16),  # 71 tokens with CLS: the CLS key in tile 2
        ((1, 2, 63, 1, 128), torch.float16),  # 64 tokens with CLS: one full tile, head dim 128
        ((2, 1, 40, 2, 40), torch.bfloat16),  # 40 (41) tokens: padded rows in warps 2 and 3
    ],
    ids=_ids,
)
def test_wgmma_spatial(wg, shape, dtype):
    check_spatial(wg, shape, "packed_nt", dtype, True, scale=0.3)
    _ran_wg(wg, shape[4])
    check_spatial(wg, shape, "packed_tn", dtype, False)
    _ran_wg(wg, shape[4])


@pytest.mark.parametrize("dtype", HALF, ids=_ids)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: case_id(causal=m[0], lens=m[1]) or "nomask")
def test_wgmma_joint(wg, mask, dtype):
    """90 tokens (2 row blocks x 2 key tiles, frames split across tiles) and N=40 frame-causal (a
    frame edge inside a warp)."""
    causal, lens = mask
    check_joint(wg, (2, 3, 30, 1, 40), "packed_tn", dtype, causal, lens)
    _ran_wg(wg, 40)
    check_joint(wg, (1, 2, 40, 1, 64), "packed_nt", dtype, causal, lens)
    _ran_wg(wg, 64)


def test_wgmma_grid_stride(wg):
    """A grid capped below the work items walks every one of them."""
    _check_emulated(wg, (2, 40, 3, 1, 64), "packed_nt", True, True, torch.float16, max_grid=2)
    _ran_wg(wg, 64)
    check_joint(wg, (2, 3, 30, 1, 64), "packed_tn", torch.bfloat16, True, True, max_grid=3)
    _ran_wg(wg, 64)


def test_wgmma_not_where_it_does_not_apply(wg):
    """Head dims padded to 32 or 96 and sequences of up to 32 keep the mma.sync kernels."""
    _check_emulated(wg, (1, 40, 2, 1, 32), "packed_tn", False, False, torch.bfloat16)
    _ran(wg, FLASH, 32)
    _check_emulated(wg, (1, 40, 2, 1, 72), "packed_tn", False, False, torch.float16)
    _ran(wg, FLASH, 72)
    _check_emulated(wg, (1, 20, 2, 1, 64), "packed_tn", False, False, torch.bfloat16)
    _ran(wg, PACKED, 64)
