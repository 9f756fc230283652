"""The methods a row measures: our backends and the peers of SPEC §5.

A method is called as ``fn(case, q, k, v, cls)`` (or ``fn(case, qkv, cls_qkv)`` when
``packed``) on ``[B, T, N, H, D]`` views and returns a tuple of outputs: ``(out,)``, or
``(out, cls_out)`` for spatial attention with CLS. A method that cannot serve a case raises
(``NotApplicable`` or whatever the library raises); the harness records that as n/a.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import temporal_kernels as tk
from temporal_kernels._backends import triton_interpreter_enabled
from temporal_kernels._layout import empty_like_cls_out, empty_like_video

from .shapes import Case

FAMILY_FN = {
    "temporal": "temporal_attention",
    "spatial": "spatial_attention",
    "joint": "joint_attention",
    "factorized": "factorized_attention",
}
PACKED_FN = {"temporal": "temporal_attention_qkvpacked", "spatial": "spatial_attention_qkvpacked"}

# The naive loops launch a few kernels per patch (or frame); beyond this many iterations a
# single call takes seconds and the row is skipped.
NAIVE_MAX_ITERS = 4096


class NotApplicable(Exception):
    """The method has no formulation for this case (recorded as n/a with the message)."""


@dataclass
class Method:
    name: str
    kind: str  # "ours" (triton/cuda), "reference", "peer", "naive"
    fn: Callable
    packed: bool = False


def scale_of(case: Case) -> float:
    return case.D ** -0.5


# ---------------------------------------------------------------------------------------------
# our backends, discovered at run time (other ops land while the harness exists)


def backend_op_names(backend: str) -> set[str]:
    """Public function names ``backend`` implements (empty when it cannot be imported)."""
    if backend == "reference":
        return set(FAMILY_FN.values()) | set(PACKED_FN.values())
    try:
        from temporal_kernels import ops
    except Exception:  # a backend being edited must not take the harness down
        return set()
    table = {"triton": getattr(ops, "TRITON_OPS", {}), "cuda": getattr(ops, "CUDA_OPS", {})}.get(backend, {})
    return set(table)


def _call_tk(case: Case, backend: str, q, k, v, cls):
    fn = getattr(tk, FAMILY_FN[case.family])
    if case.family == "spatial":
        out = fn(q, k, v, cls=cls, backend=backend)
        return tuple(out) if cls is not None else (out,)
    if case.family == "factorized":
        return (fn(q, k, v, temporal_heads=case.temporal_heads, backend=backend),)
    return (fn(q, k, v, causal=case.causal, backend=backend),)


def _call_tk_packed(case: Case, backend: str, qkv, cls_qkv):
    fn = getattr(tk, PACKED_FN[case.family])
    if case.family == "spatial":
        out = fn(qkv, cls_qkv=cls_qkv, backend=backend)
        return tuple(out) if cls_qkv is not None else (out,)
    return (fn(qkv, causal=case.causal, backend=backend),)


def tk_methods(case: Case, backends: list[str]) -> list[Method]:
    methods = []
    for backend in backends:
        names = backend_op_names(backend)
        kind = "reference" if backend == "reference" else "ours"
        if FAMILY_FN[case.family] in names:
            methods.append(Method(f"tk-{backend}", kind, lambda c, q, k, v, cls, b=backend: _call_tk(c, b, q, k, v, cls)))
        if backend != "reference" and PACKED_FN.get(case.family) in names:
            methods.append(
                Method(f"tk-{backend}-packed", kind, lambda c, qkv, cq, b=backend: _call_tk_packed(c, b, qkv, cq), packed=True)
            )
        if (case.family == "factorized" and backend == "triton" and not triton_interpreter_enabled()
                and {"temporal_attention", "spatial_attention"} <= names):
            # SPEC §5's factorized bar: one launch against our temporal and spatial kernels run one
            # after the other on the same heads (head slices are zero-copy views), a peer here; not
            # under the Triton interpreter, whose timings mean nothing
            methods.append(Method(f"tk-{backend}-split", "peer", lambda c, q, k, v, cls, b=backend: _factorized(
                lambda cc, qq, kk, vv, cl: _call_tk(cc, b, qq, kk, vv, cl), c, q, k, v)))
    return methods + _auto_methods(case, backends)


def _auto_methods(case: Case, backends: list[str]) -> list[Method]:
    """``backend=None`` (tk-auto), where it has a choice to make: both kernel backends measured in
    the run and implementing the op (the per-shape pick from temporal_kernels/_measured.py)."""
    if not {"triton", "cuda"} <= set(backends):
        return []
    both = backend_op_names("triton") & backend_op_names("cuda")
    methods = []
    if FAMILY_FN[case.family] in both:
        methods.append(Method("tk-auto", "ours", lambda c, q, k, v, cls: _call_tk(c, None, q, k, v, cls)))
    if PACKED_FN.get(case.family) in both:
        methods.append(
            Method("tk-auto-packed", "ours", lambda c, qkv, cq: _call_tk_packed(c, None, qkv, cq), packed=True)
        )
    return methods


# ---------------------------------------------------------------------------------------------
# group views: [B, T, N, H, D] <-> [G, H, L, D] batches of independent attention problems


def _joint_frames(case: Case, order: str, device) -> torch.Tensor:
    """Frame index of every token of a joint sequence laid out in ``order`` ("tn" or "nt")."""
    idx = torch.arange(case.T * case.N, device=device)
    return idx // case.N if order == "tn" else idx % case.T


def to_groups(x: torch.Tensor, case: Case, mode: str):
    """``x`` as ``[G, H, L, D]`` (or 5-D ``[B, G, H, L, D]``); returns ``(tensor, token_order)``.

    mode "reshape": ``permute().reshape()`` (a copy only where needed, like ``einops.rearrange``);
    "copy": always a dense copy; "view": zero-copy, raising NotApplicable when impossible
    (temporal/spatial fall back to a 5-D view, which only SDPA's math path accepts).
    """
    B, T, N, H, D = x.shape
    if case.family == "joint":
        p = x.permute(0, 3, 1, 2, 4)  # [B, H, T, N, D]
        if mode == "reshape":
            return p.reshape(B, H, T * N, D), "tn"
        if mode == "copy":
            return p.contiguous().view(B, H, T * N, D), "tn"
        try:
            return p.view(B, H, T * N, D), "tn"
        except RuntimeError:
            pass
        try:  # patch-major tokens: a valid joint sequence in (n t) order
            return x.permute(0, 3, 2, 1, 4).view(B, H, N * T, D), "nt"
        except RuntimeError:
            raise NotApplicable("no zero-copy [B, H, L, D] view of this layout") from None
    if case.family == "temporal":
        p, G, L = x.permute(0, 2, 3, 1, 4), B * N, T  # [B, N, H, T, D]
    else:
        p, G, L = x.permute(0, 1, 3, 2, 4), B * T, N  # [B, T, H, N, D]
    if mode == "reshape":
        return p.reshape(G, H, L, D), None
    if mode == "copy":
        return p.contiguous().view(G, H, L, D), None
    try:
        return p.view(G, H, L, D), None
    except RuntimeError:
        return p, None


def from_groups(o: torch.Tensor, case: Case, order, like: torch.Tensor, materialize: bool) -> torch.Tensor:
    """Back to ``[B, T, N, H, D]``; ``materialize`` copies into a dense tensor in ``like``'s axis
    order (what a model needs to reshape the result back to its tokens)."""
    B, T, N, H, D = like.shape
    if case.family == "joint":
        if order == "tn":
            view = o.reshape(B, H, T, N, D).permute(0, 2, 3, 1, 4)
        else:
            view = o.reshape(B, H, N, T, D).permute(0, 3, 2, 1, 4)
    elif case.family == "temporal":
        view = o.reshape(B, N, H, T, D).permute(0, 3, 1, 2, 4)
    else:
        view = o.reshape(B, T, H, N, D).permute(0, 1, 3, 2, 4)
    if not materialize:
        return view
    out = empty_like_video(like)
    out.copy_(view)
    return out


def _with_cls_groups(qg, kg, vg, cls, case: Case):
    """Prepend the CLS token to every frame: ``[B*T, H, N+1, D]`` (the TimeSformer cat)."""
    B, T, H, D = case.B, case.T, case.H, case.D

    def cat(g, c):
        c = c[:, None, :, None, :].expand(B, T, H, 1, D).reshape(B * T, H, 1, D)
        return torch.cat([c, g], dim=2)

    return cat(qg, cls[0]), cat(kg, cls[1]), cat(vg, cls[2])


def _split_cls(o, case: Case, q, materialize: bool):
    B, T, H, D = case.B, case.T, case.H, case.D
    cls_out = empty_like_cls_out(q)
    cls_out.copy_(o[:, :, 0].reshape(B, T, H, D))
    return from_groups(o[:, :, 1:], case, None, q, materialize), cls_out


# ---------------------------------------------------------------------------------------------
# attention cores on [G, H, L, D] groups


def _joint_visible(case: Case, order, device) -> torch.Tensor:
    frames = _joint_frames(case, order, device)
    return frames[None, :] <= frames[:, None]  # [L, L]


def _einsum_core(qg, kg, vg, case: Case, order):
    """TimeSformer's Attention: (q @ k^T) * scale, softmax, @ v, in the input dtype."""
    attn = (qg @ kg.transpose(-2, -1)) * scale_of(case)
    if case.causal:
        if case.family == "joint":
            visible = _joint_visible(case, order, qg.device)
        else:
            L = qg.shape[-2]
            visible = torch.ones(L, L, dtype=torch.bool, device=qg.device).tril()
        attn = attn.masked_fill(~visible, float("-inf"))
    return attn.softmax(dim=-1) @ vg


def _sdpa_core(qg, kg, vg, case: Case, order, backend):
    ctx = contextlib.nullcontext() if backend is None else sdpa_kernel([backend])
    with ctx:
        if case.causal and case.family == "joint":
            mask = _joint_visible(case, order, qg.device)
            return F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale_of(case))
        return F.scaled_dot_product_attention(qg, kg, vg, is_causal=case.causal, scale=scale_of(case))


