"""Triton joint space-time attention: flash attention over all T*N tokens of every (b, h).

The kernels are the shared core of ``spatial_attn.py`` in ``MODE_JOINT``: a token index ``i`` of
the sequence of ``(b, h)`` is split into ``(t, n) = (i // N, i % N)`` inside the kernel and read
through the tensors' (b, t, n, h) strides, so any layout (frame-major or TimeSformer's
patch-major tokens) is read in place. ``causal=True`` is frame-causal (``t' <= t``): key blocks
past the last frame of a query block are skipped. ``frame_lens`` cuts each sequence at
``len * N``: later keys are never seen, later rows output 0 (their lse is +inf, their
gradients 0) and their blocks do no work.
"""

from __future__ import annotations

from .spatial_attn import MODE_JOINT, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel, _attn_fwd_kernel, attn_bwd, attn_fwd

# The shared core under the names of this op (one kernel serves every mode).
_joint_attn_fwd_kernel = _attn_fwd_kernel
_joint_attn_bwd_dkdv_kernel = _attn_bwd_dkdv_kernel
_joint_attn_bwd_dq_kernel = _attn_bwd_dq_kernel


def joint_attn_fwd(q, k, v, out, lse, frame_lens, causal, scale) -> None:
    """Joint attention forward into ``out [B, T, N, H, D]`` and ``lse [B, H, T, N]``."""
    attn_fwd(MODE_JOINT, q, k, v, out, lse, scale, frame_lens=frame_lens, causal=causal)


def joint_attn_bwd(dout, q, k, v, out, lse, frame_lens, causal, scale, dq, dk, dv) -> None:
    """Joint attention backward into ``dq, dk, dv`` (``[B, T, N, H, D]`` each, any strides)."""
    attn_bwd(MODE_JOINT, dout, q, k, v, out, lse, scale, dq, dk, dv, frame_lens=frame_lens, causal=causal)
