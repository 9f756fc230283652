"""The memory-lean norm -> linear and norm -> GELU MLP of ``temporal_kernels._lean``.

Oracle: the plain composition of the same modules under PyTorch's autograd. The lean functions
must give the same forward (bit for bit: they run the same kernels), the same gradients (within
SPEC §3 for the dtype: the weight gradient's matmul is not autograd's own call), pass gradcheck
in float64, save only their inputs (checked with saved-tensor hooks; under torch.compile, with
the backward graph's inputs), and step aside (plain path) where they cannot serve. Two inventory
tests count what a converted HF Timesformer layer saves for the backward, eager and compiled.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import temporal_kernels as tk
from temporal_kernels import _lean
from tests.helpers import DEVICE, rel_err
from tests.test_nn import backend_or_skip

BOUND = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def _recompute_on(monkeypatch):
    """The lean path on, whatever TEMPORAL_KERNELS_RECOMPUTE says in this shell."""
    monkeypatch.setattr(_lean, "ENABLED", True)


def activation_bytes(fn, *modules):
    """Bytes of the storages saved for ``fn()``'s backward, parameters of ``modules`` not counted."""
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(n for ptr, n in seen.items() if ptr not in params)


def _grads(out, tensors, seed):
    g = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, tensors, cot)


def _norm_and_linear(C, F_out, dtype, affine, bias, seed):
    torch.manual_seed(seed)
    norm = nn.LayerNorm(C, eps=1e-6, elementwise_affine=affine).to(dtype)
    lin = nn.Linear(C, F_out, bias=bias).to(dtype)
    with torch.no_grad():  # away from LayerNorm's init (ones, zeros), so their gradients matter
        for p in norm.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return norm, lin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("affine,bias", [(True, True), (False, True), (True, False)], ids=["affine-bias", "noaffine", "nobias"])
