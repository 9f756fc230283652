"""SPEC §6: every bad input of every public function raises the right exception type with a
message that names the argument, what was expected and what was given; inputs are never modified;
backend selection errors."""

from __future__ import annotations

import re

import pytest
import torch

import temporal_kernels as tk
from temporal_kernels import _backends

B, T, N, H, D = 2, 3, 4, 2, 5
DEV = "cpu"


def _qkv(dtype=torch.float32):
    return tuple(torch.randn(B, T, N, H, D, dtype=dtype) for _ in range(3))


def _packed(dtype=torch.float32):
    return torch.randn(B, T, N, 3, H, D, dtype=dtype)


def _cls(dtype=torch.float32):
    return tuple(torch.randn(B, H, D, dtype=dtype) for _ in range(3))


# Every public function as ``call(q, k, v, **kw)`` so that the q/k/v checks can be shared; the
# packed forms pack q, k, v (kwargs may hold a replacement ``qkv``).
FNS = {
    "temporal": lambda q, k, v, **kw: tk.temporal_attention(q, k, v, **kw),
    "spatial": lambda q, k, v, **kw: tk.spatial_attention(q, k, v, **kw),
    "joint": lambda q, k, v, **kw: tk.joint_attention(q, k, v, **kw),
    "factorized": lambda q, k, v, **kw: tk.factorized_attention(q, k, v, **{"temporal_heads": 1, **kw}),
}
QKV_FNS = list(FNS)
PACKED_FNS = {
    "temporal_qkvpacked": lambda qkv, **kw: tk.temporal_attention_qkvpacked(qkv, **kw),
    "spatial_qkvpacked": lambda qkv, **kw: tk.spatial_attention_qkvpacked(qkv, **kw),
}
ALL_FNS = {**FNS, **{k: (lambda f: lambda q, k, v, **kw: f(torch.stack([q, k, v], 3), **kw))(f)
                     for k, f in PACKED_FNS.items()}}
FRAME_LENS_FNS = ["temporal", "joint", "temporal_qkvpacked"]
CAUSAL_FNS = ["temporal", "joint", "factorized", "temporal_qkvpacked"]


def raises(exc, fn, *args, names, expected=(), given=(), **kw):
    """Call ``fn`` and check the exception type and that its message contains the argument name
    and the words/values for what was expected and what was given."""
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    msg = str(info.value)
    for needle in (names if isinstance(names, (list, tuple)) else [names]):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert re.search(r"expected", msg) and re.search(r"\bgot\b", msg), msg
    for needle in (*expected, *given):
        assert str(needle) in msg, f"{needle!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# q, k, v


@pytest.mark.parametrize("fn", QKV_FNS)
@pytest.mark.parametrize("arg", ["q", "k", "v"])
def test_not_a_tensor(fn, arg):
    qkv = dict(zip("qkv", _qkv()))
    qkv[arg] = qkv[arg].tolist()
    raises(TypeError, FNS[fn], qkv["q"], qkv["k"], qkv["v"], names=arg, expected=["Tensor"], given=["list"])


@pytest.mark.parametrize("fn", QKV_FNS)
@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("shape", [(B, T, N, H * D), (B, T, N, H, D, 1), (D,)], ids=["rank4", "rank6", "rank1"])
def test_wrong_rank(fn, arg, shape):
    qkv = dict(zip("qkv", _qkv()))
    qkv[arg] = torch.randn(shape)
    raises(ValueError, FNS[fn], qkv["q"], qkv["k"], qkv["v"], names=arg, expected=["rank-5", "[B, T, N, H, D]"],
           given=[tuple(shape)])


@pytest.mark.parametrize("fn", QKV_FNS)
@pytest.mark.parametrize("arg", ["k", "v"])
@pytest.mark.parametrize("shape", [(B, T, N, H, D + 1), (B + 1, T, N, H, D), (B, T - 1, N, H, D), (B, T, N, 1, D)],
                         ids=["D", "B", "T", "H"])
def test_mismatched_shape(fn, arg, shape):
    qkv = dict(zip("qkv", _qkv()))
    qkv[arg] = torch.randn(shape)
    raises(ValueError, FNS[fn], qkv["q"], qkv["k"], qkv["v"], names=[arg, "q"], expected=[(B, T, N, H, D)],
           given=[shape])


