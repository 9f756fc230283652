"""temporal_kernels: fused GPU kernels for the attention of video transformers.

``import temporal_kernels as tk``; see ``tk.temporal_attention``, ``tk.spatial_attention``,
``tk.joint_attention``, ``tk.factorized_attention`` and SPEC §2.
"""

from .functional import (
    available_backends,
    factorized_attention,
    joint_attention,
    spatial_attention,
    spatial_attention_qkvpacked,
    temporal_attention,
    temporal_attention_qkvpacked,
)
from . import nn
from .convert import convert

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "convert",
    "nn",
    "factorized_attention",
    "joint_attention",
    "spatial_attention",
    "spatial_attention_qkvpacked",
    "temporal_attention",
    "temporal_attention_qkvpacked",
]
