"""Triton factorized dot-product attention (ViViT model 4): temporal and spatial heads in one launch.

The kernels are the shared core of ``spatial_attn.py`` in ``MODE_FACTORIZED``. The 1-D grid's
first programs serve the temporal heads ``[0, temporal_heads)``, the rest the spatial heads; each
program picks its path from its id. A temporal program packs ``G = max(1, BLOCK // T)`` patches
of one ``(b, h)`` into one sequence of ``G*T`` tokens, ``i -> (n, t) = (n0 + i // T, i % T)``,
and masks every key outside the query's own patch (block-diagonal, plus ``t' <= t`` when
causal): for the short T of video models one tile then serves G patches instead of one patch
leaving most of a tile empty. Spatial programs are those of ``spatial_attention`` (no CLS).
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
