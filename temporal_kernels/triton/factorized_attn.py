"""Triton factorized dot-product attention (ViViT model 4): temporal and spatial heads in one launch.

The kernels are the shared core of ``spatial_attn.py`` in ``MODE_FACTORIZED``. The 1-D grid's
first programs serve the temporal heads ``[0, temporal_heads)``, the rest the spatial heads; each
program picks its path from its id. For the short T of video models a temporal program runs the
body of the temporal short kernel on several whole ``(b, n, h)`` frame sequences (per-patch 3-D
dots: a non-finite input stays in its patch, and no tile is spent on masked cross-patch scores);
its backward computes dQ, dK and dV in one pass inside the dK/dV launch, and the dQ launches cover
the spatial heads only. Longer T runs one patch's frames per flash sequence. Spatial programs are
those of ``spatial_attention`` (no CLS).
"""

from __future__ import annotations

from .spatial_attn import MODE_FACTORIZED, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel, _attn_fwd_kernel, attn_bwd, attn_fwd

# The shared core under the names of this op (one kernel serves every mode).
_factorized_attn_fwd_kernel = _attn_fwd_kernel
_factorized_attn_bwd_dkdv_kernel = _attn_bwd_dkdv_kernel
_factorized_attn_bwd_dq_kernel = _attn_bwd_dq_kernel


def factorized_attn_fwd(q, k, v, out, lse, temporal_heads, causal, scale) -> None:
    """Factorized attention forward into ``out [B, T, N, H, D]`` and ``lse [B, H, T, N]``
    (heads ``< temporal_heads`` attend over T with ``causal``, the others over N)."""
    attn_fwd(MODE_FACTORIZED, q, k, v, out, lse, scale, causal=causal, temporal_heads=int(temporal_heads))


def factorized_attn_bwd(dout, q, k, v, out, lse, temporal_heads, causal, scale, dq, dk, dv) -> None:
    """Factorized attention backward into ``dq, dk, dv``."""
    attn_bwd(MODE_FACTORIZED, dout, q, k, v, out, lse, scale, dq, dk, dv, causal=causal,
             temporal_heads=int(temporal_heads))
