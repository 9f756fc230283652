"""Drop-in modules (``tk.nn``, SPEC §4) against independent plain-PyTorch oracles.

Oracles (defined here, shared with ``test_convert.py``):

- ``OracleBlock`` & co.: TimeSformer's ``vit.py`` ``Attention``/``Mlp``/``DropPath``/``Block``
  (``divided_space_time``) re-implemented with ``reshape``/``permute`` in place of einops, same
  parameter names, same order of operations (per-frame CLS repeat, ``cat``, mean over frames).
- ``SeedTemporalTransformer``: the seed's code verbatim.
- ``LoopMiniSpaceTimeTransformer``: the seed's loop model with batch-first attention (what its
  text describes); ``SeedMiniSpaceTimeTransformer``: the seed's code verbatim, to document how it
  differs.
- ``oracle_attention``: float64 einsum attention for the two attention layers.

Every comparison covers the output and the gradients of the input and of every parameter.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import temporal_kernels as tk
from benchmarks.e2e_mini import SeedMiniSpaceTimeTransformer  # the seed code, line for line
from tests.helpers import DEVICE, rel_err

MODEL_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}  # SPEC §4 (fp32, whole models); §3 for fp64
BACKENDS = ("reference", "triton", "cuda")
_LAUNCHER = {
    "temporal_attention_qkvpacked": "temporal_attn",
    "temporal_attention": "temporal_attn",
    "spatial_attention_qkvpacked": "spatial_attn",
    "spatial_attention": "spatial_attn",
    "joint_attention": "joint_attn",
}


def backend_or_skip(backend: str, *ops: str, dtype: torch.dtype = torch.float32) -> str:
    """``backend`` if it can run ``ops`` on DEVICE in this checkout, else skip the test.

    On CPU the kernel backends run in the (slow) Triton interpreter: there they are tested in
    float32 only; float64 cases run on the reference (and on GPU).
    """
    if backend == "reference":
        return backend
    if DEVICE != "cuda" and dtype != torch.float32:
        pytest.skip("interpreter time: kernel backends are tested in float32 on CPU")
    if backend == "cuda" and DEVICE != "cuda":
        pytest.skip("the cuda backend needs a GPU")
    if backend not in tk.available_backends():
        pytest.skip(f"backend {backend!r} is not available here")
    from temporal_kernels.ops import CUDA_OPS, TRITON_OPS

    table = TRITON_OPS if backend == "triton" else CUDA_OPS
    missing = [op for op in ops if op not in table]
    if backend == "triton":
        spec = importlib.util.find_spec
        missing += [op for op in ops if op in table and spec(f"temporal_kernels.triton.{_LAUNCHER[op]}") is None]
    if missing:
        pytest.skip(f"backend {backend!r} does not implement {sorted(set(missing))} yet")
    return backend


def grads_of(module: nn.Module, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    for i, x in enumerate(inputs):
        out[f"input{i}"] = x.grad
    return out


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def assert_grads_close(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert_close(got[name], want[name], tol, f"grad of {name}")


def count_calls(monkeypatch, *names: str) -> dict[str, int]:
    """Count calls of ``temporal_kernels.functional.<name>`` (what the modules call)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        fn = getattr(tk.functional, name)

        def counted(*args, _fn=fn, _name=name, **kwargs):
            counts[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(tk.functional, name, counted)
    return counts


# ---------------------------------------------------------------------------------------------
# oracles


def oracle_attention(x, qkv, proj, heads, *, over, causal=False, frame_lens=None, cls=None):
    """Float64 attention layer on ``x [B, T, N, C]``: ``over`` is "t" (temporal) or "n" (spatial).

    ``cls [B, C]`` (spatial only): each frame's keys are {cls} + its patches; returns
    ``(out, cls_out)`` with ``cls_out`` projected per frame then averaged over T.
    """
    x = x.double()
    W, b = qkv.weight.double(), None if qkv.bias is None else qkv.bias.double()
    B, T, N, C = x.shape
    D = C // heads
    q, k, v = F.linear(x, W, b).reshape(B, T, N, 3, heads, D).unbind(3)  # [B, T, N, H, D]
    if over == "t":
        logits = torch.einsum("btnhd,bsnhd->bnhts", q, k) * D**-0.5
        ok = torch.ones(B, 1, 1, T, T, dtype=torch.bool, device=x.device)
        if causal:
            ok = ok & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        if frame_lens is not None:
            ok = ok & (torch.arange(T, device=x.device)[None, :] < frame_lens[:, None])[:, None, None, None, :]
        p = torch.softmax(logits.masked_fill(~ok, float("-inf")), -1).nan_to_num(0.0)
        o = torch.einsum("bnhts,bsnhd->btnhd", p, v)
        if frame_lens is not None:
            o = o * (torch.arange(T, device=x.device)[None, :] < frame_lens[:, None])[:, :, None, None, None]
    else:
        if cls is not None:
            cq, ck, cv = F.linear(cls.double(), W, b).reshape(B, 3, heads, D).unbind(1)  # [B, H, D]
            rep = lambda c: c[:, None, None].expand(B, T, 1, heads, D)  # noqa: E731
            q, k, v = (torch.cat((rep(c), t), 2) for c, t in ((cq, q), (ck, k), (cv, v)))
        p = torch.softmax(torch.einsum("btnhd,btmhd->bthnm", q, k) * D**-0.5, -1)
        o = torch.einsum("bthnm,btmhd->btnhd", p, v)
    out = F.linear(o.reshape(o.shape[:3] + (C,)), proj.weight.double(), proj.bias.double())
    if cls is not None:
        return out[:, :, 1:], out[:, :, 0].mean(1)
    return out


class OracleDropPath(nn.Module):
    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask


class OracleMlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class OracleAttention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, L, C)))