_FLEX = {}


def _flex_core(qg, kg, vg, case: Case, order):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    block_mask = None
    if case.causal:
        key = (case, order)
        if key not in _FLEX:
            frames = _joint_frames(case, order, qg.device)

            def frame_causal(b, h, q_idx, kv_idx):
                return frames[kv_idx] <= frames[q_idx]

            L = qg.shape[-2]
            _FLEX[key] = create_block_mask(frame_causal, B=None, H=None, Q_LEN=L, KV_LEN=L, device=qg.device)
        block_mask = _FLEX[key]
    return _FLEX["fn"](qg, kg, vg, block_mask=block_mask, scale=scale_of(case))


def _grouped(core, mode: str, materialize: bool, allow_cls: bool = True):
    """A peer that runs ``core`` on group tensors made by ``to_groups(mode)``."""

    def run(case: Case, q, k, v, cls):
        if case.family == "factorized":
            return _factorized(run, case, q, k, v)
        if cls is not None and not allow_cls:
            raise NotApplicable("the CLS token needs a cat (no zero-copy form)")
        (qg, order), (kg, _), (vg, _) = (to_groups(x, case, mode) for x in (q, k, v))
        if cls is not None:
            qg, kg, vg = _with_cls_groups(qg, kg, vg, cls, case)
            return _split_cls(core(qg, kg, vg, case, order), case, q, materialize)
        return (from_groups(core(qg, kg, vg, case, order), case, order, q, materialize),)

    return run


