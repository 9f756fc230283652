"""GPU reliability (issue 8, GPU part): scale, streams, devices, faults and determinism, on every
kernel backend that serves each op, against the float64 reference (the oracle; never a kernel
against itself only).

- Scale: more than 65,535 groups/sequences for every op (AnimateDiff-like temporal attention,
  B=2, T=16, N=64*64, H=8, D=40: 65,536 groups), a tensor past 2^31 elements (temporal, short and
  tiled paths, forward and backward, checked on sampled patches at the start, at element 2^31 and
  at the end, and everywhere for finiteness / exact zeros), and the tiled paths (T=1024, N=4096,
  joint T*N=4096) against the full reference.
- Streams: inputs produced on a busy side stream, ops (forward and backward) run on it; results
  bitwise equal to the default stream's.
- Devices: tensors on cuda:1 while cuda:0 is current (needs two GPUs).
- Faults: NaN/inf in one input element is non-finite exactly where the float64 reference (the
  math) has it and stays inside its group; NaN in padded frames (frame_lens) is never read; fully
  masked batch elements give exact zeros; empty inputs give empty outputs.
- Determinism: forward and backward bitwise reproducible run to run.

Tests that could crash the CUDA context (an int32 offset overflow, a kernel launched on the wrong
device) run in a fresh Python process, so a sticky CUDA error cannot fail the rest of the xdist
worker's tests.

Determinism by design (read in the sources: no ``tl.atomic_*`` in temporal_kernels/triton/*.py,
no ``atomicAdd`` in csrc/; every output element has exactly one writer):

| op                           | triton                                                   | cuda          |
| ---------------------------- | -------------------------------------------------------- | ------------- |
| temporal, short T (one pass) | deterministic: one program per group, no atomics         | deterministic |
| temporal, tiled T (FA2 bwd)  | deterministic: dK/dV and dQ kernels own their rows       | deterministic |
| temporal_qkvpacked           | deterministic: the same kernels write dqkv's slices      | deterministic |
| spatial (+CLS)               | deterministic: CLS grads are per-frame partials, summed by torch | deterministic: CLS partials summed in a fixed order |
| joint                        | deterministic                                            | deterministic |
| factorized                   | deterministic                                            | not served    |

So no case is marked xfail; a failure of ``test_backward_is_bitwise_reproducible`` is a bug (one
was seen for the Triton spatial backward at 276626d: see notes/STATUS.md).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass

import pytest
import torch

import temporal_kernels as tk
import temporal_kernels.ops  # noqa: F401  (registers the custom ops)
from temporal_kernels import _backends

from helpers import assert_close, case_id, DEVICE, frame_lens_for, packed_qkv, seeded

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="GPU reliability suite (scale, streams, devices, faults, determinism): needs a CUDA device",
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

# Public function behind each op name used here (what a backend's op table is keyed by).
PUBLIC = {
    "temporal": "temporal_attention",
    "temporal_packed": "temporal_attention_qkvpacked",
    "spatial": "spatial_attention",
    "spatial_cls": "spatial_attention",
    "joint": "joint_attention",
    "factorized": "factorized_attention",
}


def _kernel_backends(op: str) -> list[str]:
    """Kernel backends (not the reference, the oracle) that serve ``op`` in this process."""
    return [
        name for name in tk.available_backends()
        if name != "reference" and PUBLIC[op] in _backends._ops_of(name)
    ]


# ---------------------------------------------------------------------------------------------
# cases: one op on one shape, its inputs, its kwargs, running it and its reference


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple  # (B, T, N, H, D)
    dtype: torch.dtype = torch.bfloat16
    causal: bool = False
    lens: bool | tuple = False  # True: helpers.frame_lens_for; a tuple: those lengths
    temporal_heads: int = 0
    layout: str = "packed_nt"  # TimeSformer's patch-major packed projection

    @property
    def id(self) -> str:
        B, T, N, H, D = self.shape
        lens = "lens" + "_".join(map(str, self.lens)) if isinstance(self.lens, tuple) else self.lens
        return f"{self.op}-" + case_id(
            B=B, T=T, N=N, H=H, D=D, TH=self.temporal_heads if self.op == "factorized" else None,
            dtype=self.dtype, causal=self.causal, lens=lens or None,
        )


def _params(cases):
    """``(case, backend)`` pairs for every kernel backend serving each case's op."""
    return [pytest.param(c, b, id=f"{b}-{c.id}") for c in cases for b in _kernel_backends(c.op)]


