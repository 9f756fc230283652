"""Build of temporal_kernels.

The pure-Python package (reference + Triton backends) installs anywhere. The CUDA C++ extension
``temporal_kernels._C`` is built from ``csrc/`` only when a CUDA toolkit and a CUDA-enabled torch
are present; otherwise the build says so in one line and goes on without it.

Knobs (environment):
    TEMPORAL_KERNELS_BUILD_EXT   auto (default) | 1 (force; fail if it cannot) | 0 (skip)
    TORCH_CUDA_ARCH_LIST         architectures to build for (default "9.0a": the H100/H200 with their
                                 wgmma instructions; with 9.0a in the list TK_WGMMA is defined and
                                 the Hopper forward of csrc/flash_wgmma.cuh is built)
"""

from __future__ import annotations

import glob
import os

from setuptools import find_packages, setup


def _extension():
    mode = os.environ.get("TEMPORAL_KERNELS_BUILD_EXT", "auto")
    if mode == "0":
        print("temporal_kernels: TEMPORAL_KERNELS_BUILD_EXT=0, skipping the CUDA extension")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        if mode == "1":
            raise
        print(f"temporal_kernels: torch is not importable at build time ({exc}), skipping the CUDA extension")
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    if mode != "1" and (torch.version.cuda is None or CUDA_HOME is None or not sources):
        print(
            "temporal_kernels: no CUDA-enabled torch or CUDA toolkit "
            f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}), skipping the CUDA extension"
        )
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    archs = os.environ["TORCH_CUDA_ARCH_LIST"].replace(" ", ";").split(";")
    wgmma = ["-DTK_WGMMA"] if "9.0a" in archs else []
    ext = CUDAExtension(
        "temporal_kernels._C",
        sources,
        # No -std: BuildExtension picks the standard the installed torch's headers need
        # (C++20 for recent torch, whose headers use C++20 features; C++17 for older ones).
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr", *wgmma],
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension()

setup(
    name="temporal_kernels",
    version="0.1.0",
    description="Fused GPU kernels for the attention of video transformers (temporal, spatial, joint)",
    packages=find_packages(include=["temporal_kernels", "temporal_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6"],
    extras_require={
        "triton": ["triton>=3.2"],
        "test": ["pytest", "hypothesis"],
        "hf": ["transformers"],
        "bench": ["matplotlib", "tqdm", "pytest-benchmark"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
