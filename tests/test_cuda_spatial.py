"""CUDA C++ backend, spatial (+CLS) and joint attention (issue 6, csrc/spatial_attn.cu) against the
float64 reference.

GPU only: skipped unless the extension is built and a CUDA device is present (the CPU CI runs the
same kernels through the host emulation: tests/test_csrc_emu_spatial.py). Every dtype / layout,
with and without CLS, joint masks (frame-causal, frame_lens), forward and every gradient (the CLS
tensors' too; the packed forms' dqkv and dcls_qkv), odd sizes, SPEC §5 shapes, head dims up to
256, unaligned inputs, more than 65,535 work items, the ops called directly (lse layout and
values, padded rows), gradcheck, opcheck, torch.compile, and the Triton backend as a second opinion.
"""

from __future__ import annotations

import pytest
import torch

import temporal_kernels as tk
from temporal_kernels import _extension

from helpers import assert_close, BOUNDS, case_id, DEVICE, frame_lens_for, LAYOUTS, leaves, make_qkv, MASKS, packed_qkv, padded_rows, poison_allocator, rel_err, seeded

pytestmark = pytest.mark.skipif(
    "cuda" not in tk.available_backends(),
    reason=f"the 'cuda' backend is unavailable ({_extension.load_error() or 'no CUDA device'})",
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
NAN = float("nan")

# (B, T, N, H, D): odd sizes, head dims that are not multiples of 8, D = 256, N + CLS crossing
# row blocks and key tiles.
SPATIAL_SHAPES = [
    (2, 7, 197, 3, 40),
    (3, 3, 13, 2, 72),
    (2, 4, 7, 2, 20),
    (1, 3, 100, 2, 256),
    (2, 2, 1, 3, 8),
]
JOINT_SHAPES = [
    (3, 7, 33, 3, 40),
    (3, 4, 49, 2, 72),
    (3, 3, 13, 2, 20),
    (3, 5, 11, 1, 256),
]


def _ref64(*xs):
    return tuple(x.detach().double().requires_grad_() for x in xs)


def _randn(shape, dtype, gen):
    return torch.randn(shape, dtype=torch.float64, generator=gen).to(DEVICE, dtype)


# ---------------------------------------------------------------------------------------------
# spatial


def check_spatial(shape, layout, dtype, with_cls, gen, scale=None):
    B, T, N, H, D = shape
    q, k, v = make_qkv(layout, B, T, N, H, D, dtype=dtype, requires_grad=True, generator=gen)
    cls = tuple(_randn((B, H, D), dtype, gen).requires_grad_() for _ in range(3)) if with_cls else None
    inputs = (q, k, v) + (cls or ())
    before = [x.detach().clone() for x in inputs]
    poison_allocator(8 * q.numel() * q.element_size())
    got = tk.spatial_attention(q, k, v, cls=cls, scale=scale, backend="cuda")
    refs = _ref64(*inputs)
    want = tk.spatial_attention(*refs[:3], cls=refs[3:] or None, scale=scale, backend="reference")
    got, want = (got, want) if with_cls else ((got,), (want,))
    for name, g, w in zip(("out", "cls_out"), got, want):
        assert g.dtype == dtype, name
        assert_close(name, g, w, dtype)
    # SPEC §1: the output follows q's axis memory order (a patch-major input gives a patch-major output)
    assert (got[0].stride(1) < got[0].stride(2)) == (q.stride(1) < q.stride(2))
    douts = [_randn(w.shape, dtype, gen) for w in want]
    grads = torch.autograd.grad(got, inputs, douts)
    grads_ref = torch.autograd.grad(want, refs, [d.double() for d in douts])
    for name, g, w in zip(("dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"), grads, grads_ref):
        assert_close(name, g, w, dtype)
    for b, x in zip(before, inputs):
        assert torch.equal(b, x.detach()), "inputs must not be modified"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SPATIAL_SHAPES, ids=lambda s: case_id(B=s[0], T=s[1], N=s[2], H=s[3], D=s[4]))
def test_spatial(shape, layout, with_cls, dtype):
    check_spatial(shape, layout, dtype, with_cls, seeded("spatial", shape, layout, with_cls, dtype))