def _sources(case: Case, gen, device=DEVICE) -> list[torch.Tensor]:
    """Detached input values: the packed ``qkv`` view (and the three CLS tensors)."""
    B, T, N, H, D = case.shape
    srcs = [packed_qkv(case.layout, B, T, N, H, D, dtype=case.dtype, device=device, generator=gen)]
    if case.op == "spatial_cls":
        srcs += [torch.randn(B, H, D, dtype=torch.float64, generator=gen).to(device, case.dtype) for _ in range(3)]
    return srcs


def _as_inputs(case: Case, srcs) -> list[torch.Tensor]:
    """Fresh copies of ``srcs`` (same strides) that require grad, as the op takes them."""
    leaves = [s.detach().clone(memory_format=torch.preserve_format).requires_grad_() for s in srcs]
    if case.op == "temporal_packed":
        return leaves
    return list(leaves[0].unbind(3)) + leaves[1:]


def _douts(case: Case, gen, device=DEVICE) -> list[torch.Tensor]:
    B, T, N, H, D = case.shape
    shapes = [(B, T, N, H, D)] + ([(B, T, H, D)] if case.op == "spatial_cls" else [])
    return [torch.randn(s, dtype=torch.float64, generator=gen).to(device, case.dtype) for s in shapes]


def _kwargs(case: Case, gen, device=DEVICE) -> dict:
    B, T = case.shape[:2]
    kw = {}
    if case.op in ("temporal", "temporal_packed", "joint", "factorized"):
        kw["causal"] = case.causal
    if case.op == "factorized":
        kw["temporal_heads"] = case.temporal_heads
    if isinstance(case.lens, tuple):
        kw["frame_lens"] = torch.tensor(case.lens, dtype=torch.long, device=device)
    elif case.lens:
        kw["frame_lens"] = frame_lens_for(B, T, device=device, generator=gen)
    return kw


def _call(case: Case, backend: str, inputs, kw) -> tuple:
    """The op's outputs as a tuple: ``(out,)`` or ``(out, cls_out)``."""
    if case.op == "temporal":
        return (tk.temporal_attention(*inputs, backend=backend, **kw),)
    if case.op == "temporal_packed":
        return (tk.temporal_attention_qkvpacked(*inputs, backend=backend, **kw),)
    if case.op == "spatial":
        return (tk.spatial_attention(*inputs, backend=backend, **kw),)
    if case.op == "spatial_cls":
        q, k, v, *cls = inputs
        return tuple(tk.spatial_attention(q, k, v, cls=tuple(cls), backend=backend, **kw))
    if case.op == "joint":
        return (tk.joint_attention(*inputs, backend=backend, **kw),)
    if case.op == "factorized":
        return (tk.factorized_attention(*inputs, backend=backend, **kw),)
    raise AssertionError(case.op)


def _run(case: Case, backend: str, inputs, douts, kw):
    outs = _call(case, backend, inputs, kw)
    grads = torch.autograd.grad(outs, inputs, douts)
    return tuple(o.detach() for o in outs), grads


def _reference(case: Case, inputs, douts, kw):
    """float64 outputs and gradients of the reference backend on the same values."""
    inputs64 = [x.detach().double().requires_grad_() for x in inputs]
    return _run(case, "reference", inputs64, [d.double() for d in douts], kw)


def _names(case: Case) -> tuple[tuple[str, ...], tuple[str, ...]]:
    outs = ("out", "cls_out") if case.op == "spatial_cls" else ("out",)
    if case.op == "temporal_packed":
        return outs, ("dqkv",)
    return outs, ("dq", "dk", "dv") + (("dq_cls", "dk_cls", "dv_cls") if case.op == "spatial_cls" else ())


def _assert_matches(case: Case, outs, grads, ref_outs, ref_grads):
    out_names, grad_names = _names(case)
    for name, got, ref in zip(out_names + grad_names, outs + grads, ref_outs + ref_grads):
        assert_close(name, got, ref, case.dtype)


def _padded(B: int, T: int, frame_lens) -> torch.Tensor:
    """bool ``[B, T]``: the padding frames (``t >= frame_lens[b]``)."""
    return torch.arange(T, device=frame_lens.device)[None, :] >= frame_lens[:, None]


