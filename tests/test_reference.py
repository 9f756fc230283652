"""The reference backend (through the public API) against an independent per-group formulation.

The oracle below shares no code with ``temporal_kernels/reference.py``: it loops in Python over
the attention groups ((b, n, h) for temporal, (b, t, h) for spatial, (b, h) for joint) and over
query rows, builds every mask from the definitions of SPEC §2 row by row, and runs a plain
float64 softmax over the visible keys only. Gradients are compared by running autograd through
both.
"""

from __future__ import annotations

import pytest
import torch

import temporal_kernels as tk
from tests.helpers import BOUNDS, LAYOUTS, case_id, frame_lens_for, make_qkv, packed_qkv, rel_err

DEV = "cpu"  # the reference is pure PyTorch; the kernel backends have their own test files
REF = "reference"
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# independent oracle (float64, explicit loops)


def _rows(q, k, v, scale, visible, query_ok):
    """One attention group: ``q [Lq, D]``, ``k [Lk, D]``, ``v [Lk, Dv]``; ``visible(i, j)`` and
    ``query_ok(i)`` are Python predicates. Rows that are padded or see no key are 0."""
    rows = []
    for i in range(q.shape[0]):
        keys = [j for j in range(k.shape[0]) if visible(i, j)]
        if not query_ok(i) or not keys:
            rows.append(v.new_zeros(v.shape[1]))
            continue
        idx = torch.tensor(keys, dtype=torch.long)
        weights = torch.softmax((k[idx] @ q[i]) * scale, dim=0)
        rows.append(weights @ v[idx])
    return torch.stack(rows) if rows else v.new_zeros(0, v.shape[1])


def _f64(*xs):
    """float64 versions that autograd connects to the (possibly low-precision) inputs."""
    return [x.to(torch.float64) for x in xs]


def _lens(frame_lens, B, T):
    return [T] * B if frame_lens is None else [int(x) for x in frame_lens]


def oracle_temporal(q, k, v, *, causal=False, frame_lens=None, scale=None, heads=None):
    q, k, v = _f64(q, k, v)
    B, T, N, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    lens = _lens(frame_lens, B, T)
    out = q.new_zeros(B, T, N, H, D)
    for b in range(B):
        L = lens[b]
        for n in range(N):
            for h in range(H) if heads is None else heads:
                out[b, :, n, h] = _rows(
                    q[b, :, n, h], k[b, :, n, h], v[b, :, n, h], scale,
                    lambda i, j, L=L: j < L and (not causal or j <= i),
                    lambda i, L=L: i < L,
                )
    return out


def oracle_spatial(q, k, v, *, cls=None, scale=None, heads=None):
    q, k, v = _f64(q, k, v)
    B, T, N, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    out = q.new_zeros(B, T, N, H, D)
    cls_out = q.new_zeros(B, T, H, D)
    if cls is not None:
        q_cls, k_cls, v_cls = _f64(*cls)
    everything = lambda i, j: True  # noqa: E731
    for b in range(B):
        for t in range(T):
            for h in range(H) if heads is None else heads:
                qs, ks, vs = q[b, t, :, h], k[b, t, :, h], v[b, t, :, h]
                if cls is not None:  # the CLS token is one more key/value of every frame
                    ks = torch.cat([k_cls[b, h][None], ks])
                    vs = torch.cat([v_cls[b, h][None], vs])
                    cls_out[b, t, h] = _rows(q_cls[b, h][None], ks, vs, scale, everything, lambda i: True)[0]
                out[b, t, :, h] = _rows(qs, ks, vs, scale, everything, lambda i: True)
    return out if cls is None else (out, cls_out)


