"""Triton kernels for temporal attention (SPEC §2): for every ``(b, n, h)``, softmax attention over
the T frames, optionally causal and with padded frames (``frame_lens``).

Launcher contract (called by ``temporal_kernels/ops.py``):

    temporal_attn_fwd(q, k, v, out, lse, frame_lens, causal, scale) -> None
    temporal_attn_bwd(dout, q, k, v, out, lse, frame_lens, causal, scale, dq, dk, dv) -> None

- ``q, k, v, dout``: ``[B, T, N, H, D]``, any strides with a unit last stride (views of a packed
  ``[B, T, N, 3, H, D]`` projection in either token order are read in place).
- ``out, dq, dk, dv``: preallocated ``[B, T, N, H, D]``, any strides (unit last stride); every
  element is written, padded rows with exact zeros.
- ``lse``: preallocated contiguous ``[B, H, T, N]`` (float32; float64 for float64 inputs): the
  log-sum-exp of the scaled logits of each query row; ``-inf`` for rows that see no key (padded
  frames), and the backward relies on that only through the same masks, never through its value.
- ``frame_lens``: None or an int32/int64 tensor ``[B]`` on the inputs' device.

Two paths, chosen from the padded frame count ``T_PAD`` and head dim ``D_PAD``:

- short T (``use_short_path``: ``T_PAD <= 64`` and one group's tiles fit in registers, e.g.
  16-bit forward for ``T_PAD * D_PAD <= 4096``, backward ``<= 2048``): each program owns
  ``BLOCK_G`` whole consecutive ``(b, n, h)`` groups (h innermost, so one frame's loads of a group
  block are contiguous in the packed layouts), computes ``S = Q K^T`` with one batched 3-D
  ``tl.dot`` and the masked softmax in registers. Forward and backward are one pass each and
  write their outputs exactly once (no atomics: deterministic). The backward recomputes P from
  ``lse`` and takes ``delta = rowsum(P * dP)``, so it never reads ``out`` (11 passes of memory in
  all for forward + backward, the floor).
  Their bodies are the helpers ``_temporal_fwd_groups`` / ``_temporal_bwd_groups``, which the
  factorized kernels (``spatial_attn.py``) also run for their temporal heads.
- long T: flash-style tiling over frames for one group per program, running max / sum in the
  accumulation dtype, causal block skipping; an FA2-style backward (a delta pass, a dK/dV kernel
  looping over query blocks and a dQ kernel looping over key blocks; no atomics). The delta pass
  is the dQ kernel's key loop taking ``rowsum(P * dP)`` for float16/bfloat16 (the rounding of a
  16-bit ``out`` does not cancel in ``dP - delta``) and ``rowsum(dO * O)`` otherwise.

Softmax and accumulation run in float32 (float64 for float64 inputs); float32 dots are IEEE
(``input_precision="ieee"``), never TF32. Head dims are padded to the next power of two (at least
16, as ``tl.dot`` needs) with masks; frames likewise. Grids are 1-D and offsets int64, so any
``B * N * H`` and tensors above 2^31 elements work. Loads and stores are 16-byte vectors wherever
the head dim and strides allow it (``ALIGN``, see ``_alignment``); the launchers run on their
tensors' device (``on_tensor_device``).
"""

import contextlib
import functools
import os
import struct

import torch
import triton
import triton.language as tl

# Short (one-pass, whole-group) path only for T_PAD <= SHORT_T_MAX (and the per-dtype limits of
# ``use_short_path``); the tiled path otherwise. A module constant so tests can force the tiled
# path on small T.
SHORT_T_MAX = 64