def _assert_padded_zero(case: Case, kw, outs, grads):
    """SPEC §2: padded frames output exactly 0 and get exactly 0 gradients."""
    if "frame_lens" not in kw:
        return
    padded = _padded(case.shape[0], case.shape[1], kw["frame_lens"])
    _, grad_names = _names(case)
    for name, x in zip(("out",) + grad_names, (outs[0],) + tuple(grads)):
        assert (x[padded] == 0).all(), f"{name}: padded frames must be exactly 0"


def _check_case(case: Case, backend: str, key: str):
    """Forward and every gradient of ``case`` on ``backend`` against the float64 reference."""
    gen = seeded(key, case.id)
    srcs, kw, douts = _sources(case, gen), _kwargs(case, gen), _douts(case, gen)
    inputs = _as_inputs(case, srcs)
    outs, grads = _run(case, backend, inputs, douts, kw)
    ref_outs, ref_grads = _reference(case, inputs, douts, kw)
    _assert_matches(case, outs, grads, ref_outs, ref_grads)
    _assert_padded_zero(case, kw, outs, grads)


def _isolated(fn: str, *args, timeout: int = 280) -> str:
    """Runs ``fn(*args)`` of this module in a fresh Python process: a sticky CUDA error there (an
    illegal address from an overflowed offset, a launch on the wrong device) fails this test only,
    not every later test of the worker."""
    torch.cuda.empty_cache()  # this process's cached blocks would count against the child
    code = f"import sys; sys.path.insert(0, {TESTS_DIR!r}); import test_gpu_reliability as m; m.{fn}(*{args!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"{fn}{args!r} failed in a fresh process (exit code {proc.returncode}):\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# 1a. scale: more than 65,535 groups (a known crash of kernels with one grid dim per group axis)


def _sequences(case: Case) -> int:
    """Independent attention problems of the case (the groups/sequences a kernel grid spans)."""
    B, T, N, H, _ = case.shape
    if case.op in ("temporal", "temporal_packed"):
        return B * N * H
    if case.op in ("spatial", "spatial_cls"):
        return B * T * H
    if case.op == "joint":
        return B * H
    return B * N * case.temporal_heads  # factorized: its temporal heads alone


ANIMATEDIFF = (2, 16, 64 * 64, 8, 40)  # B*N*H = 65,536
MANY_GROUPS = [
    Case("temporal", ANIMATEDIFF),
    Case("temporal", ANIMATEDIFF, causal=True, lens=True),
    Case("temporal_packed", ANIMATEDIFF),
    Case("spatial_cls", (2, 4097, 20, 8, 40)),  # B*T*H = 65,552 frames x heads
    Case("joint", (8193, 2, 4, 8, 40), causal=True, lens=True),  # B*H = 65,544
    Case("factorized", (128, 8, 257, 3, 40), causal=True, temporal_heads=2),  # B*N*TH = 65,792
]


@pytest.mark.parametrize("case, backend", _params(MANY_GROUPS))
def test_many_groups(case, backend):
    """Every group checked against the full float64 reference (it fits: ~3 GB at most)."""
    assert _sequences(case) > 65535
    _check_case(case, backend, "many")


# ---------------------------------------------------------------------------------------------
# 1b. scale: a tensor past 2^31 elements (int32 offsets would overflow)

# H=16, D=64; N just past 2^31 / (T*H*D). "nt": q/k/v/out patch-major ([B, N, T, H, D] in
# memory, TimeSformer's order: n * stride_n alone passes 2^31); "tn": frame-major (t * stride_t
# passes 2^31). Each q, k, v, out, dout, dq, dk, dv is 4.3 GB in bf16: 34.5 GB in all.
BIG = {
    "short": dict(T=8, H=16, D=64, layout="nt", causal=False, lens=None),
    "tiled": dict(T=128, H=16, D=64, layout="tn", causal=True, lens=-5),  # lens: T - 5
}
BIG_DTYPE = torch.bfloat16


def _big_shape(path: str, limit: int) -> tuple[int, int, int, int, int]:
    cfg = BIG[path]
    T, H, D = cfg["T"], cfg["H"], cfg["D"]
    return 1, T, limit // (T * H * D) + 3, H, D