@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize(
    "shape",
    [(8, 8, 196, 12, 64), (2, 16, 784, 12, 64)] + [(2, 8, 196, 8, d) for d in (80, 128, 160)],
    ids=lambda s: case_id(B=s[0], T=s[1], N=s[2], H=s[3], D=s[4]),
)
def test_spatial_spec_shapes_bf16(shape, with_cls):
    check_spatial(shape, "packed_nt", torch.bfloat16, with_cls, seeded("spec", shape, with_cls))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: case_id(dtype=d))
def test_spatial_scale_and_large_logits(dtype):
    gen = seeded("scale", dtype)
    B, T, N, H, D = 2, 3, 17, 2, 16
    q, k, v = make_qkv("separate", B, T, N, H, D, dtype=dtype, generator=gen)
    q = (q * 8).requires_grad_()
    k, v = k.requires_grad_(), v.requires_grad_()
    cls = tuple((_randn((B, H, D), dtype, gen) * 8).requires_grad_() for _ in range(3))
    got = tk.spatial_attention(q, k, v, cls=cls, scale=0.37, backend="cuda")
    refs = _ref64(q, k, v, *cls)
    want = tk.spatial_attention(*refs[:3], cls=refs[3:], scale=0.37, backend="reference")
    for name, g, w in zip(("out", "cls_out"), got, want):
        assert_close(name, g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout", ("packed_tn", "packed_nt", "strided_d"))
def test_spatial_qkvpacked(layout, with_cls, dtype):
    B, T, N, H, D = 3, 5, 37, 3, 40
    gen = seeded("packed", layout, with_cls, dtype)
    qkv = packed_qkv(layout, B, T, N, H, D, dtype=dtype, generator=gen).detach().requires_grad_()
    cls_qkv = _randn((B, 3, H, D), dtype, gen).requires_grad_() if with_cls else None
    inputs = (qkv,) + ((cls_qkv,) if with_cls else ())
    poison_allocator(8 * qkv.numel() * qkv.element_size())
    got = tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend="cuda")
    refs = _ref64(*inputs)
    want = tk.spatial_attention_qkvpacked(refs[0], cls_qkv=refs[1] if with_cls else None, backend="reference")
    got, want = (got, want) if with_cls else ((got,), (want,))
    for name, g, w in zip(("out", "cls_out"), got, want):
        assert_close(name, g, w, dtype)
    douts = [_randn(w.shape, dtype, gen) for w in want]
    grads = torch.autograd.grad(got, inputs, douts)
    grads_ref = torch.autograd.grad(want, refs, [d.double() for d in douts])
    for name, g, w in zip(("dqkv", "dcls_qkv"), grads, grads_ref):
        assert g.shape == w.shape and g.dtype == dtype
        assert_close(name, g, w, dtype)
    if layout == "packed_nt":
        assert got[0].permute(0, 2, 1, 3, 4).is_contiguous()
        assert grads[0].permute(0, 2, 1, 3, 4, 5).is_contiguous()


def test_spatial_cls_gradient_without_cls_out_use():
    """Only ``out`` used (dcls_out is None in the backward): the CLS tensors still get gradients."""
    B, T, N, H, D = 2, 3, 9, 2, 24
    gen = seeded("cls-unused")
    q, k, v = make_qkv("separate", B, T, N, H, D, torch.float64, requires_grad=True, generator=gen)
    cls = tuple(_randn((B, H, D), torch.float64, gen).requires_grad_() for _ in range(3))
    out, _ = tk.spatial_attention(q, k, v, cls=cls, backend="cuda")
    refs = _ref64(q, k, v, *cls)
    want, _ = tk.spatial_attention(*refs[:3], cls=refs[3:], backend="reference")
    grads = torch.autograd.grad(out.sum(), (q, k, v) + cls)
    grads_ref = torch.autograd.grad(want.sum(), refs, allow_unused=True)
    for name, g, w in zip(("dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"), grads, grads_ref):
        assert_close(name, g, torch.zeros_like(g) if w is None else w, torch.float64)


