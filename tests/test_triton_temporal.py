"""Triton temporal attention (issue 4) against the float64 reference (SPEC §2–3).

CPU: the kernels run in the Triton interpreter on tiny odd shapes, float32/float64, every layout,
causal and ``frame_lens``, both the short (whole-group) path and the tiled long-T path (forced on
small T by lowering ``SHORT_T_MAX``). GPU: every dtype, the SPEC §5 shapes, B*N*H > 65,535, and
``torch.compile(fullgraph=True)``. gradcheck lives in ``test_gradcheck.py``.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import temporal_kernels as tk
import temporal_kernels.ops  # noqa: F401  (registers the torch.ops.temporal_kernels ops)
from temporal_kernels import reference
from temporal_kernels.triton import temporal_attn as ta

from helpers import assert_close, BOUNDS, case_id, DEVICE, frame_lens_for, kernel_dtypes, LAYOUTS, make_qkv, MASKS, packed_qkv, padded_rows, rel_err, temporal_lse_reference, seeded

gpu = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA device")

# (B, T, N, H, D): odd sizes; B = 3 so frame_lens_for covers lengths T, 0 and 1.
CPU_SHAPES = [(3, 7, 3, 3, 12), (3, 20, 2, 1, 40), (3, 1, 3, 2, 8)]
GPU_SHAPES = [
    (8, 8, 196, 12, 64),
    (1, 96, 196, 12, 64),
    (1, 256, 64, 12, 64),
    (2, 7, 197, 3, 40),
] + [(2, 8, 196, 8, d) for d in (40, 72, 80, 128, 160)]
SHAPES = GPU_SHAPES if DEVICE == "cuda" else CPU_SHAPES
# The tiled kernels forced onto short T (CPU: few groups, the interpreter runs one block per program).
TILED_SHAPES = GPU_SHAPES[:2] + GPU_SHAPES[3:4] if DEVICE == "cuda" else [(3, 7, 2, 2, 12), (3, 20, 2, 1, 40)]


@pytest.fixture(params=["short", "tiled"])
def path(request, monkeypatch):
    """Runs a test on the short path as configured, or with every T forced onto the tiled path."""
    if request.param == "tiled":
        monkeypatch.setattr(ta, "SHORT_T_MAX", 0)
    return request.param


def _reference(q, k, v, causal, frame_lens, scale, dout):
    """float64 output and gradients of the reference on the same values."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = reference.temporal_attention(q64, k64, v64, causal=causal, frame_lens=frame_lens, scale=scale)
    grads = torch.autograd.grad(out, (q64, k64, v64), dout.double())
    return out.detach(), grads


# ---------------------------------------------------------------------------------------------
# public API, every layout


def _mask_id(mask):
    return "-".join(name for name, on in zip(("causal", "lens"), mask) if on) or "full"


def _check_api(shape, layout, causal, lens, dtype):
    B, T, N, H, D = shape
    gen = seeded(shape, layout, causal, lens, dtype)
    q, k, v = make_qkv(layout, B, T, N, H, D, dtype=dtype, requires_grad=True, generator=gen)
    frame_lens = frame_lens_for(B, T, generator=gen) if lens else None
    out = tk.temporal_attention(q, k, v, causal=causal, frame_lens=frame_lens, backend="triton")
    assert out.shape == q.shape and out.dtype == dtype
    dout = torch.randn(out.shape, dtype=torch.float64, generator=gen).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)

    ref_out, ref_grads = _reference(q, k, v, causal, frame_lens, D ** -0.5, dout)
    assert_close("out", out, ref_out, dtype)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, g, r, dtype, zero_expected=(T == 1 and name != "dv"))
    padded = padded_rows(B, T, frame_lens, DEVICE)
    for name, x in (("out", out),) + tuple(zip(("dq", "dk", "dv"), grads)):
        assert (x[padded] == 0).all(), f"{name}: padded frames must be exactly 0"


@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("mask", MASKS, ids=_mask_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: case_id(B=s[0], T=s[1], N=s[2], H=s[3], D=s[4]))
def test_temporal_api(shape, layout, mask, dtype):
    _check_api(shape, layout, *mask, dtype)


@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("mask", MASKS, ids=_mask_id)
@pytest.mark.parametrize("layout", ("separate", "packed_nt"))
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=lambda s: case_id(B=s[0], T=s[1], N=s[2], H=s[3], D=s[4]))
def test_temporal_api_tiled_path(shape, layout, mask, dtype, monkeypatch):
    """The long-T (tiled) kernels on short T: every T forced onto them."""
    monkeypatch.setattr(ta, "SHORT_T_MAX", 0)
    _check_api(shape, layout, *mask, dtype)