@pytest.mark.parametrize("fn", QKV_FNS)
@pytest.mark.parametrize("arg", ["k", "v"])
def test_mismatched_dtype(fn, arg):
    qkv = dict(zip("qkv", _qkv()))
    qkv[arg] = qkv[arg].double()
    raises(TypeError, FNS[fn], qkv["q"], qkv["k"], qkv["v"], names=arg, expected=["torch.float32"],
           given=["torch.float64"])


@pytest.mark.parametrize("fn", QKV_FNS)
@pytest.mark.parametrize("arg", ["k", "v"])
def test_mismatched_device(fn, arg):
    qkv = dict(zip("qkv", _qkv()))
    qkv[arg] = qkv[arg].to("meta")
    raises(ValueError, FNS[fn], qkv["q"], qkv["k"], qkv["v"], names=[arg, "device"], expected=["cpu"],
           given=["meta"])


@pytest.mark.parametrize("fn", list(ALL_FNS))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_non_float_dtype(fn, dtype):
    q, k, v = (torch.ones(B, T, N, H, D).to(dtype) for _ in range(3))
    name = "qkv" if "packed" in fn else "q"
    raises(TypeError, ALL_FNS[fn], q, k, v, names=name, expected=["float16", "bfloat16", "float32", "float64"],
           given=[dtype])


# ---------------------------------------------------------------------------------------------
# packed tensors


@pytest.mark.parametrize("fn", list(PACKED_FNS))
@pytest.mark.parametrize("shape", [(B, T, N, 3, H * D), (B, T, N, 3, H, D, 1)], ids=["rank5", "rank7"])
def test_packed_wrong_rank(fn, shape):
    raises(ValueError, PACKED_FNS[fn], torch.randn(shape), names="qkv", expected=["[B, T, N, 3, H, D]"],
           given=[shape])


@pytest.mark.parametrize("fn", list(PACKED_FNS))
@pytest.mark.parametrize("three", [1, 2, 4])
def test_packed_wrong_three(fn, three):
    shape = (B, T, N, three, H, D)
    raises(ValueError, PACKED_FNS[fn], torch.randn(shape), names="qkv", expected=["3"], given=[shape])


@pytest.mark.parametrize("fn", list(PACKED_FNS))
def test_packed_not_a_tensor(fn):
    raises(TypeError, PACKED_FNS[fn], _qkv(), names="qkv", expected=["Tensor"], given=["tuple"])


# ---------------------------------------------------------------------------------------------
# frame_lens


def _call_lens(fn, frame_lens, T_=T):
    q, k, v = (torch.randn(B, T_, N, H, D) for _ in range(3))
    return ALL_FNS[fn](q, k, v, frame_lens=frame_lens)


@pytest.mark.parametrize("fn", FRAME_LENS_FNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool], ids=str)
def test_frame_lens_dtype(fn, dtype):
    raises(TypeError, _call_lens, fn, torch.full((B,), 2).to(dtype), names="frame_lens", expected=["int"],
           given=[dtype])


@pytest.mark.parametrize("fn", FRAME_LENS_FNS)
@pytest.mark.parametrize("shape", [(B + 1,), (B, 1), (), (1,)], ids=str)
def test_frame_lens_shape(fn, shape):
    raises(ValueError, _call_lens, fn, torch.full(shape, 2, dtype=torch.long), names="frame_lens",
           expected=[f"[{B}]"], given=[tuple(shape)])


@pytest.mark.parametrize("fn", FRAME_LENS_FNS)
def test_frame_lens_device(fn):
    raises(ValueError, _call_lens, fn, torch.full((B,), 2, dtype=torch.long, device="meta"),
           names=["frame_lens", "device"], expected=["cpu"], given=["meta"])


@pytest.mark.parametrize("fn", FRAME_LENS_FNS)
@pytest.mark.parametrize("values", [[-1, 2], [2, T + 1], [T + 5, -3]], ids=str)
def test_frame_lens_range(fn, values):
    fl = torch.tensor(values, dtype=torch.int32)
    raises(ValueError, _call_lens, fn, fl, names="frame_lens", expected=[f"[0, T={T}]"],
           given=[min(values), max(values)])


