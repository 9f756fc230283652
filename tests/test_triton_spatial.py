"""Triton spatial attention (with and without the fused CLS token) against the float64 reference.

CPU: the Triton interpreter (float32/float64, tiny shapes whose row blocks of 16 put the CLS row
in a second block); GPU: every dtype and the SPEC §5 shapes. Forward and every gradient (q, k,
v, the three CLS tensors; the packed forms' dqkv and dcls_qkv) within SPEC §3 bounds.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import temporal_kernels as tk
import temporal_kernels.ops  # noqa: F401  (registers the custom ops)
from helpers import (assert_close, BOUNDS, case_id, DEVICE, interpreter, kernel_dtypes, make_qkv, native_dtype_math,
                     packed_qkv, rel_err)

pytestmark = pytest.mark.skipif(
    DEVICE != "cuda" and not interpreter(), reason="needs a GPU or TRITON_INTERPRET=1"
)
gpu_only = pytest.mark.skipif(DEVICE != "cuda", reason="GPU-only (shapes/dtypes too slow or unsupported in the interpreter)")


def _ref_leaves(*xs):
    """float64 leaf copies of the kernel inputs, for the reference."""
    return tuple(x.detach().double().requires_grad_() for x in xs)


def _grad_outputs(outs, gen):
    return [torch.randn(o.shape, dtype=torch.float64, generator=gen).to(o.device) for o in outs]


def _loss(outs, douts):
    return sum((o.double() * d).sum() for o, d in zip(outs, douts))


def check_spatial(layout, B, T, N, H, D, dtype, with_cls, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_qkv(layout, B, T, N, H, D, dtype, requires_grad=True, generator=gen)
    cls = None
    if with_cls:
        cls = tuple(
            torch.randn(B, H, D, dtype=torch.float64, generator=gen).to(DEVICE, dtype).requires_grad_()
            for _ in range(3)
        )
    inputs = (q, k, v) + (cls or ())
    refs = _ref_leaves(*inputs)

    got = tk.spatial_attention(q, k, v, cls=cls, backend="triton")
    want = tk.spatial_attention(*refs[:3], cls=refs[3:] or None, backend="reference")
    got, want = (got, want) if with_cls else ((got,), (want,))
    for name, g, w in zip(("out", "cls_out"), got, want):
        assert_close(name, g, w, dtype)
    # SPEC §1: the output follows q's axis memory order (a patch-major input gives a patch-major output)
    assert (got[0].stride(1) < got[0].stride(2)) == (q.stride(1) < q.stride(2))

    douts = _grad_outputs(want, gen)
    grads = torch.autograd.grad(_loss(got, [d.to(dtype) for d in douts]), inputs)
    grads_ref = torch.autograd.grad(_loss(want, douts), refs)
    for name, g, w in zip(("dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"), grads, grads_ref):
        assert_close(name, g, w, dtype)


def check_spatial_packed(layout, B, T, N, H, D, dtype, with_cls, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = packed_qkv(layout, B, T, N, H, D, dtype, generator=gen).requires_grad_()
    cls_qkv = None
    if with_cls:
        cls_qkv = torch.randn(B, 3, H, D, dtype=torch.float64, generator=gen).to(DEVICE, dtype).requires_grad_()
    inputs = (qkv,) + ((cls_qkv,) if with_cls else ())
    refs = _ref_leaves(*inputs)

    got = tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend="triton")
    want = tk.spatial_attention_qkvpacked(refs[0], cls_qkv=refs[1] if with_cls else None, backend="reference")
    got, want = (got, want) if with_cls else ((got,), (want,))
    for name, g, w in zip(("out", "cls_out"), got, want):
        assert_close(name, g, w, dtype)

    douts = _grad_outputs(want, gen)
    grads = torch.autograd.grad(_loss(got, [d.to(dtype) for d in douts]), inputs)
    grads_ref = torch.autograd.grad(_loss(want, douts), refs)
    for name, g, w in zip(("dqkv", "dcls_qkv"), grads, grads_ref):
        assert_close(name, g, w, dtype)


# ---------------------------------------------------------------------------------------------
# CPU (interpreter) and GPU


CASES = [
    # (layout, B, T, N, H, D): N=17 (+CLS = 18 rows) crosses the interpreter's 16-row blocks
    ("separate", 1, 3, 17, 2, 12),
    ("packed_tn", 2, 2, 9, 2, 8),
    ("packed_nt", 2, 2, 17, 1, 12),
    ("strided_d", 2, 2, 5, 1, 12),
]


@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout,B,T,N,H,D", CASES, ids=[c[0] for c in CASES])
def test_spatial_matches_reference(layout, B, T, N, H, D, with_cls):
    check_spatial(layout, B, T, N, H, D, torch.float32, with_cls)


@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=lambda d: case_id(d=d))
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_spatial_dtypes(dtype, with_cls):
    check_spatial("packed_nt", 2, 3, 9, 2, 12, dtype, with_cls, seed=1)


@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout", ["packed_tn", "packed_nt"])
def test_spatial_qkvpacked_matches_reference(layout, with_cls):
    check_spatial_packed(layout, 2, 2, 9, 2, 12, torch.float32, with_cls)


@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_spatial_launcher_writes_every_element(with_cls):
    """Direct launcher calls on NaN-poisoned buffers: every element written, finite, correct."""
    from temporal_kernels.triton.spatial_attn import spatial_attn_bwd, spatial_attn_fwd

    B, T, N, H, D = 2, 2, 17, 2, 12
    gen = torch.Generator().manual_seed(1)
    q, k, v = make_qkv("packed_nt", B, T, N, H, D, torch.float64, generator=gen)
    cls = tuple(torch.randn(B, H, D, dtype=torch.float64, generator=gen).to(DEVICE) for _ in range(3)) if with_cls else None
    nan = float("nan")
    out = torch.full_like(q, nan)
    cls_out = torch.full((B, T, H, D), nan, dtype=q.dtype, device=DEVICE) if with_cls else None
    lse = torch.full((B, H, T, N), nan, dtype=torch.float64, device=DEVICE)
    lse_cls = torch.full((B, H, T), nan, dtype=torch.float64, device=DEVICE) if with_cls else None
    scale = 0.3
    spatial_attn_fwd(q, k, v, cls, out, cls_out, lse, lse_cls, scale)

    refs = _ref_leaves(q, k, v, *(cls or ()))
    want = tk.spatial_attention(*refs[:3], cls=refs[3:] or None, scale=scale, backend="reference")
    want = want if with_cls else (want,)
    assert_close("out", out, want[0], torch.float64)
    if with_cls:
        assert_close("cls_out", cls_out, want[1], torch.float64)
        assert torch.isfinite(lse_cls).all()
    assert torch.isfinite(lse).all()
    # lse is the log-sum-exp of the scaled logits of each row
    logits = torch.einsum("btnhd,btmhd->bhtnm", q, k) * scale
    if with_cls:
        logits = torch.cat([logits, torch.einsum("btnhd,bhd->bhtn", q, cls[1])[..., None] * scale], dim=-1)
    assert_close("lse", lse, torch.logsumexp(logits, -1), torch.float64)

    douts = _grad_outputs(want, gen)
    dq, dk, dv = (torch.full_like(x, nan) for x in (q, k, v))
    dcls = tuple(torch.full((B, H, D), nan, dtype=q.dtype, device=DEVICE) for _ in range(3)) if with_cls else None
    spatial_attn_bwd(douts[0], douts[1] if with_cls else None, q, k, v, cls, out, cls_out, lse, lse_cls, scale,
                     dq, dk, dv, dcls)
    grads_ref = torch.autograd.grad(_loss(want, douts), refs)
    for name, g, w in zip(("dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"), (dq, dk, dv) + (dcls or ()), grads_ref):
        assert_close(name, g, w, torch.float64)


def test_spatial_cls_gradient_without_cls_out_use():
    """Only ``out`` used: the CLS tensors still get the gradient through the patch rows' keys."""
    B, T, N, H, D = 1, 2, 9, 1, 8
    gen = torch.Generator().manual_seed(2)
    q, k, v = make_qkv("separate", B, T, N, H, D, torch.float64, requires_grad=True, generator=gen)
    cls = tuple(torch.randn(B, H, D, dtype=torch.float64, generator=gen).to(DEVICE).requires_grad_() for _ in range(3))
    out, _ = tk.spatial_attention(q, k, v, cls=cls, backend="triton")
    refs = _ref_leaves(q, k, v, *cls)
    want, _ = tk.spatial_attention(*refs[:3], cls=refs[3:], backend="reference")
    grads = torch.autograd.grad(out.sum(), (q, k, v) + cls)
    grads_ref = torch.autograd.grad(want.sum(), refs, allow_unused=True)
    for name, g, w in zip(("dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"), grads, grads_ref):
        assert_close(name, g, torch.zeros_like(g) if w is None else w, torch.float64)