@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("causal", [False, True], ids=["", "causal"])
@pytest.mark.parametrize("layout", ("packed_tn", "packed_nt", "strided_d"))
def test_temporal_qkvpacked_api(layout, causal, dtype, path):
    B, T, N, H, D = (3, 20, 5, 3, 24) if DEVICE == "cuda" else (3, 9, 2, 3, 12)
    gen = torch.Generator().manual_seed(7)
    qkv = packed_qkv(layout, B, T, N, H, D, dtype=dtype, generator=gen).detach().requires_grad_()
    frame_lens = frame_lens_for(B, T, generator=gen)
    out = tk.temporal_attention_qkvpacked(qkv, causal=causal, frame_lens=frame_lens, backend="triton")
    dout = torch.randn(out.shape, dtype=torch.float64, generator=gen).to(DEVICE, dtype)
    (dqkv,) = torch.autograd.grad(out, (qkv,), dout)
    assert dqkv.shape == qkv.shape

    ref_out, ref_grads = _reference(*qkv.unbind(3), causal, frame_lens, D ** -0.5, dout)
    assert_close("out", out, ref_out, dtype)
    assert_close("dqkv", dqkv, torch.stack(ref_grads, dim=3), dtype)
    if layout == "packed_nt":
        # Patch-major in, patch-major out: reshaping back to the token sequence is a view.
        assert out.permute(0, 2, 1, 3, 4).is_contiguous()
        assert dqkv.permute(0, 2, 1, 3, 4, 5).is_contiguous()


def test_temporal_long_t_takes_tiled_path():
    """T beyond the short path's limit, with the default threshold (N * H tiny for the interpreter)."""
    B, T, N, H, D = (2, 150, 1, 1, 8) if DEVICE != "cuda" else (2, 300, 7, 3, 72)
    assert not ta.use_short_path(T, D, torch.float32, False) and not ta.use_short_path(T, D, torch.float32, True)
    gen = torch.Generator().manual_seed(3)
    for causal, frame_lens in ((False, None), (True, torch.tensor([T, 77]).to(DEVICE))):
        q, k, v = make_qkv("packed_tn", B, T, N, H, D, requires_grad=True, generator=gen)
        out = tk.temporal_attention(q, k, v, causal=causal, frame_lens=frame_lens, backend="triton")
        dout = torch.randn(out.shape, dtype=torch.float64, generator=gen).to(DEVICE, out.dtype)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        ref_out, ref_grads = _reference(q, k, v, causal, frame_lens, D ** -0.5, dout)
        assert_close("out", out, ref_out, torch.float32)
        for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
            assert_close(name, g, r, torch.float32)


@pytest.mark.parametrize("scale", [0.37, 3.0])
def test_temporal_scale_and_large_logits(scale, path):
    """A non-default scale, and logits in the hundreds (stable softmax, no inf/NaN)."""
    B, T, N, H, D = 2, 11, 2, 2, 16
    gen = torch.Generator().manual_seed(11)
    q, k, v = make_qkv("separate", B, T, N, H, D, dtype=torch.float64, generator=gen)
    q = (q * 8).requires_grad_()
    k = k.requires_grad_()
    v = v.requires_grad_()
    out = tk.temporal_attention(q, k, v, causal=True, scale=scale, backend="triton")
    dout = torch.randn(out.shape, dtype=torch.float64, generator=gen).to(DEVICE)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_grads = _reference(q, k, v, True, None, scale, dout)
    assert_close("out", out, ref_out, torch.float64)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, g, r, torch.float64)


