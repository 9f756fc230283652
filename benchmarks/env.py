"""Run metadata: GPU name and slug, versions, commit, date, command."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys

import torch

KNOWN_GPUS = ("H200", "H100", "H20", "GH200", "B200", "A100", "A10G", "L40S", "L40", "L4", "T4", "V100", "A6000")


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def gpu_slug(name: str | None = None) -> str:
    """Short folder name: ``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``; no GPU -> ``"cpu"``."""
    name = name or gpu_name()
    if name == "cpu":
        return "cpu"
    for known in KNOWN_GPUS:
        if re.search(rf"\b{known}\b", name, re.IGNORECASE):
            return known.lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def commit() -> str:
    if os.environ.get("TK_COMMIT"):
        return os.environ["TK_COMMIT"]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if rev.returncode == 0:
            return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def metadata(argv: list[str]) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "n/a"
    return {
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "n/a",
        "triton": triton_version,
        "python": sys.version.split()[0],
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m benchmarks.run"] + argv),
    }