# The Triton interpreter runs kernels even on fake tensors (it copies their storage), so on CPU
# opcheck covers the schema and the autograd registration; the GPU runs every check.
OPCHECK_UTILS = (
    ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if DEVICE == "cuda"
    else ("test_schema", "test_autograd_registration")
)


def opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_spatial_opcheck(with_cls):
    ops = torch.ops.temporal_kernels
    B, T, N, H, D = 1, 2, 5, 1, 8
    gen = torch.Generator().manual_seed(3)
    qkv = packed_qkv("packed_tn", B, T, N, H, D, torch.float32, generator=gen).requires_grad_()
    q, k, v = qkv.unbind(3)
    cls_qkv = torch.randn(B, 3, H, D, generator=gen).to(DEVICE).requires_grad_() if with_cls else None
    cls = tuple(cls_qkv.unbind(1)) if with_cls else (None,) * 3
    scale = D ** -0.5
    opcheck(ops.triton_spatial_fwd.default, (q, k, v, *cls, scale))
    opcheck(ops.triton_spatial_qkvpacked_fwd.default, (qkv, cls_qkv, scale))
    qkv = qkv.detach()
    q, k, v = qkv.unbind(3)
    cls_qkv = cls_qkv.detach() if with_cls else None
    cls = tuple(cls_qkv.unbind(1)) if with_cls else (None,) * 3
    out, cls_out, lse, lse_cls = ops.triton_spatial_fwd(q, k, v, *cls, scale)
    dout = torch.randn(out.shape, generator=gen).to(DEVICE)
    dcls_out = torch.randn(cls_out.shape, generator=gen).to(DEVICE) if with_cls else None
    cls_extra = (cls_out, lse_cls) if with_cls else (None, None)
    opcheck(
        ops.triton_spatial_bwd.default,
        (dout, dcls_out, q, k, v, *cls, out, cls_extra[0], lse, cls_extra[1], scale),
    )
    opcheck(
        ops.triton_spatial_qkvpacked_bwd.default,
        (dout, dcls_out, qkv, cls_qkv, out, cls_extra[0], lse, cls_extra[1], scale),
    )