@pytest.mark.parametrize("fn", FRAME_LENS_FNS)
@pytest.mark.parametrize("value", [[2, 3], (2, 3), 3], ids=["list", "tuple", "int"])
def test_frame_lens_not_a_tensor(fn, value):
    raises(TypeError, _call_lens, fn, value, names="frame_lens", expected=["Tensor"], given=[type(value).__name__])


@pytest.mark.parametrize("fn", FRAME_LENS_FNS)
def test_frame_lens_bounds_inclusive(fn):
    """0 and T are valid values, int32 and int64 both accepted."""
    for dtype in (torch.int32, torch.int64):
        out = _call_lens(fn, torch.tensor([0, T], dtype=dtype))
        assert out.shape == (B, T, N, H, D)


# ---------------------------------------------------------------------------------------------
# cls / cls_qkv


@pytest.mark.parametrize("cls", [_cls()[:2], _cls() + (torch.randn(B, H, D),), torch.randn(3, B, H, D), "cls"],
                         ids=["len2", "len4", "tensor", "str"])
def test_cls_wrong_container(cls):
    q, k, v = _qkv()
    given = [f"{type(cls).__name__} of length {len(cls)}"] if isinstance(cls, tuple) else [type(cls).__name__]
    raises(TypeError, tk.spatial_attention, q, k, v, cls=cls, names="cls", expected=["(q_cls, k_cls, v_cls)"],
           given=given)


@pytest.mark.parametrize("i", [0, 1, 2])
@pytest.mark.parametrize("shape", [(B, H, D + 1), (B + 1, H, D), (B, H + 1, D)], ids=["D", "B", "H"])
def test_cls_wrong_shape(i, shape):
    cls = list(_cls())
    cls[i] = torch.randn(shape)
    raises(ValueError, tk.spatial_attention, *_qkv(), cls=tuple(cls), names=f"cls[{i}]", expected=[(B, H, D)],
           given=[shape])


@pytest.mark.parametrize("i", [0, 2])
def test_cls_wrong_rank_dtype_device_type(i):
    q, k, v = _qkv()
    cls = list(_cls())
    cls[i] = torch.randn(B, T, H, D)
    raises(ValueError, tk.spatial_attention, q, k, v, cls=tuple(cls), names=f"cls[{i}]", expected=["rank-3"],
           given=[(B, T, H, D)])
    cls[i] = torch.randn(B, H, D, dtype=torch.float64)
    raises(TypeError, tk.spatial_attention, q, k, v, cls=tuple(cls), names=f"cls[{i}]", expected=["torch.float32"],
           given=["torch.float64"])
    cls[i] = torch.randn(B, H, D, device="meta")
    raises(ValueError, tk.spatial_attention, q, k, v, cls=tuple(cls), names=f"cls[{i}]", expected=["cpu"],
           given=["meta"])
    cls[i] = torch.ones(B, H, D, dtype=torch.long)
    raises(TypeError, tk.spatial_attention, q, k, v, cls=tuple(cls), names=f"cls[{i}]", expected=["float32"],
           given=["torch.int64"])
    cls[i] = [[0.0] * D] * H
    raises(TypeError, tk.spatial_attention, q, k, v, cls=tuple(cls), names=f"cls[{i}]", expected=["Tensor"],
           given=["list"])


@pytest.mark.parametrize("shape", [(B, 3, H, D + 1), (B, 2, H, D), (B + 1, 3, H, D), (B, 3, H * D), (3, B, H, D)],
                         ids=["D", "three", "B", "rank3", "order"])
def test_cls_qkv_wrong_shape(shape):
    msg = raises(ValueError, tk.spatial_attention_qkvpacked, _packed(), cls_qkv=torch.randn(shape), names="cls_qkv",
                 given=[shape])
    assert "[B, 3, H, D]" in msg or str((B, 3, H, D)) in msg


def test_cls_qkv_wrong_type_dtype_device():
    raises(TypeError, tk.spatial_attention_qkvpacked, _packed(), cls_qkv=_cls(), names="cls_qkv",
           expected=["Tensor"], given=["tuple"])
    raises(TypeError, tk.spatial_attention_qkvpacked, _packed(), cls_qkv=torch.randn(B, 3, H, D, dtype=torch.float16),
           names="cls_qkv", expected=["torch.float32"], given=["torch.float16"])
    raises(ValueError, tk.spatial_attention_qkvpacked, _packed(), cls_qkv=torch.randn(B, 3, H, D, device="meta"),
           names="cls_qkv", expected=["cpu"], given=["meta"])