def _check_past_2_31(backend: str, path: str, limit: int = 2 ** 31) -> None:
    """Temporal attention forward and backward on ``[1, T, N, 16, 64]`` bf16 tensors of more than
    ``limit`` elements. The reference runs on sampled patches (temporal attention is independent
    per ``(b, n, h)``, so a slice of the kernel's output equals the reference of the sliced inputs):
    the first patches, the patch holding element ``limit`` and the last patches (the highest
    offsets). ``dout`` is 0 except at the sampled patches, so every other gradient element must be
    exactly 0; the whole output must lie within v's range (a convex combination of v's rows)."""
    cfg = BIG[path]
    B, T, N, H, D = _big_shape(path, limit)
    numel = B * T * N * H * D
    assert numel > limit
    gen = torch.Generator(device=DEVICE).manual_seed(zlib.crc32(f"big-{path}".encode()))
    physical = (B, N, T, H, D) if cfg["layout"] == "nt" else (B, T, N, H, D)

    def rand(shape):
        return torch.randn(shape, dtype=BIG_DTYPE, device=DEVICE, generator=gen)

    def video(x):  # physical layout -> logical [B, T, N, H, D] view
        return x.transpose(1, 2) if cfg["layout"] == "nt" else x

    q, k, v = (video(rand(physical)).detach().requires_grad_() for _ in range(3))
    frame_lens = None if cfg["lens"] is None else torch.tensor([T + cfg["lens"]], device=DEVICE)

    # the patch whose memory holds element `limit` (unravel the flat index in physical order)
    rest, coords = limit, []
    for size in reversed(physical):
        coords.append(rest % size)
        rest //= size
    n_cross = coords[::-1][1 if cfg["layout"] == "nt" else 2]
    idx = sorted({0, 1, max(n_cross - 1, 0), n_cross, N - 2, N - 1})

    def take(x):  # the sampled patches (basic slicing only: no index kernels over 2^31 elements)
        return torch.stack([x.detach()[:, :, i] for i in idx], dim=2)

    out = tk.temporal_attention(q, k, v, causal=cfg["causal"], frame_lens=frame_lens, backend=backend)
    assert out.shape == q.shape and out.dtype == BIG_DTYPE
    if cfg["layout"] == "nt":
        assert out.transpose(1, 2).is_contiguous(), "SPEC §1: the output keeps q's (patch-major) axis order"

    # every element: finite and within v's range (slack for bf16 probabilities in P @ V)
    v_lo, v_hi = (x.item() for x in torch.aminmax(v.detach()))
    o_lo, o_hi = (x.item() for x in torch.aminmax(out.detach()))
    assert math.isfinite(o_lo) and math.isfinite(o_hi), f"out: non-finite values (min {o_lo}, max {o_hi})"
    assert v_lo * 1.02 <= o_lo and o_hi <= v_hi * 1.02, f"out: range [{o_lo}, {o_hi}] outside v's [{v_lo}, {v_hi}]"
    if frame_lens is not None:
        p_lo, p_hi = (x.item() for x in torch.aminmax(out.detach()[:, T + cfg["lens"]:]))
        assert p_lo == 0 and p_hi == 0, "out: padded frames must be exactly 0"

    dout = torch.zeros_like(out)
    for i in idx:
        dout[:, :, i] = rand((B, T, H, D))
    grads = torch.autograd.grad(out, (q, k, v), dout)

    sample = Case("temporal", (B, T, len(idx), H, D), dtype=BIG_DTYPE)
    kw = dict(causal=cfg["causal"], frame_lens=frame_lens)
    ref_outs, ref_grads = _reference(sample, [take(x) for x in (q, k, v)], [take(dout)], kw)
    _assert_matches(sample, (take(out),), tuple(take(g) for g in grads), ref_outs, ref_grads)
    del out, dout, q, k, v
    for name, g in zip(("dq", "dk", "dv"), grads):
        for i in idx:
            g[:, :, i] = 0
        lo, hi = (x.item() for x in torch.aminmax(g))
        assert lo == 0 and hi == 0, f"{name}: outside the sampled patches (dout = 0 there) got values in [{lo}, {hi}]"
    print(f"ok: {backend} {path} shape {(B, T, N, H, D)} numel {numel} sampled patches {idx}")


@pytest.mark.xdist_group("large_reference")  # 34.5 GB on the GPU: one at a time
@pytest.mark.parametrize("path", list(BIG), ids=lambda p: f"{p}-" + case_id(
    B=1, T=BIG[p]["T"], N=_big_shape(p, 2 ** 31)[2], H=BIG[p]["H"], D=BIG[p]["D"], dtype=BIG_DTYPE))