# ---------------------------------------------------------------------------------------------
# GPU only: every dtype, SPEC §5 shapes, odd head dims, torch.compile


# The N=784/785 float64 references take ~10 GB each: one xdist group runs them one at a time.
_LARGE = pytest.mark.xdist_group("large_reference")
GPU_CASES = [
    ("packed_nt", 8, 8, 196, 12, 64),
    ("packed_tn", 8, 8, 197, 12, 64),
    pytest.param("separate", 2, 16, 784, 12, 64, marks=_LARGE),
    pytest.param("packed_nt", 2, 16, 785, 12, 64, marks=_LARGE),
    ("packed_tn", 2, 7, 197, 3, 40),
    ("strided_d", 2, 7, 197, 3, 72),
    ("separate", 1, 3, 50, 2, 256),
]


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=lambda d: case_id(d=d))
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout,B,T,N,H,D", GPU_CASES, ids=[case_id(B=c[1], T=c[2], N=c[3], H=c[4], D=c[5]) + "-" + c[0] for c in (getattr(c, "values", c) for c in GPU_CASES)])
def test_spatial_gpu(layout, B, T, N, H, D, dtype, with_cls):
    check_spatial(layout, B, T, N, H, D, dtype, with_cls)


@gpu_only
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout,B,T,N,H,D", [("packed_tn", 2, 3, 197, 3, 64), ("packed_nt", 1, 2, 100, 2, 40)])
def test_spatial_gpu_float64(layout, B, T, N, H, D, with_cls):
    check_spatial(layout, B, T, N, H, D, torch.float64, with_cls)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=lambda d: case_id(d=d))
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_spatial_qkvpacked_gpu(dtype, with_cls):
    check_spatial_packed("packed_nt", 8, 8, 196, 12, 64, dtype, with_cls)


@pytest.mark.xdist_group("large_reference")  # GiBs of memory: one at a time on the GPU
@gpu_only
def test_spatial_many_groups_gpu():
    """More than 65,535 (b, t, h) groups in the 1-D grid."""
    check_spatial("packed_tn", 64, 96, 16, 12, 32, torch.bfloat16, True)