# ---------------------------------------------------------------------------------------------
# joint


def check_joint(shape, layout, dtype, causal, lens, gen):
    B, T, N, H, D = shape
    q, k, v = make_qkv(layout, B, T, N, H, D, dtype=dtype, requires_grad=True, generator=gen)
    frame_lens = frame_lens_for(B, T, generator=gen) if lens else None
    poison_allocator(8 * q.numel() * q.element_size())
    out = tk.joint_attention(q, k, v, causal=causal, frame_lens=frame_lens, backend="cuda")
    refs = _ref64(q, k, v)
    want = tk.joint_attention(*refs, causal=causal, frame_lens=frame_lens, backend="reference")
    assert out.dtype == dtype and (out.stride(1) < out.stride(2)) == (q.stride(1) < q.stride(2))
    assert_close("out", out, want, dtype)
    dout = _randn(out.shape, dtype, gen)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    grads_ref = torch.autograd.grad(want, refs, dout.double())
    for name, g, w in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(name, g, w, dtype)
    padded = padded_rows(B, T, frame_lens)
    for name, x in (("out", out),) + tuple(zip(("dq", "dk", "dv"), grads)):
        assert (x[padded] == 0).all(), f"{name}: padded frames must be exactly 0"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: case_id(causal=m[0], lens=m[1]) or "nomask")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", JOINT_SHAPES, ids=lambda s: case_id(B=s[0], T=s[1], N=s[2], H=s[3], D=s[4]))
def test_joint(shape, layout, mask, dtype):
    causal, lens = mask
    check_joint(shape, layout, dtype, causal, lens, seeded("joint", shape, layout, mask, dtype))


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: case_id(causal=m[0], lens=m[1]) or "nomask")
def test_joint_spec_shape_bf16(mask):
    check_joint((2, 8, 196, 12, 64), "packed_nt", torch.bfloat16, *mask, seeded("joint-spec", mask))


# ---------------------------------------------------------------------------------------------
# layouts and launch sizes


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: case_id(dtype=d))
def test_unaligned_inputs(dtype):
    """Base pointers off 16-byte alignment: the kernels fall back to scalar loads and stores."""
    B, T, N, H, D = 3, 4, 9, 2, 64
    gen = seeded("unaligned", dtype)
    flat = _randn((3 * B * T * N * H * D + 1,), dtype, gen)
    q, k, v = (x.detach().requires_grad_() for x in flat[1:].view(B, T, N, 3, H, D).unbind(3))
    assert q.data_ptr() % 16 != 0
    cls = tuple(_randn((B, H, D), dtype, gen).requires_grad_() for _ in range(3))
    got = tk.spatial_attention(q, k, v, cls=cls, backend="cuda")
    refs = _ref64(q, k, v, *cls)
    want = tk.spatial_attention(*refs[:3], cls=refs[3:], backend="reference")
    douts = [_randn(w.shape, dtype, gen) for w in want]
    grads = torch.autograd.grad(got, (q, k, v) + cls, douts)
    grads_ref = torch.autograd.grad(want, refs, [d.double() for d in douts])
    for name, g, w in zip(("out", "cls_out", "dq", "dk", "dv", "dq_cls", "dk_cls", "dv_cls"),
                          tuple(got) + grads, tuple(want) + grads_ref):
        assert_close(name, g, w, dtype)
    frame_lens = frame_lens_for(B, T, generator=gen)
    out = tk.joint_attention(q, k, v, causal=True, frame_lens=frame_lens, backend="cuda")
    want = tk.joint_attention(*refs[:3], causal=True, frame_lens=frame_lens, backend="reference")
    assert_close("joint out", out, want, dtype)


@pytest.mark.xdist_group("large_reference")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=lambda d: case_id(dtype=d))
def test_many_work_items(dtype):
    """More than 65,535 sequences (spatial: B*T*H, joint: B*H): a 1-D grid-stride walk."""
    gen = seeded("many", dtype)
    check_spatial((1, 5462, 4, 12, 32), "packed_tn", dtype, True, gen)
    check_joint((5462, 1, 4, 12, 32), "packed_tn", dtype, False, False, gen)