@pytest.mark.parametrize("backend", _kernel_backends("temporal"))
def test_past_2_31_elements(backend, path):
    _isolated("_check_past_2_31", backend, path)


# ---------------------------------------------------------------------------------------------
# 1c. scale: the tiled paths (long T, large N, long joint sequences), full reference

TILED = [
    Case("temporal", (2, 1024, 8, 2, 64), causal=True, lens=(1024, 777)),
    Case("temporal", (2, 1024, 8, 2, 64)),
    Case("temporal", (2, 1024, 8, 2, 64), dtype=torch.float32, causal=True, lens=(1024, 777)),
    Case("temporal_packed", (2, 1024, 8, 2, 64), causal=True, lens=(1024, 777)),
    Case("spatial", (1, 2, 4096, 2, 64)),
    Case("spatial", (1, 2, 4096, 2, 64), dtype=torch.float32),
    Case("spatial_cls", (1, 2, 4096, 2, 64)),
    Case("spatial_cls", (1, 2, 4096, 2, 64), dtype=torch.float32),
    Case("joint", (2, 8, 512, 1, 64), causal=True, lens=(8, 5)),
    Case("joint", (2, 8, 512, 1, 64)),
    Case("joint", (2, 8, 512, 1, 64), dtype=torch.float32, causal=True, lens=(8, 5)),
    Case("factorized", (1, 256, 512, 2, 64), causal=True, temporal_heads=1),
]


@pytest.mark.parametrize("case, backend", _params(TILED))
def test_tiled_paths(case, backend):
    _check_case(case, backend, "tiled")


# ---------------------------------------------------------------------------------------------
# 2. streams, 3. devices

# Short (T=8) and tiled (T=150) temporal paths, the packed form, and every other op.
STREAM_CASES = [
    Case("temporal", (2, 8, 196, 12, 64), causal=True),
    Case("temporal", (2, 150, 33, 4, 64), causal=True),
    Case("temporal_packed", (2, 8, 196, 12, 64)),
    Case("spatial_cls", (2, 8, 196, 12, 64)),
    Case("joint", (2, 8, 196, 4, 64), causal=True),
    Case("factorized", (2, 8, 196, 12, 64), causal=True, temporal_heads=6),
]


def _busy(ms: float = 30.0) -> None:
    """Keeps the current stream busy for about ``ms`` (a spin kernel): work launched on another
    stream instead would run first, on inputs not yet written."""
    torch.cuda._sleep(int(ms * 2e6))  # ~2 GHz SM clock


@pytest.mark.parametrize("case, backend", _params(STREAM_CASES))
def test_side_stream(case, backend):
    """Inputs written on a busy non-default stream just before the op, forward and backward on it:
    after ``side.synchronize()`` the results equal the default stream's bitwise (no frame_lens:
    its validation reads values back, which would wait for the side stream)."""
    gen = seeded("stream", case.id)
    srcs, kw, douts_src = _sources(case, gen), _kwargs(case, gen), _douts(case, gen)
    inputs = _as_inputs(case, srcs)
    outs0, grads0 = _run(case, backend, inputs, douts_src, kw)
    torch.cuda.synchronize()
    _assert_matches(case, outs0, grads0, *_reference(case, inputs, douts_src, kw))

    side = torch.cuda.Stream()
    assert side != torch.cuda.current_stream()
    with torch.cuda.stream(side):
        _busy()
        inputs1 = _as_inputs(case, srcs)  # copies on the side stream, after the spin
        outs1 = _call(case, backend, inputs1, kw)
        _busy()
        douts1 = [d.clone() for d in douts_src]
        grads1 = torch.autograd.grad(outs1, inputs1, douts1)
    side.synchronize()
    out_names, grad_names = _names(case)
    for name, a, b in zip(out_names + grad_names, outs0 + grads0, outs1 + grads1):
        assert torch.equal(a, b), f"{name}: side-stream result differs from the default stream's"