class OracleBlock(nn.Module):
    """TimeSformer ``Block(attention_type='divided_space_time')``, einops-free."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, drop=0.0, attn_drop=0.0, drop_path=0.1,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.attention_type = "divided_space_time"
        self.norm1 = norm_layer(dim)
        self.attn = OracleAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.temporal_norm1 = norm_layer(dim)
        self.temporal_attn = OracleAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = OracleDropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = OracleMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, B, T, W):
        C = x.shape[-1]
        N = (x.size(1) - 1) // T
        # temporal: 'b (h w t) m -> (b h w) t m' and back
        xt = x[:, 1:, :]
        res_temporal = self.drop_path(self.temporal_attn(self.temporal_norm1(xt.reshape(B * N, T, C))))
        res_temporal = self.temporal_fc(res_temporal.reshape(B, N * T, C))
        xt = x[:, 1:, :] + res_temporal
        # spatial: CLS repeated per frame, 'b (h w t) m -> (b t) (h w) m'
        init_cls_token = x[:, 0, :].unsqueeze(1)
        cls_token = init_cls_token.repeat(1, T, 1).reshape(B * T, C).unsqueeze(1)
        xs = xt.reshape(B, N, T, C).permute(0, 2, 1, 3).reshape(B * T, N, C)
        xs = torch.cat((cls_token, xs), 1)
        res_spatial = self.drop_path(self.attn(self.norm1(xs)))
        cls_token = torch.mean(res_spatial[:, 0, :].reshape(B, T, C), 1, True)
        res = res_spatial[:, 1:, :].reshape(B, T, N, C).permute(0, 2, 1, 3).reshape(B, N * T, C)
        x = torch.cat((init_cls_token, xt), 1) + torch.cat((cls_token, res), 1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SeedTemporalTransformer(nn.Module):
    """The seed's code, unchanged."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        attn_out, _ = self.attn(x, x, x)
        x = x + attn_out
        x = self.norm1(x)
        x = x + self.ffn(x)
        x = self.norm2(x)
        return x


def LoopMiniSpaceTimeTransformer(dim=3, num_heads=1):
    return SeedMiniSpaceTimeTransformer(dim, num_heads, batch_first=True)