@pytest.mark.parametrize("causal", [False, True], ids=["", "causal"])
@pytest.mark.parametrize("scale", [-0.6, 0.0, 0.37, 3.0], ids=lambda s: f"scale{s}")
def test_tiled_forward_scales_and_whole_blocks(scale, causal, monkeypatch):
    """The tiled forward's softmax variants: with a positive scale (16-bit and float32) the
    running max is taken on the unscaled products and the scaling folds into exp2's argument;
    zero and negative scales keep the scaled max. T a multiple of the key block (without a causal
    mask: the mask-free loop) and not; logits in the hundreds; out and lse written everywhere."""
    monkeypatch.setattr(ta, "SHORT_T_MAX", 0)
    B, N, H, D = 2, 3, 2, 24
    for T in ((128, 100) if DEVICE == "cuda" else (32, 21)):
        for dtype in kernel_dtypes():
            gen = torch.Generator().manual_seed(T)
            q, k, v = make_qkv("packed_nt", B, T, N, H, D, dtype=dtype, generator=gen)
            q = q * 8
            out = torch.full(q.shape, float("nan"), dtype=dtype, device=DEVICE)
            stat = torch.float64 if dtype == torch.float64 else torch.float32
            lse = torch.full((B, H, T, N), float("nan"), dtype=stat, device=DEVICE)
            ta.temporal_attn_fwd(q, k, v, out, lse, None, causal, scale)
            ref_out = reference.temporal_attention(q.double(), k.double(), v.double(), causal=causal, scale=scale)
            assert_close(f"out T={T} {dtype}", out, ref_out, dtype)
            assert_close(f"lse T={T} {dtype}", lse, temporal_lse_reference(q, k, causal, None, scale), dtype)


# ---------------------------------------------------------------------------------------------
# launchers called directly: NaN-poisoned outputs, lse, padded rows, packed dqkv written in place


@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("causal", [False, True], ids=["", "causal"])
@pytest.mark.parametrize("layout", ("packed_tn", "packed_nt"))
def test_launchers_write_every_element(layout, causal, dtype, path):
    _check_launchers(layout, causal, dtype)


@pytest.mark.parametrize("exact_delta", [True, False], ids=["exact_delta", "delta_from_out"])
def test_tiled_backward_delta_paths(exact_delta, monkeypatch):
    """Both ways to the tiled backward's delta (``rowsum(P * dP)``, the 16-bit default, and
    ``rowsum(dO * O)``), forced in every dtype the interpreter runs."""
    monkeypatch.setattr(ta, "SHORT_T_MAX", 0)
    bwd = ta.temporal_attn_bwd
    monkeypatch.setattr(ta, "temporal_attn_bwd", lambda *a: bwd(*a, exact_delta=exact_delta))
    for dtype in kernel_dtypes():
        _check_launchers("packed_nt", True, dtype)


def _check_launchers(layout, causal, dtype):
    B, T, N, H, D = (3, 13, 37, 3, 40) if DEVICE == "cuda" else (3, 7, 2, 3, 12)
    gen = torch.Generator().manual_seed(5)
    qkv = packed_qkv(layout, B, T, N, H, D, dtype=dtype, generator=gen)
    q, k, v = qkv.unbind(3)
    scale = D ** -0.5
    frame_lens = frame_lens_for(B, T, generator=gen).to(torch.int32)
    padded = padded_rows(B, T, frame_lens, DEVICE)

    # A strided output (a slice of a packed buffer) poisoned with NaN: every element is written.
    out = torch.empty_like(qkv, memory_format=torch.preserve_format)[:, :, :, 1].fill_(float("nan"))
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    lse = torch.full((B, H, T, N), float("nan"), dtype=stat, device=DEVICE)
    ta.temporal_attn_fwd(q, k, v, out, lse, frame_lens, causal, scale)

    dout = torch.randn(q.shape, dtype=torch.float64, generator=gen).to(DEVICE, dtype)
    ref_out, ref_grads = _reference(q, k, v, causal, frame_lens, scale, dout)
    assert_close("out", out, ref_out, dtype)
    assert (out[padded] == 0).all()
    ref_lse = temporal_lse_reference(q, k, causal, frame_lens, scale)
    lse_padded = padded[:, None, :, None].expand_as(lse)
    assert torch.isneginf(lse[lse_padded]).all(), "lse of rows without keys is -inf"
    assert_close("lse", lse[~lse_padded], ref_lse[~lse_padded], dtype)

    # dout on padded frames must not be read (their outputs are constants).
    dout_poisoned = dout.clone()
    dout_poisoned[padded] = float("nan")
    dqkv = torch.empty_like(qkv, memory_format=torch.preserve_format).fill_(float("nan"))
    ta.temporal_attn_bwd(dout_poisoned, q, k, v, out, lse, frame_lens, causal, scale, *dqkv.unbind(3))
    assert_close("dqkv", dqkv, torch.stack(ref_grads, dim=3), dtype)
    assert (dqkv[padded] == 0).all()