def oracle_joint(q, k, v, *, causal=False, frame_lens=None, scale=None):
    q, k, v = _f64(q, k, v)
    B, T, N, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    lens = _lens(frame_lens, B, T)
    out = q.new_zeros(B, T, N, H, D)
    frame = lambda i: i // N  # noqa: E731  token i = (t, n) in frame-major order
    for b in range(B):
        L = lens[b]
        for h in range(H):
            toks = [x[b, :, :, h].reshape(T * N, D) for x in (q, k, v)]
            o = _rows(
                *toks, scale,
                lambda i, j, L=L: frame(j) < L and (not causal or frame(j) <= frame(i)),
                lambda i, L=L: frame(i) < L,
            )
            out[b, :, :, h] = o.reshape(T, N, D)
    return out


def oracle_factorized(q, k, v, *, temporal_heads, causal=False, scale=None):
    H = q.shape[3]
    t = oracle_temporal(q, k, v, causal=causal, scale=scale, heads=range(temporal_heads))
    s = oracle_spatial(q, k, v, scale=scale, heads=range(temporal_heads, H))
    return torch.cat([t[:, :, :, :temporal_heads], s[:, :, :, temporal_heads:]], dim=3)


# ---------------------------------------------------------------------------------------------
# helpers


def _inputs(layout, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return make_qkv(layout, *shape, dtype=dtype, device=DEV, requires_grad=True, generator=g)


def _cls(B, H, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, D, dtype=torch.float64, generator=g).to(dtype).requires_grad_() for _ in range(3))


def _grads(outputs, inputs, douts):
    """Gradients of ``sum(out * dout)`` (``dout`` cast to each output's dtype)."""
    return torch.autograd.grad(outputs, inputs, [d.to(o.dtype) for d, o in zip(douts, outputs)])


def _check_against(outs, refs, inputs, bound, seed=123, saturated=None):
    """Outputs and every input gradient of ``outs`` (function under test) against ``refs`` (the
    oracle on the float64 version of the same inputs).

    ``saturated``: indices of inputs whose gradient vanishes in theory (query/key gradients of a
    saturated softmax) so that a relative error is meaningless; those are checked with an
    absolute bound instead, ``bound`` times the natural magnitude ``|scale * k * v * dout|``.
    """
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        assert torch.isfinite(o).all()
        assert rel_err(o, r) <= bound, f"output rel err {rel_err(o, r):.3g} > {bound}"
    g = torch.Generator().manual_seed(seed)
    # one dout per output, representable in the tested dtype, so both sides see the same values
    douts = [torch.randn(o.shape, dtype=torch.float64, generator=g).to(o.dtype).double() for o in outs]
    got = _grads(outs, inputs, douts)
    want = _grads(refs, inputs, douts)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == inputs[i].dtype and a.shape == inputs[i].shape
        assert torch.isfinite(a).all()
        if saturated is not None and i in saturated:
            err = (a.double() - b.double()).abs().max().item()
            assert err <= bound * saturated[i], f"grad {i} abs err {err:.3g} > {bound} * {saturated[i]:.3g}"
        else:
            assert rel_err(a, b) <= bound, f"grad {i} rel err {rel_err(a, b):.3g} > {bound}"


# Odd sizes: T=7, N=5/9, D=3/8/12, H=1/3, B up to 3.
SHAPES = [(3, 7, 5, 3, 8), (2, 7, 9, 1, 12), (1, 4, 5, 3, 3)]


def _shape_id(s):
    B, T, N, H, D = s
    return case_id(B=B, T=T, N=N, H=H, D=D)


# ---------------------------------------------------------------------------------------------
# temporal


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal,lens", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "causal", "lens", "causal-lens"])
def test_temporal(layout, shape, causal, lens):
    q, k, v = _inputs(layout, shape, torch.float64, 0)
    B, T = shape[:2]
    fl = frame_lens_for(B, T, device=DEV, generator=torch.Generator().manual_seed(1)) if lens else None
    out = tk.temporal_attention(q, k, v, causal=causal, frame_lens=fl, backend=REF)
    ref = oracle_temporal(q, k, v, causal=causal, frame_lens=fl)
    _check_against([out], [ref], (q, k, v), BOUNDS[torch.float64])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_temporal_dtypes(layout, dtype):
    shape = (3, 7, 5, 3, 8)
    q, k, v = _inputs(layout, shape, dtype, 2)
    fl = torch.tensor([7, 3, 5])
    out = tk.temporal_attention(q, k, v, causal=True, frame_lens=fl, backend=REF)
    assert out.dtype == dtype
    ref = oracle_temporal(q, k, v, causal=True, frame_lens=fl)
    _check_against([out], [ref], (q, k, v), BOUNDS[dtype])