# Elements of one [BLOCK_G, T_PAD, D_PAD] operand tile the short kernels aim for, per element
# size: large enough that one program moves tens of KiB (latency hiding, wide coalesced rows),
# small enough that q, k, v (and, backward, dO, dQ, dK, dV and the [G, T, T] score tiles) stay
# in registers. Checked with ptxas for sm_90: no spills at any shape the short path takes.
_SHORT_FWD_TILE = {2: 8192, 4: 4096, 8: 2048}
_SHORT_BWD_TILE = {2: 4096, 4: 2048, 8: 1024}
_MAX_BLOCK_G = 16


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` on the host: Triton 3.6 wraps it (and ``cdiv``) in a
    ``constexpr_function`` that costs ~6 us a call, and a launch configures itself with several.
    The same arithmetic, so SymInts traced by torch.compile pass through it too."""
    n -= 1
    n |= n >> 1
    n |= n >> 2
    n |= n >> 4
    n |= n >> 8
    n |= n >> 16
    n |= n >> 32
    return n + 1


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv`` on the host (see ``next_power_of_2``)."""
    return (a + b - 1) // b


def _pad(x: int) -> int:
    """Next power of two, at least 16 (``tl.dot`` needs every dim >= 16)."""
    return max(16, next_power_of_2(max(int(x), 1)))


def _ieee(dtype: torch.dtype) -> bool:
    """float32 dots must be IEEE, not TF32 (SPEC §3); 16-bit dots have no such mode."""
    return dtype in (torch.float32, torch.float64)


def _to_f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _split_scale(scale: float) -> tuple[float, float]:
    """``scale`` as two float32-exact parts: Triton passes Python floats as float32, and the
    float64 kernels need the full value (SPEC §3: 1e-10). Pure Python: it also runs while
    tracing with fake tensors."""
    hi = _to_f32(scale)
    return hi, _to_f32(scale - hi)


def use_short_path(T: int, D: int, dtype: torch.dtype, backward: bool) -> bool:
    """Whether the one-pass whole-group kernels serve this shape; the limits are where one group's
    tiles still fit in registers without spilling (ptxas, sm_90; float32 dots are IEEE FMA
    dots, heavier than the 16-bit tensor-core ones). Forward and backward choose independently:
    both paths share the meaning of ``lse``."""
    T_PAD, D_PAD = _pad(T), _pad(D)
    if T_PAD > SHORT_T_MAX:
        return False
    size = T_PAD * D_PAD
    if _interpreting():
        # No registers to run out of: the widest limits, so CI covers the short kernels on T up
        # to 64 in float32/float64 and in both directions.
        return size <= 4096
    if dtype.itemsize == 2:
        return size <= 2048 and T_PAD <= 32 if backward else size <= 4096
    if backward:
        return T_PAD <= 16 and D_PAD <= 64
    if dtype == torch.float32:
        return T_PAD <= 16 or (T_PAD <= 32 and D_PAD <= 32)
    return (T_PAD <= 16 and D_PAD <= 128) or (T_PAD <= 32 and D_PAD <= 32)


def _short_config(T_PAD: int, D_PAD: int, dtype: torch.dtype, backward: bool) -> tuple[int, int]:
    """``(BLOCK_G, num_warps)`` of the short kernels."""
    if dtype.itemsize == 2 and (D_PAD <= 128 or not backward) and not _interpreting():
        # Measured on an H100 (scripts/tune_temporal.py, bf16, SPEC §5 shapes): one group per
        # single-warp program beats every larger program, forward and backward (many small
        # independent programs keep the most loads in flight); within 5% of the best everywhere.
        # The forward at D_PAD = 256 too: 19.6 us against 37.5 us for (2, 8) at (2,8,196,8) D=160
        # (logs/tune_short_3155492.log).
        return 1, 1
    budget = (_SHORT_BWD_TILE if backward else _SHORT_FWD_TILE)[dtype.itemsize]
    block_g = max(1, min(_MAX_BLOCK_G, budget // (T_PAD * D_PAD)))
    if _interpreting():
        # The interpreter's cost is per program and per op, hardly per element; 4 groups per
        # program also leaves a partial last program on most test shapes.
        block_g = 4
    work = block_g * T_PAD * max(T_PAD, D_PAD)
    num_warps = 4 if work <= 4096 else 8
    return block_g, num_warps


# Elements of each [BLOCK_G, T_PAD, D_PAD] tile per thread that the short kernels' measured configs
# hold (16-bit: one group per one-warp program; fp32 and fp64: the tile budgets above), by element
# size and direction; the factorized kernel sizes its temporal programs' groups by them.
_SHORT_PER_THREAD = {False: {2: 32, 4: 32, 8: 16}, True: {2: 32, 4: 16, 8: 8}}


def factorized_short_groups(T: int, D: int, dtype: torch.dtype, num_warps: int, backward: bool) -> int:
    """Groups per temporal program of the factorized kernels when their temporal heads take the
    short path: as many whole ``(b, n, h)`` groups as keep each thread's share of a tile at the
    short kernels' (the program's warp count is the spatial heads' launch config)."""
    if _interpreting():
        return 4  # as _short_config: a partial last program on most test shapes
    per_thread = _SHORT_PER_THREAD[backward][dtype.itemsize]
    return max(1, min(_MAX_BLOCK_G, per_thread * 32 * num_warps // (_pad(T) * _pad(D))))


def _tiled_config(T: int, D_PAD: int, dtype: torch.dtype, backward: bool) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)`` of the tiled kernels: the largest square blocks that
    compile without register spills for sm_90 (the backward holds twice the tiles; float32 and
    float64 dots are FMA dots, held in registers)."""
    if dtype.itemsize == 2:
        limits = (64, 64, 32, 16) if backward else (64, 64, 64, 32)
    elif dtype == torch.float32:
        limits = (32, 16, 16, 16) if backward else (64, 32, 16, 16)
    else:
        limits = (16, 16, 16, 16) if backward else (32, 32, 16, 16)
    block = limits[min(3, max(0, D_PAD.bit_length() - 6))]  # D_PAD <= 32, 64, 128, 256
    if dtype.itemsize == 2 and not backward and D_PAD == 64 and T <= 128:
        # Measured (H100, bf16, T=96): 64 x 32 blocks beat 64 x 64 by 6% when T spans few blocks.
        return 64, 32, 4
    if dtype.itemsize == 2 and backward and D_PAD <= 64:
        # Measured (H100, bf16, scripts/tune_temporal.py --bwd-only, 36 configs): 64 x 64 with 4
        # warps, unpipelined (``_tiled_stages``), is the fastest at T=96 and T=256 (238 / 253 us;
        # the 8-warp 3-stage tile was not among the best six, logs/tune_bwd_T*_f296913.log).
        return 64, 64, 4
    if _interpreting():
        # Small blocks exercise the multi-block loops on the small T of CI; long T keeps the
        # number of (slow, per-block) interpreter iterations low.
        block = 16 if T <= 64 else 64
    work = block * D_PAD
    # The backward's two accumulators want the wider program one step earlier.
    wide = work >= 64 * 64 if backward else work > 64 * 64
    return block, block, 8 if wide else 4


# Base-2 softmax in the tiled forward (float16/bfloat16/float32; float64 keeps exp): a module
# flag only so scripts/tune_temporal.py can time both in one process.
_TILED_FWD_EXP2 = True
# The same for the tiled forward's raw-product max and its mask-free loop (scripts/time_fwd_variants.py).
_TILED_FWD_RAW_MAX = True
_TILED_FWD_EVEN = True


def _tiled_stages(dtype: torch.dtype, backward: bool, block_n: int, D_PAD: int) -> int:
    """Software-pipelining depth of the tiled loops; float64 (gradcheck only) keeps its shared
    memory under 164 KiB at D = 256. The 16-bit forward over 32-key blocks keeps 4 in flight:
    56 vs 60 us at T=96 (logs/tune_longT_3155492.log); the 16-bit backward at D_PAD <= 64 runs
    unpipelined (see ``_tiled_config``), as the spatial kernels' 16-bit dK/dV kernel does. Unlike
    the spatial / joint dQ kernel, its dQ kernel was not faster deeper (backward op, us, dQ depth
    1 / 2 / 3: T = 256 252.8 / 254.3 / 264.8, T = 96 234.0 / 241.0 / 242.9, causal 220.0 / 221.2 /
    231.8; logs/time_bwd_variants_3237bf0.log, a switch since removed)."""
    if dtype == torch.float64:
        return 2
    if dtype.itemsize == 2:
        if backward and D_PAD <= 64:
            return 1
        if not backward and block_n == 32:
            return 4
    return 3


def _alignment(D: int, *tensors: torch.Tensor) -> int:
    """The kernels' ALIGN: 1 when the head dim and every (b, t, n, h) stride of ``tensors`` are
    multiples of 16 elements (Triton's own specialization then sees it), else the largest power of
    two up to 16 bytes' worth of elements dividing all of them (strides of size-1 axes, never
    multiplied by a nonzero index, do not count)."""
    sizes = [D] + [st for x in tensors for st, n in zip(x.stride()[:4], x.shape[:4]) if n > 1]
    if all(v % 16 == 0 for v in sizes):
        return 1
    align = 16 // tensors[0].element_size()
    while align > 1 and any(v % align for v in sizes):
        align //= 2
    return align


def _strides(x: torch.Tensor) -> tuple[int, int, int, int]:
    """Per-axis strides (b, t, n, h); the head-dim stride is 1 by contract."""
    strides = x.stride()
    assert strides[4] == 1 or x.shape[4] <= 1, "temporal_attn: the head-dim stride must be 1"
    return strides[:4]


# ---------------------------------------------------------------------------------------------
# short path: BLOCK_G whole groups per program


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # A bool, not the precision string, is the constexpr: torch.compile's wrapper of user kernels
    # parses string arguments as specialization attributes.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _aligned(x, ALIGN: tl.constexpr):
    """``x`` (a size or stride argument), which the launcher checked to be a multiple of ALIGN
    elements (``_alignment``), in a form whose divisibility the compiler sees. Triton infers
    alignment only from arguments divisible by 16 (``tl.multiple_of`` on an argument is dropped),
    so a head dim such as 40 or 72 would otherwise load and store element by element."""
    if ALIGN > 1:
        x = (x // ALIGN) * ALIGN
    return x


@triton.jit
def _aligned4(s_b, s_t, s_n, s_h, ALIGN: tl.constexpr):
    """``_aligned`` of one tensor's four (b, t, n, h) strides."""
    return _aligned(s_b, ALIGN), _aligned(s_t, ALIGN), _aligned(s_n, ALIGN), _aligned(s_h, ALIGN)


@triton.jit
def _group_coords(offs_g, N, H):
    """``(b, n, h)`` of flat group indices ``g = (b * N + n) * H + h``."""
    b = offs_g // (N * H)
    nh = offs_g % (N * H)
    return b, nh // H, nh % H


@triton.jit
def _frame_block(LENS, T, N, H, BLOCK: tl.constexpr, HAS_LENS: tl.constexpr):
    """This program's frame block of the tiled paths: its group ``g`` = (b, n, h), the block's
    first frame, and the group's number of valid frames. The blocks of one group are adjacent
    programs, so they share its K/V in L2."""
    pid = tl.program_id(0).to(tl.int64)
    num_blocks = tl.cdiv(T, BLOCK)
    g = pid // num_blocks
    start = (pid % num_blocks).to(tl.int32) * BLOCK
    b, n, h = _group_coords(g, N, H)
    if HAS_LENS:
        length = tl.load(LENS + b).to(tl.int32)
    else:
        length = T
    return g, start, b, n, h, length


@triton.jit
def _scale_logits(s, scale_hi, scale_lo, IS_F64: tl.constexpr):
    if IS_F64:
        return s * scale_hi + s * scale_lo
    else:
        return s * scale_hi


@triton.jit
def _scale_arg(x, IS_F64: tl.constexpr):
    """A float kernel argument in the statistics dtype. Eager Triton passes Python floats as fp32
    but torch.compile (inductor) as fp64, which would promote the fp32 softmax state to fp64 and
    change the type of loop-carried values: every kernel casts its scale halves on entry."""
    if IS_F64:
        return tl.cast(x, tl.float64)
    else:
        return tl.cast(x, tl.float32)


@triton.jit
def _group_block(pid, LENS, T, N, HG, D, num_groups, HAS_LENS: tl.constexpr,
                 BLOCK_G: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr):
    """The BLOCK_G groups of program ``pid`` (int64): their ``(b, n, h)``, the frame and head-dim
    offsets, and the masks ``[G]`` (real group), ``[G, T_PAD]`` (real frame: frames at or past the
    clip length are padding, neither queries nor keys), ``[G, T_PAD, D_PAD]`` loads (real frames)
    and stores (every frame of a real group: padded rows are written, as 0)."""
    offs_g = pid * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64)  # [G]
    offs_t = tl.arange(0, T_PAD)
    offs_t64 = offs_t.to(tl.int64)
    offs_d = tl.arange(0, D_PAD)
    mask_g = offs_g < num_groups
    b, n, h = _group_coords(offs_g, N, HG)
    if HAS_LENS:
        lens = tl.load(LENS + b, mask=mask_g, other=0).to(tl.int32)
    else:
        lens = tl.zeros([BLOCK_G], dtype=tl.int32) + T
    mask_row = mask_g[:, None] & (offs_t[None, :] < lens[:, None])  # [G, T_PAD]
    mask_ld = mask_row[:, :, None] & (offs_d < D)[None, None, :]  # [G, T_PAD, D_PAD]
    mask_st = (mask_g[:, None] & (offs_t[None, :] < T))[:, :, None] & (offs_d < D)[None, None, :]
    return b, n, h, offs_t, offs_t64, offs_d, mask_g, mask_row, mask_ld, mask_st


@triton.jit
def _temporal_fwd_groups(
    pid, Q, K, V, O, LSE, LENS,
    sqb, sqt, sqn, sqh,
    skb, skt, skn, skh,
    svb, svt, svn, svh,
    sob, sot, son, soh,
    T, N, HG, H, D, num_groups,
    scale_hi, scale_lo,
    HAS_LENS: tl.constexpr, CAUSAL: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_G: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr, IEEE: tl.constexpr,
):
    """Forward of the BLOCK_G whole groups ``g = (b * N + n) * HG + h`` (``h < HG``) of program
    ``pid`` (int64); ``lse`` is ``[B, H, T, N]`` with ``H >= HG`` heads, so the factorized kernel
    runs its temporal heads ``[0, HG)`` through this body too. ``scale_hi``/``scale_lo`` are
    already in the statistics dtype (``_scale_arg``)."""
    b, n, h, offs_t, offs_t64, offs_d, mask_g, mask_row, mask_ld, mask_st = _group_block(
        pid, LENS, T, N, HG, D, num_groups, HAS_LENS, BLOCK_G, T_PAD, D_PAD)

    ptr_q = Q + (b * sqb + n * sqn + h * sqh)[:, None, None] + offs_t64[None, :, None] * sqt + offs_d[None, None, :]
    ptr_k = K + (b * skb + n * skn + h * skh)[:, None, None] + offs_t64[None, :, None] * skt + offs_d[None, None, :]
    ptr_v = V + (b * svb + n * svn + h * svh)[:, None, None] + offs_t64[None, :, None] * svt + offs_d[None, None, :]
    q = tl.load(ptr_q, mask=mask_ld, other=0.0)  # [G, T_PAD, D_PAD]
    k = tl.load(ptr_k, mask=mask_ld, other=0.0)
    v = tl.load(ptr_v, mask=mask_ld, other=0.0)

    s = _dot(q, tl.trans(k), IEEE)  # [G, T_PAD, T_PAD]
    s = _scale_logits(s, scale_hi, scale_lo, IS_F64)
    visible = mask_row[:, :, None] & mask_row[:, None, :]
    if CAUSAL:
        visible = visible & (offs_t[None, :, None] >= offs_t[None, None, :])
    s = tl.where(visible, s, float("-inf"))
    m = tl.max(s, 2)  # [G, T_PAD]
    # A row without a visible key (padding) gets shift 0, all-zero weights and output 0.
    m = tl.where(m == float("-inf"), 0.0, m)
    p = tl.exp(s - m[:, :, None])
    l = tl.sum(p, 2)
    l_safe = tl.where(l > 0.0, l, 1.0)
    o = _dot(p.to(v.dtype), v, IEEE) / l_safe[:, :, None]  # [G, T_PAD, D_PAD]

    ptr_o = O + (b * sob + n * son + h * soh)[:, None, None] + offs_t64[None, :, None] * sot + offs_d[None, None, :]
    tl.store(ptr_o, o.to(O.dtype.element_ty), mask=mask_st)
    lse = tl.where(l > 0.0, m + tl.log(l_safe), float("-inf"))
    ptr_lse = LSE + ((b * H + h) * T * N + n)[:, None] + offs_t64[None, :] * N
    tl.store(ptr_lse, lse, mask=mask_g[:, None] & (offs_t[None, :] < T))


@triton.jit
def _temporal_bwd_groups(
    pid, DO, Q, K, V, LSE, LENS, DQ, DK, DV,
    sdob, sdot, sdon, sdoh,
    sqb, sqt, sqn, sqh,
    skb, skt, skn, skh,
    svb, svt, svn, svh,
    sdqb, sdqt, sdqn, sdqh,
    sdkb, sdkt, sdkn, sdkh,
    sdvb, sdvt, sdvn, sdvh,
    T, N, HG, H, D, num_groups,
    scale_hi, scale_lo,
    HAS_LENS: tl.constexpr, CAUSAL: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_G: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr, IEEE: tl.constexpr,
):
    """Backward (dq, dk, dv in one pass) of the groups of ``_temporal_fwd_groups``."""
    b, n, h, offs_t, offs_t64, offs_d, mask_g, mask_row, mask_ld, mask_st = _group_block(
        pid, LENS, T, N, HG, D, num_groups, HAS_LENS, BLOCK_G, T_PAD, D_PAD)
    offs_td = offs_t64[None, :, None]

    # Padded rows of dout are never read: their outputs are constant 0, whatever dout holds.
    q = tl.load(Q + (b * sqb + n * sqn + h * sqh)[:, None, None] + offs_td * sqt + offs_d[None, None, :], mask=mask_ld, other=0.0)
    k = tl.load(K + (b * skb + n * skn + h * skh)[:, None, None] + offs_td * skt + offs_d[None, None, :], mask=mask_ld, other=0.0)
    v = tl.load(V + (b * svb + n * svn + h * svh)[:, None, None] + offs_td * svt + offs_d[None, None, :], mask=mask_ld, other=0.0)
    do = tl.load(DO + (b * sdob + n * sdon + h * sdoh)[:, None, None] + offs_td * sdot + offs_d[None, None, :], mask=mask_ld, other=0.0)
    lse = tl.load(LSE + ((b * H + h) * T * N + n)[:, None] + offs_t64[None, :] * N, mask=mask_row, other=0.0)  # [G, T_PAD]

    s = _dot(q, tl.trans(k), IEEE)  # [G, T_PAD, T_PAD]
    s = _scale_logits(s, scale_hi, scale_lo, IS_F64)
    visible = mask_row[:, :, None] & mask_row[:, None, :]
    if CAUSAL:
        visible = visible & (offs_t[None, :, None] >= offs_t[None, None, :])
    p = tl.exp(tl.where(visible, s, float("-inf")) - lse[:, :, None])  # softmax probabilities

    dv = _dot(tl.trans(p.to(do.dtype)), do, IEEE)  # [G, T_PAD, D_PAD]
    dp = _dot(do, tl.trans(v), IEEE)  # [G, T_PAD, T_PAD]
    delta = tl.sum(p * dp, 2)  # rowsum(dO * O) without reading O
    ds = p * (dp - delta[:, :, None])
    dq = _dot(ds.to(k.dtype), k, IEEE)
    dk = _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    dq = _scale_logits(dq, scale_hi, scale_lo, IS_F64)
    dk = _scale_logits(dk, scale_hi, scale_lo, IS_F64)

    tl.store(DQ + (b * sdqb + n * sdqn + h * sdqh)[:, None, None] + offs_td * sdqt + offs_d[None, None, :], dq.to(DQ.dtype.element_ty), mask=mask_st)
    tl.store(DK + (b * sdkb + n * sdkn + h * sdkh)[:, None, None] + offs_td * sdkt + offs_d[None, None, :], dk.to(DK.dtype.element_ty), mask=mask_st)
    tl.store(DV + (b * sdvb + n * sdvn + h * sdvh)[:, None, None] + offs_td * sdvt + offs_d[None, None, :], dv.to(DV.dtype.element_ty), mask=mask_st)


@triton.jit
def _temporal_attn_fwd_short_kernel(
    Q, K, V, O, LSE, LENS,
    sqb, sqt, sqn, sqh,
    skb, skt, skn, skh,
    svb, svt, svn, svh,
    sob, sot, son, soh,
    T, N, H, D, num_groups,
    scale_hi, scale_lo,
    HAS_LENS: tl.constexpr, CAUSAL: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_G: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
):
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    D = _aligned(D, ALIGN)
    sqb, sqt, sqn, sqh = _aligned4(sqb, sqt, sqn, sqh, ALIGN)
    skb, skt, skn, skh = _aligned4(skb, skt, skn, skh, ALIGN)
    svb, svt, svn, svh = _aligned4(svb, svt, svn, svh, ALIGN)
    sob, sot, son, soh = _aligned4(sob, sot, son, soh, ALIGN)
    _temporal_fwd_groups(
        tl.program_id(0).to(tl.int64), Q, K, V, O, LSE, LENS,
        sqb, sqt, sqn, sqh, skb, skt, skn, skh, svb, svt, svn, svh, sob, sot, son, soh,
        T, N, H, H, D, num_groups, scale_hi, scale_lo,
        HAS_LENS, CAUSAL, IS_F64, BLOCK_G, T_PAD, D_PAD, IEEE,
    )


@triton.jit
def _temporal_attn_bwd_short_kernel(
    DO, Q, K, V, LSE, LENS, DQ, DK, DV,
    sdob, sdot, sdon, sdoh,
    sqb, sqt, sqn, sqh,
    skb, skt, skn, skh,
    svb, svt, svn, svh,
    sdqb, sdqt, sdqn, sdqh,
    sdkb, sdkt, sdkn, sdkh,
    sdvb, sdvt, sdvn, sdvh,
    T, N, H, D, num_groups,
    scale_hi, scale_lo,
    HAS_LENS: tl.constexpr, CAUSAL: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_G: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
):
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    D = _aligned(D, ALIGN)
    sdob, sdot, sdon, sdoh = _aligned4(sdob, sdot, sdon, sdoh, ALIGN)
    sqb, sqt, sqn, sqh = _aligned4(sqb, sqt, sqn, sqh, ALIGN)
    skb, skt, skn, skh = _aligned4(skb, skt, skn, skh, ALIGN)
    svb, svt, svn, svh = _aligned4(svb, svt, svn, svh, ALIGN)
    sdqb, sdqt, sdqn, sdqh = _aligned4(sdqb, sdqt, sdqn, sdqh, ALIGN)
    sdkb, sdkt, sdkn, sdkh = _aligned4(sdkb, sdkt, sdkn, sdkh, ALIGN)
    sdvb, sdvt, sdvn, sdvh = _aligned4(sdvb, sdvt, sdvn, sdvh, ALIGN)
    _temporal_bwd_groups(
        tl.program_id(0).to(tl.int64), DO, Q, K, V, LSE, LENS, DQ, DK, DV,
        sdob, sdot, sdon, sdoh, sqb, sqt, sqn, sqh, skb, skt, skn, skh, svb, svt, svn, svh,
        sdqb, sdqt, sdqn, sdqh, sdkb, sdkt, sdkn, sdkh, sdvb, sdvt, sdvn, sdvh,
        T, N, H, H, D, num_groups, scale_hi, scale_lo,
        HAS_LENS, CAUSAL, IS_F64, BLOCK_G, T_PAD, D_PAD, IEEE,
    )


# ---------------------------------------------------------------------------------------------
# long path: one group and one block of frames per program, flash-style loops over the other axis
#
# Loop bodies are helpers so each kernel can run its loop two ways: a ``for`` over a runtime range
# on the GPU (software-pipelined by Triton), a ``while`` in the interpreter, whose ``range`` cannot
# take a runtime bound under NumPy >= 2.3 (it converts a 1-element array with ``int()``).


@triton.jit
def _fwd_tile(
    acc, m_i, l_i, q, ptr_k, ptr_v, skt, svt, start_n, offs_m, offs_n, mask_m, mask_d, length,
    scale_hi, scale_lo, CAUSAL: tl.constexpr, IS_F64: tl.constexpr, IEEE: tl.constexpr, EXP2: tl.constexpr,
    MASKED: tl.constexpr, RAW_MAX: tl.constexpr,
):
    """One key block of the forward loop. EXP2: logits, m_i and the shifts are in base 2 (the
    scale carries log2(e)), so each probability costs one multiply-add and one ex2. RAW_MAX (EXP2
    with a positive scale): m_i is the running max of the unscaled products, so the scaling folds
    into that multiply-add (FlashAttention's exp2(s c - m c)) instead of a pass of its own.
    MASKED=False: every key of the block is below ``length`` and every row sees every key (no
    causal mask, no frame_lens), so the block takes no masks but the head dim's."""
    cols = start_n + offs_n
    if MASKED:
        mask_n = cols < length
        mask_kv = mask_n[:, None] & mask_d[None, :]
    else:
        mask_kv = mask_d[None, :]
    k = tl.load(ptr_k + cols.to(tl.int64)[:, None] * skt, mask=mask_kv, other=0.0)  # [BLOCK_N, D_PAD]
    v = tl.load(ptr_v + cols.to(tl.int64)[:, None] * svt, mask=mask_kv, other=0.0)
    s = _dot(q, tl.trans(k), IEEE)  # [BLOCK_M, BLOCK_N]
    if not RAW_MAX:
        s = _scale_logits(s, scale_hi, scale_lo, IS_F64)
    if MASKED:
        visible = mask_m[:, None] & mask_n[None, :]
        if CAUSAL:
            visible = visible & (offs_m[:, None] >= cols[None, :])
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        # Rows that have seen no key yet keep shift 0 (exp(-inf - 0) = 0, never NaN).
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_shift = m_new
    if RAW_MAX:
        alpha = tl.exp2((m_i - m_shift) * scale_hi)
        p = tl.exp2(s * scale_hi - (m_shift * scale_hi)[:, None])
    elif EXP2:
        alpha = tl.exp2(m_i - m_shift)
        p = tl.exp2(s - m_shift[:, None])
    else:
        alpha = tl.exp(m_i - m_shift)
        p = tl.exp(s - m_shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit
def _temporal_attn_fwd_tiled_kernel(
    Q, K, V, O, LSE, LENS,
    sqb, sqt, sqn, sqh,
    skb, skt, skn, skh,
    svb, svt, svn, svh,
    sob, sot, son, soh,
    T, N, H, D,
    scale_hi, scale_lo,
    HAS_LENS: tl.constexpr, CAUSAL: tl.constexpr, IS_F64: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
    EXP2: tl.constexpr, RAW_MAX: tl.constexpr, EVEN: tl.constexpr,
):
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    if EXP2:
        scale_hi = scale_hi * 1.4426950408889634  # log2(e): base-2 logits
    D = _aligned(D, ALIGN)
    sqb, sqt, sqn, sqh = _aligned4(sqb, sqt, sqn, sqh, ALIGN)
    skb, skt, skn, skh = _aligned4(skb, skt, skn, skh, ALIGN)
    svb, svt, svn, svh = _aligned4(svb, svt, svn, svh, ALIGN)
    sob, sot, son, soh = _aligned4(sob, sot, son, soh, ALIGN)
    g, start_m, b, n, h, length = _frame_block(LENS, T, N, H, BLOCK_M, HAS_LENS)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    mask_m = offs_m < length  # [BLOCK_M]
    q = tl.load(Q + b * sqb + n * sqn + h * sqh + offs_m.to(tl.int64)[:, None] * sqt + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_M, D_PAD]
    ptr_k = K + b * skb + n * skn + h * skh + offs_d[None, :]
    ptr_v = V + b * svb + n * svn + h * svh + offs_d[None, :]

    if IS_F64:
        acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float64)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float64)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    hi = length
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M)
    hi = tl.where(start_m < length, hi, 0)  # a block of padded query frames sees nothing
    # EVEN (no causal mask, no frame_lens, T a multiple of BLOCK_N): every block is whole and every
    # row sees it; rows past T compute on zero queries and are never stored.
    if INTERPRET:
        start_n = 0
        while start_n < hi:
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, ptr_k, ptr_v, skt, svt, start_n, offs_m, offs_n, mask_m,
                                      mask_d, length, scale_hi, scale_lo, CAUSAL, IS_F64, IEEE, EXP2, not EVEN,
                                      RAW_MAX)
            start_n += BLOCK_N
    else:
        for start_n in range(0, hi, BLOCK_N):
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, ptr_k, ptr_v, skt, svt, start_n, offs_m, offs_n, mask_m,
                                      mask_d, length, scale_hi, scale_lo, CAUSAL, IS_F64, IEEE, EXP2, not EVEN,
                                      RAW_MAX)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    mask_out = offs_m < T
    tl.store(O + b * sob + n * son + h * soh + offs_m.to(tl.int64)[:, None] * sot + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=mask_out[:, None] & mask_d[None, :])
    if RAW_MAX:
        m_i = m_i * scale_hi  # the running max in base-2 logits
    if EXP2:
        lse = tl.where(l_i > 0.0, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # natural log
    else:
        lse = tl.where(l_i > 0.0, m_i + tl.log(l_safe), float("-inf"))
    tl.store(LSE + (b * H + h) * T * N + n + offs_m.to(tl.int64) * N, lse, mask=mask_out)


@triton.jit
def _temporal_attn_bwd_delta_kernel(
    DO, O, DELTA, LENS,
    sdob, sdot, sdon, sdoh,
    sob, sot, son, soh,
    T, N, H, D,
    HAS_LENS: tl.constexpr, BLOCK_M: tl.constexpr, D_PAD: tl.constexpr, ALIGN: tl.constexpr,
):
    """``delta[g, t] = dO[g, t] · O[g, t]`` in the accumulation dtype (0 on padded frames)."""
    D = _aligned(D, ALIGN)
    sdob, sdot, sdon, sdoh = _aligned4(sdob, sdot, sdon, sdoh, ALIGN)
    sob, sot, son, soh = _aligned4(sob, sot, son, soh, ALIGN)
    g, start_m, b, n, h, length = _frame_block(LENS, T, N, H, BLOCK_M, HAS_LENS)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_m < length)[:, None] & (offs_d < D)[None, :]
    rows = offs_m.to(tl.int64)[:, None]
    do = tl.load(DO + b * sdob + n * sdon + h * sdoh + rows * sdot + offs_d[None, :], mask=mask, other=0.0)
    o = tl.load(O + b * sob + n * son + h * soh + rows * sot + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(do.to(DELTA.dtype.element_ty) * o.to(DELTA.dtype.element_ty), 1)
    tl.store(DELTA + g * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, ptr_q, ptr_do, ptr_lse, ptr_delta, sqt, sdot, N, start_m, offs_m, offs_n, mask_n, mask_d,
    length, scale_hi, scale_lo, CAUSAL: tl.constexpr, IS_F64: tl.constexpr, IEEE: tl.constexpr,
):
    rows = start_m + offs_m
    mask_m = rows < length
    mask_q = mask_m[:, None] & mask_d[None, :]
    q = tl.load(ptr_q + rows.to(tl.int64)[:, None] * sqt, mask=mask_q, other=0.0)  # [BLOCK_M, D_PAD]
    do = tl.load(ptr_do + rows.to(tl.int64)[:, None] * sdot, mask=mask_q, other=0.0)
    lse = tl.load(ptr_lse + rows.to(tl.int64) * N, mask=mask_m, other=0.0)  # [BLOCK_M]
    delta = tl.load(ptr_delta + rows, mask=mask_m, other=0.0)
    st = _dot(k, tl.trans(q), IEEE)  # [BLOCK_N, BLOCK_M]
    st = _scale_logits(st, scale_hi, scale_lo, IS_F64)
    visible = mask_n[:, None] & mask_m[None, :]
    if CAUSAL:
        visible = visible & (offs_n[:, None] <= rows[None, :])
    pt = tl.exp(tl.where(visible, st, float("-inf")) - lse[None, :])  # P^T
    dv += _dot(pt.to(do.dtype), do, IEEE)
    dpt = _dot(v, tl.trans(do), IEEE)  # [BLOCK_N, BLOCK_M]
    dst = pt * (dpt - delta[None, :])
    dk += _dot(dst.to(q.dtype), q, IEEE)
    return dk, dv


@triton.jit
def _temporal_attn_bwd_dkdv_kernel(
    DO, Q, K, V, LSE, DELTA, LENS, DK, DV,
    sdob, sdot, sdon, sdoh,
    sqb, sqt, sqn, sqh,
    skb, skt, skn, skh,
    svb, svt, svn, svh,
    sdkb, sdkt, sdkn, sdkh,
    sdvb, sdvt, sdvn, sdvh,
    T, N, H, D,
    scale_hi, scale_lo,
    HAS_LENS: tl.constexpr, CAUSAL: tl.constexpr, IS_F64: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
):
    """dK, dV of one block of key frames, looping over the query frames that see it."""
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    D = _aligned(D, ALIGN)
    sdob, sdot, sdon, sdoh = _aligned4(sdob, sdot, sdon, sdoh, ALIGN)
    sqb, sqt, sqn, sqh = _aligned4(sqb, sqt, sqn, sqh, ALIGN)
    skb, skt, skn, skh = _aligned4(skb, skt, skn, skh, ALIGN)
    svb, svt, svn, svh = _aligned4(svb, svt, svn, svh, ALIGN)
    sdkb, sdkt, sdkn, sdkh = _aligned4(sdkb, sdkt, sdkn, sdkh, ALIGN)
    sdvb, sdvt, sdvn, sdvh = _aligned4(sdvb, sdvt, sdvn, sdvh, ALIGN)
    g, start_n, b, n, h, length = _frame_block(LENS, T, N, H, BLOCK_N, HAS_LENS)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    mask_n = offs_n < length
    mask_kv = mask_n[:, None] & mask_d[None, :]
    rows_n = offs_n.to(tl.int64)[:, None]
    k = tl.load(K + b * skb + n * skn + h * skh + rows_n * skt + offs_d[None, :], mask=mask_kv, other=0.0)  # [BLOCK_N, D_PAD]
    v = tl.load(V + b * svb + n * svn + h * svh + rows_n * svt + offs_d[None, :], mask=mask_kv, other=0.0)
    ptr_q = Q + b * sqb + n * sqn + h * sqh + offs_d[None, :]
    ptr_do = DO + b * sdob + n * sdon + h * sdoh + offs_d[None, :]
    ptr_lse = LSE + (b * H + h) * T * N + n
    ptr_delta = DELTA + g * T

    if IS_F64:
        dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float64)
        dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float64)
    else:
        dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)

    lo = 0
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M  # earlier query frames never see these keys
    hi = tl.where(start_n < length, length, 0)  # a block of padded key frames is seen by no query
    if INTERPRET:
        start_m = lo
        while start_m < hi:
            dk, dv = _dkdv_tile(dk, dv, k, v, ptr_q, ptr_do, ptr_lse, ptr_delta, sqt, sdot, N, start_m, offs_m, offs_n,
                                mask_n, mask_d, length, scale_hi, scale_lo, CAUSAL, IS_F64, IEEE)
            start_m += BLOCK_M
    else:
        for start_m in range(lo, hi, BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, ptr_q, ptr_do, ptr_lse, ptr_delta, sqt, sdot, N, start_m, offs_m, offs_n,
                                mask_n, mask_d, length, scale_hi, scale_lo, CAUSAL, IS_F64, IEEE)
    dk = _scale_logits(dk, scale_hi, scale_lo, IS_F64)

    mask_st = (offs_n < T)[:, None] & mask_d[None, :]
    tl.store(DK + b * sdkb + n * sdkn + h * sdkh + rows_n * sdkt + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=mask_st)
    tl.store(DV + b * sdvb + n * sdvn + h * sdvh + rows_n * sdvt + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=mask_st)


@triton.jit
def _dq_tile(
    acc, q, do, lse, delta, ptr_k, ptr_v, skt, svt, start_n, offs_m, offs_n, mask_m, mask_d, length,
    scale_hi, scale_lo, CAUSAL: tl.constexpr, IS_F64: tl.constexpr, IEEE: tl.constexpr, DELTA_ONLY: tl.constexpr,
):
    """One key tile of the dQ loop: ``acc += dS K``; with DELTA_ONLY, ``acc += rowsum(P * dP)``
    (``acc`` ``[BLOCK_M]``, ``delta`` unused)."""
    cols = start_n + offs_n
    mask_n = cols < length
    mask_kv = mask_n[:, None] & mask_d[None, :]
    k = tl.load(ptr_k + cols.to(tl.int64)[:, None] * skt, mask=mask_kv, other=0.0)  # [BLOCK_N, D_PAD]
    v = tl.load(ptr_v + cols.to(tl.int64)[:, None] * svt, mask=mask_kv, other=0.0)
    s = _dot(q, tl.trans(k), IEEE)  # [BLOCK_M, BLOCK_N]
    s = _scale_logits(s, scale_hi, scale_lo, IS_F64)
    visible = mask_m[:, None] & mask_n[None, :]
    if CAUSAL:
        visible = visible & (offs_m[:, None] >= cols[None, :])
    p = tl.exp(tl.where(visible, s, float("-inf")) - lse[:, None])
    dp = _dot(do, tl.trans(v), IEEE)
    if DELTA_ONLY:
        acc += tl.sum(p * dp, 1)
    else:
        ds = p * (dp - delta[:, None])
        acc += _dot(ds.to(k.dtype), k, IEEE)
    return acc


@triton.jit
def _temporal_attn_bwd_dq_kernel(
    DO, Q, K, V, LSE, DELTA, LENS, DQ,
    sdob, sdot, sdon, sdoh,
    sqb, sqt, sqn, sqh,
    skb, skt, skn, skh,
    svb, svt, svn, svh,
    sdqb, sdqt, sdqn, sdqh,
    T, N, H, D,
    scale_hi, scale_lo,
    HAS_LENS: tl.constexpr, CAUSAL: tl.constexpr, IS_F64: tl.constexpr, INTERPRET: tl.constexpr,
    DELTA_ONLY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr,
):
    """dQ of one block of query frames, looping over the key frames it sees.

    DELTA_ONLY: a pass before the dK/dV and dQ kernels that writes the block's
    ``delta = rowsum(P * dP)`` (0 on padded frames) into DELTA instead, and reads no delta."""
    scale_hi, scale_lo = _scale_arg(scale_hi, IS_F64), _scale_arg(scale_lo, IS_F64)
    D = _aligned(D, ALIGN)
    sdob, sdot, sdon, sdoh = _aligned4(sdob, sdot, sdon, sdoh, ALIGN)
    sqb, sqt, sqn, sqh = _aligned4(sqb, sqt, sqn, sqh, ALIGN)
    skb, skt, skn, skh = _aligned4(skb, skt, skn, skh, ALIGN)
    svb, svt, svn, svh = _aligned4(svb, svt, svn, svh, ALIGN)
    sdqb, sdqt, sdqn, sdqh = _aligned4(sdqb, sdqt, sdqn, sdqh, ALIGN)
    g, start_m, b, n, h, length = _frame_block(LENS, T, N, H, BLOCK_M, HAS_LENS)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < D
    mask_m = offs_m < length
    mask_q = mask_m[:, None] & mask_d[None, :]
    rows_m = offs_m.to(tl.int64)[:, None]
    q = tl.load(Q + b * sqb + n * sqn + h * sqh + rows_m * sqt + offs_d[None, :], mask=mask_q, other=0.0)  # [BLOCK_M, D_PAD]
    do = tl.load(DO + b * sdob + n * sdon + h * sdoh + rows_m * sdot + offs_d[None, :], mask=mask_q, other=0.0)
    lse = tl.load(LSE + (b * H + h) * T * N + n + offs_m.to(tl.int64) * N, mask=mask_m, other=0.0)
    ptr_k = K + b * skb + n * skn + h * skh + offs_d[None, :]
    ptr_v = V + b * svb + n * svn + h * svh + offs_d[None, :]

    hi = length
    if CAUSAL:
        hi = tl.minimum(hi, start_m + BLOCK_M)
    hi = tl.where(start_m < length, hi, 0)  # a block of padded query frames sees nothing
    if DELTA_ONLY:
        delta = lse  # not read: this pass computes delta
        acc = tl.zeros([BLOCK_M], dtype=lse.dtype)
    else:
        delta = tl.load(DELTA + g * T + offs_m, mask=mask_m, other=0.0)
        acc = tl.zeros([BLOCK_M, D_PAD], dtype=lse.dtype)
    if INTERPRET:
        start_n = 0
        while start_n < hi:
            acc = _dq_tile(acc, q, do, lse, delta, ptr_k, ptr_v, skt, svt, start_n, offs_m, offs_n, mask_m, mask_d,
                           length, scale_hi, scale_lo, CAUSAL, IS_F64, IEEE, DELTA_ONLY)
            start_n += BLOCK_N
    else:
        for start_n in range(0, hi, BLOCK_N):
            acc = _dq_tile(acc, q, do, lse, delta, ptr_k, ptr_v, skt, svt, start_n, offs_m, offs_n, mask_m, mask_d,
                           length, scale_hi, scale_lo, CAUSAL, IS_F64, IEEE, DELTA_ONLY)
    if DELTA_ONLY:
        tl.store(DELTA + g * T + offs_m, acc, mask=offs_m < T)
    else:
        dq = _scale_logits(acc, scale_hi, scale_lo, IS_F64)
        mask_st = (offs_m < T)[:, None] & mask_d[None, :]
        tl.store(DQ + b * sdqb + n * sdqn + h * sdqh + rows_m * sdqt + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=mask_st)


# ---------------------------------------------------------------------------------------------
# launchers


def _device_guard(device: torch.device):
    """A context that makes ``device`` the current CUDA device (the caller's restored on exit)
    when it is not already: Triton launches on the current device, so tensors on cuda:1 while
    cuda:0 is current fail ("Pointer argument cannot be accessed from Triton"). The CUDA
    extension's ops take a CUDAGuard the same way. A no-op for the current device and for CPU
    tensors (the interpreter), so the single-device path stays as it was."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def on_tensor_device(launcher):
    """Decorates a launcher: it runs under ``_device_guard`` of its first tensor argument."""

    @functools.wraps(launcher)
    def guarded(*args, **kwargs):
        with _device_guard(next(a.device for a in args if isinstance(a, torch.Tensor))):
            return launcher(*args, **kwargs)

    return guarded


def _lens_arg(frame_lens, fallback: torch.Tensor):
    """The kernels read ``LENS`` only when ``HAS_LENS``; otherwise a dedicated int32 placeholder on
    ``fallback``'s device stands in: never an output (``lse``), which torch.compile would see passed
    to two pointer arguments and functionalize as two separately written buffers."""
    if frame_lens is not None:
        return frame_lens, True
    return torch.empty(1, dtype=torch.int32, device=fallback.device), False


@on_tensor_device
def temporal_attn_fwd(q, k, v, out, lse, frame_lens, causal: bool, scale: float) -> None:
    """Forward of temporal attention into the preallocated ``out`` ``[B, T, N, H, D]`` and
    ``lse`` ``[B, H, T, N]`` (see the module docstring for the contract)."""
    B, T, N, H, D = q.shape
    num_groups = B * N * H
    if num_groups == 0 or T == 0:
        return
    assert lse.is_contiguous() and tuple(lse.shape) == (B, H, T, N)
    T_PAD, D_PAD = _pad(T), _pad(D)
    scale_hi, scale_lo = _split_scale(scale)
    lens, has_lens = _lens_arg(frame_lens, lse)
    is_f64 = q.dtype == torch.float64
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(out))
    align = _alignment(D, q, k, v, out)
    if use_short_path(T, D, q.dtype, backward=False):
        block_g, num_warps = _short_config(T_PAD, D_PAD, q.dtype, backward=False)
        grid = (cdiv(num_groups, block_g),)
        torch.library.wrap_triton(_temporal_attn_fwd_short_kernel)[grid](
            q, k, v, out, lse, lens, *strides,
            T, N, H, D, num_groups, scale_hi, scale_lo,
            HAS_LENS=has_lens, CAUSAL=causal, IS_F64=is_f64,
            BLOCK_G=block_g, T_PAD=T_PAD, D_PAD=D_PAD, IEEE=_ieee(q.dtype), ALIGN=align,
            num_warps=num_warps,
        )
        return
    block_m, block_n, num_warps = _tiled_config(T, D_PAD, q.dtype, backward=False)
    num_stages = _tiled_stages(q.dtype, False, block_n, D_PAD)
    grid = (num_groups * cdiv(T, block_m),)
    exp2 = _TILED_FWD_EXP2 and not is_f64
    torch.library.wrap_triton(_temporal_attn_fwd_tiled_kernel)[grid](
        q, k, v, out, lse, lens, *strides,
        T, N, H, D, scale_hi, scale_lo,
        HAS_LENS=has_lens, CAUSAL=causal, IS_F64=is_f64, INTERPRET=_interpreting(),
        BLOCK_M=block_m, BLOCK_N=block_n, D_PAD=D_PAD, IEEE=_ieee(q.dtype), ALIGN=align,
        EXP2=exp2, RAW_MAX=_TILED_FWD_RAW_MAX and exp2 and scale_hi > 0.0,
        EVEN=_TILED_FWD_EVEN and not causal and not has_lens and T % block_n == 0,
        num_warps=num_warps, num_stages=num_stages,
    )


@on_tensor_device
def temporal_attn_bwd(dout, q, k, v, out, lse, frame_lens, causal: bool, scale: float, dq, dk, dv,
                      exact_delta: bool | None = None) -> None:
    """Backward of temporal attention into the preallocated ``dq, dk, dv`` ``[B, T, N, H, D]``
    (any strides, e.g. the three slices of one packed ``dqkv``). ``delta`` is ``rowsum(P * dP)``
    on the short path and, with ``exact_delta`` (default: float16/bfloat16), on the tiled path,
    which otherwise takes ``rowsum(dO * O)`` and is then the only reader of ``out``."""
    B, T, N, H, D = q.shape
    num_groups = B * N * H
    if num_groups == 0 or T == 0:
        return
    T_PAD, D_PAD = _pad(T), _pad(D)
    scale_hi, scale_lo = _split_scale(scale)
    lens, has_lens = _lens_arg(frame_lens, lse)
    is_f64 = q.dtype == torch.float64
    ieee = _ieee(q.dtype)
    s_do, s_q, s_k, s_v = _strides(dout), _strides(q), _strides(k), _strides(v)
    s_dq, s_dk, s_dv = _strides(dq), _strides(dk), _strides(dv)
    align = _alignment(D, dout, q, k, v, dq, dk, dv, out)
    if use_short_path(T, D, q.dtype, backward=True):
        block_g, num_warps = _short_config(T_PAD, D_PAD, q.dtype, backward=True)
        grid = (cdiv(num_groups, block_g),)
        torch.library.wrap_triton(_temporal_attn_bwd_short_kernel)[grid](
            dout, q, k, v, lse, lens, dq, dk, dv,
            *s_do, *s_q, *s_k, *s_v, *s_dq, *s_dk, *s_dv,
            T, N, H, D, num_groups, scale_hi, scale_lo,
            HAS_LENS=has_lens, CAUSAL=causal, IS_F64=is_f64,
            BLOCK_G=block_g, T_PAD=T_PAD, D_PAD=D_PAD, IEEE=ieee, ALIGN=align,
            num_warps=num_warps,
        )
        return
    block_m, block_n, num_warps = _tiled_config(T, D_PAD, q.dtype, backward=True)
    num_stages = _tiled_stages(q.dtype, True, block_n, D_PAD)
    delta = torch.empty((num_groups, T), dtype=lse.dtype, device=q.device)
    if exact_delta is None:
        exact_delta = q.dtype in (torch.float16, torch.bfloat16)
    if exact_delta:
        # delta = rowsum(P * dP), as the short path takes it: the 16-bit out is rounded, and that
        # rounding does not cancel in dP - delta (see spatial_attn.attn_bwd)
        torch.library.wrap_triton(_temporal_attn_bwd_dq_kernel)[(num_groups * cdiv(T, block_m),)](
            dout, q, k, v, lse, delta, lens, torch.empty(1, dtype=dq.dtype, device=dq.device),
            *s_do, *s_q, *s_k, *s_v, 0, 0, 0, 0,
            T, N, H, D, scale_hi, scale_lo,
            HAS_LENS=has_lens, CAUSAL=causal, IS_F64=is_f64, INTERPRET=_interpreting(), DELTA_ONLY=True,
            BLOCK_M=block_m, BLOCK_N=block_n, D_PAD=D_PAD, IEEE=ieee, ALIGN=align,
            num_warps=num_warps, num_stages=num_stages,
        )
    else:
        torch.library.wrap_triton(_temporal_attn_bwd_delta_kernel)[(num_groups * cdiv(T, block_m),)](
            dout, out, delta, lens, *s_do, *_strides(out), T, N, H, D,
            HAS_LENS=has_lens, BLOCK_M=block_m, D_PAD=D_PAD, ALIGN=align, num_warps=num_warps,
        )
    torch.library.wrap_triton(_temporal_attn_bwd_dkdv_kernel)[(num_groups * cdiv(T, block_n),)](
        dout, q, k, v, lse, delta, lens, dk, dv,
        *s_do, *s_q, *s_k, *s_v, *s_dk, *s_dv,
        T, N, H, D, scale_hi, scale_lo,
        HAS_LENS=has_lens, CAUSAL=causal, IS_F64=is_f64, INTERPRET=_interpreting(),
        BLOCK_M=block_m, BLOCK_N=block_n, D_PAD=D_PAD, IEEE=ieee, ALIGN=align,
        num_warps=num_warps, num_stages=num_stages,
    )
    torch.library.wrap_triton(_temporal_attn_bwd_dq_kernel)[(num_groups * cdiv(T, block_m),)](
        dout, q, k, v, lse, delta, lens, dq,
        *s_do, *s_q, *s_k, *s_v, *s_dq,
        T, N, H, D, scale_hi, scale_lo,
        HAS_LENS=has_lens, CAUSAL=causal, IS_F64=is_f64, INTERPRET=_interpreting(), DELTA_ONLY=False,
        BLOCK_M=block_m, BLOCK_N=block_n, D_PAD=D_PAD, IEEE=ieee, ALIGN=align,
        num_warps=num_warps, num_stages=num_stages,
    )