def test_empty_inputs():
    ops = torch.ops.temporal_kernels
    q = torch.randn(2, 3, 0, 2, 16, device=DEVICE)
    out, cls_out, lse, lse_cls = ops.cuda_spatial_fwd(q, q, q, None, None, None, 0.25)
    assert out.shape == q.shape and cls_out.numel() == 0 and lse.shape == (2, 2, 3, 0) and lse_cls.numel() == 0
    out, lse = ops.cuda_joint_fwd(q, q, q, None, True, 0.25)
    assert out.shape == q.shape and lse.shape == (2, 2, 3, 0)


# ---------------------------------------------------------------------------------------------
# the ops called directly: lse layout and values, padded rows, dout of padded frames never read


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("layout", ("packed_tn", "packed_nt"))
def test_ops_spatial_lse(layout, dtype):
    B, T, N, H, D = 2, 3, 37, 3, 40
    gen = seeded("ops-spatial", layout, dtype)
    qkv = packed_qkv(layout, B, T, N, H, D, dtype=dtype, generator=gen)
    cls_qkv = _randn((B, 3, H, D), dtype, gen)
    q, k, v = qkv.unbind(3)
    qc, kc, vc = cls_qkv.unbind(1)
    scale = 0.3
    ops = torch.ops.temporal_kernels
    poison_allocator(8 * qkv.numel() * qkv.element_size())
    out, cls_out, lse, lse_cls = ops.cuda_spatial_fwd(q, k, v, qc, kc, vc, scale)
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    assert lse.shape == (B, H, T, N) and lse.is_contiguous() and lse.dtype == stat
    assert lse_cls.shape == (B, H, T) and lse_cls.is_contiguous() and lse_cls.dtype == stat
    q64, k64, qc64, kc64 = q.double(), k.double(), qc.double(), kc.double()
    logits = torch.cat([torch.einsum("btnhd,btmhd->bhtnm", q64, k64),
                        torch.einsum("btnhd,bhd->bhtn", q64, kc64)[..., None]], -1) * scale
    assert_close("lse", lse, torch.logsumexp(logits, -1), dtype)
    cls_logits = torch.cat([torch.einsum("bhd,btnhd->bhtn", qc64, k64),
                            (qc64 * kc64).sum(-1)[:, :, None, None].expand(B, H, T, 1)], -1) * scale
    assert_close("lse_cls", lse_cls, torch.logsumexp(cls_logits, -1), dtype)
    packed = ops.cuda_spatial_qkvpacked_fwd(qkv, cls_qkv, scale)
    for name, a, b in zip(("out", "cls_out", "lse", "lse_cls"), (out, cls_out, lse, lse_cls), packed):
        assert torch.equal(a, b) and a.stride() == b.stride(), name
    none = ops.cuda_spatial_fwd(q, k, v, None, None, None, scale)
    assert none[1].numel() == 0 and none[3].numel() == 0 and none[3].dtype == stat


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("causal", [False, True], ids=["", "causal"])
def test_ops_joint_lse_and_padding(causal, dtype):
    B, T, N, H, D = 3, 5, 13, 2, 40
    gen = seeded("ops-joint", causal, dtype)
    qkv = packed_qkv("packed_nt", B, T, N, H, D, dtype=dtype, generator=gen)
    q, k, v = qkv.unbind(3)
    scale = D ** -0.5
    frame_lens = frame_lens_for(B, T, generator=gen).to(torch.int32)
    padded = padded_rows(B, T, frame_lens)
    ops = torch.ops.temporal_kernels
    poison_allocator(8 * qkv.numel() * qkv.element_size())
    out, lse = ops.cuda_joint_fwd(q, k, v, frame_lens, causal, scale)
    assert lse.shape == (B, H, T, N) and lse.is_contiguous()
    lse_padded = padded[:, None, :, None].expand_as(lse)
    assert (lse[lse_padded] == float("inf")).all(), "lse of rows without keys is +inf"
    tok = torch.einsum("btnhd,bsmhd->bhtnsm", q.double(), k.double()) * scale
    frames = torch.arange(T, device=DEVICE)
    visible = ~padded[:, None, :].expand(B, T, T)
    if causal:
        visible = visible & (frames[None, :, None] >= frames[None, None, :])
    tok = tok.masked_fill(~visible[:, None, :, None, :, None], float("-inf")).flatten(-2)
    assert_close("lse", lse[~lse_padded], torch.logsumexp(tok, -1)[~lse_padded], dtype)

    refs = _ref64(q, k, v)
    want = tk.joint_attention(*refs, causal=causal, frame_lens=frame_lens, scale=scale, backend="reference")
    dout = _randn(q.shape, dtype, gen)
    grads_ref = torch.autograd.grad(want, refs, dout.double())
    dout[padded] = NAN
    poison_allocator(8 * qkv.numel() * qkv.element_size())
    for name, g, w in zip(("dq", "dk", "dv"), ops.cuda_joint_bwd(dout, q, k, v, out, lse, frame_lens, causal, scale),
                          grads_ref):
        assert_close(name, g, w, dtype)
        assert (g[padded] == 0).all()