def test_launchers_int64_lens_and_empty_batch_rows(path):
    """int64 frame_lens, all-zero lengths (every row padded: out, lse, grads exactly 0 / -inf)."""
    B, T, N, H, D = 2, 5, 2, 1, 8
    gen = torch.Generator().manual_seed(9)
    q, k, v = make_qkv("separate", B, T, N, H, D, generator=gen)
    frame_lens = torch.zeros(B, dtype=torch.int64, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, T, N), float("nan"), device=DEVICE)
    ta.temporal_attn_fwd(q, k, v, out, lse, frame_lens, True, 0.5)
    assert (out == 0).all() and torch.isneginf(lse).all()
    grads = [torch.full_like(q, float("nan")) for _ in range(3)]
    ta.temporal_attn_bwd(torch.randn_like(q), q, k, v, out, lse, frame_lens, True, 0.5, *grads)
    for g in grads:
        assert (g == 0).all()


# ---------------------------------------------------------------------------------------------
# custom-op registration


# The Triton interpreter runs kernels even on fake tensors (and fails there): the fake-tensor and
# aot_dispatch checks need a GPU, where wrap_triton traces the launch instead.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration") + (
    ("test_faketensor", "test_aot_dispatch_dynamic") if DEVICE == "cuda" else ()
)


def _opcheck_inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    qkv = packed_qkv("packed_nt", 2, 5, 2, 2, 8, dtype=dtype, generator=gen)
    frame_lens = torch.tensor([5, 3], device=DEVICE)
    return qkv, frame_lens


@pytest.mark.parametrize("lens", [False, True], ids=["", "lens"])
def test_opcheck_temporal(lens):
    qkv, frame_lens = _opcheck_inputs()
    frame_lens = frame_lens if lens else None
    q, k, v = (x.detach().requires_grad_() for x in qkv.unbind(3))
    ops = torch.ops.temporal_kernels
    torch.library.opcheck(ops.triton_temporal_fwd, (q, k, v, frame_lens, True, 0.4), test_utils=OPCHECK_UTILS)
    out, lse = ops.triton_temporal_fwd(q, k, v, frame_lens, True, 0.4)
    dout = torch.randn_like(out)
    torch.library.opcheck(
        ops.triton_temporal_bwd, (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), frame_lens, True, 0.4),
        test_utils=OPCHECK_UTILS,
    )


def test_opcheck_temporal_qkvpacked():
    qkv, frame_lens = _opcheck_inputs()
    qkv = qkv.detach().requires_grad_()
    ops = torch.ops.temporal_kernels
    torch.library.opcheck(ops.triton_temporal_qkvpacked_fwd, (qkv, frame_lens, False, 0.4), test_utils=OPCHECK_UTILS)
    out, lse = ops.triton_temporal_qkvpacked_fwd(qkv, frame_lens, False, 0.4)
    dout = torch.randn_like(out)
    torch.library.opcheck(
        ops.triton_temporal_qkvpacked_bwd, (dout, qkv.detach(), out.detach(), lse.detach(), frame_lens, False, 0.4), test_utils=OPCHECK_UTILS
    )


# ---------------------------------------------------------------------------------------------
# GPU only: batch-like products above 65,535, torch.compile


@pytest.mark.xdist_group("large_reference")  # GiBs of memory: one at a time on the GPU
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("T", [8, 72], ids=lambda t: f"T{t}")
def test_many_groups(T, dtype):
    """B * N * H = 2 * 2731 * 12 = 65,544 groups > 65,535 (a known crash of grid-per-group kernels);
    T = 72 takes the tiled path (its float64 reference logits take 2.7 GB)."""
    B, N, H, D = 2, 2731, 12, 32
    gen = torch.Generator().manual_seed(2)
    q, k, v = make_qkv("packed_tn", B, T, N, H, D, dtype=dtype, requires_grad=True, generator=gen)
    assert B * N * H > 65535
    frame_lens = frame_lens_for(B, T, generator=gen)
    out = tk.temporal_attention(q, k, v, causal=True, frame_lens=frame_lens, backend="triton")
    dout = torch.randn(out.shape, dtype=torch.float64, generator=gen).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_grads = _reference(q, k, v, True, frame_lens, D ** -0.5, dout)
    assert_close("out", out, ref_out, dtype)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, g, r, dtype)


