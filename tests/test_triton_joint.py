"""Triton joint and factorized attention against the float64 reference.

CPU: the Triton interpreter (float32/float64, tiny shapes; T*N spans several 16-token blocks so
frame-causal block skipping and ``frame_lens`` cuts inside a block are exercised); GPU: every
dtype and the SPEC §5 shapes. Forward and the gradients of q, k, v within SPEC §3 bounds.
"""

from __future__ import annotations

import pytest
import torch

import temporal_kernels as tk
import temporal_kernels.ops  # noqa: F401  (registers the custom ops)
from helpers import assert_close, BOUNDS, case_id, DEVICE, frame_lens_for, interpreter, kernel_dtypes, make_qkv, rel_err
from test_triton_spatial import OPCHECK_UTILS, _grad_outputs, _loss, _ref_leaves

pytestmark = pytest.mark.skipif(DEVICE != "cuda" and not interpreter(), reason="needs a GPU or TRITON_INTERPRET=1")
gpu_only = pytest.mark.skipif(DEVICE != "cuda", reason="GPU-only (shapes/dtypes too slow or unsupported in the interpreter)")


def _check(fn, layout, B, T, N, H, D, dtype, seed=0, **kwargs):
    """``fn`` (a public function) with backend="triton" against the reference, forward and dq/dk/dv."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = make_qkv(layout, B, T, N, H, D, dtype, requires_grad=True, generator=gen)
    refs = _ref_leaves(q, k, v)
    got = fn(q, k, v, backend="triton", **kwargs)
    want = fn(*refs, backend="reference", **kwargs)
    assert_close("out", got, want, dtype)
    assert (got.stride(1) < got.stride(2)) == (q.stride(1) < q.stride(2)), "output must follow q's axis order"
    (dout,) = _grad_outputs((want,), gen)
    grads = torch.autograd.grad(_loss((got,), (dout.to(dtype),)), (q, k, v))
    grads_ref = torch.autograd.grad(_loss((want,), (dout,)), refs)
    for name, g, w in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(name, g, w, dtype)
    return got, grads


def check_joint(layout, B, T, N, H, D, dtype, causal, lens, seed=0):
    frame_lens = frame_lens_for(B, T, generator=torch.Generator().manual_seed(seed)) if lens else None
    out, grads = _check(tk.joint_attention, layout, B, T, N, H, D, dtype, seed, causal=causal, frame_lens=frame_lens)
    if frame_lens is not None:
        # padded frames: output and every gradient exactly 0
        for b, n_valid in enumerate(frame_lens.tolist()):
            for name, x in zip(("out", "dq", "dk", "dv"), (out,) + grads):
                assert (x[b, n_valid:] == 0).all(), f"{name}: padded frames of batch {b} are not 0"


def check_factorized(layout, B, T, N, H, D, dtype, temporal_heads, causal, seed=0):
    _check(tk.factorized_attention, layout, B, T, N, H, D, dtype, seed, temporal_heads=temporal_heads, causal=causal)


# ---------------------------------------------------------------------------------------------
# CPU (interpreter) and GPU


JOINT_CASES = [
    # (layout, B, T, N, H, D, causal, lens): T*N = 27 / 15 / 34 tokens, blocks of 16 in the
    # interpreter; frame_lens_for(B=3) gives lengths T, 0 and 1
    ("separate", 3, 3, 9, 1, 12, False, False),
    ("separate", 3, 3, 9, 1, 12, True, True),
    ("packed_tn", 3, 3, 5, 2, 8, True, False),
    ("packed_tn", 3, 3, 5, 2, 8, False, True),
    ("packed_nt", 3, 2, 17, 1, 12, True, True),
    ("strided_d", 3, 3, 5, 1, 8, True, False),
]


@pytest.mark.parametrize(
    "layout,B,T,N,H,D,causal,lens", JOINT_CASES,
    ids=[case_id(layout=c[0], causal=c[6], lens=c[7]) for c in JOINT_CASES],
)
def test_joint_matches_reference(layout, B, T, N, H, D, causal, lens):
    check_joint(layout, B, T, N, H, D, torch.float32, causal, lens)


@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=lambda d: case_id(d=d))
def test_joint_dtypes(dtype):
    check_joint("packed_nt", 3, 3, 5, 2, 12, dtype, True, True, seed=1)


FACT_CASES = [
    # (layout, B, T, N, H, D, temporal_heads, causal, dtype): 0, 1 and H temporal heads. The
    # temporal heads take the short path (4 frame sequences per program under the interpreter:
    # 7 or 9 sequences leave a partial program) except at T=40, D=72 (T_PAD * D_PAD > 4096), whose
    # flash tiles of one patch's frames span three 16-row blocks
    ("separate", 1, 5, 7, 2, 8, 1, True, torch.float32),
    ("packed_tn", 1, 3, 9, 2, 12, 0, False, torch.float64),
    ("packed_nt", 2, 3, 5, 2, 12, 2, True, torch.float32),
    ("strided_d", 1, 17, 3, 2, 8, 1, True, torch.float64),
    ("packed_nt", 1, 4, 6, 3, 8, 1, False, torch.float32),
    ("packed_tn", 1, 40, 3, 2, 72, 1, True, torch.float32),
]


@pytest.mark.parametrize(
    "layout,B,T,N,H,D,th,causal,dtype", FACT_CASES,
    ids=[case_id(layout=c[0], T=c[2], th=c[6], causal=c[7], d=c[8]) for c in FACT_CASES],
)
def test_factorized_matches_reference(layout, B, T, N, H, D, th, causal, dtype):
    check_factorized(layout, B, T, N, H, D, dtype, th, causal)


def test_joint_launcher_writes_every_element():
    """Direct launcher calls on NaN-poisoned buffers, with a clip of 0 frames (rows that see no key)."""
    from temporal_kernels.triton.joint_attn import joint_attn_bwd, joint_attn_fwd

    B, T, N, H, D = 3, 3, 5, 2, 8
    gen = torch.Generator().manual_seed(5)
    q, k, v = make_qkv("packed_nt", B, T, N, H, D, torch.float64, generator=gen)
    frame_lens = torch.tensor([3, 0, 2], device=DEVICE)
    nan = float("nan")
    out = torch.full_like(q, nan)
    lse = torch.full((B, H, T, N), nan, dtype=torch.float64, device=DEVICE)
    joint_attn_fwd(q, k, v, out, lse, frame_lens, True, 0.35)
    refs = _ref_leaves(q, k, v)
    want = tk.joint_attention(*refs, causal=True, frame_lens=frame_lens, scale=0.35, backend="reference")
    assert_close("out", out, want, torch.float64)
    assert not torch.isnan(lse).any()
    (dout,) = _grad_outputs((want,), gen)
    dq, dk, dv = (torch.full_like(x, nan) for x in (q, k, v))
    joint_attn_bwd(dout, q, k, v, out, lse, frame_lens, True, 0.35, dq, dk, dv)
    for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), torch.autograd.grad(_loss((want,), (dout,)), refs)):
        assert_close(name, g, w, torch.float64)


def test_factorized_launcher_writes_every_element():
    from temporal_kernels.triton.factorized_attn import factorized_attn_bwd, factorized_attn_fwd

    B, T, N, H, D = 1, 5, 7, 3, 8
    gen = torch.Generator().manual_seed(6)
    q, k, v = make_qkv("packed_tn", B, T, N, H, D, torch.float64, generator=gen)
    nan = float("nan")
    out = torch.full_like(q, nan)
    lse = torch.full((B, H, T, N), nan, dtype=torch.float64, device=DEVICE)
    factorized_attn_fwd(q, k, v, out, lse, 2, True, 0.4)
    refs = _ref_leaves(q, k, v)
    want = tk.factorized_attention(*refs, temporal_heads=2, causal=True, scale=0.4, backend="reference")
    assert_close("out", out, want, torch.float64)
    assert torch.isfinite(lse).all()
    (dout,) = _grad_outputs((want,), gen)
    dq, dk, dv = (torch.full_like(x, nan) for x in (q, k, v))
    factorized_attn_bwd(dout, q, k, v, out, lse, 2, True, 0.4, dq, dk, dv)
    for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), torch.autograd.grad(_loss((want,), (dout,)), refs)):
        assert_close(name, g, w, torch.float64)


def test_factorized_temporal_plan(monkeypatch):
    """The GPU's choice of path for the temporal heads (the GPU cases above rely on it): the short
    body where the temporal short kernel's tiles fit, per direction, else one patch per flash
    sequence; the dQ launches of a short backward have no temporal programs."""
    from temporal_kernels.triton import spatial_attn as sa
    from temporal_kernels.triton import temporal_attn as ta

    monkeypatch.setattr(ta, "_interpreting", lambda: False)
    monkeypatch.setattr(sa, "_interpreting", lambda: False)
    B, N, H, TH, D = 2, 30, 3, 2, 64
    for T, fwd_short, bwd_short in [(8, True, True), (40, True, False), (100, False, False)]:
        q = torch.empty(B, T, N, H, D, dtype=torch.bfloat16, device="meta")
        for backward, short in ((False, fwd_short), (True, bwd_short)):
            plan = sa._temporal_plan(sa.MODE_FACTORIZED, q, TH, 128, 8, backward)
            assert plan["T_SHORT"] == short, (T, backward, plan)
            if short:
                groups = ta.factorized_short_groups(T, D, torch.bfloat16, 8, backward)
                assert plan["BLOCK_G_T"] == groups >= 1 and plan["N_TP"] == -(-B * N * TH // groups)
            else:
                assert plan["N_TP"] == B * TH * N * -(-T // 128)
    for mode in (sa.MODE_SPATIAL, sa.MODE_JOINT):
        assert sa._temporal_plan(mode, q, TH, 128, 8, False)["N_TP"] == 0
    assert sa._temporal_plan(sa.MODE_FACTORIZED, q, 0, 128, 8, True) == dict(N_TP=0, T_SHORT=False, BLOCK_G_T=1, T_PAD=16)


def _factorized_fault(which, head, group_of, T=4, D=16):
    """One NaN in q/k/v at (b0, t0, n0, head): the output is NaN exactly where the reference's is;
    gradients outside ``group_of(b0, t0, n0, head)`` (a bool mask of the element's attention
    problem) are finite, and the NaN reaches the group's gradients (test_gpu_reliability's rule)."""
    B, N, H = 1, 10, 2
    b0, t0, n0 = 0, 2, 3
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(B, T, N, H, D, generator=gen, dtype=torch.float32) for _ in range(3))
    {"q": q, "k": k, "v": v}[which][b0, t0, n0, head, 5] = float("nan")
    ins = [x.clone().requires_grad_() for x in (q, k, v)]
    refs = [x.double().requires_grad_() for x in (q, k, v)]
    out = tk.factorized_attention(*ins, temporal_heads=1, causal=True, backend="triton")
    want = tk.factorized_attention(*refs, temporal_heads=1, causal=True, backend="reference")
    wrong = torch.isnan(out) != torch.isnan(want)
    assert not wrong.any(), f"out: {int(wrong.sum())} elements differ from the reference in being NaN"
    grads = torch.autograd.grad(out, ins, torch.randn(out.shape, generator=gen))
    group = torch.zeros(B, T, N, H, dtype=torch.bool)
    group[group_of(b0, t0, n0, head)] = True
    for name, g in zip(("dq", "dk", "dv"), grads):
        leaked = ~torch.isfinite(g[~group])
        assert not leaked.any(), f"{name}: {int(leaked.sum())} non-finite elements outside the element's problem"
    assert any(torch.isnan(g[group]).any() for g in grads), "the NaN must reach its problem's gradients"


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU reliability suite has the fault tests")
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_factorized_spatial_head_fault_stays_in_its_frame(which):
    _factorized_fault(which, 1, lambda b, t, n, h: (b, t, slice(None), h))


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU reliability suite has the fault tests")
@pytest.mark.parametrize("T,D", [(4, 16), (40, 72)], ids=["short-T4-D16", "flash-T40-D72"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_factorized_temporal_head_fault_stays_in_its_patch(which, T, D):
    # Both paths of the temporal heads (a tile of several patches' frames once leaked a NaN to
    # the other patches through the masked zeros of P and dS)
    _factorized_fault(which, 0, lambda b, t, n, h: (b, slice(None), n, h), T=T, D=D)


def test_joint_and_factorized_opcheck():
    ops = torch.ops.temporal_kernels
    B, T, N, H, D = 2, 2, 5, 2, 8
    gen = torch.Generator().manual_seed(7)
    q, k, v = make_qkv("packed_nt", B, T, N, H, D, torch.float32, requires_grad=True, generator=gen)
    frame_lens = torch.tensor([2, 1], device=DEVICE)

    def check(op, args):
        torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)

    check(ops.triton_joint_fwd.default, (q, k, v, frame_lens, True, 0.4))
    check(ops.triton_factorized_fwd.default, (q, k, v, 1, True, 0.4))
    q, k, v = (x.detach() for x in (q, k, v))
    out, lse = ops.triton_joint_fwd(q, k, v, frame_lens, True, 0.4)
    dout = torch.randn(out.shape, generator=gen).to(DEVICE)
    check(ops.triton_joint_bwd.default, (dout, q, k, v, out, lse, frame_lens, True, 0.4))
    out, lse = ops.triton_factorized_fwd(q, k, v, 1, True, 0.4)
    check(ops.triton_factorized_bwd.default, (dout, q, k, v, out, lse, 1, True, 0.4))


# ---------------------------------------------------------------------------------------------
# GPU only: every dtype, SPEC §5 shapes, odd head dims, torch.compile

GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@gpu_only
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=lambda d: case_id(d=d))
@pytest.mark.parametrize("lens", [False, True], ids=["", "lens"])
@pytest.mark.parametrize("causal", [False, True], ids=["", "causal"])
@pytest.mark.parametrize(
    "layout,B,T,N,H,D",
    [("packed_nt", 2, 8, 196, 12, 64), ("packed_tn", 3, 7, 197, 3, 40), ("strided_d", 3, 5, 50, 2, 72)],
    ids=["B2-T8-N196-H12-D64", "B3-T7-N197-H3-D40", "B3-T5-N50-H2-D72"],
)
def test_joint_gpu(layout, B, T, N, H, D, dtype, causal, lens):
    check_joint(layout, B, T, N, H, D, dtype, causal, lens)


@gpu_only
@pytest.mark.parametrize("causal", [False, True], ids=["", "causal"])
def test_joint_gpu_float64(causal):
    check_joint("packed_nt", 3, 4, 50, 2, 64, torch.float64, causal, True)


@gpu_only
@pytest.mark.parametrize("dtype", GPU_DTYPES + [torch.float64], ids=lambda d: case_id(d=d))
@pytest.mark.parametrize("causal", [False, True], ids=["", "causal"])
@pytest.mark.parametrize(
    "layout,B,T,N,H,D,th",
    [
        ("packed_nt", 8, 8, 196, 12, 64, 6),
        ("packed_tn", 2, 7, 197, 4, 40, 1),
        ("separate", 2, 100, 20, 3, 72, 2),
        ("strided_d", 2, 16, 50, 3, 64, 3),
        ("packed_tn", 2, 8, 50, 3, 64, 0),
        ("packed_nt", 2, 40, 30, 3, 64, 2),  # 16-bit: short forward, flash backward of the temporal heads
    ],
    ids=["B8-T8-N196-H12-D64-th6", "B2-T7-N197-H4-D40-th1", "B2-T100-N20-H3-D72-th2", "B2-T16-N50-H3-D64-th3",
         "B2-T8-N50-H3-D64-th0", "B2-T40-N30-H3-D64-th2"],
)
def test_factorized_gpu(layout, B, T, N, H, D, th, dtype, causal):
    if dtype == torch.float64 and B * T * N > 4000:
        B, T = 1, min(T, 4)
    check_factorized(layout, B, T, N, H, D, dtype, th, causal)


@pytest.mark.xdist_group("large_reference")  # GiBs of memory: one at a time on the GPU
@gpu_only
def test_joint_many_programs_gpu():
    """More than 65,535 programs in the 1-D grid (B*H = 72,000 sequences of one row block).

    The kernels run on the whole batch; the float64 reference (GBs for the whole batch, too much
    for a GPU shared by parallel test workers) runs on a sample of batch elements, which are
    independent in joint attention, including the last ones (programs past 65,535)."""
    B, T, N, H, D = 1200, 2, 16, 60, 16
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    q, k, v = make_qkv("packed_tn", B, T, N, H, D, dtype, requires_grad=True, generator=gen)
    frame_lens = frame_lens_for(B, T, generator=gen)
    out = tk.joint_attention(q, k, v, causal=True, frame_lens=frame_lens, backend="triton")
    dout = torch.randn(out.shape, generator=gen).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    sample = torch.tensor([0, 1, 2, 3, B // 2, B - 4, B - 3, B - 2, B - 1], device=DEVICE)
    refs = _ref_leaves(*(x[sample] for x in (q, k, v)))
    want = tk.joint_attention(*refs, causal=True, frame_lens=frame_lens[sample], backend="reference")
    assert_close("out", out[sample], want, dtype)
    grads_ref = torch.autograd.grad(want, refs, dout[sample].double())
    for name, g, w in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(name, g[sample], w, dtype)
    # the whole batch: finite, and exactly 0 on padded frames
    padded = torch.arange(T, device=DEVICE)[None, :] >= frame_lens[:, None]  # [B, T]
    for name, x in zip(("out", "dq", "dk", "dv"), (out,) + grads):
        assert torch.isfinite(x).all(), f"{name}: non-finite values"
        assert (x[padded] == 0).all(), f"{name}: padded frames are not 0"


@gpu_only
def test_joint_factorized_torch_compile_gpu():
    B, T, N, H, D = 2, 4, 50, 4, 64
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(8)
    q, k, v = make_qkv("packed_nt", B, T, N, H, D, dtype, requires_grad=True, generator=gen)
    frame_lens = torch.tensor([4, 2], device=DEVICE)

    def f(q, k, v):
        a = tk.joint_attention(q, k, v, causal=True, frame_lens=frame_lens, backend="triton")
        b = tk.factorized_attention(q, k, v, temporal_heads=2, causal=True, backend="triton")
        return (a.float() * b.float()).sum()

    compiled = torch.compile(f, fullgraph=True)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    loss_e = f(q, k, v)
    grads_e = torch.autograd.grad(loss_e, (q, k, v))
    assert rel_err(loss, loss_e) <= BOUNDS[dtype]
    for g, w in zip(grads, grads_e):
        assert rel_err(g, w) <= BOUNDS[dtype]
