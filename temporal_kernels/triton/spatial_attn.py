"""Triton spatial attention (optionally with TimeSformer's CLS token), and the flash-attention core
shared with joint and factorized attention.

The core is "flash attention over a strided token set": every program owns one token sequence of
one ``(b, h)`` and one block of its rows, and a token index ``i`` of that sequence maps to a frame
and a patch through per-tensor strides, read directly from any layout:

- spatial (``MODE_SPATIAL``): the sequence of ``(b, t, h)`` is the N patches of frame t, token
  ``i`` is patch ``i``; with a CLS token, token ``N`` is the CLS token, read from its own
  ``[B, H, D]`` pointer (queries and keys alike), and the CLS query's output goes to ``cls_out``.
- joint (``MODE_JOINT``): the sequence of ``(b, h)`` is all T*N tokens, ``i -> (t, n) =
  (i // N, i % N)``; frame-causal masking compares ``i // N`` and ``frame_lens`` cuts the
  sequence at ``len * N`` (later rows output 0, later keys are never seen).
- factorized (``MODE_FACTORIZED``): one launch whose first programs run the temporal heads and the
  rest the spatial heads. For the short T of video models (``temporal_attn.use_short_path``) a
  temporal program runs the temporal short kernel's body (``_temporal_fwd_groups`` /
  ``_temporal_bwd_groups``: several whole ``(b, n, h)`` frame sequences with per-patch 3-D dots,
  the backward's dQ included in the dK/dV launch); otherwise the sequence of a temporal program
  is one patch's T frames, ``i -> (n, t) = (n0, i)``, in flash tiles.

Softmax statistics are fp32 (fp64 for float64 inputs) with a running max and sum; the forward
saves ``lse`` (natural log-sum-exp of the scaled logits, ``[B, H, T, N]``; ``lse_cls [B, H, T]``).
A row with no visible key (a padded frame of joint attention) outputs 0 and stores ``lse = +inf``
so that the backward's ``exp(s - lse)`` is 0 there. The backward is FA2-style: a delta pass, one kernel
accumulating dK/dV over the query blocks of its key block, one accumulating dQ over the key blocks
of its query block. The delta pass is the dQ kernel's key loop taking ``rowsum(P * dP)`` for
float16/bfloat16 (see ``attn_bwd``) and a small ``rowsum(dout * out)`` kernel otherwise. The CLS token's gradients
are written per frame into fp32 (fp64) partial buffers by the same kernels and summed over T
afterwards (deterministic, no atomics).

Tiles (``_fwd_config`` / ``_bwd_configs``), picked from sm_90 compiles without spills: fp16/bf16
with D <= 64 run the forward with BLOCK_M=128, BLOCK_N=64 (8 warps; from forward sweeps: spatial
and joint 3 pipeline stages, spatial with CLS 128 x 32 with 4 warps, frame-causal joint 64 x 32
with 4 warps, both with 3 stages; the factorized mode 2 stages), dK/dV with 128 keys per program
and 128 query rows per step (64 for spatial frames of N > 256), unpipelined, dQ with 64 rows x 32
keys per step, pipelined three deep but in the factorized mode (see ``_bwd_configs``); larger D
and fp32/fp64 use narrower tiles. N=196 (+CLS = 197) gives 2 row blocks of 128 (23% of the last
unused, as with 4 blocks of 64: 196 = 3*64 + 4); 784/785 gives 7 blocks of 128 (12% waste). Under
the interpreter every tile is 16 so that small CPU tests cross block boundaries.
"""

from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl

from .temporal_attn import (
    _scale_arg,
    _temporal_bwd_groups,
    _temporal_fwd_groups,
    cdiv,
    factorized_short_groups,
    next_power_of_2,
    on_tensor_device,
    use_short_path,
)

MODE_SPATIAL = 0
MODE_JOINT = 1
MODE_FACTORIZED = 2

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


# ---------------------------------------------------------------------------------------------
# device helpers


@triton.jit
def _decode(pid, B, T, N, H, TH, N_TP, BLOCK: tl.constexpr, MODE: tl.constexpr, HAS_CLS: tl.constexpr,
            T_SHORT: tl.constexpr):
    """Program id -> its sequence and row block.

    Returns ``(b, h, t, n0, blk, L, L_valid, div, is_t)``: the sequence is that of batch b, head
    h, frame t (spatial) or first patch n0 (temporal path); ``blk`` is the block index along it;
    ``L`` its length; ``L_valid`` the prefix of tokens that are real (``L`` here: the kernels cut
    it at the joint ``frame_lens`` themselves);
    ``div`` splits a token index into (outer, inner) = (i // div, i % div); ``is_t`` marks the
    temporal path of the factorized mode, whose first ``N_TP`` programs are temporal (flash tiles
    of one patch's frames here; 0 in launches that leave the temporal heads to other programs).
    With T_SHORT the temporal programs never get here (they ran the short body, or the launch has
    none): every program decoded is spatial, which the compiler then knows.
    """
    zero = pid * 0
    if MODE == 0:
        if HAS_CLS:
            L = N + 1
        else:
            L = N + 0
        nblk = tl.cdiv(L, BLOCK)
        blk = pid % nblk
        g = pid // nblk
        h = g % H
        g = g // H
        t = g % T
        b = g // T
        n0 = zero
        L_valid = zero + L
        div = zero + L
        is_t = zero != 0
    elif MODE == 1:
        L = T * N
        nblk = tl.cdiv(L, BLOCK)
        blk = pid % nblk
        g = pid // nblk
        h = g % H
        b = g // H
        t = zero
        n0 = zero
        L_valid = zero + L
        div = zero + N
        is_t = zero != 0
    else:
        # temporal path: programs [0, n_tp); heads [0, TH), one patch's T frames per sequence.
        # One patch only: a tile of several patches' frames (block-diagonal masks) multiplies the
        # masked zeros of P and dS with the other patches' rows, so a non-finite input leaked.
        TH1 = tl.maximum(TH, 1)
        HS1 = tl.maximum(H - TH, 1)
        nblk_t = tl.cdiv(T, BLOCK)
        n_tp = N_TP
        if T_SHORT:
            is_t = zero != 0
        else:
            is_t = pid < n_tp
        g_t = pid // nblk_t
        n0_t = g_t % N
        g_t = g_t // N
        h_t = g_t % TH1
        b_t = g_t // TH1
        # spatial path: programs [n_tp, ...), heads [TH, H)
        ps = tl.maximum(pid - n_tp, 0)
        nblk_s = tl.cdiv(N, BLOCK)
        g_s = ps // nblk_s
        h_s = TH + g_s % HS1
        g_s = g_s // HS1
        t_s = g_s % T
        b_s = g_s // T
        b = tl.where(is_t, b_t, b_s)
        h = tl.where(is_t, h_t, h_s)
        t = tl.where(is_t, zero, t_s)
        n0 = tl.where(is_t, n0_t, zero)
        blk = tl.where(is_t, pid % nblk_t, ps % nblk_s)
        L = tl.where(is_t, zero + T, zero + N)
        L_valid = L
        div = tl.where(is_t, zero + T, zero + N)
    return b, h, t, n0, blk, L, L_valid, div, is_t


@triton.jit
def _seq_addr(s_b, s_t, s_n, s_h, b, h, t, n0, is_t, MODE: tl.constexpr):
    """Base offset of a sequence and the strides of its (outer, inner) token coordinates."""
    b64 = b.to(tl.int64)
    base = b64 * s_b + h.to(tl.int64) * s_h + t.to(tl.int64) * s_t + n0.to(tl.int64) * s_n
    zero = b64 * 0
    if MODE == 0:
        s_out = zero
        s_in = zero + s_n
    elif MODE == 1:
        s_out = zero + s_t
        s_in = zero + s_n
    else:
        s_out = tl.where(is_t, zero + s_n, zero)
        s_in = tl.where(is_t, zero + s_t, zero + s_n)
    return base, s_out, s_in


