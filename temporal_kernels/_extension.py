"""Loader of the compiled CUDA extension ``temporal_kernels._C`` (optional).

Importing ``_C`` registers the C++ op schemas and their CUDA implementations with
``torch.library`` (namespace ``temporal_kernels``). A CPU-only install has no ``_C``; the
``"cuda"`` backend is then unavailable and says why.
"""

from __future__ import annotations


def _import_error() -> str | None:
    try:
        from . import _C  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# Imported once, at package import (a module constant: torch.compile traces backend selection and
# dynamo does not honour functools caches).
_LOAD_ERROR = _import_error()


def _load() -> str | None:
    """The reason ``_C`` failed to import, or None."""
    return _LOAD_ERROR


def available() -> bool:
    return _load() is None


def load_error() -> str:
    return _load() or ""