def _check_second_device(index: int, backend: str) -> None:
    """``STREAM_CASES[index]`` with every tensor on cuda:1 while cuda:0 is current."""
    case = STREAM_CASES[index]
    torch.cuda.set_device(0)
    dev = torch.device("cuda", 1)
    gen = seeded("device", case.id)
    srcs, kw, douts = _sources(case, gen, dev), _kwargs(case, gen, dev), _douts(case, gen, dev)
    if case.op in ("temporal", "temporal_packed", "joint"):
        kw["frame_lens"] = frame_lens_for(case.shape[0], case.shape[1], device=dev, generator=gen)
    inputs = _as_inputs(case, srcs)
    outs, grads = _run(case, backend, inputs, douts, kw)
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0, "the op must restore the current device"
    for x in outs + grads:
        assert x.device == dev, f"result on {x.device}, expected {dev}"
    _assert_matches(case, outs, grads, *_reference(case, inputs, douts, kw))
    _assert_padded_zero(case, kw, outs, grads)
    print(f"ok: {backend} {case.id} on {dev}")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device (cuda:1); one or none present")
@pytest.mark.parametrize(
    "index, backend",
    [pytest.param(i, b, id=f"{b}-{c.id}") for i, c in enumerate(STREAM_CASES) for b in _kernel_backends(c.op)],
)
def test_second_device(index, backend):
    _isolated("_check_second_device", index, backend)


# ---------------------------------------------------------------------------------------------
# 4. faults: non-finite inputs, padding never read, fully masked rows, empty inputs


@dataclass(frozen=True)
class Fault:
    case: Case
    which: str  # "q", "k" or "v": the poisoned tensor
    value: float
    head: int = -1  # poisoned head (-1: the last)

    @property
    def id(self) -> str:
        kind = "nan" if math.isnan(self.value) else "inf"
        return f"{self.case.id}-{self.which}{kind}-h{self.head % self.case.shape[3]}"


NAN, INF = float("nan"), float("inf")
_T_SHORT = (2, 8, 37, 3, 40)
_T_TILED = (2, 100, 9, 2, 64)
_S = (2, 3, 197, 2, 64)
_J = (2, 4, 50, 2, 64)
_F = (2, 8, 50, 4, 64)
# inf in v only without masks: a masked key's probability is 0 and 0 * inf is NaN inside P @ V,
# the reference's included (its NaN pattern would then not be the math's).
FAULTS = [
    f
    for shape in (_T_SHORT, _T_TILED)
    for f in (
        Fault(Case("temporal", shape), "k", NAN),
        Fault(Case("temporal", shape, causal=True), "k", NAN),
        Fault(Case("temporal", shape, causal=True), "q", NAN),
        Fault(Case("temporal", shape), "v", INF),
    )
] + [
    Fault(Case("spatial", _S), "k", NAN),
    Fault(Case("spatial", _S), "q", NAN),
    Fault(Case("spatial", _S), "v", INF),
    Fault(Case("spatial_cls", _S), "k", NAN),
    Fault(Case("spatial_cls", _S), "v", INF),
    Fault(Case("joint", _J, causal=True), "k", NAN),
    Fault(Case("joint", _J), "q", NAN),
    Fault(Case("joint", _J), "v", INF),
    # Temporal heads: each (b, n, h) frame sequence is its own problem in the factorized kernel
    # (per-patch dots; a tile of several patches once spread a NaN key to its neighbours' dq)
    Fault(Case("factorized", _F, causal=True, temporal_heads=2), "k", NAN, head=0),
    Fault(Case("factorized", _F, causal=True, temporal_heads=2), "q", NAN, head=1),
    Fault(Case("factorized", _F, causal=True, temporal_heads=2), "v", INF, head=0),
    Fault(Case("factorized", (2, 40, 30, 3, 64), causal=True, temporal_heads=2), "k", NAN, head=0),  # flash bwd
    Fault(Case("factorized", _F, causal=True, temporal_heads=2), "k", NAN, head=3),  # a spatial head
]


def _group_masks(case: Case, b0, t0, n0, h0):
    """bool ``[B, T, N, H]``: the (b, t, n, h) rows whose attention problem holds element
    (b0, t0, n0, h0); and ``[B, H]`` for the CLS gradients."""
    B, T, N, H, _ = case.shape
    op = case.op
    if op == "factorized":
        op = "temporal" if h0 < case.temporal_heads else "spatial"
    group = torch.zeros(B, T, N, H, dtype=torch.bool, device=DEVICE)
    if op == "temporal":
        group[b0, :, n0, h0] = True
    elif op in ("spatial", "spatial_cls"):
        group[b0, t0, :, h0] = True
    else:
        group[b0, :, :, h0] = True
    group_cls = torch.zeros(B, H, dtype=torch.bool, device=DEVICE)
    group_cls[b0, h0] = True
    return group, group_cls


