"""Shared harness of the host-emulation tests (tests/csrc_emu/emu.cpp runs the real csrc kernel
sources on the CPU): the library build, the dtype codes of its entry points, and the host-side
decisions ops.cpp / op_utils.h make before a launch (copy a non-unit head-dim stride once; the
16-byte vector path only on aligned tensors)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++")
DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def build_emu(out_dir: Path) -> ctypes.CDLL:
    """Compiles emu.cpp (which includes the csrc kernel headers) into a shared library."""
    so = out_dir / "emu.so"
    cmd = [CXX, "-O1", "-std=c++20", "-shared", "-fPIC", f"-I{ROOT / 'csrc'}",
           str(ROOT / "tests" / "csrc_emu" / "emu.cpp"), "-o", str(so)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(so))
    lib.emu_temporal.restype = None
    lib.emu_spatial.restype = None
    return lib


def aligned16(*xs) -> bool:
    """op_utils.h's check: base pointers and the strides of every axis but the last on 16 bytes."""
    return all(
        x.data_ptr() % 16 == 0
        and all(x.stride(i) * x.element_size() % 16 == 0 for i in range(x.dim() - 1) if x.shape[i] > 1)
        for x in xs
    )


def unit_last(x):
    """The one copy the ops make: a non-unit head-dim stride (None passes through)."""
    return x if x is None or x.shape[-1] <= 1 or x.stride(-1) == 1 else x.contiguous()