@pytest.mark.parametrize("scale", [0.05, 1.7, -0.3])
def test_temporal_custom_scale(scale):
    q, k, v = _inputs("packed_nt", (2, 7, 5, 3, 12), torch.float64, 3)
    out = tk.temporal_attention(q, k, v, scale=scale, backend=REF)
    ref = oracle_temporal(q, k, v, scale=scale)
    _check_against([out], [ref], (q, k, v), BOUNDS[torch.float64])


@pytest.mark.parametrize("fn", ["temporal", "joint"])
@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_padding_exactly_zero(fn, causal):
    """Padded query rows output exactly 0, fully padded clips output 0 (no NaN), and padded frames
    get exactly-0 gradients (they are never keys and their query rows are constants)."""
    B, T, N, H, D = 3, 7, 5, 3, 8
    q, k, v = _inputs("packed_nt", (B, T, N, H, D), torch.float32, 4)
    fl = torch.tensor([T, 0, 2])
    f = tk.temporal_attention if fn == "temporal" else tk.joint_attention
    out = f(q, k, v, causal=causal, frame_lens=fl, backend=REF)
    assert torch.isfinite(out).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    for b, L in enumerate(fl.tolist()):
        assert (out[b, L:] == 0).all()
        for g in (dq, dk, dv):
            assert torch.isfinite(g).all()
            assert (g[b, L:] == 0).all()
    assert (out[0] != 0).any() and (out[2, :2] != 0).any()  # real frames are not zeroed
    assert (dk[2, :2] != 0).any() and (dq[2, :2] != 0).any()


def test_causal_first_frame_is_value():
    """With causal=True the first frame sees only itself: its output is its own value."""
    q, k, v = _inputs("separate", (2, 7, 5, 3, 8), torch.float64, 5)
    out = tk.temporal_attention(q, k, v, causal=True, backend=REF)
    torch.testing.assert_close(out[:, 0], v[:, 0], rtol=0, atol=0)
    out = tk.joint_attention(q, k, v, causal=True, backend=REF)
    assert rel_err(out[:, 0], oracle_spatial(q[:, :1], k[:, :1], v[:, :1])[:, 0]) <= 1e-12


# ---------------------------------------------------------------------------------------------
# spatial


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_spatial(layout, shape, with_cls):
    B, T, N, H, D = shape
    q, k, v = _inputs(layout, shape, torch.float64, 6)
    if not with_cls:
        out = tk.spatial_attention(q, k, v, backend=REF)
        assert isinstance(out, torch.Tensor)
        _check_against([out], [oracle_spatial(q, k, v)], (q, k, v), BOUNDS[torch.float64])
        return
    cls = _cls(B, H, D, torch.float64, 7)
    out, cls_out = tk.spatial_attention(q, k, v, cls=cls, backend=REF)
    assert cls_out.shape == (B, T, H, D)
    ref, ref_cls = oracle_spatial(q, k, v, cls=cls)
    _check_against([out, cls_out], [ref, ref_cls], (q, k, v) + cls, BOUNDS[torch.float64])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_spatial_cls_dtypes(layout, dtype):
    B, T, N, H, D = 2, 3, 9, 3, 12
    q, k, v = _inputs(layout, (B, T, N, H, D), dtype, 8)
    cls = _cls(B, H, D, dtype, 9)
    out, cls_out = tk.spatial_attention(q, k, v, cls=cls, scale=0.2, backend=REF)
    assert out.dtype == dtype and cls_out.dtype == dtype
    ref, ref_cls = oracle_spatial(q, k, v, cls=cls, scale=0.2)
    _check_against([out, cls_out], [ref, ref_cls], (q, k, v) + cls, BOUNDS[dtype])


