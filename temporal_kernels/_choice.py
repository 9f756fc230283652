"""Which kernel backend ``backend=None`` runs on CUDA tensors when both Triton and CUDA C++ serve
the op: the one measured faster for the op and shape (``_measured.ROWS``, written by
``python -m benchmarks.backend_table`` from the committed benchmark CSV).

The rule, for a call of ``op`` with ``causal``, a CLS token or not, training or not (grad enabled
and an input requiring grad), dtype and shape ``(B, T, N, H, D)``:

1. CUDA is a candidate only where its tensor-core kernels apply, since only those were measured:
   float16/bfloat16 (measured in bf16; fp16 runs the same kernels), ``D % 8 == 0`` and
   ``D <= 160``, and every input (CLS tensors included) with a unit last stride and every other
   stride a multiple of 8 elements (the kernels' 16-byte rows; they also accept any stride on
   an axis of length 1, too rare a case to cost a check). A training call also needs the
   tensor-core backward: ``D <= 64``, or ``D <= 128`` for temporal ops with ``T <= 32``.
   ``factorized_attention`` has no CUDA implementation. Anywhere else: ``"triton"``.
   Strides and shapes only: dynamo traces neither ``data_ptr()`` nor ``storage_offset()``, so an
   input starting off a 16-byte boundary may still get ``"cuda"``, whose scalar kernels then
   run it (correct, slower).
2. Measured rows of the call's mode (``fwd+bwd`` when training, else ``fwd``) are looked up in
   this order, the first set holding a comparable row (3.) deciding: the op's own family
   (``temporal_causal`` for causal temporal ops, ``spatial_cls`` with a CLS token,
   ``joint_causal`` for causal joint attention), packed rows first for ``*_qkvpacked`` ops, then
   unpacked ones; then the same for the plain family (``temporal``, ``spatial``, ``joint``).
   ``frame_lens`` does not change the family.
3. A row is comparable when its T and D are within 2x of the call's and its N within 4x; farther
   than that the data says nothing, and the answer is ``"triton"``.
4. Nearest rows: distance = ``|log2 T/T'| + |log2 D/D'| + 0.5 |log2 N/N'| + 0.25 |log2 BH/B'H'|``
   (T and D weigh most: they pick the kernel variants, sequence tiling and head-dim padding,
   where the measured differences are; B*H least: it only counts independent sequences).
   All rows at the minimum distance count (a call between two measured shapes sees both).
5. ``"cuda"`` if their summed Triton time exceeds their summed CUDA time by more than 2%
   (``MARGIN``); otherwise, ties and noise included, ``"triton"``. Which times: a call captured
   into a CUDA graph, whose host cost is paid once, compares kernel times (the lower of eager and
   CUDA-graph replay); any other call, eager or traced by torch.compile, compares kernel time
   plus eager time (a stream of eager calls timed as they run, host cost included). The two differ
   most in forward+backward: Triton's launch path costs ~1 ms of host time per call (Python
   launchers, ~50 us per Triton launch of ~55 arguments, the Python custom-op dispatch), the C++
   ops' ~0.3 ms (``scripts/profile_op_layers.py``): an eager spatial (8,8,196,12)
   forward+backward takes 1.4-1.6 ms on Triton and 0.5 ms on CUDA while their kernels take 0.30
   and 0.42 ms. Where an eager call lands depends on the model around it: where the host is the
   bottleneck (the SPEC's mini model, HF Timesformer-base at B = 8) its eager time counts, where
   the GPU is, its kernel time. The sum is the choice of least worst-case loss between the two:
   CUDA loses ``cuda_ms - triton_ms`` where the GPU is the bottleneck, Triton
   ``triton_eager_ms - cuda_eager_ms`` where the host is, and the sums compare exactly those.
   torch.compile (without CUDA graphs) still pays each op's host cost per call: the packed
   backward ops are opaque custom ops that run their Python launchers, where the C++ ops are
   dispatched in C++. Converted HF Timesformer-base under torch.compile, forward+backward: 48.5 ms
   with traced calls on kernel times, 32.1 ms on the sums (H100,
   ``logs/e2e_timesformer_1d24c66*.log``). A graph captured later from a traced call
   (``mode="reduce-overhead"``) keeps the choice made while tracing.

Everything here is plain Python on ints, floats and tuples, indexed at import time, so
``torch.compile(fullgraph=True)`` traces it: with static shapes it folds to a constant; with
dynamic ones dynamo turns the comparisons into shape guards, so the pick stays per shape and a
shape across a decision boundary recompiles. Symbolic sizes met outside dynamo (``make_fx``,
non-strict export) cannot be guarded on and keep ``"triton"``.
"""