@gpu_only
def test_spatial_torch_compile_gpu():
    B, T, N, H, D = 2, 4, 197, 4, 64
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(4)
    qkv = packed_qkv("packed_nt", B, T, N, H, D, dtype, generator=gen).requires_grad_()
    cls_qkv = torch.randn(B, 3, H, D, generator=gen).to(DEVICE, dtype).requires_grad_()

    def f(qkv, cls_qkv):
        out, cls_out = tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend="triton")
        q, k, v = qkv.unbind(3)
        out2, cls_out2 = tk.spatial_attention(q, k, v, cls=tuple(cls_qkv.unbind(1)), backend="triton")
        return (out.float() * out2.float()).sum() + (cls_out.float() + cls_out2.float()).sum()

    compiled = torch.compile(f, fullgraph=True)
    loss = compiled(qkv, cls_qkv)
    grads = torch.autograd.grad(loss, (qkv, cls_qkv))
    loss_e = f(qkv, cls_qkv)
    grads_e = torch.autograd.grad(loss_e, (qkv, cls_qkv))
    assert rel_err(loss, loss_e) <= BOUNDS[dtype]
    for g, w in zip(grads, grads_e):
        assert rel_err(g, w) <= BOUNDS[dtype]


_EXACT_DELTA_MODES = {
    # mode: ((B, T, N, H, D), keyword arguments of the launchers and the reference)
    "spatial_cls": ((2, 2, 17, 2, 12), {}),
    "joint": ((3, 3, 5, 2, 8), dict(causal=True)),
    "factorized": ((1, 5, 7, 3, 8), dict(causal=True, temporal_heads=2)),
}


@pytest.mark.parametrize("exact_delta", [True, False], ids=["exact_delta", "delta_from_out"])
@pytest.mark.parametrize("mode", list(_EXACT_DELTA_MODES))
def test_backward_delta_paths(mode, exact_delta):
    """Both ways to the backward's delta (the 16-bit default ``rowsum(P * dP)`` pass of the dQ
    kernel, and ``rowsum(dout * out)``) on NaN-poisoned buffers, every mode, against the reference:
    the interpreter runs float64 only, so the 16-bit default is forced here."""
    from temporal_kernels.triton import spatial_attn as sa

    (B, T, N, H, D), kw = _EXACT_DELTA_MODES[mode]
    gen = torch.Generator().manual_seed(7)
    q, k, v = make_qkv("packed_nt", B, T, N, H, D, torch.float64, generator=gen)
    nan = float("nan")
    cls = cls_out = lse_cls = None
    frame_lens = torch.tensor([3, 0, 2], device=DEVICE) if mode == "joint" else None
    if mode == "spatial_cls":
        cls = tuple(torch.randn(B, H, D, dtype=torch.float64, generator=gen).to(DEVICE) for _ in range(3))
        cls_out = torch.full((B, T, H, D), nan, dtype=q.dtype, device=DEVICE)
        lse_cls = torch.full((B, H, T), nan, dtype=torch.float64, device=DEVICE)
    out = torch.full_like(q, nan)
    lse = torch.full((B, H, T, N), nan, dtype=torch.float64, device=DEVICE)
    sa_mode = {"spatial_cls": sa.MODE_SPATIAL, "joint": sa.MODE_JOINT, "factorized": sa.MODE_FACTORIZED}[mode]
    scale = 0.35
    sa.attn_fwd(sa_mode, q, k, v, out, lse, scale, cls=cls, cls_out=cls_out, lse_cls=lse_cls,
                frame_lens=frame_lens, **kw)

    refs = _ref_leaves(q, k, v, *(cls or ()))
    if mode == "spatial_cls":
        want = tk.spatial_attention(*refs[:3], cls=refs[3:], scale=scale, backend="reference")
    elif mode == "joint":
        want = (tk.joint_attention(*refs, frame_lens=frame_lens, scale=scale, backend="reference", **kw),)
    else:
        want = (tk.factorized_attention(*refs, scale=scale, backend="reference", **kw),)
    douts = _grad_outputs(want, gen)
    dq, dk, dv = (torch.full_like(x, nan) for x in (q, k, v))
    dcls = tuple(torch.full((B, H, D), nan, dtype=q.dtype, device=DEVICE) for _ in range(3)) if cls else None
    sa.attn_bwd(sa_mode, douts[0], q, k, v, out, lse, scale, dq, dk, dv, dcls_out=douts[1] if cls else None,
                cls=cls, cls_out=cls_out, lse_cls=lse_cls, dcls=dcls, frame_lens=frame_lens,
                exact_delta=exact_delta, **kw)
    grads_ref = torch.autograd.grad(_loss(want, douts), refs)
    for name, g, w in zip(("dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"), (dq, dk, dv) + (dcls or ()), grads_ref):
        assert_close(name, g, w, torch.float64)


