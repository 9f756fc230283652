"""Memory-lean ``linear(layer_norm(x))`` and norm -> GELU MLP for the blocks around the kernels.

Training memory of a video transformer is its saved activations. PyTorch's autograd keeps, for a
pre-norm projection ``linear(layer_norm(x))``, both ``x`` (for the norm's backward) and the norm's
output (for the linear's weight gradient); for the MLP ``fc2(gelu(fc1(layer_norm(h))))``, also
``fc1``'s output and ``gelu`` of it (4 tokens' worth of channels each). The autograd functions here
keep only the inputs of the norms (plus their per-row mean and rstd) and ``fc1``'s output, and
recompute the norm and the activation in the backward, as Liger-Kernel's fused MLPs do. The
recomputation runs the forward's own ATen kernel on the same input, so it reproduces the forward's
values bit for bit, and the gradients are PyTorch's own formulas (``native_layer_norm_backward``,
``gelu_backward``, the matmuls of ``linear``'s backward). In TimeSformer's divided block (three
norm -> projection pairs and one GELU MLP) this drops 7 of the 23 token-sized tensors a layer saves
(see ``tests/test_lean.py``).

The lean path serves ``nn.LayerNorm`` over the last axis, ``nn.Linear``, exact or tanh GELU, under
grad mode without autocast and with no active dropout between the pieces; any other case runs the
plain composition (same values, PyTorch's saves), as do modules with forward hooks. Under
torch.compile the same pieces run inside a selective activation checkpoint (``_traced``) that saves
the matmuls' outputs and recomputes the rest, which the compiler's partitioner honours (the saves
of autograd functions it decides anew). The recomputation costs GPU time: +1.55 ms (4%) in an eager
training step of HF Timesformer-base at B=8 on the H100, +0.2 ms compiled, for 1.46 GiB less peak
memory (5.96 -> 4.50 GiB). ``TEMPORAL_KERNELS_RECOMPUTE=0`` in the environment (read at import) or
``ENABLED = False`` here turns it off: the end-to-end benchmark's A/B row.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

ENV_VAR = "TEMPORAL_KERNELS_RECOMPUTE"
ENABLED = os.environ.get(ENV_VAR, "1") != "0"


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _linear_backward(ctx, dy: Tensor, x: Tensor, weight: Tensor, first: int):
    """``linear``'s gradients for input ``x``: (dx, dweight, dbias), each None where not needed;
    ``first`` is the position of ``weight`` among the autograd function's inputs."""
    dy2 = _rows(dy)
    need_x = any(ctx.needs_input_grad[:first])
    dx = (dy2 @ weight).view(*dy.shape[:-1], weight.shape[1]) if need_x else None
    dw = dy2.t() @ _rows(x) if ctx.needs_input_grad[first] else None
    db = dy2.sum(0) if ctx.needs_input_grad[first + 1] else None
    return dx, dw, db


class _LayerNormLinear(torch.autograd.Function):
    """``F.linear(F.layer_norm(x, (C,), norm_weight, norm_bias, eps), weight, bias)``, saving ``x``."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, weight, bias):
        xn, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
        ctx.eps = eps
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        return F.linear(xn, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        shape = (x.shape[-1],)
        xn = torch.native_layer_norm(x, shape, norm_weight, norm_bias, ctx.eps)[0]
        dxn, dw, db = _linear_backward(ctx, dy, xn, weight, 4)
        del xn
        dx = dnw = dnb = None
        if dxn is not None:
            mask = [ctx.needs_input_grad[0], norm_weight is not None and ctx.needs_input_grad[1],
                    norm_bias is not None and ctx.needs_input_grad[2]]
            dx, dnw, dnb = torch.ops.aten.native_layer_norm_backward(
                dxn, x, shape, mean, rstd, norm_weight, norm_bias, mask
            )
        return dx, dnw, dnb, None, dw, db


class _LayerNormGeluMlp(torch.autograd.Function):
    """``F.linear(F.gelu(F.linear(F.layer_norm(h, ...), w1, b1), approximate=...), w2, b2)``, saving
    ``h`` (with the norm's statistics) and the first linear's output ``u``; one autograd node,
    so the backward pays Python's cost once for the whole branch."""

    @staticmethod
    def forward(ctx, h, norm_weight, norm_bias, eps, w1, b1, approximate, w2, b2):
        hn, mean, rstd = torch.native_layer_norm(h, (h.shape[-1],), norm_weight, norm_bias, eps)
        u = F.linear(hn, w1, b1)
        del hn
        ctx.eps, ctx.approximate = eps, approximate
        ctx.save_for_backward(h, mean, rstd, norm_weight, norm_bias, w1, u, w2)
        return F.linear(F.gelu(u, approximate=approximate), w2, b2)

    @staticmethod
    def backward(ctx, dy):
        h, mean, rstd, norm_weight, norm_bias, w1, u, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        dy2 = _rows(dy)
        a = F.gelu(u, approximate=ctx.approximate)
        dw2 = dy2.t() @ _rows(a) if need[7] else None
        db2 = dy2.sum(0) if need[8] else None
        del a  # before (dy @ w2) of the same size is allocated: the backward's transient peak
        dh = dnw = dnb = dw1 = db1 = None
        if any(need[:6]):
            du = torch.ops.aten.gelu_backward((dy2 @ w2).view(u.shape), u, approximate=ctx.approximate)
            du2 = _rows(du)
            shape = (h.shape[-1],)
            if need[4]:
                hn = torch.native_layer_norm(h, shape, norm_weight, norm_bias, ctx.eps)[0]
                dw1 = du2.t() @ _rows(hn)
                del hn
            db1 = du2.sum(0) if need[5] else None
            if any(need[:3]):
                dhn = (du2 @ w1).view(h.shape)
                del du, du2
                mask = [need[0], norm_weight is not None and need[1], norm_bias is not None and need[2]]
                dh, dnw, dnb = torch.ops.aten.native_layer_norm_backward(
                    dhn, h, shape, mean, rstd, norm_weight, norm_bias, mask
                )
        return dh, dnw, dnb, None, dw1, db1, None, dw2, db2


_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)