@pytest.mark.parametrize(
    "fault, backend",
    [
        pytest.param(f.values[0] if hasattr(f, "values") else f, b, marks=getattr(f, "marks", ()),
                     id=f"{b}-{(f.values[0] if hasattr(f, 'values') else f).id}")
        for f in FAULTS
        for b in _kernel_backends((f.values[0] if hasattr(f, "values") else f).case.op)
    ],
)
def test_nonfinite_input_stays_in_its_group(fault, backend):
    """One NaN/inf input element: the outputs are non-finite exactly where the float64 reference
    has them (the math: with causal=True, queries before a NaN key stay finite) and right
    elsewhere; gradients outside the element's attention problem are finite and right."""
    case = fault.case
    B, T, N, H, D = case.shape
    b0, t0, n0, h0, d0 = B - 1, T // 2, N // 3, fault.head % H, D // 3
    gen = seeded("fault", fault.id)
    srcs, kw, douts = _sources(case, gen), _kwargs(case, gen), _douts(case, gen)
    srcs[0][b0, t0, n0, "qkv".index(fault.which), h0, d0] = fault.value
    inputs = _as_inputs(case, srcs)
    outs, grads = _run(case, backend, inputs, douts, kw)
    ref_outs, ref_grads = _reference(case, inputs, douts, kw)

    out_names, grad_names = _names(case)
    for name, got, ref in zip(out_names, outs, ref_outs):
        for kind, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
            wrong = test(got) != test(ref)
            assert not wrong.any(), (
                f"{name}: {int(wrong.sum())} elements differ from the reference in being {kind} "
                f"(kernel {int(test(got).sum())}, reference {int(test(ref).sum())})"
            )
        finite = torch.isfinite(ref)
        assert_close(f"{name} (finite part)", got[finite], ref[finite], case.dtype)
    assert not torch.isfinite(ref_outs[0]).all(), "the poisoned element must reach the output"

    group, group_cls = _group_masks(case, b0, t0, n0, h0)
    for name, got, ref in zip(grad_names, grads, ref_grads):
        outside = ~(group_cls if got.dim() == 3 else group)
        assert torch.isfinite(ref[outside]).all(), f"{name}: the reference is non-finite outside the group"
        assert_close(f"{name} (other groups)", got[outside], ref[outside], case.dtype)
    assert any(torch.isnan(g[group]).any() for g in grads[:3]), "the poisoned element must reach the gradients"
    if fault.which == "v":
        # dv = P^T dout does not read v: finite and right everywhere
        assert_close("dv", grads[2], ref_grads[2], case.dtype)


PADDED_CASES = [
    Case("temporal", (3, 8, 37, 3, 40), lens=True),
    Case("temporal", (3, 100, 9, 2, 64), causal=True, lens=True),
    Case("joint", (3, 4, 50, 2, 64), causal=True, lens=True),
]


@pytest.mark.parametrize("which", ["q", "k", "v", "dout"])
@pytest.mark.parametrize("case, backend", _params(PADDED_CASES))
def test_nan_in_padded_frames_is_never_read(case, backend, which):
    """Every padded frame (t >= frame_lens[b]) of one tensor holds NaN (garbage padding): padded
    frames are never keys and their outputs are constants, so every output and gradient equals
    the reference on clean inputs, padded ones exactly 0."""
    B, T = case.shape[:2]
    gen = seeded("padded", case.id, which)
    srcs, kw, douts = _sources(case, gen), _kwargs(case, gen), _douts(case, gen)
    padded = _padded(B, T, kw["frame_lens"])
    assert padded.any() and not padded.all()
    ref_outs, ref_grads = _reference(case, _as_inputs(case, srcs), douts, kw)
    if which == "dout":
        douts[0][padded] = NAN
    else:
        srcs[0].select(3, "qkv".index(which))[padded] = NAN
    outs, grads = _run(case, backend, _as_inputs(case, srcs), douts, kw)
    _assert_matches(case, outs, grads, ref_outs, ref_grads)
    _assert_padded_zero(case, kw, outs, grads)


MASKED_CASES = [
    Case(op, shape, causal=True, lens=lens)
    for op, shape in (
        ("temporal", (2, 8, 37, 3, 40)),
        ("temporal", (2, 100, 9, 2, 64)),
        ("temporal_packed", (2, 8, 37, 3, 40)),
        ("joint", (2, 4, 50, 2, 64)),
    )
    for lens in ((0, shape[1]), (0, 0))
]


