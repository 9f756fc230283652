"""Loader of the compiled CUDA extension ``temporal_kernels._C`` (optional).

Importing ``_C`` registers the C++ op schemas and their CUDA implementations with
``torch.library`` (namespace ``temporal_kernels``). A CPU-only install has no ``_C``; the
``"cuda"`` backend is then unavailable and says why.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Import ``_C`` once; returns the reason it failed, or None."""
    try:
        from . import _C  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def available() -> bool:
    return _load() is None


def load_error() -> str:
    return _load() or ""