def _save_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _MATMULS else CheckpointPolicy.PREFER_RECOMPUTE


def _traced(branch: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``branch(x)`` under torch.compile: AOTAutograd's partitioner re-decides what to save
    (around the autograd functions above it keeps the norm and GELU outputs), but it honours
    selective-checkpoint tags: the matmuls' outputs are saved, everything else in ``branch`` is
    recomputed from ``x`` in the backward."""
    context = functools.partial(create_selective_checkpoint_contexts, _save_matmuls)
    return checkpoint(branch, x, use_reentrant=False, context_fn=context)


def _lean_ok(x: Tensor) -> bool:
    return ENABLED and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)


def _hookless(*modules: nn.Module) -> bool:
    """None of ``modules`` has forward hooks, which the lean path would bypass."""
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _layer_norm_of(norm) -> bool:
    return isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) == 1


def _gelu_approximate(act) -> Optional[str]:
    """``approximate`` of a GELU module (``nn.GELU``, HF's ``GELUActivation``), else None."""
    if isinstance(act, nn.GELU):
        return act.approximate
    if type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu:
        return "none"
    return None


def _dropout_off(dropouts: Iterable[Optional[nn.Module]]) -> bool:
    """No dropout module among ``dropouts`` would change its input."""
    for d in dropouts:
        if d is None or isinstance(d, nn.Identity):
            continue
        if not isinstance(d, nn.Dropout):
            return False
        if d.training and d.p > 0.0:
            return False
    return True


def norm_linear(norm: Callable[[Tensor], Tensor], linear: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``linear(norm(x))``, saving only ``x`` for the backward when ``norm`` is an ``nn.LayerNorm``
    and ``linear`` an ``nn.Linear``."""
    if _lean_ok(x) and _layer_norm_of(norm) and isinstance(linear, nn.Linear) and _hookless(norm, linear):
        if torch.compiler.is_compiling():
            return _traced(lambda u: linear(norm(u)), x)
        return _LayerNormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)
    return linear(norm(x))


def mlp(
    h: Tensor,
    *,
    norm: Callable[[Tensor], Tensor],
    fc1,
    act,
    fc2,
    dropouts: Iterable[Optional[nn.Module]],
    plain: Callable[[Tensor], Tensor],
    wrappers: Iterable[nn.Module] = (),
) -> Tensor:
    """The MLP branch ``fc2(act(fc1(norm(h))))`` saving ``h`` and ``fc1``'s output only.

    ``dropouts`` are the branch's dropout modules (the lean path needs them inactive); ``plain``
    computes the same branch with the model's own modules, for every case the lean path does not
    serve (another norm or activation, active dropout, autocast, no grad, forward hooks on a
    piece or on one of the ``wrappers``, the modules ``plain`` calls that hold the pieces).
    """
    approximate = _gelu_approximate(act) if _lean_ok(h) else None
    if (
        approximate is None
        or not (_layer_norm_of(norm) and isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear))
        or not _dropout_off(dropouts)
        or not _hookless(norm, fc1, act, fc2, *wrappers)
    ):
        return plain(h)
    if torch.compiler.is_compiling():
        return _traced(lambda u: fc2(act(fc1(norm(u)))), h)
    return _LayerNormGeluMlp.apply(
        h, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, approximate, fc2.weight, fc2.bias
    )