@gpu
@pytest.mark.parametrize("packed", [False, True], ids=["", "packed"])
@pytest.mark.parametrize("T", [8, 150], ids=lambda t: f"T{t}")
def test_compile_fullgraph(packed, T):
    """T=8 takes the short path, T=150 the tiled one (both with torch.compile's fp64 scalars)."""
    torch._dynamo.reset()
    B, N, H, D = 2, 33, 4, 64
    gen = torch.Generator().manual_seed(4)
    qkv = packed_qkv("packed_nt", B, T, N, H, D, dtype=torch.bfloat16, generator=gen).detach().requires_grad_()
    frame_lens = torch.tensor([T, T - 3], device=DEVICE)

    def f(qkv, frame_lens):
        if packed:
            out = tk.temporal_attention_qkvpacked(qkv, causal=True, frame_lens=frame_lens, backend="triton")
        else:
            out = tk.temporal_attention(*qkv.unbind(3), causal=True, frame_lens=frame_lens, backend="triton")
        return (out.float() ** 2).sum()

    compiled = torch.compile(f, fullgraph=True)
    (g_compiled,) = torch.autograd.grad(compiled(qkv, frame_lens), (qkv,))
    (g_eager,) = torch.autograd.grad(f(qkv, frame_lens), (qkv,))
    # Same kernels on the same values: only the compiled graph's own ops (the loss) may round differently.
    assert rel_err(g_compiled, g_eager) <= BOUNDS[torch.bfloat16]


def test_block_heuristics_are_valid(monkeypatch):
    """The GPU configs (as the launchers pick them off the interpreter): power-of-two blocks that
    satisfy tl.dot's minimum of 16, the short path only up to T = 64, whole tiles within budget."""
    monkeypatch.setattr(ta, "_interpreting", lambda: False)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for T in (1, 7, 16, 33, 64, 65, 128, 1000):
            for D in (1, 8, 40, 64, 72, 128, 160, 256):
                T_PAD, D_PAD = ta._pad(T), ta._pad(D)
                assert T_PAD >= max(16, T) and D_PAD >= max(16, D)
                assert T_PAD & (T_PAD - 1) == 0 and D_PAD & (D_PAD - 1) == 0
                for backward in (False, True):
                    if ta.use_short_path(T, D, dtype, backward):
                        assert T_PAD <= ta.SHORT_T_MAX
                        block_g, num_warps = ta._short_config(T_PAD, D_PAD, dtype, backward)
                        assert block_g & (block_g - 1) == 0 and num_warps in (1, 2, 4, 8)
                        assert block_g == 1 or block_g * T_PAD * D_PAD <= 8192
                    else:
                        assert T_PAD > 16 or dtype != torch.bfloat16 or D_PAD > 64, "T <= 16 must stay on the short path"
                        block_m, block_n, num_warps = ta._tiled_config(T, D_PAD, dtype, backward)
                        assert block_m >= 16 and block_n >= 16 and math.log2(block_m).is_integer()



def test_host_helpers_match_triton():
    """The launchers' own next_power_of_2 / cdiv (Triton 3.6's are slow host calls) give Triton's
    values."""
    import triton

    for n in list(range(0, 300)) + [2**31 - 1, 2**31, 2**31 + 1, 3 * 2**40]:
        assert ta.next_power_of_2(n) == triton.next_power_of_2(n), n
        for b in (1, 3, 16, 64, 128):
            assert ta.cdiv(n, b) == triton.cdiv(n, b), (n, b)

def test_launchers_switch_to_their_tensors_device(monkeypatch):
    """The launchers run under the CUDA device of their first tensor when it is not the current
    one (Triton launches on the current device: tensors on cuda:1 while cuda:0 was current failed
    with "Pointer argument cannot be accessed from Triton" on two H200s); never for the current
    device or CPU tensors. On two GPUs: test_gpu_reliability.py::test_second_device."""
    from temporal_kernels.triton import spatial_attn as sa

    entered = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(d) or contextlib.nullcontext())
    for device in (torch.device("cuda", 0), torch.device("cpu"), torch.device("cuda", 1)):
        with ta._device_guard(device):
            pass
    assert entered == [torch.device("cuda", 1)]

    guarded = []
    monkeypatch.setattr(ta, "_device_guard", lambda d: guarded.append(d) or contextlib.nullcontext())
    x = torch.zeros(1, 1, 1, 1, 8)
    ta.temporal_attn_fwd(x[:, :0], x[:, :0], x[:, :0], x[:, :0], None, None, False, 1.0)  # T = 0: no launch
    sa.attn_fwd(sa.MODE_SPATIAL, x[:, :0], x[:, :0], x[:, :0], x[:, :0], None, 1.0)
    assert guarded == [x.device, x.device]