from __future__ import annotations

import math

import torch

from . import _measured

MARGIN = 0.02
# |log2| ratio beyond which a measured row says nothing about the call
FAR_LOG2_T = 1.0
FAR_LOG2_D = 1.0
FAR_LOG2_N = 2.0
WEIGHT_T = 1.0
WEIGHT_D = 1.0
WEIGHT_N = 0.5
WEIGHT_BH = 0.25
# distances are sums of logs of small ints: equal distances may differ in the last bits
_SAME_DISTANCE = 1e-9

TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
TENSOR_CORE_MAX_HEAD_DIM = 160
TENSOR_CORE_BWD_MAX_HEAD_DIM = 64
TENSOR_CORE_TEMPORAL_BWD_MAX_HEAD_DIM = 128
TENSOR_CORE_TEMPORAL_BWD_MAX_T = 32
# 16 bytes of a 16-bit dtype
ALIGN_ELEMENTS = 8

# public op -> its family of measured rows; factorized_attention has no CUDA implementation
_FAMILY = {
    "temporal_attention": "temporal",
    "temporal_attention_qkvpacked": "temporal",
    "spatial_attention": "spatial",
    "spatial_attention_qkvpacked": "spatial",
    "joint_attention": "joint",
}


def index_rows(rows) -> dict[tuple[str, str, bool], tuple[tuple[float, ...], ...]]:
    """``(op, mode, packed) -> ((log2 T, log2 N, log2 D, log2 B*H, triton_ms, cuda_ms,
    triton_eager_ms, cuda_eager_ms), ...)``."""
    index: dict[tuple[str, str, bool], list[tuple[float, ...]]] = {}
    for op, mode, packed, B, T, N, H, D, triton_ms, cuda_ms, triton_eager_ms, cuda_eager_ms in rows:
        index.setdefault((op, mode, packed), []).append(
            (math.log2(T), math.log2(N), math.log2(D), math.log2(B * H), float(triton_ms), float(cuda_ms),
             float(triton_eager_ms), float(cuda_eager_ms)))
    return {key: tuple(value) for key, value in index.items()}


TABLE = index_rows(_measured.ROWS)

# Eager calls repeat a few shapes; the memo takes pick's few microseconds off the launch path.
# Whoever replaces TABLE (tests) replaces _PICKS too.
_PICKS: dict[tuple, str] = {}
_PICKS_MAX = 4096


def _row_sets(op: str, causal: bool, has_cls: bool, training: bool) -> tuple[tuple[str, str, bool], ...]:
    family = _FAMILY[op]
    mode = "fwd+bwd" if training else "fwd"
    own = family
    if family == "temporal" and causal:
        own = "temporal_causal"
    elif family == "spatial" and has_cls:
        own = "spatial_cls"
    elif family == "joint" and causal:
        own = "joint_causal"
    packed = op.endswith("_qkvpacked")
    families = (own, family) if own != family else (family,)
    layouts = (True, False) if packed else (False,)
    return tuple((name, mode, layout) for name in families for layout in layouts)


def _tensor_core_applies(op: str, training: bool, dtype: torch.dtype, T: int, D: int, aligned: bool) -> bool:
    if dtype not in TENSOR_CORE_DTYPES or not aligned:
        return False
    if D % 8 != 0 or D > TENSOR_CORE_MAX_HEAD_DIM:
        return False
    if not training:
        return True
    if _FAMILY[op] == "temporal" and T <= TENSOR_CORE_TEMPORAL_BWD_MAX_T:
        return D <= TENSOR_CORE_TEMPORAL_BWD_MAX_HEAD_DIM
    return D <= TENSOR_CORE_BWD_MAX_HEAD_DIM