# ---------------------------------------------------------------------------------------------
# autograd, custom-op registration, torch.compile, the Triton backend as a second opinion


def test_backend_entries():
    from temporal_kernels.ops import CUDA_OPS

    assert {"spatial_attention", "spatial_attention_qkvpacked", "joint_attention"} <= set(CUDA_OPS)


@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
def test_gradcheck_spatial(with_cls):
    gen = seeded("gradcheck-spatial", with_cls)
    B, T, N, H, D = 2, 2, 5, 2, 12
    q, k, v = leaves(*make_qkv("packed_nt", B, T, N, H, D, dtype=torch.float64, generator=gen))
    cls = tuple(_randn((B, H, D), torch.float64, gen).requires_grad_() for _ in range(3)) if with_cls else ()

    def f(q, k, v, *cls):
        return tk.spatial_attention(q, k, v, cls=cls or None, scale=0.4, backend="cuda")

    assert torch.autograd.gradcheck(f, (q, k, v) + cls)
    qkv = packed_qkv("packed_tn", B, T, N, H, D, dtype=torch.float64, generator=gen).detach().requires_grad_()
    cls_qkv = (_randn((B, 3, H, D), torch.float64, gen).requires_grad_(),) if with_cls else ()
    assert torch.autograd.gradcheck(
        lambda x, *c: tk.spatial_attention_qkvpacked(x, cls_qkv=c[0] if c else None, backend="cuda"),
        (qkv,) + cls_qkv,
    )


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: case_id(causal=m[0], lens=m[1]) or "nomask")
def test_gradcheck_joint(mask):
    causal, lens = mask
    gen = seeded("gradcheck-joint", mask)
    B, T, N, H, D = 3, 3, 2, 2, 12
    q, k, v = leaves(*make_qkv("packed_nt", B, T, N, H, D, dtype=torch.float64, generator=gen))
    frame_lens = frame_lens_for(B, T, generator=gen) if lens else None
    assert torch.autograd.gradcheck(
        lambda q, k, v: tk.joint_attention(q, k, v, causal=causal, frame_lens=frame_lens, backend="cuda"), (q, k, v)
    )