def test_spatial_cls_out_differs_per_frame():
    """cls_out is per frame: the CLS query sees a different key set in every frame."""
    B, T, N, H, D = 1, 4, 5, 1, 8
    q, k, v = _inputs("separate", (B, T, N, H, D), torch.float64, 10)
    _, cls_out = tk.spatial_attention(q, k, v, cls=_cls(B, H, D, torch.float64, 11), backend=REF)
    for t in range(1, T):
        assert (cls_out[:, t] - cls_out[:, 0]).abs().max() > 1e-6


def test_spatial_cls_no_patches():
    """N = 0: every frame's only key is the CLS token, so cls_out is v_cls in every frame."""
    B, T, N, H, D = 2, 3, 0, 2, 4
    q, k, v = _inputs("separate", (B, T, N, H, D), torch.float64, 12)
    cls = _cls(B, H, D, torch.float64, 13)
    out, cls_out = tk.spatial_attention(q, k, v, cls=cls, backend=REF)
    assert out.shape == (B, T, 0, H, D)
    torch.testing.assert_close(cls_out, cls[2][:, None].expand(B, T, H, D), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# joint


@pytest.mark.parametrize("shape", [(3, 7, 5, 3, 8), (2, 4, 9, 1, 3)], ids=_shape_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal,lens", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "causal", "lens", "causal-lens"])
def test_joint(layout, shape, causal, lens):
    q, k, v = _inputs(layout, shape, torch.float64, 14)
    B, T = shape[:2]
    fl = frame_lens_for(B, T, device=DEV, generator=torch.Generator().manual_seed(15)) if lens else None
    out = tk.joint_attention(q, k, v, causal=causal, frame_lens=fl, backend=REF)
    ref = oracle_joint(q, k, v, causal=causal, frame_lens=fl)
    _check_against([out], [ref], (q, k, v), BOUNDS[torch.float64])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: case_id(dtype=d))
def test_joint_dtypes(dtype):
    q, k, v = _inputs("packed_nt", (2, 4, 5, 3, 8), dtype, 16)
    fl = torch.tensor([3, 4])
    out = tk.joint_attention(q, k, v, causal=True, frame_lens=fl, scale=0.5, backend=REF)
    ref = oracle_joint(q, k, v, causal=True, frame_lens=fl, scale=0.5)
    _check_against([out], [ref], (q, k, v), BOUNDS[dtype])


# ---------------------------------------------------------------------------------------------
# factorized


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("th", [0, 1, 3], ids=lambda t: f"th{t}")
@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_factorized(layout, th, causal):
    q, k, v = _inputs(layout, (2, 7, 5, 3, 8), torch.float64, 17)
    out = tk.factorized_attention(q, k, v, temporal_heads=th, causal=causal, backend=REF)
    ref = oracle_factorized(q, k, v, temporal_heads=th, causal=causal)
    _check_against([out], [ref], (q, k, v), BOUNDS[torch.float64])


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: case_id(dtype=d))
def test_factorized_dtypes(dtype):
    q, k, v = _inputs("packed_nt", (2, 7, 5, 3, 12), dtype, 18)
    out = tk.factorized_attention(q, k, v, temporal_heads=2, causal=True, scale=0.3, backend=REF)
    ref = oracle_factorized(q, k, v, temporal_heads=2, causal=True, scale=0.3)
    _check_against([out], [ref], (q, k, v), BOUNDS[dtype])


def test_factorized_heads_match_the_single_ops():
    q, k, v = _inputs("packed_tn", (2, 7, 5, 3, 8), torch.float64, 19)
    out = tk.factorized_attention(q, k, v, temporal_heads=2, causal=True, backend=REF)
    t = tk.temporal_attention(q[:, :, :, :2], k[:, :, :, :2], v[:, :, :, :2], causal=True, backend=REF)
    s = tk.spatial_attention(q[:, :, :, 2:], k[:, :, :, 2:], v[:, :, :, 2:], backend=REF)
    assert torch.equal(out[:, :, :, :2], t) and torch.equal(out[:, :, :, 2:], s)


