"""Backend registry and selection: the one place that decides which implementation runs.

A backend is a mapping from op name (the public function names of SPEC §2) to a callable taking
the validated arguments. An op a backend does not (yet) implement is simply absent from its
mapping: ``backend=None`` then skips that backend, and naming it explicitly raises.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch

from . import _choice, reference

# Order of preference for CUDA tensors where measured data does not decide: with both kernel
# backends serving an op, backend=None asks _choice, which keeps Triton unless the CUDA C++ one
# was measured faster at the nearest shape, the host cost of the call included outside CUDA-graph
# capture; Triton first because it implements every op and has the faster kernels on most
# measured rows.
BACKEND_NAMES = ("triton", "cuda", "reference")
ENV_VAR = "TEMPORAL_KERNELS_BACKEND"


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Module constants rather than cached functions: torch.compile traces backend selection, and
# dynamo does not honour functools caches.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_importable() -> bool:
    return _TRITON_INSTALLED


def _packed(fn: Callable) -> Callable:
    """A ``*_qkvpacked`` op built from the unpacked one on zero-copy views (autograd re-packs)."""

    def packed(qkv: torch.Tensor, *, cls_qkv: torch.Tensor | None = None, **kwargs):
        q, k, v = qkv.unbind(dim=3)
        if cls_qkv is not None:
            kwargs["cls"] = tuple(cls_qkv.unbind(dim=1))
        return fn(q, k, v, **kwargs)

    return packed


_REFERENCE_OPS: dict[str, Callable] = {
    name: getattr(reference, name)
    for name in ("temporal_attention", "spatial_attention", "joint_attention", "factorized_attention")
}
_REFERENCE_OPS["temporal_attention_qkvpacked"] = _packed(_REFERENCE_OPS["temporal_attention"])
_REFERENCE_OPS["spatial_attention_qkvpacked"] = _packed(_REFERENCE_OPS["spatial_attention"])


def _reference_ops() -> dict[str, Callable]:
    return _REFERENCE_OPS


def _kernel_ops(name: str) -> dict[str, Callable]:
    if name == "triton":
        if not _triton_importable():
            return {}
        from .ops import TRITON_OPS

        return TRITON_OPS
    from . import _extension

    if not _extension.available():
        return {}
    from .ops import CUDA_OPS

    return CUDA_OPS


def _ops_of(name: str) -> dict[str, Callable]:
    return _reference_ops() if name == "reference" else _kernel_ops(name)


def _unavailable_reason(name: str, device: torch.device | None) -> str | None:
    """Why backend ``name`` cannot run on ``device`` (None: it can)."""
    if name == "reference":
        return None
    if name == "triton":
        if not _triton_importable():
            return "the 'triton' package is not installed"
        if device is not None and device.type != "cuda" and not triton_interpreter_enabled():
            return (
                f"it runs on CUDA tensors, or on CPU tensors only under the Triton interpreter "
                f"(TRITON_INTERPRET=1); got tensors on {device}"
            )
        if device is None and not torch.cuda.is_available() and not triton_interpreter_enabled():
            return "no CUDA device is available and TRITON_INTERPRET=1 is not set"
        return None
    if name == "cuda":
        from . import _extension

        if not _extension.available():
            return f"the compiled extension temporal_kernels._C is not available ({_extension.load_error()})"
        if device is not None and device.type != "cuda":
            return f"it runs on CUDA tensors only; got tensors on {device}"
        if device is None and not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    raise AssertionError(name)


def available_backends() -> list[str]:
    """Backends usable in this process, in order of preference for CUDA tensors."""
    return [name for name in BACKEND_NAMES if _unavailable_reason(name, None) is None]


def select(
    op: str, backend: str | None, device: torch.device, tensors: tuple = (), *, causal: bool = False,
    has_cls: bool = False,
) -> Callable:
    """The implementation of ``op`` to run for tensors on ``device``.

    ``backend=None`` reads ``TEMPORAL_KERNELS_BACKEND``; unset, CPU tensors get the reference
    (the Triton interpreter only when asked for by name), and CUDA tensors the backends that can
    run there and implement the op, in the order of ``BACKEND_NAMES``, except that where both
    Triton and CUDA C++ serve, the one measured faster for this call wins: ``_choice.pick_for``
    on ``tensors`` (the validated inputs, ``q`` or ``qkv`` first), ``causal`` and ``has_cls``.
    Without ``tensors`` there is nothing to measure against and the order decides.
    """
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = f"environment variable {ENV_VAR}"
    else:
        source = "backend"
    if backend is not None:
        if not isinstance(backend, str) or backend not in BACKEND_NAMES:
            raise ValueError(f"{source}: expected one of {list(BACKEND_NAMES)} or None, got {backend!r}")
        reason = _unavailable_reason(backend, device)
        if reason is not None:
            raise RuntimeError(f"{source}={backend!r} is unavailable: {reason}")
        impl = _ops_of(backend).get(op)
        if impl is None:
            raise RuntimeError(f"{source}={backend!r} does not implement {op} yet; use backend='reference'")
        return impl
    if device.type != "cuda":
        return _reference_ops()[op]
    serving = [name for name in BACKEND_NAMES if _unavailable_reason(name, device) is None and op in _ops_of(name)]
    if tensors and "triton" in serving and "cuda" in serving:
        return _ops_of(_choice.pick_for(op, tensors, causal=causal, has_cls=has_cls))[op]
    return _ops_of(serving[0])[op]
