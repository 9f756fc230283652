"""``tk.convert`` on HuggingFace Timesformer models and TimeSformer-style Blocks (SPEC §4).

The oracle is the unconverted model itself (a deep copy with the same parameters): outputs and
gradients of every parameter and of the input must match within 1e-4 relative in float32, the
converted model must really call the fused ops (counted) and never the original attention, and
``state_dict`` keys and tensors must be unchanged. ``transformers`` is optional: its tests skip
when it is not installed.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import temporal_kernels as tk
from tests.helpers import DEVICE, rel_err
from tests.test_nn import (
    BACKENDS,
    OracleBlock,
    assert_close,
    assert_grads_close,
    backend_or_skip,
    count_calls,
    grads_of,
)

TOL = 1e-4  # SPEC §4: float32, whole models
ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")
FUSED_OPS = {  # what one converted layer calls per forward
    "divided_space_time": ("temporal_attention_qkvpacked", "spatial_attention_qkvpacked"),
    "joint_space_time": ("joint_attention",),
    "space_only": ("spatial_attention_qkvpacked",),
}
ALL_OPS = ("temporal_attention_qkvpacked", "spatial_attention_qkvpacked", "joint_attention")


def _hf():
    return pytest.importorskip("transformers.models.timesformer.modeling_timesformer")


def hf_model(attention_type, *, cls_head=True, drop_path=0.0, **overrides):
    """A tiny random model; ``drop_path`` is set on every layer (the config wants an int rate)."""
    import transformers

    settings = dict(
        image_size=32, patch_size=16, num_frames=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5, attention_type=attention_type,
    )
    config = transformers.TimesformerConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    Model = transformers.TimesformerForVideoClassification if cls_head else transformers.TimesformerModel
    model = Model(config)
    with torch.no_grad():  # random values everywhere, temporal_dense included (zero-init in TimeSformer)
        for name, p in model.named_parameters():
            if "temporal_dense" in name or name.endswith("bias"):
                p.normal_(std=0.1)
    if drop_path:
        for layer in model.modules():
            if isinstance(layer, transformers.models.timesformer.modeling_timesformer.TimesformerLayer):
                layer.drop_path = transformers.models.timesformer.modeling_timesformer.TimesformerDropPath(drop_path)
    return model.to(DEVICE)


def pixels(B=2, T=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, 32, 32, generator=g).to(DEVICE).requires_grad_()


def hf_fwd_bwd(model, x, seed=None, **kwargs):
    """Forward (``seed`` set first) and backward of a random projection of the main output."""
    if seed is not None:
        torch.manual_seed(seed)
    out = model(x, **kwargs)
    y = out.logits if hasattr(out, "logits") else out.last_hidden_state
    g = torch.Generator().manual_seed(11)
    (y * torch.randn(y.shape, generator=g).to(y)).sum().backward()
    return out, grads_of(model, x)


def converted_copy(model, backend):
    twin = copy.deepcopy(model)
    assert tk.convert(twin, backend=backend) is twin
    return twin


def check_same(model, twin, mode="eval", seed=None, **kwargs):
    for m in (model, twin):
        m.train(mode == "train")
        m.zero_grad(set_to_none=True)
    x = pixels()
    x2 = x.detach().clone().requires_grad_()
    ref, want = hf_fwd_bwd(model, x, seed=seed, **kwargs)
    out, got = hf_fwd_bwd(twin, x2, seed=seed, **kwargs)
    y = "logits" if hasattr(ref, "logits") else "last_hidden_state"
    assert_close(getattr(out, y), getattr(ref, y), TOL, y)
    assert_grads_close(got, want, TOL)
    return out, ref


# ---------------------------------------------------------------------------------------------
# HuggingFace Timesformer


# The Triton interpreter is slow on CPU: the kernel backends get the model classes once each; the
# reference covers the rest (the code under test is the same Python for every backend).
_KERNEL_MODEL_CASES = [(b, a, True) for b in BACKENDS[1:] for a in ATTENTION_TYPES]
_REFERENCE_MODEL_CASES = [("reference", a, c) for a in ATTENTION_TYPES for c in (True, False)]


@pytest.mark.parametrize(
    "backend,attention_type,cls_head",
    _REFERENCE_MODEL_CASES + (_KERNEL_MODEL_CASES if DEVICE == "cuda" else _KERNEL_MODEL_CASES[:3]),
    ids=lambda v: {True: "ForVideoClassification", False: "Model"}.get(v, v) if isinstance(v, bool) else v,
)
def test_hf_eval_matches_and_runs_fused(monkeypatch, backend, attention_type, cls_head):
    _hf()
    backend_or_skip(backend, *FUSED_OPS[attention_type])
    model = hf_model(attention_type, cls_head=cls_head)
    keys = {k: v for k, v in model.state_dict().items()}
    twin = converted_copy(model, backend)
    assert list(twin.state_dict()) == list(keys)
    counts = count_calls(monkeypatch, *ALL_OPS)
    check_same(model, twin)
    layers = model.config.num_hidden_layers
    assert counts == {op: layers if op in FUSED_OPS[attention_type] else 0 for op in ALL_OPS}


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("backend", ["reference", "cuda"])
def test_hf_train_with_drop_path_matches(backend, attention_type):
    """Drop-path (per frame, per patch and per sample, as HF draws it) with the same seed."""
    _hf()
    backend_or_skip(backend, *FUSED_OPS[attention_type])
    model = hf_model(attention_type, drop_path=0.5)
    twin = converted_copy(model, backend)
    out, _ = check_same(model, twin, mode="train", seed=3)
    model.eval()  # the drop-path draws changed the result (so the test exercises them)
    assert rel_err(model(pixels()).logits, out.logits) > 1e-3


def test_hf_state_dict_unchanged_by_convert_and_revert():
    _hf()
    model = hf_model("divided_space_time")
    before = model.state_dict()
    tk.convert(model, backend="reference")
    during = model.state_dict()
    tk.convert(model, revert=True)
    after = model.state_dict()
    for sd in (during, after):
        assert list(sd) == list(before)
        assert all(sd[k].data_ptr() == before[k].data_ptr() for k in before)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_hf_output_attentions_falls_back(monkeypatch, attention_type):
    _hf()
    model = hf_model(attention_type)
    twin = converted_copy(model, "reference")
    counts = count_calls(monkeypatch, *ALL_OPS)
    out, ref = check_same(model, twin, output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    for a, r in zip(out.attentions, ref.attentions):
        assert_close(a, r, TOL, "attentions")
    # the spatial / full attention, whose probabilities are returned, ran the original code
    assert counts["joint_attention"] == 0
    if attention_type != "divided_space_time":
        assert counts["spatial_attention_qkvpacked"] == 0


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_hf_attention_dropout_in_training_falls_back(monkeypatch, attention_type):
    _hf()
    model = hf_model(attention_type, attention_probs_dropout_prob=0.3)
    twin = converted_copy(model, "reference")
    counts = count_calls(monkeypatch, *ALL_OPS)
    check_same(model, twin, mode="train", seed=4)  # same seed, same (original) dropout draws
    assert sum(counts.values()) == 0
    check_same(model, twin, mode="eval")  # eval: no dropout, fused again
    assert sum(counts.values()) > 0


def test_hf_gradient_checkpointing(monkeypatch):
    _hf()
    model = hf_model("divided_space_time", drop_path=0.3)
    model.gradient_checkpointing_enable()
    twin = converted_copy(model, "reference")
    assert all(layer.gradient_checkpointing for layer in twin.timesformer.encoder.layer)
    counts = count_calls(monkeypatch, *ALL_OPS)
    check_same(model, twin, mode="train", seed=6)
    # the backward pass recomputed each layer's forward: the fused ops ran twice per layer
    assert counts["temporal_attention_qkvpacked"] == 2 * model.config.num_hidden_layers


def test_hf_torch_compile():
    _hf()
    model = hf_model("divided_space_time", num_hidden_layers=1)
    twin = converted_copy(model, "reference")
    compiled = torch.compile(twin, backend="aot_eager")
    model.eval()
    twin.eval()
    x = pixels()
    x2 = x.detach().clone().requires_grad_()
    _, want = hf_fwd_bwd(model, x)
    out = compiled(x2).logits
    assert_close(out, model(x).logits, TOL, "logits")
    g = torch.Generator().manual_seed(11)
    (out * torch.randn(out.shape, generator=g).to(out)).sum().backward()
    assert_grads_close(grads_of(twin, x2), want, TOL)


def test_hf_revert_restores_original(monkeypatch):
    _hf()
    model = hf_model("divided_space_time")
    twin = converted_copy(model, "reference")
    tk.convert(twin, revert=True)
    assert not any("forward" in m.__dict__ for m in twin.modules())
    counts = count_calls(monkeypatch, *ALL_OPS)
    check_same(model, twin)
    assert sum(counts.values()) == 0
    tk.convert(twin, backend="reference")  # and converts again
    check_same(model, twin)
    assert sum(counts.values()) > 0


def test_hf_converted_model_pickles(tmp_path):
    """``torch.save(model)`` of a converted model loads back converted (and deep copies work)."""
    _hf()
    model = hf_model("joint_space_time")
    twin = converted_copy(model, "reference")
    torch.save(twin, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for copied in (loaded, copy.deepcopy(twin)):
        attn = copied.timesformer.encoder.layer[0].attention.attention
        assert attn.forward.args[0] is attn  # bound to the copy, not to the original
        check_same(model, copied)


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 needs a GPU")
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_hf_bf16_as_accurate_as_eager(backend, attention_type):
    """In bf16 the converted model is no further from the float64 model than HF eager is."""
    _hf()
    backend_or_skip(backend, *FUSED_OPS[attention_type])
    model = hf_model(attention_type).eval()
    x = pixels().detach()
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double()).logits
        eager = copy.deepcopy(model).bfloat16()(x.bfloat16()).logits
        fused = tk.convert(copy.deepcopy(model).bfloat16(), backend=backend)(x.bfloat16()).logits
    assert rel_err(fused, want) <= 1.5 * rel_err(eager, want) + 1e-3


def test_hf_default_backend_on_cpu_keeps_original(monkeypatch):
    """backend=None: CPU tensors get no kernel, so the original implementation runs."""
    _hf()
    monkeypatch.delenv("TEMPORAL_KERNELS_BACKEND", raising=False)
    model = hf_model("divided_space_time").cpu()
    twin = converted_copy(model, None)
    counts = count_calls(monkeypatch, *ALL_OPS)
    model.eval()
    twin.eval()
    x = pixels().cpu()
    assert_close(twin(x).logits, model(x).logits, TOL, "logits")
    assert sum(counts.values()) == 0


def test_convert_rejects_bad_arguments():
    with pytest.raises(ValueError, match="backend: expected one of"):
        tk.convert(nn.Linear(2, 2), backend="tpu")
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        tk.convert("model")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tk.convert(nn.Linear(2, 2))
    assert any("found no" in str(w.message) for w in caught)


def test_named_backend_that_cannot_serve_warns_and_falls_back(monkeypatch):
    _hf()
    model = hf_model("space_only")
    twin = converted_copy(model, "reference")
    monkeypatch.setattr(tk._backends, "_ops_of", lambda name: {})  # no backend implements anything
    with pytest.warns(RuntimeWarning, match="cannot serve"):
        check_same(model, twin)


# ---------------------------------------------------------------------------------------------
# TimeSformer-style Blocks


class TinyTimeSformer(nn.Module):
    """A stack of TimeSformer Blocks over ``[B, 1 + N*T, C]`` tokens (VisionTransformer's loop)."""

    def __init__(self, C=32, H=2, depth=2, drop_path=0.0, attn_drop=0.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            OracleBlock(C, H, qkv_bias=True, drop_path=drop_path, attn_drop=attn_drop) for _ in range(depth)
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn_like(p) * 0.3)

    def forward(self, x, B, T, W):
        for blk in self.blocks:
            x = blk(x, B, T, W)
        return x


def _blocks_fwd_bwd(model, x, seed):
    torch.manual_seed(seed)
    out = model(x, 2, 3, 2)
    g = torch.Generator().manual_seed(11)
    (out * torch.randn(out.shape, generator=g).to(out)).sum().backward()
    return out.detach(), grads_of(model, x)


@pytest.mark.parametrize("mode", ["eval", "train_drop_path", "train_attn_drop"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_timesformer_blocks(monkeypatch, backend, mode):
    if backend == "triton" and DEVICE != "cuda" and mode != "eval":
        pytest.skip("interpreter time: the kernel backends are covered in eval on CPU")
    backend_or_skip(backend, *FUSED_OPS["divided_space_time"])
    torch.manual_seed(0)
    model = TinyTimeSformer(drop_path=0.4 if mode == "train_drop_path" else 0.0,
                            attn_drop=0.3 if mode == "train_attn_drop" else 0.0).to(DEVICE)
    twin = converted_copy(model, backend)
    assert list(twin.state_dict()) == list(model.state_dict())
    model.train(mode != "eval")
    twin.train(mode != "eval")
    counts = count_calls(monkeypatch, *ALL_OPS)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1 + 4 * 3, 32, generator=g).to(DEVICE).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    ref, want = _blocks_fwd_bwd(model, x, seed=5)
    out, got = _blocks_fwd_bwd(twin, x2, seed=5)
    assert_close(out, ref, TOL, "out")
    assert_grads_close(got, want, TOL)
    fused = 0 if mode == "train_attn_drop" else len(model.blocks)  # attention dropout: original path
    assert counts["temporal_attention_qkvpacked"] == counts["spatial_attention_qkvpacked"] == fused
    tk.convert(twin, revert=True)
    assert not any("forward" in m.__dict__ for m in twin.modules())


def test_convert_skips_fused_blocks():
    block = tk.nn.DividedSpaceTimeBlock(32, 2)
    with pytest.warns(UserWarning, match="found no"):
        tk.convert(block)
    assert "forward" not in block.__dict__