# ---------------------------------------------------------------------------------------------
# temporal_heads, causal, scale


@pytest.mark.parametrize("th", [-1, H + 1, 100])
def test_temporal_heads_out_of_range(th):
    raises(ValueError, tk.factorized_attention, *_qkv(), temporal_heads=th, names="temporal_heads",
           expected=[f"[0, H={H}]"], given=[th])


@pytest.mark.parametrize("th", [1.0, True, "1", None, torch.tensor(1)], ids=["float", "bool", "str", "None", "tensor"])
def test_temporal_heads_wrong_type(th):
    raises(TypeError, tk.factorized_attention, *_qkv(), temporal_heads=th, names="temporal_heads",
           expected=["int"], given=[type(th).__name__])


def test_temporal_heads_required():
    with pytest.raises(TypeError, match="temporal_heads"):
        tk.factorized_attention(*_qkv())


@pytest.mark.parametrize("fn", CAUSAL_FNS)
@pytest.mark.parametrize("causal", [1, 0, None, "yes", torch.tensor(True)], ids=["1", "0", "None", "str", "tensor"])
def test_causal_not_bool(fn, causal):
    raises(TypeError, ALL_FNS[fn], *_qkv(), causal=causal, names="causal", expected=["bool"],
           given=[type(causal).__name__])


@pytest.mark.parametrize("fn", list(ALL_FNS))
@pytest.mark.parametrize("scale", ["0.5", True, torch.tensor(0.5), [0.5]], ids=["str", "bool", "tensor", "list"])
def test_scale_wrong_type(fn, scale):
    raises(TypeError, ALL_FNS[fn], *_qkv(), scale=scale, names="scale", expected=["number"],
           given=[type(scale).__name__])


@pytest.mark.parametrize("fn", list(ALL_FNS))
@pytest.mark.parametrize("scale", [float("inf"), float("-inf"), float("nan")], ids=str)
def test_scale_not_finite(fn, scale):
    raises(ValueError, ALL_FNS[fn], *_qkv(), scale=scale, names="scale", expected=["finite"], given=[scale])


