"""CI check: every Triton kernel compiles for sm_90 with the launch configurations the launchers
pick on the GPU, without a GPU.

The Triton interpreter (CPU CI) runs the kernels' logic but never compiles them: a type error
of the compiler, or a configuration whose tiles overflow the H100's shared memory, would
otherwise show only on the GPU. Triton compiles ahead of time for a target given by hand
(``GPUTarget("cuda", 90, 32)``; ptxas ships with the triton wheel), so each kernel is built here
for bf16/fp32/fp64 at the head dims and sequence lengths that select each configuration branch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

if __name__ != "__main__":
    import pytest

    pytest.importorskip("triton")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from temporal_kernels.triton import spatial_attn as sa  # noqa: E402
from temporal_kernels.triton import temporal_attn as ta  # noqa: E402

H100_MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90
TARGET = GPUTarget("cuda", 90, 32)
PTR_DTYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.float64: "*fp64"}
SIZE_ARGS = {"B", "T", "N", "H", "D", "TH", "N_TP", "R", "L"}
STAT_PTRS = {"LSE", "LSEC", "DELTA", "DELTAC", "DQC", "DKC", "DVC"}  # fp32 (fp64 for float64) statistics/partials


def _signature(fn, dtype: torch.dtype, constexprs: dict) -> dict:
    """Argument types by the kernels' naming convention: upper-case pointers (LENS int32, the
    statistics in the accumulation dtype), size arguments and lower-case strides int32, scales
    in the accumulation dtype."""
    acc = "fp64" if dtype == torch.float64 else "fp32"
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "LENS":
            sig[name] = "*i32"
        elif name in STAT_PTRS:
            sig[name] = "*" + acc
        elif name in SIZE_ARGS or name.islower() and not name.startswith("scale"):
            sig[name] = "i32"
        elif name.startswith("scale"):
            sig[name] = acc
        else:
            sig[name] = PTR_DTYPES[dtype]
    return sig


def _compile(fn, dtype, constexprs, num_warps, num_stages):
    missing = {p.name for p in fn.params if p.is_constexpr} - set(constexprs)
    assert not missing, f"test gives no value for constexpr {missing} of {fn.__name__}"
    src = ASTSource(
        fn=fn,
        signature=_signature(fn, dtype, constexprs),
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
    )
    kernel = triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})
    shared = kernel.metadata.shared
    assert shared <= H100_MAX_SHARED, f"{fn.__name__}: {shared} bytes of shared memory > {H100_MAX_SHARED}"
    return kernel


DTYPES = [torch.bfloat16, torch.float32, torch.float64]
DTYPE_IDS = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32", torch.float64: "f64"}


# (T, D): short path at T = 8 and 64, tiled path at T = 150 (T > 64 is always tiled); D = 40 and
# 72 take ALIGN > 1 (head dims that are not multiples of 16 elements)
TEMPORAL_CASES = [(8, 64), (64, 64), (8, 160), (8, 72), (150, 64), (150, 128), (150, 40), (300, 256)]
SPATIAL_MODES = {
    "spatial_cls": dict(MODE=sa.MODE_SPATIAL, HAS_CLS=True, CAUSAL=False, HAS_LENS=False),
    "joint": dict(MODE=sa.MODE_JOINT, HAS_CLS=False, CAUSAL=True, HAS_LENS=True),
    "factorized": dict(MODE=sa.MODE_FACTORIZED, HAS_CLS=False, CAUSAL=True, HAS_LENS=False),
}


def _temporal_jobs(T, D, dtype):
    """(kernel, constexprs, num_warps, num_stages) the temporal launchers pick for (T, D, dtype)."""
    T_PAD, D_PAD = ta._pad(T), ta._pad(D)
    align = ta._alignment(D, torch.empty(1, 1, 1, 1, D, dtype=dtype, device="meta"))
    flags = dict(HAS_LENS=True, CAUSAL=True, IS_F64=dtype == torch.float64, IEEE=ta._ieee(dtype), ALIGN=align)
    for backward in (False, True):
        if ta.use_short_path(T, D, dtype, backward):
            block_g, warps = ta._short_config(T_PAD, D_PAD, dtype, backward)
            fn = ta._temporal_attn_bwd_short_kernel if backward else ta._temporal_attn_fwd_short_kernel
            yield fn, dict(flags, BLOCK_G=block_g, T_PAD=T_PAD, D_PAD=D_PAD), warps, 1
            continue
        block_m, block_n, warps = ta._tiled_config(T, D_PAD, dtype, backward)
        stages = ta._tiled_stages(dtype, backward, block_n, D_PAD)
        tiles = dict(flags, INTERPRET=False, BLOCK_M=block_m, BLOCK_N=block_n, D_PAD=D_PAD)
        if not backward:
            exp2 = dtype != torch.float64
            # masked blocks (causal, frame_lens), then the mask-free loop of EVEN launches
            yield ta._temporal_attn_fwd_tiled_kernel, dict(tiles, EXP2=exp2, RAW_MAX=exp2, EVEN=False), warps, stages
            even = dict(tiles, HAS_LENS=False, CAUSAL=False, EXP2=exp2, RAW_MAX=exp2, EVEN=True)
            yield ta._temporal_attn_fwd_tiled_kernel, even, warps, stages
            continue
        yield ta._temporal_attn_bwd_delta_kernel, dict(HAS_LENS=True, BLOCK_M=block_m, D_PAD=D_PAD, ALIGN=align), warps, 1
        yield ta._temporal_attn_bwd_dkdv_kernel, tiles, warps, stages
        for delta_only in (True, False):
            yield ta._temporal_attn_bwd_dq_kernel, dict(tiles, DELTA_ONLY=delta_only), warps, stages


def _spatial_jobs(mode, D, dtype, N, T=8):
    """(kernel, constexprs, num_warps, num_stages) the spatial/joint/factorized launchers pick
    (factorized: for the path its temporal heads take at T)."""
    flags = dict(SPATIAL_MODES[mode], IS_F64=dtype == torch.float64, PREC=sa._precision(dtype), INTERPRET=False,
                 BLOCK_D=sa._block_d(D))
    q = torch.empty(1, T, N, 2, D, dtype=dtype, device="meta")

    def temporal(block, warps, backward):
        plan = sa._temporal_plan(flags["MODE"], q, 1, block, warps, backward)
        return {k: v for k, v in plan.items() if k != "N_TP"}

    BM, BN, warps, stages = sa._fwd_config(D, dtype, flags["MODE"], flags["CAUSAL"], flags["HAS_CLS"])
    fwd = dict(flags, BLOCK_M=BM, BLOCK_N=BN, **temporal(BM, warps, False))
    for whole in (False, True):  # the rule picks either, by mode and frame size (_whole_blocks)
        yield sa._attn_fwd_kernel, dict(fwd, WHOLE_BLOCKS=whole), warps, stages
    (BM, BN, warps, stages), (BM2, BN2, warps2, stages2) = sa._bwd_configs(D, dtype, SPATIAL_MODES[mode]["MODE"], N)
    bwd_temporal = temporal(BN, warps, True)
    yield sa._attn_bwd_dkdv_kernel, dict(flags, BLOCK_M=BM, BLOCK_N=BN, **bwd_temporal), warps, stages
    dq_flags = dict(flags, BLOCK_M=BM2, BLOCK_N=BN2, T_SHORT=bwd_temporal["T_SHORT"])
    for delta_only in (True, False):
        whole = delta_only  # either loop structure, on one pass each
        yield sa._attn_bwd_dq_kernel, dict(dq_flags, DELTA_ONLY=delta_only, WHOLE_BLOCKS=whole), warps2, stages2
    yield sa._attn_bwd_delta_kernel, dict(BLOCK_R=32, BLOCK_D=sa._block_d(D)), 4, 1


def cases():
    for dtype in DTYPES:
        for T, D in TEMPORAL_CASES:
            yield f"temporal-T{T}-D{D}-{DTYPE_IDS[dtype]}", dtype, _temporal_jobs(T, D, dtype)
        for mode in SPATIAL_MODES:
            # the other modes share the spatial kernels' code paths: two head dims suffice
            for D in (40, 64, 128, 256) if mode == "spatial_cls" else (64, 128):
                for N in (196, 784) if mode == "spatial_cls" and D == 64 else (196,):
                    yield f"{mode}-N{N}-D{D}-{DTYPE_IDS[dtype]}", dtype, _spatial_jobs(mode, D, dtype, N)
        # factorized temporal heads: short forward and backward (T=8, above), short forward with a
        # flash backward (16-bit T=40), flash both ways (T=150)
        for T in (40, 150):
            yield f"factorized-T{T}-N196-D64-{DTYPE_IDS[dtype]}", dtype, _spatial_jobs("factorized", 64, dtype, 196, T)


def compile_all() -> list[str]:
    """Compiles every case; returns one line per failure."""
    ta._interpreting = sa._interpreting = lambda: False  # the configurations the GPU gets
    failures = []
    count = 0
    for case, dtype, jobs in cases():
        for fn, constexprs, warps, stages in jobs:
            count += 1
            try:
                _compile(fn, dtype, constexprs, warps, stages)
            except Exception as exc:  # noqa: BLE001  (reported, one line per kernel)
                failures.append(f"{case} {fn.__name__} {constexprs} warps={warps} stages={stages}: "
                                f"{type(exc).__name__}: {str(exc)[:300]}")
    print(f"compiled {count - len(failures)} of {count} kernels for sm_90")
    return failures


def test_triton_kernels_compile_for_sm90():
    # Under the interpreter (CPU CI) the kernels are not JIT functions the compiler takes: compile
    # them in a fresh process without TRITON_INTERPRET.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    run = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "compiled" in run.stdout, run.stdout


if __name__ == "__main__":
    problems = compile_all()
    print("\n".join(problems))
    sys.exit(1 if problems else 0)