def _factorized(peer, case: Case, q, k, v):
    """Factorized attention through a temporal and a spatial call on head slices, then a cat."""
    from dataclasses import replace

    th = case.temporal_heads
    t_case = replace(case, op="temporal", H=th)
    s_case = replace(case, op="spatial", H=case.H - th)
    heads_t = [x[:, :, :, :th] for x in (q, k, v)]
    heads_s = [x[:, :, :, th:] for x in (q, k, v)]
    (out_t,) = peer(t_case, *heads_t, None)
    (out_s,) = peer(s_case, *heads_s, None)
    return (torch.cat([out_t, out_s], dim=3),)


# ---------------------------------------------------------------------------------------------
# the seed's naive loops: one attention call per patch (temporal) or per frame (spatial)


def naive_loops(case: Case, q, k, v, cls):
    scale = scale_of(case)
    if case.family == "joint":
        raise NotApplicable("the seed has no loop formulation of joint attention")
    if case.family == "factorized":
        return _factorized(naive_loops, case, q, k, v)
    if case.family == "temporal":
        if case.N > NAIVE_MAX_ITERS:
            raise NotApplicable(f"N={case.N} loop iterations > {NAIVE_MAX_ITERS}")
        outs = []
        for n in range(case.N):
            qn, kn, vn = (x[:, :, n].transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
            outs.append(F.scaled_dot_product_attention(qn, kn, vn, is_causal=case.causal, scale=scale).transpose(1, 2))
        return (torch.stack(outs, dim=2),)
    if case.T > NAIVE_MAX_ITERS:
        raise NotApplicable(f"T={case.T} loop iterations > {NAIVE_MAX_ITERS}")
    outs, cls_outs = [], []
    for t in range(case.T):
        qt, kt, vt = (x[:, t].transpose(1, 2) for x in (q, k, v))  # [B, H, N, D]
        if cls is not None:
            qt, kt, vt = (torch.cat([c[:, :, None], x], dim=2) for c, x in zip(cls, (qt, kt, vt)))
        o = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
        if cls is not None:
            cls_outs.append(o[:, :, 0])
            o = o[:, :, 1:]
        outs.append(o.transpose(1, 2))
    out = torch.stack(outs, dim=1)
    return (out, torch.stack(cls_outs, dim=1)) if cls is not None else (out,)


# ---------------------------------------------------------------------------------------------


def _sdpa_backends() -> list[tuple[str, object]]:
    return [
        ("default", None),
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
    ]


def peer_methods(case: Case, *, naive: bool = True, flex: bool = True) -> list[Method]:
    methods = []
    if naive:
        methods.append(Method("naive-loops", "naive", naive_loops))
    methods.append(Method("einsum", "peer", _grouped(_einsum_core, "reshape", materialize=True)))
    for name, backend in _sdpa_backends():
        core = lambda qg, kg, vg, c, order, b=backend: _sdpa_core(qg, kg, vg, c, order, b)  # noqa: E731
        methods.append(Method(f"sdpa-{name}-copy", "peer", _grouped(core, "copy", materialize=True)))
        methods.append(Method(f"sdpa-{name}-view", "peer", _grouped(core, "view", materialize=False, allow_cls=False)))
    if flex and case.family == "joint":
        methods.append(Method("flex-attention", "peer", _grouped(_flex_core, "view", materialize=False)))
    return methods