def pick(op: str, *, causal: bool, has_cls: bool, training: bool, dtype: torch.dtype, shape: tuple,
         aligned: bool, eager: bool = False) -> str:
    """``"cuda"`` or ``"triton"`` for a call of public function ``op`` (rule in the module docstring).

    ``shape`` is ``(B, T, N, H, D)``; ``aligned``: every input has the strides of rule 1;
    ``eager``: compare kernel plus eager times (rule 5), else kernel times.
    """
    if op not in _FAMILY or not all(isinstance(size, int) for size in shape):
        return "triton"
    B, T, N, H, D = shape
    if min(shape) <= 0 or not _tensor_core_applies(op, training, dtype, T, D, aligned):
        return "triton"
    log_t, log_n, log_d, log_bh = math.log2(T), math.log2(N), math.log2(D), math.log2(B * H)
    for key in _row_sets(op, causal, has_cls, training):
        nearest = None
        triton_ms = cuda_ms = 0.0
        for row_t, row_n, row_d, row_bh, row_triton_ms, row_cuda_ms, *row_eager_ms in TABLE.get(key, ()):
            if eager:
                row_triton_ms += row_eager_ms[0]
                row_cuda_ms += row_eager_ms[1]
            off_t, off_n, off_d = abs(log_t - row_t), abs(log_n - row_n), abs(log_d - row_d)
            if off_t > FAR_LOG2_T or off_d > FAR_LOG2_D or off_n > FAR_LOG2_N:
                continue
            distance = WEIGHT_T * off_t + WEIGHT_D * off_d + WEIGHT_N * off_n + WEIGHT_BH * abs(log_bh - row_bh)
            if nearest is None or distance < nearest - _SAME_DISTANCE:
                nearest, triton_ms, cuda_ms = distance, row_triton_ms, row_cuda_ms
            elif distance <= nearest + _SAME_DISTANCE:
                triton_ms += row_triton_ms
                cuda_ms += row_cuda_ms
        if nearest is not None:
            return "cuda" if triton_ms > (1.0 + MARGIN) * cuda_ms else "triton"
    return "triton"


def _aligned(tensors) -> bool:
    for x in tensors:
        strides = x.stride()
        if strides[-1] != 1:
            return False
        for stride in strides[:-1]:
            if stride % ALIGN_ELEMENTS != 0:
                return False
    return True


def pick_for(op: str, tensors: tuple, *, causal: bool, has_cls: bool) -> str:
    """``pick`` for the validated inputs of a call: ``tensors[0]`` is ``q`` ``[B, T, N, H, D]`` or
    ``qkv`` ``[B, T, N, 3, H, D]``; the others (k, v, CLS tensors) count for alignment and grad.
    Unless a CUDA graph captures the call, its host cost counts (rule 5)."""
    first = tensors[0]
    shape = tuple(first.shape)
    if len(shape) == 6:
        shape = shape[:3] + shape[4:]
    if not all(isinstance(size, int) for size in shape):
        return "triton"  # before the stride checks: symbolic strides outside dynamo cannot be guarded on
    training = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    aligned = _aligned(tensors)
    if torch.compiler.is_compiling():
        # traced once per graph: the memo would only be a side effect for dynamo to replay
        return pick(op, causal=causal, has_cls=has_cls, training=training, dtype=first.dtype, shape=shape,
                    aligned=aligned, eager=True)
    eager = not (first.is_cuda and torch.cuda.is_current_stream_capturing())
    key = (op, causal, has_cls, training, first.dtype, shape, aligned, eager)
    choice = _PICKS.get(key)
    if choice is None:
        if len(_PICKS) >= _PICKS_MAX:
            _PICKS.clear()
        choice = _PICKS[key] = pick(op, causal=causal, has_cls=has_cls, training=training, dtype=first.dtype,
                                    shape=shape, aligned=aligned, eager=eager)
    return choice