@pytest.mark.parametrize("scale", [2, 0.25, -1.5, 0])
def test_scale_numbers_accepted(scale):
    q, k, v = _qkv(torch.float64)
    out = tk.temporal_attention(q, k, v, scale=scale)
    ref = tk.temporal_attention(q * scale, k, v, scale=1.0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# backends


@pytest.mark.parametrize("fn", list(ALL_FNS))
@pytest.mark.parametrize("backend", ["foo", "Reference", "", 1, "torch"], ids=repr)
def test_unknown_backend(fn, backend):
    raises(ValueError, ALL_FNS[fn], *_qkv(), backend=backend, names="backend",
           expected=["'cuda'", "'triton'", "'reference'"], given=[repr(backend)])


@pytest.mark.parametrize("fn", list(ALL_FNS))
def test_unknown_backend_from_env(fn, monkeypatch):
    monkeypatch.setenv(_backends.ENV_VAR, "fast")
    raises(ValueError, ALL_FNS[fn], *_qkv(), names="TEMPORAL_KERNELS_BACKEND", expected=["'reference'"],
           given=["'fast'"])


def test_unknown_backend_on_empty_input():
    q = torch.randn(0, T, N, H, D)
    raises(ValueError, tk.temporal_attention, q, q, q, backend="foo", names="backend", given=["'foo'"])


def test_env_backend_reference(monkeypatch):
    monkeypatch.setenv(_backends.ENV_VAR, "reference")
    q, k, v = _qkv()
    assert torch.equal(tk.temporal_attention(q, k, v), tk.temporal_attention(q, k, v, backend="reference"))


def test_explicit_backend_overrides_env(monkeypatch):
    monkeypatch.setenv(_backends.ENV_VAR, "fast")
    q, k, v = _qkv()
    tk.temporal_attention(q, k, v, backend="reference")


@pytest.mark.parametrize("fn", list(ALL_FNS))
def test_cuda_backend_unavailable(fn):
    """On CPU tensors "cuda" is unavailable: without the extension, or because it needs CUDA tensors."""
    msg = raises_runtime(ALL_FNS[fn], *_qkv(), backend="cuda")
    assert "'cuda'" in msg and "backend" in msg
    if "cuda" not in tk.available_backends():
        assert "temporal_kernels._C" in msg
    else:
        assert "CUDA tensors" in msg and "cpu" in msg


def test_cuda_backend_unavailable_from_env(monkeypatch):
    monkeypatch.setenv(_backends.ENV_VAR, "cuda")
    msg = raises_runtime(tk.temporal_attention, *_qkv())
    assert "'cuda'" in msg and "TEMPORAL_KERNELS_BACKEND" in msg


def raises_runtime(fn, *args, **kw):
    with pytest.raises(RuntimeError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "unavailable" in msg or "not" in msg, msg
    return msg


@pytest.mark.parametrize("fn", list(ALL_FNS))
def test_triton_on_cpu_without_interpreter(fn, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    msg = raises_runtime(ALL_FNS[fn], *_qkv(), backend="triton")
    assert "'triton'" in msg
    if _backends._triton_importable():
        assert "TRITON_INTERPRET=1" in msg and "cpu" in msg


def test_triton_on_cpu_without_interpreter_from_env(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(_backends.ENV_VAR, "triton")
    msg = raises_runtime(tk.temporal_attention, *_qkv())
    assert "'triton'" in msg and "TEMPORAL_KERNELS_BACKEND" in msg


def test_default_backend_on_cpu_is_reference(monkeypatch):
    """backend=None on CPU tensors runs the reference, even with the Triton interpreter on."""
    monkeypatch.delenv(_backends.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for op in ("temporal_attention", "spatial_attention", "joint_attention", "factorized_attention",
               "temporal_attention_qkvpacked", "spatial_attention_qkvpacked"):
        assert _backends.select(op, None, torch.device("cpu")) is _backends._reference_ops()[op]


def test_available_backends(monkeypatch):
    names = tk.available_backends()
    assert isinstance(names, list) and names and names[-1] == "reference"
    assert len(set(names)) == len(names) and set(names) <= set(_backends.BACKEND_NAMES)
    # in the order of preference (BACKEND_NAMES)
    assert names == [n for n in _backends.BACKEND_NAMES if n in names]
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert tk.available_backends() == ["reference"]
        if _backends._triton_importable():
            monkeypatch.setenv("TRITON_INTERPRET", "1")
            assert tk.available_backends() == ["triton", "reference"]


# ---------------------------------------------------------------------------------------------
# inputs are never modified


@pytest.mark.parametrize("fn", ["temporal", "spatial", "spatial_cls", "joint", "factorized", "temporal_qkvpacked",
                                "spatial_qkvpacked", "spatial_qkvpacked_cls"])
def test_inputs_not_modified(fn):
    q, k, v = (x.requires_grad_() for x in _qkv(torch.float64))
    qkv = _packed(torch.float64).requires_grad_()
    cls = tuple(c.requires_grad_() for c in _cls(torch.float64))
    cls_qkv = torch.randn(B, 3, H, D, dtype=torch.float64, requires_grad=True)
    fl = torch.tensor([T, 1])
    inputs = (q, k, v, qkv, *cls, cls_qkv, fl)
    before = [x.detach().clone() for x in inputs]
    strides = [x.stride() for x in inputs]
    res = {
        "temporal": lambda: tk.temporal_attention(q, k, v, causal=True, frame_lens=fl),
        "spatial": lambda: tk.spatial_attention(q, k, v),
        "spatial_cls": lambda: tk.spatial_attention(q, k, v, cls=cls),
        "joint": lambda: tk.joint_attention(q, k, v, causal=True, frame_lens=fl),
        "factorized": lambda: tk.factorized_attention(q, k, v, temporal_heads=1, causal=True),
        "temporal_qkvpacked": lambda: tk.temporal_attention_qkvpacked(qkv, causal=True, frame_lens=fl),
        "spatial_qkvpacked": lambda: tk.spatial_attention_qkvpacked(qkv),
        "spatial_qkvpacked_cls": lambda: tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv),
    }[fn]()
    outs = res if isinstance(res, tuple) else (res,)
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for x, b, s in zip(inputs, before, strides):
        assert torch.equal(x.detach(), b) and x.stride() == s
        assert all(o.data_ptr() != x.data_ptr() for o in outs)