# ---------------------------------------------------------------------------------------------
# attention layers


def _video_input(B, T, N, C, layout, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if layout == "patch_major":  # TimeSformer's (n t) tokens seen as [B, T, N, C]
        x = torch.randn(B, N, T, C, generator=g, dtype=torch.float64).to(DEVICE, dtype).transpose(1, 2)
    else:
        x = torch.randn(B, T, N, C, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    return x.detach().requires_grad_()


def _run_layer_pair(layer, x, oracle_fn, extra_inputs=()):
    """Forward+backward of the layer and of its float64 oracle with one random cotangent."""
    out = layer(x, *extra_inputs)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(7)
    cots = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(DEVICE) for o in outs]
    sum((o * c.to(o.dtype)).sum() for o, c in zip(outs, cots)).backward()
    got = grads_of(layer, x)

    ref_layer = copy.deepcopy(layer).double()
    ref_layer.zero_grad()
    xr = x.detach().double().requires_grad_()
    ref = oracle_fn(ref_layer, xr)
    refs = ref if isinstance(ref, tuple) else (ref,)
    sum((o * c).sum() for o, c in zip(refs, cots)).backward()
    return outs, refs, got, grads_of(ref_layer, xr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mask", ["none", "causal", "frame_lens"])
@pytest.mark.parametrize("layout", ["frame_major", "patch_major"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_temporal_attention(backend, layout, mask, dtype):
    backend_or_skip(backend, "temporal_attention_qkvpacked", dtype=dtype)
    B, T, N, C, H = 2, 5, 3, 24, 2  # head dim 12: not a power of 2
    torch.manual_seed(0)
    layer = tk.nn.TemporalAttention(C, H, causal=mask == "causal", backend=backend).to(DEVICE, dtype)
    x = _video_input(B, T, N, C, layout, dtype, seed=1)
    frame_lens = torch.tensor([T, 2], device=DEVICE) if mask == "frame_lens" else None

    def oracle(m, xr):
        return oracle_attention(xr, m.qkv, m.proj, H, over="t", causal=m.causal, frame_lens=frame_lens)

    outs, refs, got, want = _run_layer_pair(layer, x, oracle, (frame_lens,))
    assert_close(outs[0], refs[0], MODEL_TOL[dtype], "out")
    assert_grads_close(got, want, MODEL_TOL[dtype])
    if layout == "patch_major":  # the output keeps the input's memory order: no copy on the way out
        assert outs[0].transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("with_cls", [False, True], ids=["nocls", "cls"])
@pytest.mark.parametrize("layout", ["frame_major", "patch_major"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_attention(backend, layout, with_cls, dtype):
    backend_or_skip(backend, "spatial_attention_qkvpacked", dtype=dtype)
    B, T, N, C, H = 2, 3, 5, 24, 2
    torch.manual_seed(0)
    layer = tk.nn.SpatialAttention(C, H, backend=backend).to(DEVICE, dtype)
    x = _video_input(B, T, N, C, layout, dtype, seed=2)
    cls = torch.randn(B, C, dtype=torch.float64).to(DEVICE, dtype).requires_grad_() if with_cls else None
    extra = (cls,) if with_cls else ()

    def oracle(m, xr):
        cr = None
        if with_cls:
            cr = cls.detach().double().requires_grad_()
            oracle.cls = cr
        return oracle_attention(xr, m.qkv, m.proj, H, over="n", cls=cr)

    outs, refs, got, want = _run_layer_pair(layer, x, oracle, extra)
    for o, r, name in zip(outs, refs, ("out", "cls_out")):
        assert_close(o, r, MODEL_TOL[dtype], name)
    assert_grads_close(got, want, MODEL_TOL[dtype])
    if with_cls:
        assert outs[1].shape == (B, C)
        assert_close(cls.grad, oracle.cls.grad, MODEL_TOL[dtype], "grad of cls")


def test_attention_layers_reject_bad_input():
    layer = tk.nn.TemporalAttention(16, 2)
    with pytest.raises(ValueError, match="x: expected a \\[B, T, N, C=16\\]"):
        layer(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="num_heads"):
        tk.nn.SpatialAttention(16, 3)
    with pytest.raises(ValueError, match="cls: expected"):
        tk.nn.SpatialAttention(16, 2)(torch.randn(2, 3, 4, 16), torch.randn(3, 16))


# ---------------------------------------------------------------------------------------------
# TimeSformer block


def _block_pair(C=32, H=2, drop_path=0.0, qkv_bias=False, dtype=torch.float32, backend="reference"):
    torch.manual_seed(0)
    ours = tk.nn.DividedSpaceTimeBlock(C, H, qkv_bias=qkv_bias, drop_path=drop_path, backend=backend)
    oracle = OracleBlock(C, H, qkv_bias=qkv_bias, drop_path=drop_path)
    # Random values everywhere (temporal_fc is zero-initialized in TimeSformer models).
    with torch.no_grad():
        for p in oracle.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours.load_state_dict(oracle.state_dict())
    return ours.to(DEVICE, dtype), oracle.to(DEVICE, dtype)


def _tokens(B, N, T, C, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1 + N * T, C, generator=g, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()


def run_fwd_bwd(module, x, *args, seed=None):
    """Forward (with ``seed`` set first, for drop-path) and backward of a random projection."""
    if seed is not None:
        torch.manual_seed(seed)
    out = module(x, *args)
    out = out if isinstance(out, torch.Tensor) else out[0]
    g = torch.Generator().manual_seed(11)
    (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum().backward()
    return out.detach(), grads_of(module, x)


@pytest.mark.parametrize("mode", ["eval", "train_drop_path"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_divided_block_matches_timesformer(backend, dtype, mode):
    backend_or_skip(backend, "temporal_attention_qkvpacked", "spatial_attention_qkvpacked", dtype=dtype)
    B, T, W, Hp, C = 2, 3, 2, 2, 32  # N = Hp * W = 4 patches
    train = mode != "eval"
    ours, oracle = _block_pair(C, drop_path=0.4 if train else 0.0, qkv_bias=True, dtype=dtype, backend=backend)
    assert list(ours.state_dict()) == list(oracle.state_dict())
    ours.train(train)
    oracle.train(train)
    x = _tokens(B, Hp * W, T, C, dtype)
    xo = x.detach().clone().requires_grad_()
    out, got = run_fwd_bwd(ours, x, B, T, W, seed=5)
    ref, want = run_fwd_bwd(oracle, xo, B, T, W, seed=5)
    tol = MODEL_TOL[dtype]
    assert_close(out, ref, tol, "out")
    assert_grads_close(got, want, tol)
    if train:  # drop-path really dropped something (else this case tests nothing more than eval)
        ours.eval()
        assert rel_err(ours(x, B, T, W), out) > 1e-3


def test_divided_block_runs_fused_ops_once_each(monkeypatch):
    counts = count_calls(monkeypatch, "temporal_attention_qkvpacked", "spatial_attention_qkvpacked")
    ours, _ = _block_pair()
    B, T, W = 2, 3, 2
    ours(_tokens(B, 4, T, 32, torch.float32), B, T, W)
    assert counts == {"temporal_attention_qkvpacked": 1, "spatial_attention_qkvpacked": 1}


def test_divided_block_feeds_the_kernels_views(monkeypatch):
    """Zero-copy: the kernels get strided views of the qkv projections, in TimeSformer's order."""
    seen = {}

    def spy(name):
        fn = getattr(tk.functional, name)

        def wrapped(qkv, **kwargs):
            seen[name] = qkv
            seen[name + ".cls"] = kwargs.get("cls_qkv")
            return fn(qkv, **kwargs)

        monkeypatch.setattr(tk.functional, name, wrapped)

    spy("temporal_attention_qkvpacked")
    spy("spatial_attention_qkvpacked")
    ours, _ = _block_pair()
    B, T, W, N, C, H = 2, 3, 2, 4, 32, 2
    ours(_tokens(B, N, T, C, torch.float32), B, T, W)
    D = C // H
    # [B, T, N, 3, H, D] views of a [B, rows, 3C] Linear output, token (n, t) at row n*T + t
    for name, rows in (("temporal_attention_qkvpacked", 1 + N * T), ("spatial_attention_qkvpacked", N * T)):
        qkv = seen[name]
        assert qkv.shape == (B, T, N, 3, H, D)
        assert qkv.stride() == (rows * 3 * C, 3 * C, T * 3 * C, C, D, 1), name
        assert qkv._base is not None  # a view, not a copy
    assert seen["spatial_attention_qkvpacked.cls"].shape == (B, 3, H, D)


def test_divided_block_rejects_bad_tokens():
    ours, _ = _block_pair()
    with pytest.raises(ValueError, match="1 \\+ N\\*T"):
        ours(torch.randn(2, 12, 32, device=DEVICE), 2, 3, 2)


# ---------------------------------------------------------------------------------------------
# the seed's models


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_temporal_transformer_matches_seed(backend, dtype):
    backend_or_skip(backend, "temporal_attention_qkvpacked", dtype=dtype)
    T, B, D, H = 6, 3, 32, 4
    torch.manual_seed(0)
    seed = SeedTemporalTransformer(D, H)
    torch.manual_seed(0)
    ours = tk.nn.TemporalTransformer(D, H, backend=backend)
    # Same construction order as the seed: one seed gives the same parameters.
    for (n1, p1), (n2, p2) in zip(seed.state_dict().items(), ours.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    with torch.no_grad():
        seed.attn.in_proj_bias.normal_()
    ours.load_state_dict(seed.state_dict())
    seed, ours = seed.to(DEVICE, dtype), ours.to(DEVICE, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, D, generator=g, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
    xs = x.detach().clone().requires_grad_()
    out, got = run_fwd_bwd(ours, x)
    ref, want = run_fwd_bwd(seed, xs)
    assert_close(out, ref, MODEL_TOL[dtype], "out")
    assert_grads_close(got, want, MODEL_TOL[dtype])


@pytest.mark.parametrize("dim,heads", [(3, 1), (24, 2)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mini_space_time_matches_corrected_loop(backend, dim, heads):
    backend_or_skip(backend, "temporal_attention_qkvpacked", "spatial_attention_qkvpacked")
    B, T, N = 2, 4, 4  # the seed's toy video: 4 frames of 2x2 patches
    torch.manual_seed(0)
    loop = LoopMiniSpaceTimeTransformer(dim, heads)
    with torch.no_grad():  # the seed's init leaves the biases at 0
        loop.spatial.in_proj_bias.normal_(std=0.3)
        loop.temporal.out_proj.bias.normal_(std=0.3)
    ours = tk.nn.MiniSpaceTimeTransformer(dim, heads, backend=backend)
    ours.load_state_dict(loop.state_dict())
    loop, ours = loop.to(DEVICE), ours.to(DEVICE)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, N, dim, generator=g).to(DEVICE).requires_grad_()
    xl = x.detach().clone().requires_grad_()
    out, got = run_fwd_bwd(ours, x)
    ref, want = run_fwd_bwd(loop, xl)
    assert_close(out, ref, MODEL_TOL[torch.float32], "out")
    assert_grads_close(got, want, MODEL_TOL[torch.float32])


def test_seed_mini_code_attends_over_the_batch():
    """Why ours differs from the seed's code: its sequence-first attention mixes batch elements."""
    torch.manual_seed(0)
    seed = SeedMiniSpaceTimeTransformer()
    ours = tk.nn.MiniSpaceTimeTransformer()
    ours.load_state_dict(seed.state_dict())
    x = torch.randn(2, 4, 4, 3)
    x2 = x.clone()
    x2[1] += 1.0  # change only the second video
    assert not torch.allclose(seed(x)[0], seed(x2)[0])  # the seed's first video changes too
    assert torch.equal(ours(x)[0], ours(x2)[0])