@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: case_id(dtype=d))
def test_opcheck(dtype, with_cls):
    B, T, N, H, D = 2, 3, 9, 2, 40
    gen = seeded("opcheck", dtype, with_cls)
    qkv = packed_qkv("packed_nt", B, T, N, H, D, dtype=dtype, generator=gen).detach().requires_grad_()
    q, k, v = qkv.unbind(3)
    cls_qkv = _randn((B, 3, H, D), dtype, gen).requires_grad_() if with_cls else None
    cls = tuple(cls_qkv.unbind(1)) if with_cls else (None,) * 3
    ops = torch.ops.temporal_kernels
    torch.library.opcheck(ops.cuda_spatial_fwd, (q, k, v, *cls, 0.4))
    out, cls_out, lse, lse_cls = ops.cuda_spatial_fwd(q, k, v, *cls, 0.4)
    dout = torch.randn_like(out)
    dcls_out = torch.randn_like(cls_out) if with_cls else None
    det = lambda x: None if x is None else x.detach()  # noqa: E731
    torch.library.opcheck(
        ops.cuda_spatial_bwd,
        (dout, dcls_out, q.detach(), k.detach(), v.detach(), *map(det, cls), out.detach(),
         det(cls_out) if with_cls else None, lse, lse_cls if with_cls else None, 0.4),
    )
    torch.library.opcheck(ops.cuda_spatial_qkvpacked_fwd, (qkv, cls_qkv, 0.4))
    torch.library.opcheck(
        ops.cuda_spatial_qkvpacked_bwd,
        (dout, dcls_out, qkv.detach(), det(cls_qkv), out.detach(), det(cls_out) if with_cls else None, lse,
         lse_cls if with_cls else None, 0.4),
    )
    frame_lens = torch.tensor([3, 1], device=DEVICE)
    torch.library.opcheck(ops.cuda_joint_fwd, (q, k, v, frame_lens, True, 0.4))
    out, lse = ops.cuda_joint_fwd(q, k, v, frame_lens, True, 0.4)
    torch.library.opcheck(
        ops.cuda_joint_bwd, (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse,
                             frame_lens, True, 0.4)
    )


def test_compile_fullgraph():
    torch._dynamo.reset()
    B, T, N, H, D = 2, 4, 33, 4, 64
    gen = seeded("compile")
    qkv = packed_qkv("packed_nt", B, T, N, H, D, dtype=torch.bfloat16, generator=gen).detach().requires_grad_()
    cls_qkv = _randn((B, 3, H, D), torch.bfloat16, gen).requires_grad_()
    frame_lens = torch.tensor([4, 2], device=DEVICE)

    def f(qkv, cls_qkv, frame_lens):
        out, cls_out = tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend="cuda")
        joint = tk.joint_attention(*qkv.unbind(3), causal=True, frame_lens=frame_lens, backend="cuda")
        return (out.float() ** 2).sum() + cls_out.float().sum() + (joint.float() ** 2).sum()

    compiled = torch.compile(f, fullgraph=True)
    g_compiled = torch.autograd.grad(compiled(qkv, cls_qkv, frame_lens), (qkv, cls_qkv))
    g_eager = torch.autograd.grad(f(qkv, cls_qkv, frame_lens), (qkv, cls_qkv))
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif("triton" not in tk.available_backends(), reason="the 'triton' backend is unavailable")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: case_id(dtype=d))
@pytest.mark.parametrize("shape", [(8, 8, 196, 12, 64), (2, 7, 197, 3, 40), (2, 3, 50, 4, 72)],
                         ids=lambda s: case_id(B=s[0], T=s[1], N=s[2], H=s[3], D=s[4]))
def test_matches_triton(shape, dtype):
    B, T, N, H, D = shape
    frame_lens = frame_lens_for(B, T, generator=seeded("triton-lens", shape))
    results = {}
    for backend in ("cuda", "triton"):
        gen = seeded("triton-in", shape, dtype)
        qkv = packed_qkv("packed_nt", B, T, N, H, D, dtype=dtype, generator=gen).detach().requires_grad_()
        cls_qkv = _randn((B, 3, H, D), dtype, gen).requires_grad_()
        out, cls_out = tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend=backend)
        joint = tk.joint_attention(*qkv.unbind(3), causal=True, frame_lens=frame_lens, backend=backend)
        gen = seeded("triton-dout", shape, dtype)
        douts = [_randn(x.shape, dtype, gen) for x in (out, cls_out, joint)]
        grads = torch.autograd.grad((out, cls_out, joint), (qkv, cls_qkv), douts)
        results[backend] = (out, cls_out, joint) + grads
    names = ("out", "cls_out", "joint", "dqkv", "dcls_qkv")
    for name, a, b in zip(names, results["cuda"], results["triton"]):
        assert a.stride() == b.stride(), name
        err = rel_err(a, b)
        assert err <= BOUNDS[dtype], f"{name}: cuda vs triton {err:.3e} > {BOUNDS[dtype]:.0e}"