@pytest.mark.parametrize("shape", [(2, 197, 40), (13, 72)], ids=["B2-L197-C40", "M13-C72"])
def test_norm_linear_matches_plain(shape, affine, bias, dtype):
    norm, lin = _norm_and_linear(shape[-1], 3 * shape[-1], dtype, affine, bias, seed=1)
    x = torch.randn(shape, dtype=dtype).requires_grad_()
    params = [x, *norm.parameters(), *lin.parameters()]
    want = lin(norm(x))
    got = _lean.norm_linear(norm, lin, x)
    assert got.grad_fn is not None and "_LayerNormLinear" in type(got.grad_fn).__name__
    assert torch.equal(got, want)
    for g, w in zip(_grads(got, params, 2), _grads(want, params, 2)):
        assert rel_err(g, w) <= BOUND[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_mlp_matches_plain(approximate, dtype):
    C = 40
    norm, fc1 = _norm_and_linear(C, 4 * C, dtype, True, True, seed=3)
    fc2 = nn.Linear(4 * C, C).to(dtype)
    act = nn.GELU(approximate=approximate)
    h = torch.randn(3, 7, C, dtype=dtype).requires_grad_()
    params = [h, *norm.parameters(), *fc1.parameters(), *fc2.parameters()]

    def plain(u):
        return fc2(act(fc1(norm(u))))

    want = plain(h)
    got = _lean.mlp(h, norm=norm, fc1=fc1, act=act, fc2=fc2, dropouts=(nn.Dropout(0.0),), plain=plain)
    assert "_LayerNormGeluMlp" in type(got.grad_fn).__name__
    assert torch.equal(got, want)
    for g, w in zip(_grads(got, params, 4), _grads(want, params, 4)):
        assert rel_err(g, w) <= BOUND[dtype]


def test_hf_gelu_activation_is_recognized():
    transformers = pytest.importorskip("transformers")
    assert _lean._gelu_approximate(transformers.activations.ACT2FN["gelu"]) == "none"
    assert _lean._gelu_approximate(nn.GELU("tanh")) == "tanh"
    assert _lean._gelu_approximate(nn.ReLU()) is None


def test_gradcheck_float64():
    torch.manual_seed(5)
    C, Fh = 6, 10
    x = torch.randn(2, 3, C, dtype=torch.float64, requires_grad=True)
    nw, nb = (torch.randn(C, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w1, b1 = torch.randn(Fh, C, dtype=torch.float64, requires_grad=True), torch.randn(Fh, dtype=torch.float64, requires_grad=True)
    w2, b2 = torch.randn(C, Fh, dtype=torch.float64, requires_grad=True), torch.randn(C, dtype=torch.float64, requires_grad=True)

    def branch(x, nw, nb, w1, b1, w2, b2):
        return _lean._LayerNormGeluMlp.apply(x, nw, nb, 1e-5, w1, b1, "none", w2, b2)

    assert torch.autograd.gradcheck(lambda x, nw, nb, w1, b1: _lean._LayerNormLinear.apply(x, nw, nb, 1e-5, w1, b1),
                                    (x, nw, nb, w1, b1))
    assert torch.autograd.gradcheck(branch, (x, nw, nb, w1, b1, w2, b2))


def test_lean_saves_the_inputs_only():
    C = 32
    norm, fc1 = _norm_and_linear(C, 4 * C, torch.float32, True, True, seed=6)
    fc2 = nn.Linear(4 * C, C)
    act = nn.GELU()
    h = torch.randn(4, 9, C, requires_grad=True)
    mods = (norm, fc1, fc2)
    rows = h.numel() // C
    stats = 2 * rows * 4  # LayerNorm's mean and rstd, float32
    token = h.numel() * 4

    def plain(u):
        return fc2(act(fc1(norm(u))))

    lean_bytes = activation_bytes(lambda: _lean.mlp(h, norm=norm, fc1=fc1, act=act, fc2=fc2, dropouts=(), plain=plain), *mods)
    plain_bytes = activation_bytes(lambda: plain(h), *mods)
    assert lean_bytes == token + stats + 4 * token  # h, its norm's stats, fc1's output
    assert plain_bytes == token + stats + token + 4 * token + 4 * token  # + norm output, GELU output
    assert activation_bytes(lambda: _lean.norm_linear(norm, fc1, h), *mods) == token + stats


def _is_lean(out):
    return type(out.grad_fn).__name__.startswith(("_LayerNormLinear", "_LayerNormGeluMlp"))


def test_plain_path_where_lean_cannot_serve(monkeypatch):
    C = 16
    norm, lin = _norm_and_linear(C, C, torch.float32, True, True, seed=7)
    x = torch.randn(5, C, requires_grad=True)
    assert _is_lean(_lean.norm_linear(norm, lin, x))
    with torch.no_grad():
        assert torch.equal(_lean.norm_linear(norm, lin, x), lin(norm(x)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _lean.norm_linear(norm, lin, x)
        assert not _is_lean(out) and out.dtype == torch.bfloat16
    assert not _is_lean(_lean.norm_linear(nn.RMSNorm(C), lin, x))
    assert not _is_lean(_lean.norm_linear(norm, lambda t: lin(t), x))
    handle = lin.register_forward_hook(lambda m, i, o: o)
    assert not _is_lean(_lean.norm_linear(norm, lin, x))
    handle.remove()
    monkeypatch.setattr(_lean, "ENABLED", False)
    assert not _is_lean(_lean.norm_linear(norm, lin, x))
    monkeypatch.setattr(_lean, "ENABLED", True)

    fc2, calls = nn.Linear(C, C), []

    def plain(u):
        calls.append(1)
        return fc2(nn.functional.gelu(lin(norm(u))))

    def lean_mlp(act=nn.GELU(), dropouts=()):
        return _lean.mlp(x, norm=norm, fc1=lin, act=act, fc2=fc2, dropouts=dropouts, plain=plain)

    assert _is_lean(lean_mlp()) and not calls
    assert _is_lean(lean_mlp(dropouts=(nn.Dropout(0.5).eval(),)))
    for case in (dict(act=nn.SiLU()), dict(dropouts=(nn.Dropout(0.1),)), dict(dropouts=(lambda t: t,))):
        calls.clear()
        assert not _is_lean(lean_mlp(**case)) and calls == [1], case


def test_converted_hf_layer_saves_seven_token_tensors_less(monkeypatch):
    """Inventory of a converted divided layer's saves, in units of one ``[B, 1+N*T, C]`` tensor:
    temporal 1 (x) + 3 (qkv) + 1 (out) + 1 (temporal_dense's input), spatial 1 (xt) + 3 + 1,
    MLP 1 (h) + 4 (fc1's output): 16, plus softmax and LayerNorm statistics (< 0.2). Without the
    lean path the three norm outputs and the GELU output add 7."""
    transformers = pytest.importorskip("transformers")
    backend = backend_or_skip("triton", "temporal_attention_qkvpacked", "spatial_attention_qkvpacked")
    B, T, C = 2, 4, 64
    cfg = transformers.TimesformerConfig(image_size=64, patch_size=16, num_frames=T, hidden_size=C,
                                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=4 * C)
    torch.manual_seed(0)
    model = transformers.TimesformerModel(cfg).to(DEVICE).train()
    hf_layer = copy.deepcopy(model.encoder.layer[0])
    tk.convert(model, backend=backend)
    layer = model.encoder.layer[0]
    N = (cfg.image_size // cfg.patch_size) ** 2
    x = torch.randn(B, 1 + N * T, C, device=DEVICE, requires_grad=True)
    unit = x.numel() * x.element_size()

    lean = activation_bytes(lambda: layer(x)[0], layer) / unit
    hf = activation_bytes(lambda: hf_layer(x)[0], hf_layer) / unit
    monkeypatch.setattr(_lean, "ENABLED", False)
    plain = activation_bytes(lambda: layer(x)[0], layer) / unit
    assert 16.0 <= lean < 16.2
    assert plain - lean == pytest.approx(7.0, abs=0.05)
    assert hf > plain  # HF's own layer also saves its attention probabilities and layout copies


@pytest.mark.parametrize("trainable", ["input-only", "params-only", "fc2-only"])
def test_gradients_of_partly_frozen_branches(trainable):
    """The backward computes what is asked for (``needs_input_grad``) and nothing else."""
    C = 24
    norm, fc1 = _norm_and_linear(C, 4 * C, torch.float64, True, True, seed=8)
    fc2 = nn.Linear(4 * C, C).double()
    h = torch.randn(5, C, dtype=torch.float64, requires_grad=trainable == "input-only")
    for m in (norm, fc1):
        m.requires_grad_(trainable == "params-only")
    fc2.requires_grad_(trainable != "input-only")
    wanted = [t for t in (h, *norm.parameters(), *fc1.parameters(), *fc2.parameters()) if t.requires_grad]

    def plain(u):
        return fc2(F.gelu(fc1(norm(u))))

    got = _lean.mlp(h, norm=norm, fc1=fc1, act=nn.GELU(), fc2=fc2, dropouts=(), plain=plain)
    assert _is_lean(got)
    for g, w in zip(_grads(got, wanted, 9), _grads(plain(h), wanted, 9)):
        assert rel_err(g, w) <= BOUND[torch.float64]
    if trainable != "fc2-only":
        got = _lean.norm_linear(norm, fc1, h)
        wanted = [t for t in (h, *norm.parameters(), *fc1.parameters()) if t.requires_grad]
        for g, w in zip(_grads(got, wanted, 10), _grads(fc1(norm(h)), wanted, 10)):
            assert rel_err(g, w) <= BOUND[torch.float64]


def test_environment_switch_turns_recompute_off():
    import os
    import subprocess
    import sys

    env = dict(os.environ, **{_lean.ENV_VAR: "0"})
    code = "from temporal_kernels import _lean; print(_lean.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _compiled_saves(fn, *inputs):
    """Compile ``fn`` (AOTAutograd with the min-cut partitioner, inductor's, on eager kernels), run
    it forward and backward; returns its output and the bytes its backward graph takes as saved
    tensors (parameters included)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    saved = []

    def backward_compiler(gm, example_inputs):
        for node in gm.graph.nodes:
            val = node.meta.get("val")
            if node.op == "placeholder" and not node.name.startswith("tangents") and isinstance(val, torch.Tensor):
                saved.append(val.numel() * val.element_size())
        return make_boxed_func(gm)

    backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm), bw_compiler=backward_compiler,
                           partition_fn=min_cut_rematerialization_partition)
    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*inputs)
    torch.autograd.grad(out.sum(), [t for t in inputs if t.requires_grad], retain_graph=True)  # compiles the backward
    return out, saved


def test_compiled_lean_saves_the_matmuls_only(monkeypatch):
    """Under torch.compile the partitioner would keep the norm and GELU outputs of the autograd
    functions; the selective checkpoint makes it save the input and fc1's output only."""
    C = 32
    norm, fc1 = _norm_and_linear(C, 4 * C, torch.float32, True, True, seed=11)
    fc2 = nn.Linear(4 * C, C)
    act = nn.GELU()
    h = torch.randn(3, 10, C, requires_grad=True)
    params = [h, *norm.parameters(), *fc1.parameters(), *fc2.parameters()]
    token = h.numel() * 4
    norm_params = 2 * C * 4  # recomputing the norm needs its weight and bias
    weights = (fc1.weight.numel() + fc2.weight.numel()) * 4 + norm_params

    def plain(u):
        return fc2(act(fc1(norm(u))))

    def branch(u):
        return _lean.mlp(u, norm=norm, fc1=fc1, act=act, fc2=fc2, dropouts=(), plain=plain) + u

    out, saved = _compiled_saves(branch, h)
    want = plain(h) + h
    assert rel_err(out, want) <= BOUND[torch.float32]
    for g, w in zip(_grads(out, params, 12), _grads(want, params, 12)):
        assert rel_err(g, w) <= BOUND[torch.float32]
    assert sum(saved) == token + 4 * token + weights  # h, fc1's output, the parameters
    monkeypatch.setattr(_lean, "ENABLED", False)
    _, saved_plain = _compiled_saves(branch, h)
    assert sum(saved_plain) >= sum(saved) + 5 * token  # + the norm's and the GELU's outputs

    monkeypatch.setattr(_lean, "ENABLED", True)
    out, saved = _compiled_saves(lambda u: _lean.norm_linear(norm, fc1, u), h)
    assert rel_err(out, fc1(norm(h))) <= BOUND[torch.float32]
    assert sum(saved) == token + fc1.weight.numel() * 4 + norm_params  # h and the parameters


def test_compiled_converted_hf_layer_saves_seven_token_tensors_less(monkeypatch):
    """The inventory test above, under torch.compile (reference attention, which compiles on the
    CPU): the partitioner's saves with the lean path against without it."""
    transformers = pytest.importorskip("transformers")
    B, T, C = 2, 4, 64
    cfg = transformers.TimesformerConfig(image_size=64, patch_size=16, num_frames=T, hidden_size=C,
                                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=4 * C)
    torch.manual_seed(0)
    model = tk.convert(transformers.TimesformerModel(cfg).train(), backend="reference")
    layer = model.encoder.layer[0]
    N = (cfg.image_size // cfg.patch_size) ** 2
    x = torch.randn(B, 1 + N * T, C, requires_grad=True)
    unit = x.numel() * x.element_size()
    want = layer(x)[0]

    out, lean = _compiled_saves(lambda u: layer(u)[0], x)
    assert rel_err(out, want) <= BOUND[torch.float32]
    monkeypatch.setattr(_lean, "ENABLED", False)
    _, plain = _compiled_saves(lambda u: layer(u)[0], x)
    assert (sum(plain) - sum(lean)) / unit >= 7.0