@triton.jit
def _tok_off(idx, div, s_out, s_in, MODE: tl.constexpr):
    """Offsets (int64) of token indices ``idx`` within their sequence."""
    if MODE == 0:
        return idx.to(tl.int64) * s_in
    else:
        o = idx // div
        return o.to(tl.int64) * s_out + (idx - o * div).to(tl.int64) * s_in


@triton.jit
def _load_tokens(X, XC, base, off, c_off, rows, L, N, offs_d, D, HAS_CLS: tl.constexpr):
    """Rows ``[len(rows), BLOCK_D]`` of a token sequence; row N is the CLS row when HAS_CLS."""
    ptr = X + base + off[:, None] + offs_d[None, :]
    if HAS_CLS:
        ptr = tl.where((rows == N)[:, None], XC + c_off + offs_d[None, :], ptr)
    return tl.load(ptr, mask=(rows < L)[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _store_tokens(X, XC, base, off, c_off, rows, n_main, offs_d, D, val, HAS_CLS: tl.constexpr):
    """Store rows to X (rows < n_main) and, when HAS_CLS, row n_main to the CLS buffer XC."""
    mask_d = (offs_d < D)[None, :]
    tl.store(X + base + off[:, None] + offs_d[None, :], val.to(X.dtype.element_ty),
             mask=(rows < n_main)[:, None] & mask_d)
    if HAS_CLS:
        tl.store(XC + c_off + rows[:, None] * 0 + offs_d[None, :], val.to(XC.dtype.element_ty),
                 mask=(rows == n_main)[:, None] & mask_d)


@triton.jit
def _load_stat(S, SC, base, off, c_off, rows, n_main, other, HAS_CLS: tl.constexpr):
    """Per-row statistic (lse / delta); rows past the sequence read ``other``."""
    x = tl.load(S + base + off, mask=rows < n_main, other=other)
    if HAS_CLS:
        xc = tl.load(SC + c_off + rows * 0, mask=rows == n_main, other=other)
        x = tl.where(rows == n_main, xc, x)
    return x


@triton.jit
def _visible(offs_m, offs_n, div, L_k, is_t, MODE: tl.constexpr, CAUSAL: tl.constexpr):
    """``[BLOCK_M, BLOCK_N]`` key visibility (the query-row validity is applied by the caller)."""
    vis = (offs_n < L_k)[None, :]
    if MODE == 1:
        if CAUSAL:
            vis = vis & ((offs_n // div)[None, :] <= (offs_m // div)[:, None])
    if MODE == 2:
        qo = offs_m // div
        ko = offs_n // div
        same = ko[None, :] == qo[:, None]
        if CAUSAL:
            same = same & ((offs_n - ko * div)[None, :] <= (offs_m - qo * div)[:, None])
        vis = vis & (same | (is_t == 0))
    return vis


@triton.jit
def _key_range(m0, L, L_valid, div, is_t, BLOCK_M: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr):
    """Key indices ``[lo, hi)`` that rows ``[m0, m0 + BLOCK_M)`` can see (skips masked blocks)."""
    lo = m0 * 0
    hi = L_valid
    last = tl.minimum(m0 + BLOCK_M, L) - 1
    if MODE == 1:
        if CAUSAL:
            hi = tl.minimum(hi, (last // div + 1) * div)
        hi = tl.where(m0 >= L_valid, lo, hi)
    if MODE == 2:
        lo = tl.where(is_t, (m0 // div) * div, lo)
        hi = tl.where(is_t, tl.minimum(L, (last // div + 1) * div), hi)
        if CAUSAL:
            # a visible key shares the row's patch and has t' <= t, so its index is <= the row's
            hi = tl.where(is_t, tl.minimum(hi, last + 1), hi)
    return lo, hi


@triton.jit
def _whole_keys(lo, hi, m0, L, div, MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_CLS: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """End of the whole key blocks ``[lo, end)`` that every row of ``[m0, m0 + BLOCK_M)`` sees and
    that hold patch keys only (``_fwd_step`` / ``_dq_step`` without masks); the rest of ``[lo, hi)``
    is masked.
    Rows past the sequence are never stored, and rows past ``frame_lens`` are zeroed after the
    loop, so only the keys decide: below ``hi`` (``frame_lens`` included), before the CLS key, and,
    frame-causal, in a frame no later than the block's first row's. The factorized mode's
    temporal heads (a patch's frames only) are masked throughout."""
    end = tl.minimum(hi, _n_main(L, HAS_CLS))
    if MODE == 1:
        if CAUSAL:
            end = tl.minimum(end, (m0 // div + 1) * div)
    if MODE == 2:
        end = lo
    return tl.maximum(lo, lo + (end - lo) // BLOCK_N * BLOCK_N)


@triton.jit
def _query_range(n0, L, L_valid, div, is_t, BLOCK_N: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr):
    """Query indices ``[lo, hi)`` that can see keys ``[n0, n0 + BLOCK_N)``."""
    lo = n0 * 0
    hi = L_valid
    if MODE == 1:
        if CAUSAL:
            lo = (n0 // div) * div
        lo = tl.where(n0 >= L_valid, hi, lo)
    if MODE == 2:
        last = tl.minimum(n0 + BLOCK_N, L) - 1
        lo = tl.where(is_t, (n0 // div) * div, lo)
        hi = tl.where(is_t, tl.minimum(L, (last // div + 1) * div), hi)
        if CAUSAL:
            lo = tl.where(is_t, n0, lo)
    return lo, hi


@triton.jit
def _n_main(L, HAS_CLS: tl.constexpr):
    """Rows that are patches (the CLS row, when present, is the last one)."""
    if HAS_CLS:
        return L - 1
    else:
        return L


@triton.jit
def _exp(x, IS_F64: tl.constexpr):
    # fp32 runs in the log2 domain (exp2 is one instruction); fp64 keeps exp for its precision
    if IS_F64:
        return tl.exp(x)
    else:
        return tl.exp2(x)


@triton.jit
def _logits(s, scale_hi, scale_lo, IS_F64: tl.constexpr):
    """Scaled logits in the exponent domain of ``_exp`` (natural for fp64, log2 otherwise).

    Python floats reach a kernel as fp32 in eager mode, so float64 carries its scale as two
    fp32-exact halves (``_scale_arg`` has cast both to the statistics dtype)."""
    if IS_F64:
        return s * scale_hi + s * scale_lo
    else:
        return s * (scale_hi * 1.4426950408889634)


@triton.jit
def _lse_domain(lse, IS_F64: tl.constexpr):
    """A stored (natural) lse in the exponent domain of ``_exp``."""
    if IS_F64:
        return lse
    else:
        return lse * 1.4426950408889634


@triton.jit
def _times_scale(x, scale_hi, scale_lo, IS_F64: tl.constexpr):
    if IS_F64:
        return x * scale_hi + x * scale_lo
    else:
        return x * scale_hi


# ---------------------------------------------------------------------------------------------
# loop bodies: each kernel runs its loop as a ``for`` over a runtime range on the GPU (software-
# pipelined by Triton) and as a ``while`` in the interpreter, whose ``range`` cannot take a runtime
# bound under NumPy >= 2.3 (it converts a 1-element array with ``int()``).


@triton.jit
def _load_kv(K, KC, V, VC, k_base, k_so, k_si, kc_off, v_base, v_so, v_si, vc_off, offs_n, div, hi, N, offs_d, D,
             MODE: tl.constexpr, HAS_CLS: tl.constexpr, MASKED: tl.constexpr):
    """Key and value rows ``offs_n`` ``[BLOCK_N, BLOCK_D]``; MASKED=False: patch keys below ``hi``
    only (a whole block, ``_whole_keys``), loaded without the row masks and the CLS select."""
    if MASKED:
        k = _load_tokens(K, KC, k_base, _tok_off(offs_n, div, k_so, k_si, MODE), kc_off, offs_n, hi, N, offs_d, D,
                         HAS_CLS)
        v = _load_tokens(V, VC, v_base, _tok_off(offs_n, div, v_so, v_si, MODE), vc_off, offs_n, hi, N, offs_d, D,
                         HAS_CLS)
    else:
        mask_d = (offs_d < D)[None, :]
        k = tl.load(K + k_base + _tok_off(offs_n, div, k_so, k_si, MODE)[:, None] + offs_d[None, :], mask=mask_d,
                    other=0.0)
        v = tl.load(V + v_base + _tok_off(offs_n, div, v_so, v_si, MODE)[:, None] + offs_d[None, :], mask=mask_d,
                    other=0.0)
    return k, v


@triton.jit
def _fwd_step(
    acc, m_i, l_i, q, start, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off, v_base, v_so, v_si, vc_off,
    div, hi, N, D, is_t, scale_hi, scale_lo,
    MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_CLS: tl.constexpr, IS_F64: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
):
    """One key block of the forward loop. MASKED=False: a whole block of patch keys that every row
    sees (``_whole_keys``), loaded and used without masks but the head dim's."""
    offs_n = start + tl.arange(0, BLOCK_N)
    k, v = _load_kv(K, KC, V, VC, k_base, k_so, k_si, kc_off, v_base, v_so, v_si, vc_off, offs_n, div, hi, N, offs_d, D,
                    MODE, HAS_CLS, MASKED)
    s = _logits(tl.dot(q, tl.trans(k), input_precision=PREC), scale_hi, scale_lo, IS_F64)  # [BLOCK_M, BLOCK_N]
    if MASKED:
        s = tl.where(_visible(offs_m, offs_n, div, hi, is_t, MODE, CAUSAL), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        # a row that has seen no key yet keeps m = -inf: shift by 0 instead, exp(-inf) = 0
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_safe = m_new
    alpha = _exp(m_i - m_safe, IS_F64)
    p = _exp(s - m_safe[:, None], IS_F64)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i


@triton.jit
def _dkdv_step(
    dk, dv, k, v, start, offs_n, offs_d, Q, QC, DO, DOC, LSE, LSEC, DELTA, DELTAC,
    q_base, q_so, q_si, qc_off, do_base, do_so, do_si, doc_off, l_base, l_so, l_si, stat_c_off,
    div, hi, L_valid, n_main, N, D, is_t, scale_hi, scale_lo,
    MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_CLS: tl.constexpr, IS_F64: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    offs_m = start + tl.arange(0, BLOCK_M)
    q = _load_tokens(Q, QC, q_base, _tok_off(offs_m, div, q_so, q_si, MODE), qc_off, offs_m, hi, N, offs_d, D, HAS_CLS)
    do = _load_tokens(DO, DOC, do_base, _tok_off(offs_m, div, do_so, do_si, MODE), doc_off, offs_m, hi, N, offs_d, D,
                      HAS_CLS)  # [BLOCK_M, BLOCK_D]
    l_off = _tok_off(offs_m, div, l_so, l_si, MODE)
    lse = _load_stat(LSE, LSEC, l_base, l_off, stat_c_off, offs_m, n_main, 0.0, HAS_CLS)  # [BLOCK_M]
    delta = _load_stat(DELTA, DELTAC, l_base, l_off, stat_c_off, offs_m, n_main, 0.0, HAS_CLS)
    # delta of a padded row is dout . out, NaN when its (never read) dout is: 0 * NaN in dS
    delta = tl.where(offs_m < hi, delta, 0.0)
    s = _logits(tl.dot(q, tl.trans(k), input_precision=PREC), scale_hi, scale_lo, IS_F64)  # [BLOCK_M, BLOCK_N]
    vis = _visible(offs_m, offs_n, div, L_valid, is_t, MODE, CAUSAL) & (offs_m < hi)[:, None]
    p = tl.where(vis, _exp(s - _lse_domain(lse, IS_F64)[:, None], IS_F64), 0.0)
    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # [BLOCK_M, BLOCK_N]
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    return dk, dv


@triton.jit
def _dq_step(
    acc, q, do, lse, delta, row_ok, start, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off,
    v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
    MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_CLS: tl.constexpr, IS_F64: tl.constexpr, PREC: tl.constexpr,
    DELTA_ONLY: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
):
    """One key block of the dQ loop: ``acc += dS K``; with DELTA_ONLY, ``acc += rowsum(P * dP)``
    (``acc`` ``[BLOCK_M]``, ``delta`` unused). MASKED=False: a whole block of patch keys every row
    sees (``_whole_keys``), without masks: rows past ``frame_lens`` have lse = +inf (P = 0) and
    zero q / dout, rows past the sequence are never stored."""
    offs_n = start + tl.arange(0, BLOCK_N)
    k, v = _load_kv(K, KC, V, VC, k_base, k_so, k_si, kc_off, v_base, v_so, v_si, vc_off, offs_n, div, hi, N, offs_d, D,
                    MODE, HAS_CLS, MASKED)
    s = _logits(tl.dot(q, tl.trans(k), input_precision=PREC), scale_hi, scale_lo, IS_F64)  # [BLOCK_M, BLOCK_N]
    if MASKED:
        vis = _visible(offs_m, offs_n, div, hi, is_t, MODE, CAUSAL) & row_ok[:, None]
        p = tl.where(vis, _exp(s - _lse_domain(lse, IS_F64)[:, None], IS_F64), 0.0)
    else:
        p = _exp(s - _lse_domain(lse, IS_F64)[:, None], IS_F64)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # [BLOCK_M, BLOCK_N]
    if DELTA_ONLY:
        acc += tl.sum(p * dp, 1)
    else:
        ds = p * (dp - delta[:, None])
        acc += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    return acc


@triton.jit
def _fwd_loop(
    acc, m_i, l_i, q, lo, end, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off, v_base, v_so, v_si, vc_off,
    div, hi, N, D, is_t, scale_hi, scale_lo,
    MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_CLS: tl.constexpr, IS_F64: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, INTERPRET: tl.constexpr,
):
    """``_fwd_step`` over the key blocks of ``[lo, end)``."""
    if INTERPRET:
        start = lo
        while start < end:
            acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, start, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off,
                                      v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                                      MODE, CAUSAL, HAS_CLS, IS_F64, PREC, BLOCK_N, MASKED)
            start += BLOCK_N
    else:
        for start in range(lo, end, BLOCK_N):
            acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, start, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off,
                                      v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                                      MODE, CAUSAL, HAS_CLS, IS_F64, PREC, BLOCK_N, MASKED)
    return acc, m_i, l_i


@triton.jit
def _dq_loop(
    acc, q, do, lse, delta, row_ok, lo, end, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off,
    v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
    MODE: tl.constexpr, CAUSAL: tl.constexpr, HAS_CLS: tl.constexpr, IS_F64: tl.constexpr, PREC: tl.constexpr,
    DELTA_ONLY: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, INTERPRET: tl.constexpr,
):
    """``_dq_step`` over the key blocks of ``[lo, end)``."""
    if INTERPRET:
        start = lo
        while start < end:
            acc = _dq_step(acc, q, do, lse, delta, row_ok, start, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si,
                           kc_off, v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                           MODE, CAUSAL, HAS_CLS, IS_F64, PREC, DELTA_ONLY, BLOCK_N, MASKED)
            start += BLOCK_N
    else:
        for start in range(lo, end, BLOCK_N):
            acc = _dq_step(acc, q, do, lse, delta, row_ok, start, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si,
                           kc_off, v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                           MODE, CAUSAL, HAS_CLS, IS_F64, PREC, DELTA_ONLY, BLOCK_N, MASKED)
    return acc


# ---------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, QC, KC, VC, OC, LSEC, LENS,
    sq_b, sq_t, sq_n, sq_h, sk_b, sk_t, sk_n, sk_h, sv_b, sv_t, sv_n, sv_h, so_b, so_t, so_n, so_h,
    sqc_b, sqc_h, skc_b, skc_h, svc_b, svc_h, soc_b, soc_t, soc_h,
    B, T, N, H, TH, N_TP, D, scale_hi, scale_lo,
    CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr, HAS_CLS: tl.constexpr, MODE: tl.constexpr,
    IS_F64: tl.constexpr, PREC: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    T_SHORT: tl.constexpr, BLOCK_G_T: tl.constexpr, T_PAD: tl.constexpr, WHOLE_BLOCKS: tl.constexpr,
):
    """Forward over one row block of one sequence: ``out``, ``lse`` (and the CLS row's).

    T_SHORT (factorized): the first ``N_TP`` programs run the temporal heads as the temporal
    short kernel does, BLOCK_G_T whole ``(b, n, h)`` frame sequences each, with per-patch dots."""
    pid = tl.program_id(0)
    if MODE == 2:
        if T_SHORT:
            if pid < N_TP:
                _temporal_fwd_groups(
                    pid.to(tl.int64), Q, K, V, O, LSE, LENS,
                    sq_b, sq_t, sq_n, sq_h, sk_b, sk_t, sk_n, sk_h, sv_b, sv_t, sv_n, sv_h, so_b, so_t, so_n, so_h,
                    T, N, TH, H, D, B * N * TH, _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64),
                    False, CAUSAL, IS_F64, BLOCK_G_T, T_PAD, BLOCK_D, PREC == "ieee",
                )
                return
    b, h, t, n0, blk, L, L_valid, div, is_t = _decode(pid, B, T, N, H, TH, N_TP, BLOCK_M, MODE, HAS_CLS, T_SHORT)
    if HAS_LENS:
        # inline, not in a helper: torch.compile's mutation analysis counts every pointer passed to a
        # helper whose result feeds a store address as written (frame_lens would become an output)
        L_valid = tl.load(LENS + b).to(tl.int32) * N
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    q_base, q_so, q_si = _seq_addr(sq_b, sq_t, sq_n, sq_h, b, h, t, n0, is_t, MODE)
    k_base, k_so, k_si = _seq_addr(sk_b, sk_t, sk_n, sk_h, b, h, t, n0, is_t, MODE)
    v_base, v_so, v_si = _seq_addr(sv_b, sv_t, sv_n, sv_h, b, h, t, n0, is_t, MODE)
    o_base, o_so, o_si = _seq_addr(so_b, so_t, so_n, so_h, b, h, t, n0, is_t, MODE)
    l_base, l_so, l_si = _seq_addr(H * T * N, N, 1, T * N, b, h, t, n0, is_t, MODE)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    t64 = t.to(tl.int64)
    kc_off = b64 * skc_b + h64 * skc_h
    vc_off = b64 * svc_b + h64 * svc_h

    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tokens(Q, QC, q_base, _tok_off(offs_m, div, q_so, q_si, MODE), b64 * sqc_b + h64 * sqc_h,
                     offs_m, L, N, offs_d, D, HAS_CLS)  # [BLOCK_M, BLOCK_D]

    if IS_F64:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float64)
        l_i = tl.zeros([BLOCK_M], tl.float64)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float64)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _key_range(blk * BLOCK_M, L, L_valid, div, is_t, BLOCK_M, MODE, CAUSAL)
    # whole key blocks first, without masks (WHOLE_BLOCKS; see _whole_blocks), then the masked rest
    whole = lo
    if WHOLE_BLOCKS:
        whole = _whole_keys(lo, hi, blk * BLOCK_M, L, div, MODE, CAUSAL, HAS_CLS, BLOCK_N)
        acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, lo, whole, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off,
                                  v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                                  MODE, CAUSAL, HAS_CLS, IS_F64, PREC, BLOCK_N, False, INTERPRET)
    acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, whole, hi, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si, kc_off,
                              v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                              MODE, CAUSAL, HAS_CLS, IS_F64, PREC, BLOCK_N, True, INTERPRET)

    # l_i == 0 only on rows that saw no key; a NaN sum (NaN input) must stay NaN, not become 0
    ok = (offs_m < L_valid) & (l_i != 0)
    l_safe = tl.where(ok, l_i, 1.0)
    out = tl.where(ok[:, None], acc / l_safe[:, None], 0.0)
    if IS_F64:
        lse = m_i + tl.log(l_safe)
    else:
        lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
    # +inf: the backward's exp(s - lse) is 0 on rows that saw no key
    lse = tl.where(ok, lse, float("inf"))

    n_main = _n_main(L, HAS_CLS)
    _store_tokens(O, OC, o_base, _tok_off(offs_m, div, o_so, o_si, MODE), b64 * soc_b + t64 * soc_t + h64 * soc_h,
                  offs_m, n_main, offs_d, D, out, HAS_CLS)
    tl.store(LSE + l_base + _tok_off(offs_m, div, l_so, l_si, MODE), lse, mask=offs_m < n_main)
    if HAS_CLS:
        tl.store(LSEC + (b64 * H + h64) * T + t64 + offs_m * 0, lse, mask=offs_m == n_main)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, QC, KC, VC, DOC, LSEC, DELTAC, DK, DV, DKC, DVC, DQ, LENS,
    sq_b, sq_t, sq_n, sq_h, sk_b, sk_t, sk_n, sk_h, sv_b, sv_t, sv_n, sv_h, sdo_b, sdo_t, sdo_n, sdo_h,
    sdk_b, sdk_t, sdk_n, sdk_h, sdv_b, sdv_t, sdv_n, sdv_h, sdq_b, sdq_t, sdq_n, sdq_h,
    sqc_b, sqc_h, skc_b, skc_h, svc_b, svc_h, sdoc_b, sdoc_t, sdoc_h,
    B, T, N, H, TH, N_TP, D, scale_hi, scale_lo,
    CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr, HAS_CLS: tl.constexpr, MODE: tl.constexpr,
    IS_F64: tl.constexpr, PREC: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    T_SHORT: tl.constexpr, BLOCK_G_T: tl.constexpr, T_PAD: tl.constexpr,
):
    """dK, dV of one key block (the CLS key's per-frame partials into DKC/DVC ``[B, T, H, D]``).

    T_SHORT (factorized): the first ``N_TP`` programs run the temporal heads' whole backward (dQ
    too, into DQ) as the temporal short kernel does; the dQ launches then skip those heads."""
    pid = tl.program_id(0)
    if MODE == 2:
        if T_SHORT:
            if pid < N_TP:
                _temporal_bwd_groups(
                    pid.to(tl.int64), DO, Q, K, V, LSE, LENS, DQ, DK, DV,
                    sdo_b, sdo_t, sdo_n, sdo_h, sq_b, sq_t, sq_n, sq_h, sk_b, sk_t, sk_n, sk_h,
                    sv_b, sv_t, sv_n, sv_h, sdq_b, sdq_t, sdq_n, sdq_h, sdk_b, sdk_t, sdk_n, sdk_h,
                    sdv_b, sdv_t, sdv_n, sdv_h,
                    T, N, TH, H, D, B * N * TH, _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64),
                    False, CAUSAL, IS_F64, BLOCK_G_T, T_PAD, BLOCK_D, PREC == "ieee",
                )
                return
    b, h, t, n0, blk, L, L_valid, div, is_t = _decode(pid, B, T, N, H, TH, N_TP, BLOCK_N, MODE, HAS_CLS, T_SHORT)
    if HAS_LENS:
        # inline: see _attn_fwd_kernel
        L_valid = tl.load(LENS + b).to(tl.int32) * N
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    q_base, q_so, q_si = _seq_addr(sq_b, sq_t, sq_n, sq_h, b, h, t, n0, is_t, MODE)
    k_base, k_so, k_si = _seq_addr(sk_b, sk_t, sk_n, sk_h, b, h, t, n0, is_t, MODE)
    v_base, v_so, v_si = _seq_addr(sv_b, sv_t, sv_n, sv_h, b, h, t, n0, is_t, MODE)
    do_base, do_so, do_si = _seq_addr(sdo_b, sdo_t, sdo_n, sdo_h, b, h, t, n0, is_t, MODE)
    dk_base, dk_so, dk_si = _seq_addr(sdk_b, sdk_t, sdk_n, sdk_h, b, h, t, n0, is_t, MODE)
    dv_base, dv_so, dv_si = _seq_addr(sdv_b, sdv_t, sdv_n, sdv_h, b, h, t, n0, is_t, MODE)
    l_base, l_so, l_si = _seq_addr(H * T * N, N, 1, T * N, b, h, t, n0, is_t, MODE)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    t64 = t.to(tl.int64)
    qc_off = b64 * sqc_b + h64 * sqc_h
    doc_off = b64 * sdoc_b + t64 * sdoc_t + h64 * sdoc_h
    stat_c_off = (b64 * H + h64) * T + t64
    n_main = _n_main(L, HAS_CLS)

    offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tokens(K, KC, k_base, _tok_off(offs_n, div, k_so, k_si, MODE), b64 * skc_b + h64 * skc_h,
                     offs_n, L_valid, N, offs_d, D, HAS_CLS)  # [BLOCK_N, BLOCK_D]
    v = _load_tokens(V, VC, v_base, _tok_off(offs_n, div, v_so, v_si, MODE), b64 * svc_b + h64 * svc_h,
                     offs_n, L_valid, N, offs_d, D, HAS_CLS)  # [BLOCK_N, BLOCK_D]
    if IS_F64:
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float64)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float64)
    else:
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo, hi = _query_range(blk * BLOCK_N, L, L_valid, div, is_t, BLOCK_N, MODE, CAUSAL)
    if INTERPRET:
        start = lo
        while start < hi:
            dk, dv = _dkdv_step(dk, dv, k, v, start, offs_n, offs_d, Q, QC, DO, DOC, LSE, LSEC, DELTA, DELTAC,
                                q_base, q_so, q_si, qc_off, do_base, do_so, do_si, doc_off, l_base, l_so, l_si,
                                stat_c_off, div, hi, L_valid, n_main, N, D, is_t, scale_hi, scale_lo,
                                MODE, CAUSAL, HAS_CLS, IS_F64, PREC, BLOCK_M)
            start += BLOCK_M
    else:
        for start in range(lo, hi, BLOCK_M):
            dk, dv = _dkdv_step(dk, dv, k, v, start, offs_n, offs_d, Q, QC, DO, DOC, LSE, LSEC, DELTA, DELTAC,
                                q_base, q_so, q_si, qc_off, do_base, do_so, do_si, doc_off, l_base, l_so, l_si,
                                stat_c_off, div, hi, L_valid, n_main, N, D, is_t, scale_hi, scale_lo,
                                MODE, CAUSAL, HAS_CLS, IS_F64, PREC, BLOCK_M)
    dk = _times_scale(dk, scale_hi, scale_lo, IS_F64)

    c_off = ((b64 * T + t64) * H + h64) * D
    _store_tokens(DK, DKC, dk_base, _tok_off(offs_n, div, dk_so, dk_si, MODE), c_off, offs_n, n_main, offs_d, D, dk,
                  HAS_CLS)
    _store_tokens(DV, DVC, dv_base, _tok_off(offs_n, div, dv_so, dv_si, MODE), c_off, offs_n, n_main, offs_d, D, dv,
                  HAS_CLS)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, QC, KC, VC, DOC, LSEC, DELTAC, DQ, DQC, LENS,
    sq_b, sq_t, sq_n, sq_h, sk_b, sk_t, sk_n, sk_h, sv_b, sv_t, sv_n, sv_h, sdo_b, sdo_t, sdo_n, sdo_h,
    sdq_b, sdq_t, sdq_n, sdq_h,
    sqc_b, sqc_h, skc_b, skc_h, svc_b, svc_h, sdoc_b, sdoc_t, sdoc_h,
    B, T, N, H, TH, N_TP, D, scale_hi, scale_lo,
    CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr, HAS_CLS: tl.constexpr, MODE: tl.constexpr,
    IS_F64: tl.constexpr, PREC: tl.constexpr, INTERPRET: tl.constexpr, DELTA_ONLY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, T_SHORT: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
):
    """dQ of one query block (the CLS query's per-frame partial into DQC ``[B, T, H, D]``).

    DELTA_ONLY: a pass before the dK/dV and dQ kernels that writes ``delta = rowsum(P * dP)`` of
    the block's rows into DELTA (DELTAC for the CLS row) instead, and reads no delta.

    T_SHORT (factorized): the dK/dV launch ran the temporal heads' whole backward; this launch's
    programs are all spatial (``N_TP`` = 0)."""
    pid = tl.program_id(0)
    b, h, t, n0, blk, L, L_valid, div, is_t = _decode(pid, B, T, N, H, TH, N_TP, BLOCK_M, MODE, HAS_CLS, T_SHORT)
    if HAS_LENS:
        # inline: see _attn_fwd_kernel
        L_valid = tl.load(LENS + b).to(tl.int32) * N
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    q_base, q_so, q_si = _seq_addr(sq_b, sq_t, sq_n, sq_h, b, h, t, n0, is_t, MODE)
    k_base, k_so, k_si = _seq_addr(sk_b, sk_t, sk_n, sk_h, b, h, t, n0, is_t, MODE)
    v_base, v_so, v_si = _seq_addr(sv_b, sv_t, sv_n, sv_h, b, h, t, n0, is_t, MODE)
    do_base, do_so, do_si = _seq_addr(sdo_b, sdo_t, sdo_n, sdo_h, b, h, t, n0, is_t, MODE)
    dq_base, dq_so, dq_si = _seq_addr(sdq_b, sdq_t, sdq_n, sdq_h, b, h, t, n0, is_t, MODE)
    l_base, l_so, l_si = _seq_addr(H * T * N, N, 1, T * N, b, h, t, n0, is_t, MODE)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    t64 = t.to(tl.int64)
    kc_off = b64 * skc_b + h64 * skc_h
    vc_off = b64 * svc_b + h64 * svc_h
    stat_c_off = (b64 * H + h64) * T + t64
    n_main = _n_main(L, HAS_CLS)

    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tokens(Q, QC, q_base, _tok_off(offs_m, div, q_so, q_si, MODE), b64 * sqc_b + h64 * sqc_h,
                     offs_m, L_valid, N, offs_d, D, HAS_CLS)  # [BLOCK_M, BLOCK_D]
    do = _load_tokens(DO, DOC, do_base, _tok_off(offs_m, div, do_so, do_si, MODE),
                      b64 * sdoc_b + t64 * sdoc_t + h64 * sdoc_h, offs_m, L_valid, N, offs_d, D, HAS_CLS)
    l_off = _tok_off(offs_m, div, l_so, l_si, MODE)
    lse = _load_stat(LSE, LSEC, l_base, l_off, stat_c_off, offs_m, n_main, 0.0, HAS_CLS)  # [BLOCK_M]
    row_ok = offs_m < L_valid
    lo, hi = _key_range(blk * BLOCK_M, L, L_valid, div, is_t, BLOCK_M, MODE, CAUSAL)
    if DELTA_ONLY:
        delta = lse  # not read: this pass computes delta
        acc = tl.zeros([BLOCK_M], lse.dtype)
    else:
        delta = _load_stat(DELTA, DELTAC, l_base, l_off, stat_c_off, offs_m, n_main, 0.0, HAS_CLS)
        delta = tl.where(row_ok, delta, 0.0)  # see _dkdv_step
        acc = tl.zeros([BLOCK_M, BLOCK_D], lse.dtype)
    # as in the forward: whole key blocks without masks (WHOLE_BLOCKS), then the masked rest
    whole = lo
    if WHOLE_BLOCKS:
        whole = _whole_keys(lo, hi, blk * BLOCK_M, L, div, MODE, CAUSAL, HAS_CLS, BLOCK_N)
        acc = _dq_loop(acc, q, do, lse, delta, row_ok, lo, whole, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si,
                       kc_off, v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                       MODE, CAUSAL, HAS_CLS, IS_F64, PREC, DELTA_ONLY, BLOCK_N, False, INTERPRET)
    acc = _dq_loop(acc, q, do, lse, delta, row_ok, whole, hi, offs_m, offs_d, K, KC, V, VC, k_base, k_so, k_si,
                   kc_off, v_base, v_so, v_si, vc_off, div, hi, N, D, is_t, scale_hi, scale_lo,
                   MODE, CAUSAL, HAS_CLS, IS_F64, PREC, DELTA_ONLY, BLOCK_N, True, INTERPRET)
    if DELTA_ONLY:
        tl.store(DELTA + l_base + l_off, acc, mask=offs_m < n_main)
        if HAS_CLS:
            tl.store(DELTAC + stat_c_off + offs_m * 0, acc, mask=offs_m == n_main)
    else:
        dq = _times_scale(acc, scale_hi, scale_lo, IS_F64)
        c_off = ((b64 * T + t64) * H + h64) * D
        _store_tokens(DQ, DQC, dq_base, _tok_off(offs_m, div, dq_so, dq_si, MODE), c_off, offs_m, n_main, offs_d, D,
                      dq, HAS_CLS)


@triton.jit
def _attn_bwd_delta_kernel(
    DO, O, DELTA, sdo_b, sdo_t, sdo_n, sdo_h, so_b, so_t, so_n, so_h,
    T, N, H, D, R,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``delta[b, h, t, n] = sum_d dout * out`` for R = B*H*T*N rows, in lse order."""
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    n = offs_r % N
    rest = offs_r // N
    t = rest % T
    rest = rest // T
    h = rest % H
    b = rest // H
    mask = (offs_r < R)[:, None] & (offs_d < D)[None, :]
    do = tl.load(DO + (b * sdo_b + t * sdo_t + n * sdo_n + h * sdo_h)[:, None] + offs_d[None, :], mask=mask, other=0.0)
    o = tl.load(O + (b * so_b + t * so_t + n * so_n + h * so_h)[:, None] + offs_d[None, :], mask=mask, other=0.0)
    acc_ty = DELTA.dtype.element_ty
    tl.store(DELTA + offs_r, tl.sum(do.to(acc_ty) * o.to(acc_ty), 1), mask=offs_r < R)


# ---------------------------------------------------------------------------------------------
# host side, shared with joint_attn.py and factorized_attn.py


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _block_d(D: int) -> int:
    return max(16, next_power_of_2(D))


def _fwd_config(D: int, dtype: torch.dtype, mode: int, causal: bool, has_cls: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward of ``mode``.

    Chosen from sm_90 compiles (ptxas register/spill reports; no spills in the half-precision
    D <= 128 configs): wide tiles for D <= 64 in fp16/bf16, narrower as the head dim or the
    element size grows. Joint attention's long sequences (T*N keys) pipeline deeper: the bf16
    forward sweep at (2,8,196,12) D=64 (``scripts/tune_spatial.py --ops joint --kernels fwd``,
    ``benchmarks/results/h100/logs/tune_joint_fwd_bf16.log``) measured (128, 64, 8, 3) at 74 us
    against 92 us for the spatial tile, and, frame-causal, (64, 32, 4, 3) at 87 against 120 us
    (smaller row blocks skip more of the masked upper frames). Spatial attention with the CLS
    token (whose key every key block selects by pointer) prefers (128, 32, 4, 3): 57 vs 74 us at
    (8,8,196+1,12), 248 vs 286 us at (2,16,784+1,12) (``logs/tune_spatial_cls_fwd_bf16.log``);
    without CLS that tile measured 0.282 against 0.256 ms at (2,16,784,12) in the benchmark
    (``logs/bench_spatial_df364b0.log``), so plain spatial keeps the 8-warp tile, pipelined
    three deep: the plain spatial forward sweep (``logs/tune_spatial_fwd_bf16.log``, 72 configs
    per shape, none wrong or racy) measured (128, 64, 8, 3) at 61.5 us against 70.8 us for two
    stages at (8,8,196,12) (best: (64, 32, 4, 3), 59.6 us) and at 228.5 against 268.3 us at
    (2,16,784,12) (best). The factorized mode (whose warp count also sizes its temporal
    programs) keeps the two-stage tile."""
    if _interpreting():
        return 16, 16, 1, 1
    bd = _block_d(D)
    if dtype.itemsize == 2 and bd <= 64:
        if mode == MODE_JOINT:
            return (64, 32, 4, 3) if causal else (128, 64, 8, 3)
        if mode == MODE_SPATIAL:
            return (128, 32, 4, 3) if has_cls else (128, 64, 8, 3)
    if dtype == torch.float64:
        return (32, 16, 4, 1) if bd <= 64 else (16, 16, 4, 1)
    if dtype == torch.float32:
        return (64, 32, 8, 2) if bd <= 64 else (32, 16, 8, 1) if bd <= 128 else (16, 16, 8, 1)
    return (128, 64, 8, 2) if bd <= 64 else (64, 32, 8, 2) if bd <= 128 else (16, 32, 8, 1)


# scripts/time_fwd_variants.py forces the choice below (None: the rule).
_WHOLE_BLOCKS_FORCE: bool | None = None


def _whole_blocks(mode: int, N: int) -> bool:
    """Whether the forward and dQ kernels run a mask-free loop over the whole key blocks every row
    sees before the masked rest (``_whole_keys``), for ``mode`` with ``N`` patches per frame.

    Forward, measured (H100, bf16, logs/time_fwd_variants_7d3ed41.log, mask-free loop against one
    masked loop, us): frame-causal joint 62.7 vs 87.0 (its mask divides key and row indices by N
    per element), spatial N = 784 216.9 vs 233.8, with CLS 232.4 vs 246.4, joint 73.6 vs 75.3.
    Frames of at most 256 patches (four 64-key blocks or fewer) keep the one loop: with CLS at
    N = 196 the second loop cost more than the masks (60.1 vs 57.6), without it 64.9 vs 64.3 there
    and 0.0608 vs 0.0583 ms in the benchmark (b1e0d19 against 8f4ee39). The dQ kernels (and the
    16-bit delta pass) follow the same rule (logs/time_bwd_variants_fdb4753.log, backward op):
    frame-causal joint 256.8 vs 298.9, joint 336.2 vs 347.2, spatial within 1% (N = 784 1145.3 vs
    1133.3, with CLS 1187.8 vs 1192.5). The factorized mode's temporal heads are masked
    throughout (``_whole_keys``)."""
    if _WHOLE_BLOCKS_FORCE is not None:
        return _WHOLE_BLOCKS_FORCE
    return not (mode == MODE_SPATIAL and N <= 256)


def _bwd_configs(D: int, dtype: torch.dtype, mode: int, N: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dK/dV kernel (BLOCK_N keys per program,
    BLOCK_M query rows per step) and of the dQ kernel (BLOCK_M rows per program), for ``mode``
    with ``N`` patches per frame."""
    if _interpreting():
        return (16, 16, 1, 1), (16, 16, 1, 1)
    bd = _block_d(D)
    if dtype == torch.float64:
        return (16, 16, 4, 1), (16, 16, 4, 1)
    if dtype == torch.float32:
        if bd <= 64:
            return (16, 32, 8, 2), (64, 32, 8, 2)
        return (16, 16, 8, 1), ((32, 16, 8, 1) if bd <= 128 else (16, 16, 8, 1))
    # dK/dV unpipelined (num_stages=1): at (32, 64, 8, 2) and (32, 64, 8, 3) it corrupted
    # 8-column chunks of dK in a few (b, t, h) slices on the H100, nondeterministically
    # (scripts/diag_spatial_16bit.py; tune_spatial.py marks such configs RACY). The D <= 64 pair
    # is the fastest unpipelined one of the bf16 sweep (benchmarks/results/h100/logs/
    # tune_spatial_bwd_bf16.log): 0.89x the old default's backward time. Spatial attention over
    # large frames (N = 784) runs dK/dV faster in 64-row steps over 128 keys with 4 warps: 0.96x
    # the fwd+bwd time of the 128 x 128 kernel (benchmarks/results/h100, commit c7ccd94); at
    # N = 196 that tile was 1.00-1.15x slower, and the joint cases of the sweep prefer 128 x 128.
    # The dQ kernel (and the 16-bit delta pass, the same kernel) pipelines three deep in spatial
    # and joint attention: the backward op 1.10-1.17x faster at every SPEC shape, none of the
    # five pipelined candidates racy or wrong (logs/tune_dq_db5427d.log: joint 337.3 -> 286.8 us,
    # frame-causal 258.7 -> 234.5, spatial N = 196 268.3 -> 241.7, N = 784 1130.2 -> 964.9, with
    # CLS 297.5 -> 271.7 and 1190.9 -> 1035.6; the best candidate was at most 1.5% faster). The
    # factorized mode, not measured so, keeps the unpipelined dQ.
    if bd <= 64:
        wide_frames = mode == MODE_SPATIAL and N > 256
        dq = (64, 32, 4, 1) if mode == MODE_FACTORIZED else (64, 32, 4, 3)
        return ((64, 128, 4, 1) if wide_frames else (128, 128, 8, 1)), dq
    if bd <= 128:
        return (32, 32, 8, 1), (32, 32, 8, 1)
    return (16, 16, 8, 1), (16, 16, 8, 1)


def _precision(dtype: torch.dtype) -> str:
    # IEEE fp32 unless the user enabled TF32 in torch (SPEC §3)
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _scale_parts(scale: float) -> tuple[float, float]:
    """``scale`` as two fp32-exact halves (eager Triton passes Python floats as fp32); pure Python so
    that tracing with fake tensors (torch.compile, opcheck) needs no tensor."""
    hi = struct.unpack("f", struct.pack("f", scale))[0]
    return hi, struct.unpack("f", struct.pack("f", scale - hi))[0]


def _s4(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(b, t, n, h) strides of a ``[B, T, N, H, D]`` tensor (d's is 1)."""
    return x.stride()[:4]


def _temporal_plan(mode: int, q: torch.Tensor, TH: int, block: int, num_warps: int, backward: bool) -> dict:
    """How a launch runs the factorized mode's temporal heads: the kernel arguments ``N_TP`` (its
    first programs that are temporal), ``T_SHORT``, ``BLOCK_G_T``, ``T_PAD``.

    Where the temporal short kernel's tiles fit (``use_short_path``), T_SHORT programs run its
    body on BLOCK_G_T whole frame sequences with per-patch 3-D dots, the backward's dQ included
    (in the dK/dV launch); otherwise one patch's frames per flash sequence."""
    B, T, N, _, D = q.shape
    off = dict(N_TP=0, T_SHORT=False, BLOCK_G_T=1, T_PAD=16)
    if mode != MODE_FACTORIZED or TH == 0:
        return off
    if use_short_path(T, D, q.dtype, backward):
        groups = factorized_short_groups(T, D, q.dtype, num_warps, backward)
        return dict(N_TP=cdiv(B * N * TH, groups), T_SHORT=True, BLOCK_G_T=groups, T_PAD=_block_d(T))
    return dict(off, N_TP=B * TH * N * cdiv(T, block))


def _spatial_programs(mode: int, B: int, T: int, N: int, H: int, TH: int, has_cls: bool, block: int) -> int:
    """Programs of a launch that are not the factorized mode's temporal ones."""
    if mode == MODE_SPATIAL:
        return B * T * H * cdiv(N + int(has_cls), block)
    if mode == MODE_JOINT:
        return B * H * cdiv(T * N, block)
    return B * T * (H - TH) * cdiv(N, block)


def _cls_strides(cls):
    if cls is None:
        return (0, 0) * 3
    return tuple(s for c in cls for s in (c.stride(0), c.stride(1)))


def _placeholder(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fresh 1-element stand-in for a pointer the kernel does not use (HAS_CLS / HAS_LENS off).

    Never an output nor another written buffer: torch.compile functionalizes a kernel by cloning
    each (possibly) written pointer argument separately and re-binding the tensor to its clone,
    so a buffer passed twice would end up bound to a clone the kernel never wrote."""
    return torch.empty(1, dtype=like.dtype if dtype is None else dtype, device=like.device)


@on_tensor_device
def attn_fwd(mode, q, k, v, out, lse, scale, *, cls=None, cls_out=None, lse_cls=None,
             frame_lens=None, causal=False, temporal_heads=0) -> None:
    """Forward of any mode into the preallocated ``out``/``lse`` (and ``cls_out``/``lse_cls``)."""
    B, T, N, H, D = q.shape
    if q.numel() == 0:
        return
    has_cls = cls is not None
    BM, BN, warps, stages = _fwd_config(D, q.dtype, mode, bool(causal), has_cls)
    plan = _temporal_plan(mode, q, temporal_heads, BM, warps, backward=False)
    n_tp = plan.pop("N_TP")
    grid = (n_tp + _spatial_programs(mode, B, T, N, H, temporal_heads, has_cls, BM),)
    qc, kc, vc = cls if has_cls else (q, q, q)  # read-only
    oc = cls_out if has_cls else _placeholder(out)
    lsec = lse_cls if has_cls else _placeholder(lse)
    lens = frame_lens if frame_lens is not None else _placeholder(q, torch.int32)
    soc = (cls_out.stride(0), cls_out.stride(1), cls_out.stride(2)) if has_cls else (0, 0, 0)
    hi, lo = _scale_parts(scale)
    torch.library.wrap_triton(_attn_fwd_kernel)[grid](
        q, k, v, out, lse, qc, kc, vc, oc, lsec, lens,
        *_s4(q), *_s4(k), *_s4(v), *_s4(out), *_cls_strides(cls), *soc,
        B, T, N, H, temporal_heads, n_tp, D, hi, lo,
        CAUSAL=bool(causal), HAS_LENS=frame_lens is not None, HAS_CLS=has_cls, MODE=mode,
        IS_F64=q.dtype == torch.float64, PREC=_precision(q.dtype), INTERPRET=_interpreting(),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=_block_d(D), WHOLE_BLOCKS=_whole_blocks(mode, N),
        num_warps=warps, num_stages=stages, **plan,
    )


@on_tensor_device
def attn_bwd(mode, dout, q, k, v, out, lse, scale, dq, dk, dv, *, dcls_out=None, cls=None, cls_out=None,
             lse_cls=None, dcls=None, frame_lens=None, causal=False, temporal_heads=0, exact_delta=None) -> None:
    """Backward of any mode into the preallocated ``dq, dk, dv`` (and the three ``dcls`` ``[B, H, D]``).

    ``exact_delta`` (default: for float16/bfloat16) takes ``delta = rowsum(P * dP)`` from a pass of
    the dQ kernel over the keys instead of ``rowsum(dout * out)``: the 16-bit ``out`` is rounded,
    and that rounding does not cancel in ``dP - delta``, which then loses every digit when the
    values a row sees are alike (a bfloat16 draw with two keys missed the SPEC bound). It costs
    two of the backward's seven matrix products again; float32/float64 outputs are exact enough.
    """
    B, T, N, H, D = q.shape
    if q.numel() == 0:
        if dcls is not None:
            for d in dcls:
                d.zero_()
        return
    has_cls = cls is not None
    stat = lse.dtype
    if exact_delta is None:
        exact_delta = q.dtype in (torch.float16, torch.bfloat16)
    delta = torch.empty_like(lse)
    if not exact_delta:
        R = lse.numel()
        BLOCK_R = 32
        torch.library.wrap_triton(_attn_bwd_delta_kernel)[(cdiv(R, BLOCK_R),)](
            dout, out, delta, *_s4(dout), *_s4(out), T, N, H, D, R,
            BLOCK_R=BLOCK_R, BLOCK_D=_block_d(D), num_warps=4,
        )
    if has_cls:
        if dcls_out is None:
            dcls_out = torch.zeros_like(cls_out)
        if exact_delta:
            delta_cls = torch.empty((B, H, T), dtype=stat, device=q.device)
        else:
            delta_cls = (dcls_out.to(stat) * cls_out.to(stat)).sum(-1).permute(0, 2, 1).contiguous()  # [B, H, T]
        # three buffers, not views of one: each is a separately written kernel argument
        dqc, dkc, dvc = (torch.empty((B, T, H, D), dtype=stat, device=q.device) for _ in range(3))
        qc, kc, vc = cls
        doc, lsec = dcls_out, lse_cls
        sdoc = (dcls_out.stride(0), dcls_out.stride(1), dcls_out.stride(2))
    else:
        qc = kc = vc = doc = q  # read-only
        lsec = delta_cls = lse
        dqc, dkc, dvc = _placeholder(dq), _placeholder(dk), _placeholder(dv)
        sdoc = (0, 0, 0)
    (BM, BN, warps, stages), (BM2, BN2, warps2, stages2) = _bwd_configs(D, q.dtype, mode, N)
    hi, lo = _scale_parts(scale)
    lens = frame_lens if frame_lens is not None else _placeholder(q, torch.int32)
    common = dict(
        CAUSAL=bool(causal), HAS_LENS=frame_lens is not None, HAS_CLS=has_cls, MODE=mode,
        IS_F64=q.dtype == torch.float64, PREC=_precision(q.dtype), INTERPRET=_interpreting(), BLOCK_D=_block_d(D),
    )
    # The dK/dV launch runs the temporal heads' whole backward when they take the short path; the
    # dQ launches (delta pass included) then have no temporal programs (N_TP = 0).
    plan = _temporal_plan(mode, q, temporal_heads, BN, warps, backward=True)
    n_tp = plan.pop("N_TP")
    n_tp_dq = 0 if plan["T_SHORT"] else _temporal_plan(mode, q, temporal_heads, BM2, warps2, backward=True)["N_TP"]
    grid_dq = (n_tp_dq + _spatial_programs(mode, B, T, N, H, temporal_heads, has_cls, BM2),)
    whole_dq = _whole_blocks(mode, N)
    # read once: the three launches below take them
    s_inputs = (*_s4(q), *_s4(k), *_s4(v), *_s4(dout))
    if exact_delta:
        torch.library.wrap_triton(_attn_bwd_dq_kernel)[grid_dq](
            q, k, v, dout, lse, delta, qc, kc, vc, doc, lsec, delta_cls, _placeholder(dq), _placeholder(dq, stat), lens,
            *s_inputs, 0, 0, 0, 0, *_cls_strides(cls), *sdoc,
            B, T, N, H, temporal_heads, n_tp_dq, D, hi, lo,
            BLOCK_M=BM2, BLOCK_N=BN2, num_warps=warps2, num_stages=stages2, DELTA_ONLY=True, T_SHORT=plan["T_SHORT"],
            WHOLE_BLOCKS=whole_dq,
            **common,
        )
    # The dK/dV kernel writes dq only from T_SHORT temporal programs: a stand-in otherwise
    dq_t, s_dq_t = (dq, _s4(dq)) if plan["T_SHORT"] else (_placeholder(dq), (0, 0, 0, 0))
    torch.library.wrap_triton(_attn_bwd_dkdv_kernel)[(n_tp + _spatial_programs(mode, B, T, N, H, temporal_heads, has_cls, BN),)](
        q, k, v, dout, lse, delta, qc, kc, vc, doc, lsec, delta_cls, dk, dv, dkc, dvc, dq_t, lens,
        *s_inputs, *_s4(dk), *_s4(dv), *s_dq_t,
        *_cls_strides(cls), *sdoc,
        B, T, N, H, temporal_heads, n_tp, D, hi, lo,
        BLOCK_M=BM, BLOCK_N=BN, num_warps=warps, num_stages=stages, **plan, **common,
    )
    torch.library.wrap_triton(_attn_bwd_dq_kernel)[grid_dq](
        q, k, v, dout, lse, delta, qc, kc, vc, doc, lsec, delta_cls, dq, dqc, lens,
        *s_inputs, *_s4(dq), *_cls_strides(cls), *sdoc,
        B, T, N, H, temporal_heads, n_tp_dq, D, hi, lo,
        BLOCK_M=BM2, BLOCK_N=BN2, num_warps=warps2, num_stages=stages2, DELTA_ONLY=False, T_SHORT=plan["T_SHORT"],
        WHOLE_BLOCKS=whole_dq,
        **common,
    )
    if has_cls:
        for d, part in zip(dcls, (dqc, dkc, dvc)):
            d.copy_(part.sum(1))


# ---------------------------------------------------------------------------------------------
# spatial launchers (contract: temporal_kernels/ops.py)

# The shared core under the names of this op (one kernel serves every mode).
_spatial_attn_fwd_kernel = _attn_fwd_kernel
_spatial_attn_bwd_dkdv_kernel = _attn_bwd_dkdv_kernel
_spatial_attn_bwd_dq_kernel = _attn_bwd_dq_kernel


def spatial_attn_fwd(q, k, v, cls, out, cls_out, lse, lse_cls, scale) -> None:
    """Spatial attention forward into ``out [B, T, N, H, D]``, ``lse [B, H, T, N]`` and, with
    ``cls=(q_cls, k_cls, v_cls)`` (each ``[B, H, D]``), ``cls_out [B, T, H, D]``, ``lse_cls [B, H, T]``."""
    attn_fwd(MODE_SPATIAL, q, k, v, out, lse, scale, cls=cls, cls_out=cls_out, lse_cls=lse_cls)


def spatial_attn_bwd(dout, dcls_out, q, k, v, cls, out, cls_out, lse, lse_cls, scale, dq, dk, dv, dcls) -> None:
    """Spatial attention backward into ``dq, dk, dv`` and, with CLS, ``dcls`` (three ``[B, H, D]``
    buffers, the CLS gradients summed over frames)."""
    attn_bwd(MODE_SPATIAL, dout, q, k, v, out, lse, scale, dq, dk, dv, dcls_out=dcls_out, cls=cls,
             cls_out=cls_out, lse_cls=lse_cls, dcls=dcls)
