"""``tk.convert``: run existing video transformers on the fused kernels, in place (SPEC §4).

Supported (found by walking ``model.modules()``):

- HuggingFace ``transformers`` Timesformer models (``TimesformerModel``,
  ``TimesformerForVideoClassification``, or any module containing their layers), every
  ``attention_type``:

  - ``divided_space_time``: each ``TimesformerLayer`` runs the zero-copy divided block
    (``tk.nn.divided_space_time``: temporal kernel on the patch-major tokens, spatial kernel with
    the CLS token's q/k/v computed once);
  - ``space_only`` / ``joint_space_time``: each ``TimesformerSelfAttention`` runs full attention
    over its sequence on the spatial / joint kernel.

- TimeSformer-style ``Block``s (facebookresearch/TimeSformer ``vit.py``), duck-typed by their
  attributes ``norm1, attn.qkv, attn.proj, temporal_norm1, temporal_attn.qkv, temporal_attn.proj,
  temporal_fc, norm2, mlp, drop_path`` (``attention_type == 'divided_space_time'``); their
  ``forward(x, B, T, W)`` runs the same zero-copy divided block.

How: the ``forward`` of each converted module is replaced by an instance attribute; no parameter,
buffer or submodule is moved, so ``state_dict`` keys and values, ``.to()``, optimizers, gradient
checkpointing (HF ``gradient_checkpointing_enable``), dropout/drop-path in training and
``torch.compile`` of the model are unaffected. Each converted module keeps its original forward
as a fallback, taken per call when the fused kernels cannot serve:

- ``output_attentions=True`` (HF): the kernels do not materialize attention probabilities;
- attention-probability dropout active (training with ``attention_probs_dropout_prob > 0`` /
  ``attn_drop > 0``);
- no backend serves the op for the input (see ``backend`` below).

``backend``: None runs the fused kernels wherever a kernel backend implements the ops for the
input's device and head dim (<= 256), leaving the functional API to pick Triton or CUDA C++ per
op and shape (the one measured faster, see ``_choice``), else the original path; CPU tensors keep
the original path (``TEMPORAL_KERNELS_BACKEND`` overrides, as everywhere). A named backend
(``"cuda"``, ``"triton"``, ``"reference"``) is used whenever it can run; where it cannot, the
original path runs and a warning says why.

Memory: in training, a converted divided layer / Block saves less for the backward than the
original: its LayerNorm -> Linear pairs and its MLP (when its modules are HF's / TimeSformer's
standard ones) recompute the norms and the GELU instead of saving their outputs (``_lean``;
``TEMPORAL_KERNELS_RECOMPUTE=0`` turns it off).

Revert with ``tk.convert(model, revert=True)``: the original forwards are restored.

Example::

    >>> model = TimesformerForVideoClassification.from_pretrained(...).cuda().bfloat16()
    >>> tk.convert(model)                 # in place; returns model
    >>> logits = model(pixel_values).logits
    >>> tk.convert(model, revert=True)    # back to the HF implementation
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Optional

from torch import Tensor, nn

from . import _backends, _lean
from . import functional as _tkf
from .nn import _DIVIDED, DividedSpaceTimeBlock, _kernel_backend, divided_space_time

__all__ = ["convert"]

_MARK = "_tk_convert"  # instance attribute of a converted module: its settings
_HF_MODULE = "transformers.models.timesformer.modeling_timesformer"
_FULL = {"joint": ("joint_attention",), "spatial": ("spatial_attention_qkvpacked",)}


def _serving_backend(backend: Optional[str], ops: tuple[str, ...], x: Tensor, head_dim: int) -> tuple[bool, Optional[str]]:
    """Whether a converted module runs ``ops`` on the fused kernels for input ``x`` (else the
    original path), and the ``backend`` it passes them (None: the functional API's per-shape pick)."""
    if backend is None:
        backend = os.environ.get(_backends.ENV_VAR) or None
        if backend is None:
            return _kernel_backend(ops, x.device.type, head_dim) is not None, None
    reason = _backends._unavailable_reason(backend, x.device)
    if reason is None:
        missing = [op for op in ops if op not in _backends._ops_of(backend)]
        if missing:
            reason = f"it does not implement {', '.join(missing)} yet"
        elif backend != "reference":
            from .ops import MAX_HEAD_DIM

            if head_dim > MAX_HEAD_DIM:
                reason = f"head dim {head_dim} > {MAX_HEAD_DIM}"
    if reason is None:
        return True, backend
    warnings.warn(
        f"temporal_kernels.convert: backend {backend!r} cannot serve this module ({reason}); "
        f"running the original implementation",
        RuntimeWarning,
        stacklevel=3,
    )
    return False, None


def _dropout_active(module: nn.Module, dropout: Optional[nn.Module]) -> bool:
    return module.training and dropout is not None and getattr(dropout, "p", 0.0) > 0.0


# ---------------------------------------------------------------------------------------------
# fused forwards (bound to the converted instances)


def _hf_divided_layer_forward(self, hidden_states: Tensor, output_attentions: bool = False):
    """``TimesformerLayer.forward`` (divided_space_time) on the fused kernels."""
    attn, tattn = self.attention.attention, self.temporal_attention.attention
    C = hidden_states.shape[-1]
    head_dim = max(C // attn.num_heads, C // tattn.num_heads)
    fused, backend = False, None
    if not output_attentions and not (_dropout_active(self, attn.attn_drop) or _dropout_active(self, tattn.attn_drop)):
        fused, backend = _serving_backend(getattr(self, _MARK)["backend"], _DIVIDED, hidden_states, head_dim)
    if not fused:
        return type(self).forward(self, hidden_states, output_attentions)
    out = divided_space_time(
        hidden_states,
        self.config.num_frames,
        temporal_heads=tattn.num_heads,
        temporal_norm=self.temporal_layernorm,
        temporal_qkv=tattn.qkv,
        temporal_out=self.temporal_attention.output,
        temporal_fc=self.temporal_dense,
        heads=attn.num_heads,
        norm=self.layernorm_before,
        qkv=attn.qkv,
        out=self.attention.output,
        mlp=functools.partial(_hf_mlp, self),
        drop_path=self.drop_path,
        temporal_scale=tattn.scale,
        scale=attn.scale,
        backend=backend,
    )
    return (out,)


def _hf_self_attention_forward(self, hidden_states: Tensor, output_attentions: bool = False):
    """``TimesformerSelfAttention.forward``: full attention over the sequence on one kernel call.

    ``hidden_states [b, L, C]`` is projected once and viewed as ``[b, 1, L, 3, H, D]`` (one
    "frame" of L tokens): the spatial kernel for space_only layers (and the fallback path of
    divided layers), the joint kernel for joint_space_time layers. Returns ``(context,)``.
    """
    settings = getattr(self, _MARK)
    b, L, C = hidden_states.shape
    H = self.num_heads
    D = C // H
    fused, backend = False, None
    if not output_attentions and not _dropout_active(self, self.attn_drop):
        fused, backend = _serving_backend(settings["backend"], _FULL[settings["kernel"]], hidden_states, D)
    if not fused:
        return type(self).forward(self, hidden_states, output_attentions)
    qkv = self.qkv(hidden_states).view(b, 1, L, 3, H, D)
    if settings["kernel"] == "joint":
        out = _tkf.joint_attention(*qkv.unbind(3), scale=self.scale, backend=backend)
    else:
        out = _tkf.spatial_attention_qkvpacked(qkv, scale=self.scale, backend=backend)
    return (out.reshape(b, L, C),)


def _block_forward(self, x: Tensor, B: int, T: int, W: int) -> Tensor:
    """TimeSformer ``Block.forward`` (divided_space_time) on the fused kernels."""
    attn, tattn = self.attn, self.temporal_attn
    C = x.shape[-1]
    head_dim = max(C // attn.num_heads, C // tattn.num_heads)
    fused, backend = False, None
    if not any(_dropout_active(self, getattr(a, "attn_drop", None)) for a in (attn, tattn)):
        fused, backend = _serving_backend(getattr(self, _MARK)["backend"], _DIVIDED, x, head_dim)
    if not fused:
        return type(self).forward(self, x, B, T, W)
    return divided_space_time(
        x,
        T,
        temporal_heads=tattn.num_heads,
        temporal_norm=self.temporal_norm1,
        temporal_qkv=tattn.qkv,
        temporal_out=_projection(tattn),
        temporal_fc=self.temporal_fc,
        heads=attn.num_heads,
        norm=self.norm1,
        qkv=attn.qkv,
        out=_projection(attn),
        mlp=functools.partial(_block_mlp, self),
        drop_path=self.drop_path,
        temporal_scale=getattr(tattn, "scale", None),
        scale=getattr(attn, "scale", None),
        backend=backend,
    )


def _children(m: nn.Module) -> set[str]:
    return {name for name, _ in m.named_children()}


def _hf_mlp(layer: nn.Module, h: Tensor) -> Tensor:
    """HF ``TimesformerLayer``'s MLP branch ``output(intermediate(layernorm_after(h)))``,
    memory-lean (``_lean.mlp``) where its modules are HF's (dense -> act -> dropout, dense ->
    dropout)."""
    inter, out = layer.intermediate, layer.output
    plain = lambda u: out(inter(layer.layernorm_after(u)))  # noqa: E731
    if _children(inter) != {"dense", "intermediate_act_fn", "dropout"} or _children(out) != {"dense", "dropout"}:
        return plain(h)
    return _lean.mlp(
        h,
        norm=layer.layernorm_after,
        fc1=inter.dense,
        act=inter.intermediate_act_fn,
        fc2=out.dense,
        dropouts=(inter.dropout, out.dropout),
        plain=plain,
        wrappers=(inter, out),
    )


def _block_mlp(block: nn.Module, h: Tensor) -> Tensor:
    """TimeSformer ``Block``'s MLP branch ``mlp(norm2(h))``, memory-lean (``_lean.mlp``) where
    ``mlp`` is TimeSformer's ``Mlp`` (fc1 -> act -> drop -> fc2 -> drop)."""
    m = block.mlp
    plain = lambda u: m(block.norm2(u))  # noqa: E731
    if _children(m) != {"fc1", "act", "drop", "fc2"}:
        return plain(h)
    return _lean.mlp(
        h, norm=block.norm2, fc1=m.fc1, act=m.act, fc2=m.fc2, dropouts=(m.drop,), plain=plain, wrappers=(m,)
    )


def _projection(attn: nn.Module):
    drop = getattr(attn, "proj_drop", None)
    if drop is None:
        return attn.proj
    return lambda o: drop(attn.proj(o))


# ---------------------------------------------------------------------------------------------
# discovery


def _is_timesformer_block(m: nn.Module) -> bool:
    if isinstance(m, DividedSpaceTimeBlock):
        return False  # already fused
    if getattr(m, "attention_type", "divided_space_time") != "divided_space_time":
        return False
    names = ("norm1", "attn", "temporal_norm1", "temporal_attn", "temporal_fc", "norm2", "mlp", "drop_path")
    if not all(isinstance(getattr(m, n, None), nn.Module) for n in names):
        return False
    return all(
        isinstance(getattr(a, "qkv", None), nn.Linear)
        and isinstance(getattr(a, "proj", None), nn.Linear)
        and isinstance(getattr(a, "num_heads", None), int)
        for a in (m.attn, m.temporal_attn)
    )


def _targets(model: nn.Module):
    """``(module, fused forward, settings)`` for every convertible module of ``model``."""
    hf = sys.modules.get(_HF_MODULE)  # loaded iff the model can contain HF Timesformer modules
    for m in model.modules():
        if hf is not None and isinstance(m, hf.TimesformerLayer):
            if m.attention_type == "divided_space_time":
                yield m, _hf_divided_layer_forward, {}
            kernel = "joint" if m.attention_type == "joint_space_time" else "spatial"
            for sa in (m.attention.attention, getattr(getattr(m, "temporal_attention", None), "attention", None)):
                if sa is not None:
                    yield sa, _hf_self_attention_forward, {"kernel": kernel}
        elif _is_timesformer_block(m):
            yield m, _block_forward, {}


def convert(model: nn.Module, backend: Optional[str] = None, *, revert: bool = False) -> nn.Module:
    """Run ``model``'s video attention on the fused kernels, in place; returns ``model``.

    See the module docstring for what is converted and when the original path still runs.

    Args:
        model: a module containing HF Timesformer layers or TimeSformer-style ``Block``s.
        backend: ``"cuda"``, ``"triton"``, ``"reference"`` or None (the kernels, with the
            backend picked per op and shape, when one serves the input, else the original
            implementation).
        revert: restore the original forwards of every module converted before.

    Raises:
        ValueError: unknown ``backend`` name.
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if revert:
        for m in model.modules():
            if _MARK in m.__dict__:
                del m.__dict__[_MARK]
                m.__dict__.pop("forward", None)
        return model
    if backend is not None and backend not in _backends.BACKEND_NAMES:
        raise ValueError(f"backend: expected one of {list(_backends.BACKEND_NAMES)} or None, got {backend!r}")
    found = 0
    for m, fused, settings in list(_targets(model)):
        # object.__setattr__: a plain instance attribute, outside nn.Module's registries.
        object.__setattr__(m, _MARK, {"backend": backend, **settings})
        # A partial, not a bound method: it pickles (torch.save of the whole model) and deep-copies.
        object.__setattr__(m, "forward", functools.partial(fused, m))
        found += 1
    if found == 0:
        warnings.warn(
            "temporal_kernels.convert: found no HF Timesformer layer or TimeSformer-style Block to convert",
            UserWarning,
            stacklevel=2,
        )
    return model
