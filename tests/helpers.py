"""Shared test helpers: input layouts of SPEC §1, error measure and bounds of SPEC §3."""

from __future__ import annotations

import contextlib
import os
import zlib

import torch

# SPEC §3: relative Frobenius error against the float64 reference.
BOUNDS = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.5e-2,
}

DTYPE_NAMES = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

# The layouts of SPEC §1: separate dense tensors, views of a packed frame-major projection
# ``[B, T, N, 3, H, D]``, views of TimeSformer's patch-major ``b (n t) (3 h d)`` projection, and
# a layout with a non-unit head-dim stride (copied once by the kernel backends).
LAYOUTS = ("separate", "packed_tn", "packed_nt", "strided_d")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def kernel_dtypes() -> list[torch.dtype]:
    """Dtypes the kernel backends are tested in: the Triton interpreter gives garbage in bf16/fp16."""
    if DEVICE == "cuda":
        return [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    return [torch.float32, torch.float64]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖out − ref‖ / ‖ref‖`` in float64 (0 when both are 0); NaN anywhere gives inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    num = (out - ref).norm().item()
    return num / denom if denom > 0 else num


@contextlib.contextmanager
def native_dtype_math():
    """Within the block, the reference computes in its inputs' dtype instead of upcasting 16-bit
    inputs to float32: PyTorch's own float16/bfloat16 math, which rounds P, dP and dS to the dtype
    as a 16-bit tensor-core kernel rounds its matmul operands. The yardstick of an ill-conditioned
    16-bit draw: a gradient that is a small difference of large terms, which that math itself
    cannot resolve to the SPEC §3 bound."""
    from temporal_kernels import reference

    upcast = reference._compute_dtype
    reference._compute_dtype = lambda dtype: dtype
    try:
        yield
    finally:
        reference._compute_dtype = upcast


# (causal, frame_lens) combinations of the masked ops
MASKS = [(False, False), (True, False), (False, True), (True, True)]


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, zero_expected=False) -> None:
    """SPEC §3: same shape, finite, relative error within the dtype's bound. A quantity that is 0
    in exact arithmetic (e.g. dq, dk with one key) is held to the bound in absolute terms."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values"
    err = (got.double() - ref.double()).norm().item() if zero_expected else rel_err(got, ref)
    assert err <= BOUNDS[dtype], f"{name}: error {err:.3e} > {BOUNDS[dtype]:.1e} ({dtype})"


def seeded(*key) -> torch.Generator:
    """A CPU generator seeded from ``key`` (crc32 of its repr: the same in every process, which
    ``hash()`` of a string is not)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def padded_rows(B: int, T: int, frame_lens, device=DEVICE) -> torch.Tensor:
    """bool ``[B, T]``: the frames that are padding (all False without ``frame_lens``)."""
    if frame_lens is None:
        return torch.zeros(B, T, dtype=torch.bool, device=device)
    return torch.arange(T, device=device)[None, :] >= frame_lens.to(device)[:, None]


def poison_allocator(nbytes: int) -> None:
    """Leaves NaN in the caching allocator's free blocks (its large pool, and its small pool of
    sub-MiB blocks), so an output element a kernel forgets to write is likely to read as NaN
    (the ops allocate their outputs with torch.empty)."""
    blocks = [torch.full((nbytes // 4 + 1024,), float("nan"), device=DEVICE)]
    blocks += [torch.full((1 << 16,), float("nan"), device=DEVICE) for _ in range(64)]
    del blocks


def packed_qkv(layout: str, B, T, N, H, D, dtype=torch.float32, device=DEVICE, generator=None) -> torch.Tensor:
    """A ``[B, T, N, 3, H, D]`` packed tensor in the given layout (values ~ N(0, 1))."""
    if layout == "packed_nt":
        x = torch.randn(B, N, T, 3, H, D, dtype=torch.float64, generator=generator).to(device, dtype)
        return x.permute(0, 2, 1, 3, 4, 5)
    if layout == "strided_d":
        x = torch.randn(B, T, N, 3, H, D, 2, dtype=torch.float64, generator=generator).to(device, dtype)
        return x[..., 0]
    x = torch.randn(B, T, N, 3, H, D, dtype=torch.float64, generator=generator).to(device, dtype)
    return x


def make_qkv(layout: str, B, T, N, H, D, dtype=torch.float32, device=DEVICE, requires_grad=False, generator=None):
    """``(q, k, v)``, each ``[B, T, N, H, D]``, laid out as ``layout`` says (leaves when grad)."""
    if layout == "separate":
        ts = [
            torch.randn(B, T, N, H, D, dtype=torch.float64, generator=generator).to(device, dtype)
            for _ in range(3)
        ]
        if requires_grad:
            ts = [t.requires_grad_() for t in ts]
        return tuple(ts)
    qkv = packed_qkv(layout, B, T, N, H, D, dtype, device, generator)
    if requires_grad:
        qkv = qkv.detach().requires_grad_()
    return qkv.unbind(3)


def leaves(*tensors):
    """Detached copies (same strides) that require grad, for comparing two backends' gradients."""
    return tuple(t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in tensors)


def frame_lens_for(B: int, T: int, device=DEVICE, generator=None) -> torch.Tensor:
    """Lengths covering the edge cases: 0 (all padding), T (none) and values in between."""
    lens = torch.randint(0, T + 1, (B,), generator=generator)
    lens[0] = T
    if B > 1:
        lens[1] = 0
    if B > 2:
        lens[2] = 1
    return lens.to(device)


def case_id(**kw) -> str:
    """Readable test ids like ``B2-T7-N197-H3-D40-bf16``."""
    parts = []
    for key, value in kw.items():
        if isinstance(value, torch.dtype):
            parts.append(DTYPE_NAMES[value])
        elif isinstance(value, bool):
            if value:
                parts.append(key)
        elif value is None:
            continue
        else:
            parts.append(f"{key}{value}" if len(key) <= 2 else f"{value}")
    return "-".join(parts)


def interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def temporal_lse_reference(q, k, causal, frame_lens, scale):
    """``[B, H, T, N]`` float64 log-sum-exp of the scaled temporal logits (the ``lse`` the kernels
    save); -inf for rows with no visible key."""
    B, T, N, H, _ = q.shape
    logits = torch.einsum("btnhd,bsnhd->bnhts", q.double(), k.double()) * scale
    frames = torch.arange(T, device=q.device)
    visible = torch.ones(B, T, T, dtype=torch.bool, device=q.device)
    if causal:
        visible &= frames[None, :, None] >= frames[None, None, :]
    if frame_lens is not None:
        valid = frames[None, :] < frame_lens.to(q.device)[:, None]
        visible &= valid[:, :, None] & valid[:, None, :]
    logits = logits.masked_fill(~visible[:, None, None], float("-inf"))
    return torch.logsumexp(logits, dim=-1).permute(0, 2, 3, 1)