# ---------------------------------------------------------------------------------------------
# packed forms


def _packed_leaf(layout, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return packed_qkv(layout, *shape, dtype=dtype, device=DEV, generator=g).detach().requires_grad_()


def _check_packed_grad(qkv, unpacked_grads):
    """``qkv.grad`` is one packed tensor, in qkv's layout where qkv is dense, equal to the
    gradients of the unpacked call."""
    g = qkv.grad
    assert g is not None and g.shape == qkv.shape
    dense = qkv.is_contiguous() or qkv.permute(0, 2, 1, 3, 4, 5).is_contiguous()
    if dense:
        assert g.stride() == qkv.stride()
    for i, want in enumerate(unpacked_grads):
        assert rel_err(g[:, :, :, i], want) <= BOUNDS[torch.float64]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal,lens", [(False, False), (True, True)], ids=["plain", "causal-lens"])
def test_temporal_qkvpacked(layout, causal, lens):
    shape = (3, 7, 5, 3, 8)
    qkv = _packed_leaf(layout, shape, torch.float64, 20)
    fl = torch.tensor([7, 0, 4]) if lens else None
    out = tk.temporal_attention_qkvpacked(qkv, causal=causal, frame_lens=fl, backend=REF)
    q, k, v = (x.detach().requires_grad_() for x in qkv.unbind(3))
    want = tk.temporal_attention(q, k, v, causal=causal, frame_lens=fl, backend=REF)
    assert torch.equal(out, want) and out.stride() == want.stride()
    assert rel_err(out, oracle_temporal(q, k, v, causal=causal, frame_lens=fl)) <= BOUNDS[torch.float64]
    dout = torch.randn_like(out)
    out.backward(dout)
    _check_packed_grad(qkv, torch.autograd.grad(want, (q, k, v), dout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_spatial_qkvpacked(layout, with_cls):
    B, T, N, H, D = 2, 3, 9, 3, 8
    qkv = _packed_leaf(layout, (B, T, N, H, D), torch.float64, 21)
    cls_qkv = torch.randn(B, 3, H, D, dtype=torch.float64, requires_grad=True) if with_cls else None
    res = tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend=REF)
    q, k, v = (x.detach().requires_grad_() for x in qkv.unbind(3))
    if not with_cls:
        want = tk.spatial_attention(q, k, v, backend=REF)
        assert torch.equal(res, want) and res.stride() == want.stride()
        dout = torch.randn_like(res)
        res.backward(dout)
        _check_packed_grad(qkv, torch.autograd.grad(want, (q, k, v), dout))
        return
    cls = tuple(c.detach().requires_grad_() for c in cls_qkv.unbind(1))
    want = tk.spatial_attention(q, k, v, cls=cls, backend=REF)
    for a, b in zip(res, want):
        assert torch.equal(a, b) and a.stride() == b.stride()
    douts = [torch.randn_like(x) for x in res]
    torch.autograd.backward(res, douts)
    grads = torch.autograd.grad(want, (q, k, v) + cls, douts)
    _check_packed_grad(qkv, grads[:3])
    assert cls_qkv.grad.shape == (B, 3, H, D)
    for i in range(3):
        assert rel_err(cls_qkv.grad[:, i], grads[3 + i]) <= BOUNDS[torch.float64]


# ---------------------------------------------------------------------------------------------
# output layout (SPEC §1)


def _heads_major(B, T, N, H, D):
    """q with its H axis outer to T in memory (e.g. from a [B, H, T, N, D] projection)."""
    x = torch.randn(B, H, T, N, D, dtype=torch.float64)
    return x.permute(0, 2, 3, 1, 4)


CALLS = {
    "temporal": lambda q, k, v, backend=REF: tk.temporal_attention(q, k, v, backend=backend),
    "spatial": lambda q, k, v, backend=REF: tk.spatial_attention(q, k, v, backend=backend),
    "joint": lambda q, k, v, backend=REF: tk.joint_attention(q, k, v, backend=backend),
    "factorized": lambda q, k, v, backend=REF: tk.factorized_attention(q, k, v, temporal_heads=1, backend=backend),
    "spatial_cls": lambda q, k, v, backend=REF: tk.spatial_attention(
        q, k, v, cls=tuple(torch.randn(q.shape[0], q.shape[3], q.shape[4], dtype=q.dtype) for _ in range(3)),
        backend=backend,
    )[0],
}


@pytest.mark.parametrize("fn", list(CALLS))
@pytest.mark.parametrize("backend", [REF, None], ids=["reference", "default"])
def test_output_layout_patch_major(fn, backend):
    B, T, N, H, D = 2, 7, 5, 3, 8
    q, k, v = make_qkv("packed_nt", B, T, N, H, D, dtype=torch.float64, device=DEV)
    out = CALLS[fn](q, k, v, backend=backend)
    assert out.shape == (B, T, N, H, D)
    assert out.permute(0, 2, 1, 3, 4).is_contiguous()  # N outer to T, like q
    tokens = out.permute(0, 2, 1, 3, 4).reshape(B, N * T, H * D)
    assert tokens._base is not None and tokens.data_ptr() == out.data_ptr()  # a view, not a copy
    assert torch.equal(tokens.view(B, N, T, H, D).permute(0, 2, 1, 3, 4), out)


@pytest.mark.parametrize("fn", list(CALLS))
@pytest.mark.parametrize("layout", ["separate", "packed_tn", "strided_d"])
def test_output_layout_frame_major(fn, layout):
    q, k, v = make_qkv(layout, 2, 7, 5, 3, 8, dtype=torch.float64, device=DEV)
    out = CALLS[fn](q, k, v)
    assert out.is_contiguous()


@pytest.mark.parametrize("fn", list(CALLS))
def test_output_layout_heads_major(fn):
    B, T, N, H, D = 2, 3, 5, 3, 4
    q, k, v = (_heads_major(B, T, N, H, D) for _ in range(3))
    out = CALLS[fn](q, k, v)
    assert out.stride() == q.stride()


@pytest.mark.parametrize("layout", ["packed_nt", "packed_tn", "heads_major"])
def test_cls_out_follows_q_order(layout):
    B, T, N, H, D = 2, 3, 5, 3, 4
    if layout == "heads_major":
        q, k, v = (_heads_major(B, T, N, H, D) for _ in range(3))
    else:
        q, k, v = make_qkv(layout, B, T, N, H, D, dtype=torch.float64, device=DEV)
    cls = tuple(torch.randn(B, H, D, dtype=torch.float64) for _ in range(3))
    out, cls_out = tk.spatial_attention(q, k, v, cls=cls, backend=REF)
    if layout == "heads_major":  # h outer to t, like q
        assert cls_out.permute(0, 2, 1, 3).is_contiguous() and not cls_out.is_contiguous()
    else:
        assert cls_out.is_contiguous()
    packed = packed_qkv("packed_nt", B, T, N, H, D, dtype=torch.float64, device=DEV)
    out2, cls_out2 = tk.spatial_attention_qkvpacked(packed, cls_qkv=torch.randn(B, 3, H, D, dtype=torch.float64),
                                                    backend=REF)
    assert out2.permute(0, 2, 1, 3, 4).is_contiguous() and cls_out2.is_contiguous()


# ---------------------------------------------------------------------------------------------
# large logits, empty inputs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("fn", ["temporal", "spatial_cls", "joint", "factorized"])
def test_large_logits(fn, dtype):
    """Inputs scaled by 1e3 (logits ~1e5..1e6) stay finite and match the float64 oracle."""
    B, T, N, H, D = 2, 7, 5, 3, 8
    g = torch.Generator().manual_seed(22)
    q, k, v = (
        (1e3 * torch.randn(B, T, N, H, D, dtype=torch.float64, generator=g)).to(dtype).requires_grad_()
        for _ in range(3)
    )
    if fn == "temporal":
        fl = torch.tensor([7, 4])
        outs = [tk.temporal_attention(q, k, v, causal=True, frame_lens=fl, backend=REF)]
        refs = [oracle_temporal(q, k, v, causal=True, frame_lens=fl)]
        inputs = (q, k, v)
    elif fn == "joint":
        fl = torch.tensor([7, 4])
        outs = [tk.joint_attention(q, k, v, causal=True, frame_lens=fl, backend=REF)]
        refs = [oracle_joint(q, k, v, causal=True, frame_lens=fl)]
        inputs = (q, k, v)
    elif fn == "factorized":
        outs = [tk.factorized_attention(q, k, v, temporal_heads=1, backend=REF)]
        refs = [oracle_factorized(q, k, v, temporal_heads=1)]
        inputs = (q, k, v)
    else:
        cls = tuple((1e3 * torch.randn(B, H, D, dtype=torch.float64, generator=g)).to(dtype).requires_grad_()
                    for _ in range(3))
        outs = list(tk.spatial_attention(q, k, v, cls=cls, backend=REF))
        refs = list(oracle_spatial(q, k, v, cls=cls))
        inputs = (q, k, v) + cls
    # dq, dk (and the CLS ones) are those of a saturated softmax: check them in absolute terms.
    magnitude = D ** -0.5 * max(x.detach().abs().max().item() for x in inputs) ** 2 * 4.0
    saturated = {i: magnitude for i in range(len(inputs)) if i not in (2, 5)}
    _check_against(outs, refs, inputs, BOUNDS[dtype], saturated=saturated)


EMPTY_SHAPES = [(0, 3, 4, 2, 5), (2, 0, 4, 2, 5), (2, 3, 0, 2, 5), (2, 3, 4, 0, 5), (2, 3, 4, 2, 0)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("backend", [REF, None], ids=["reference", "default"])
def test_empty_inputs(shape, backend):
    B, T, N, H, D = shape
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    fl = torch.full((B,), T, dtype=torch.long)
    cls = tuple(torch.randn(B, H, D, requires_grad=True) for _ in range(3))
    qkv = torch.randn(B, T, N, 3, H, D, requires_grad=True)
    outs = [
        tk.temporal_attention(q, k, v, backend=backend),
        tk.temporal_attention(q, k, v, causal=True, frame_lens=fl, backend=backend),
        tk.spatial_attention(q, k, v, backend=backend),
        tk.joint_attention(q, k, v, causal=True, frame_lens=fl, backend=backend),
        tk.factorized_attention(q, k, v, temporal_heads=H // 2, backend=backend),
        tk.temporal_attention_qkvpacked(qkv, frame_lens=fl, backend=backend),
        tk.spatial_attention_qkvpacked(qkv, backend=backend),
    ]
    for o in outs:
        assert o.shape == shape and o.numel() == 0 and o.dtype == q.dtype
    out, cls_out = tk.spatial_attention(q, k, v, cls=cls, backend=backend)
    assert out.shape == shape and cls_out.shape == (B, T, H, D)
    out2, cls_out2 = tk.spatial_attention_qkvpacked(qkv, cls_qkv=torch.stack(cls, 1).detach(), backend=backend)
    assert out2.shape == shape and cls_out2.shape == (B, T, H, D)
    # Backward through empty outputs works and gives zero gradients of the right shapes.
    loss = sum(o.sum() for o in outs) + out.sum() + cls_out.sum()
    loss.backward()
    for x in (q, k, v, qkv):
        assert x.grad is not None and x.grad.shape == x.shape
        assert torch.isfinite(x.grad).all()
    assert (q.grad == 0).all() and (k.grad == 0).all() and (v.grad == 0).all()