@pytest.mark.parametrize("case, backend", _params(MASKED_CASES))
def test_fully_masked_rows_are_zero(case, backend):
    """frame_lens = 0 for a batch element (or all): its rows see no key; outputs and gradients
    exactly 0, never NaN; the rest right."""
    gen = seeded("masked", case.id)
    srcs, kw, douts = _sources(case, gen), _kwargs(case, gen), _douts(case, gen)
    inputs = _as_inputs(case, srcs)
    outs, grads = _run(case, backend, inputs, douts, kw)
    empty = kw["frame_lens"] == 0
    for name, x in zip(("out",) + _names(case)[1], outs[:1] + grads):
        assert (x[empty] == 0).all(), f"{name}: rows of a batch element with frame_lens = 0 must be exactly 0"
    _assert_matches(case, outs, grads, *_reference(case, inputs, douts, kw))


EMPTY_SHAPE = (2, 3, 5, 2, 8)


@pytest.mark.parametrize("dim", "BTNHD")
@pytest.mark.parametrize(
    "op, backend",
    [pytest.param(op, b, id=f"{b}-{op}") for op in PUBLIC for b in _kernel_backends(op)],
)
def test_empty_inputs(op, backend, dim):
    """SPEC §6: a zero-sized dim gives empty outputs of the right shape (no launch, no error);
    gradients have the inputs' shapes. With CLS and N = 0 the CLS query attends over itself alone:
    ``cls_out = v_cls`` in every frame, ``dv_cls = sum_t dcls_out``, ``dq_cls = dk_cls = 0``."""
    shape = list(EMPTY_SHAPE)
    shape["BTNHD".index(dim)] = 0
    B, T, N, H, D = shape
    case = Case(op, tuple(shape), dtype=torch.float32, causal=op != "spatial_cls",
                temporal_heads=H // 2, lens=(T,) * B if op in ("temporal", "temporal_packed", "joint") else False)
    gen = seeded("empty", op, dim)
    srcs, kw, douts = _sources(case, gen), _kwargs(case, gen), _douts(case, gen)
    inputs = _as_inputs(case, srcs)
    outs, grads = _run(case, backend, inputs, douts, kw)
    expected = [(B, T, N, H, D)] + ([(B, T, H, D)] if op == "spatial_cls" else [])
    for x, shape_x in zip(outs, expected):
        assert tuple(x.shape) == shape_x and x.dtype == torch.float32 and x.device == inputs[0].device
    assert outs[0].numel() == 0
    for g, x in zip(grads, inputs):
        assert g.shape == x.shape and g.dtype == x.dtype and torch.isfinite(g).all()
    if op == "spatial_cls" and N == 0:
        v_cls = inputs[5].detach()
        assert torch.equal(outs[1], v_cls[:, None].expand(B, T, H, D)), "cls_out must be v_cls in every frame"
        torch.testing.assert_close(grads[5], douts[1].sum(1))
        # 0 in exact arithmetic: held to the bound in absolute terms, as every such quantity
        for i, name in ((3, "dq_cls"), (4, "dk_cls")):
            assert_close(f"{name} (one key)", grads[i], torch.zeros_like(grads[i]), torch.float32, zero_expected=True)


# ---------------------------------------------------------------------------------------------
# 5. determinism

DET_CASES = [
    Case(c.op, c.shape, dtype=dtype, causal=c.causal, lens=c.op in ("temporal", "temporal_packed", "joint"),
         temporal_heads=c.temporal_heads)
    for c in STREAM_CASES
    for dtype in (torch.bfloat16, torch.float32)
] + [Case("spatial", (2, 8, 196, 12, 64))]


@pytest.mark.parametrize("case, backend", _params(DET_CASES))
def test_backward_is_bitwise_reproducible(case, backend):
    """Two runs on the same inputs: outputs and every gradient bitwise equal (and right)."""
    gen = seeded("det", case.id)
    srcs, kw, douts = _sources(case, gen), _kwargs(case, gen), _douts(case, gen)
    first = _run(case, backend, _as_inputs(case, srcs), douts, kw)
    second = _run(case, backend, _as_inputs(case, srcs), douts, kw)
    _assert_matches(case, *first, *_reference(case, _as_inputs(case, srcs), douts, kw))
    out_names, grad_names = _names(case)
    for name, a, b in zip(out_names + grad_names, first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b), f"{name}: differs between two runs ({int((a != b).sum())} elements)"