_WHOLE_BLOCK_MODES = {
    # mode: ((B, T, N, H, D), keyword arguments); sizes with whole key blocks (16 keys in the
    # interpreter, 32-64 on the GPU) before a partial one, the CLS key, or a frame-causal limit
    "spatial": ((2, 2, 37, 2, 12), {}),
    "spatial_cls": ((2, 2, 31, 2, 12), {}),
    "joint": ((3, 3, 11, 2, 8), {}),
    "joint_lens": ((3, 3, 11, 2, 8), {}),
    "joint_causal_lens": ((3, 3, 11, 2, 8), dict(causal=True)),
    "factorized": ((1, 5, 7, 3, 8), dict(causal=True, temporal_heads=2)),
}
_WHOLE_BLOCK_MODES_GPU = {"spatial": (2, 2, 197, 2, 64), "spatial_cls": (2, 2, 128, 2, 64), "joint": (2, 3, 70, 2, 64),
                          "joint_lens": (3, 3, 70, 2, 64), "joint_causal_lens": (3, 3, 70, 2, 64)}


@pytest.mark.parametrize("whole", [False, True], ids=["one_loop", "whole_blocks"])
@pytest.mark.parametrize("mode", list(_WHOLE_BLOCK_MODES))
def test_forward_whole_key_blocks(mode, whole, monkeypatch):
    """The forward's and the dQ kernels' mask-free loop over whole key blocks, then the masked
    rest, in every mode (and, forced off, the one masked loop): outputs, and every gradient (lse
    read back through the backward), against the reference. dout is NaN in padded frames: the
    whole blocks must not read it."""
    from temporal_kernels.triton import spatial_attn as sa

    monkeypatch.setattr(sa, "_WHOLE_BLOCKS_FORCE", whole)

    (B, T, N, H, D), kw = _WHOLE_BLOCK_MODES[mode]
    scale = 0.35
    if DEVICE == "cuda":
        B, T, N, H, D = _WHOLE_BLOCK_MODES_GPU.get(mode, (B, T, N, H, D))
    sa_mode = {"spatial": sa.MODE_SPATIAL, "spatial_cls": sa.MODE_SPATIAL, "joint": sa.MODE_JOINT,
               "joint_lens": sa.MODE_JOINT, "joint_causal_lens": sa.MODE_JOINT, "factorized": sa.MODE_FACTORIZED}[mode]
    for dtype in kernel_dtypes():
        gen = torch.Generator().manual_seed(N)
        q, k, v = make_qkv("packed_nt", B, T, N, H, D, dtype, generator=gen)
        q = q * 4  # logits in the tens
        nan = float("nan")
        stat = torch.float64 if dtype == torch.float64 else torch.float32
        cls = cls_out = lse_cls = None
        frame_lens = torch.tensor([3, 0, 2], device=DEVICE) if mode.endswith("_lens") else None
        if mode == "spatial_cls":
            cls = tuple(torch.randn(B, H, D, dtype=torch.float64, generator=gen).to(DEVICE, dtype) for _ in range(3))
            cls_out = torch.full((B, T, H, D), nan, dtype=dtype, device=DEVICE)
            lse_cls = torch.full((B, H, T), nan, dtype=stat, device=DEVICE)
        out = torch.full_like(q, nan)
        lse = torch.full((B, H, T, N), nan, dtype=stat, device=DEVICE)
        sa.attn_fwd(sa_mode, q, k, v, out, lse, scale, cls=cls, cls_out=cls_out, lse_cls=lse_cls,
                    frame_lens=frame_lens, **kw)
        refs = _ref_leaves(q, k, v, *(cls or ()))
        if sa_mode == sa.MODE_SPATIAL:
            want = tk.spatial_attention(*refs[:3], cls=refs[3:] or None, scale=scale, backend="reference")
            want = want if cls else (want,)
        elif sa_mode == sa.MODE_JOINT:
            want = (tk.joint_attention(*refs, frame_lens=frame_lens, scale=scale, backend="reference", **kw),)
        else:
            want = (tk.factorized_attention(*refs, scale=scale, backend="reference", **kw),)
        for name, got, w in zip(("out", "cls_out"), (out, cls_out), want):
            assert_close(f"{name} {dtype}", got, w, dtype)
        # the backward reads lse: wrong statistics show in every gradient
        douts = _grad_outputs(want, gen)
        if frame_lens is not None:
            # dout of a padded frame (whose output is the constant 0) is never read: NaN there
            douts[0][torch.arange(T, device=DEVICE)[None, :] >= frame_lens[:, None]] = nan
        dq, dk, dv = (torch.full_like(x, nan) for x in (q, k, v))
        dcls = tuple(torch.full((B, H, D), nan, dtype=dtype, device=DEVICE) for _ in range(3)) if cls else None
        sa.attn_bwd(sa_mode, douts[0].to(dtype), q, k, v, out, lse, scale, dq, dk, dv,
                    dcls_out=douts[1].to(dtype) if cls else None, cls=cls, cls_out=cls_out, lse_cls=lse_cls, dcls=dcls,
                    frame_lens=frame_lens, **kw)
        grads_ref = torch.autograd.grad(_loss(want, douts), refs)
        for name, g, w in zip(("dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"), (dq, dk, dv) + (dcls or ()), grads_ref):
            assert_close(f"{name} {dtype}", g, w, dtype)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: case_id(d=d))
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_spatial_backward_cancelling_draws_gpu(dtype, with_cls):
    """Two keys per row and D=1 (N=1 with CLS, N=2 without): dP - delta is a difference of
    near-equal terms whenever the two values are alike. delta from the 16-bit output missed the
    bound on such draws (bfloat16 dq_cls 1.54e-2); every gradient PyTorch's own 16-bit math
    resolves must pass. dq and dq_cls are checked: with two keys, a row of dS sums to 0, so dq =
    dS_0 (k_0 - k_1) depends on delta but not on dS's rounding. dk and dv are sums over two query
    rows of terms rounded to 16 bits (dS, P) that can cancel, in any 16-bit tensor-core kernel
    and in PyTorch's own 16-bit math alike (a bf16 dk_cls draw: 1.8e-2); the fuzz suite covers
    them."""
    N = 1 if with_cls else 2
    checked = total = 0
    for seed in range(150):
        gen = torch.Generator().manual_seed(seed)
        xs = [torch.randn(1, 1, N, 1, 1, generator=gen, dtype=torch.float64).to(DEVICE, dtype) for _ in range(3)]
        if with_cls:
            xs += [torch.randn(1, 1, 1, generator=gen, dtype=torch.float64).to(DEVICE, dtype) for _ in range(3)]

        def run(ins, backend):
            return tk.spatial_attention(*ins[:3], cls=tuple(ins[3:]) or None, scale=1.0, backend=backend)

        outs64 = run(_ref_leaves(*xs), "reference")
        outs64 = outs64 if isinstance(outs64, tuple) else (outs64,)
        douts = _grad_outputs(outs64, gen)
        per_backend = {}
        for backend, ins in (("triton", [x.clone().requires_grad_() for x in xs]),
                             ("native", [x.clone().requires_grad_() for x in xs]),
                             ("oracle", _ref_leaves(*xs))):
            with native_dtype_math() if backend == "native" else contextlib.nullcontext():
                outs = run(ins, "triton" if backend == "triton" else "reference")
            outs = outs if isinstance(outs, tuple) else (outs,)
            loss = sum((o * d.to(o.dtype)).sum() for o, d in zip(outs, douts))
            per_backend[backend] = torch.autograd.grad(loss, ins)
        for i, (g, s, r) in enumerate(zip(per_backend["triton"], per_backend["native"], per_backend["oracle"])):
            if i % 3 != 0:
                continue  # dk, dv (see above)
            total += 1
            if rel_err(s, r) > BOUNDS[dtype]:
                continue  # PyTorch's own 16-bit math misses the bound: ill-conditioned (the fuzz suite's rule)
            checked += 1
            assert rel_err(g, r) <= BOUNDS[dtype], f"seed {seed} grad {i}: {rel_err(g, r):.3e}"
    assert checked >= total // 2, f"only {checked} of {total} gradients resolvable"
