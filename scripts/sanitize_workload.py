"""The workload scripts/sanitize.sh runs under compute-sanitizer: every op of every kernel backend
(Triton: temporal short and tiled paths, spatial with and without CLS, packed forms, joint,
factorized; CUDA: the same but factorized), forward and backward through the public API, on tiny
shapes covering every dtype, causal + frame_lens (incl. a fully padded batch element), partial
head-dim blocks and unaligned base pointers (one element into a flat buffer)."""

from __future__ import annotations

import os

import torch

import temporal_kernels as tk

DEV = "cuda"
GEN = torch.Generator().manual_seed(0)


def randn(*shape, dtype):
    return torch.randn(*shape, generator=GEN, dtype=torch.float64).to(DEV, dtype)


def packed(B, T, N, H, D, dtype, patch_major: bool, unaligned: bool = False):
    """A leaf ``[B, T, N, 3, H, D]`` view: patch-major (TimeSformer) or frame-major, optionally
    starting one element into its buffer (misaligned for every dtype)."""
    shape = (B, N, T, 3, H, D) if patch_major else (B, T, N, 3, H, D)
    if unaligned:
        numel = B * T * N * 3 * H * D
        x = torch.empty(numel + 1, device=DEV, dtype=dtype)[1:].view(shape)
        x.copy_(randn(*shape, dtype=dtype))
    else:
        x = randn(*shape, dtype=dtype)
    x.requires_grad_()
    return x.permute(0, 2, 1, 3, 4, 5) if patch_major else x


def backward(*outs):
    torch.autograd.backward([o for o in outs if o is not None], [torch.ones_like(o) for o in outs if o is not None])


CASES = [  # (B, T, N, H, D, dtype)
    (3, 7, 3, 2, 40, torch.bfloat16),   # short temporal path, several groups per program
    (2, 8, 5, 2, 64, torch.float16),
    (2, 9, 3, 2, 20, torch.float32),    # partial head-dim block
    (2, 5, 2, 2, 256, torch.float64),
    (1, 100, 2, 2, 64, torch.bfloat16),  # tiled temporal path (forward and FA2 backward)
    (1, 70, 1, 1, 72, torch.float32),
    (2, 1, 4, 2, 8, torch.float16),     # T = 1
    (2, 27, 3, 2, 64, torch.bfloat16),  # CUDA: the 2-warp fused temporal backward (16 < T <= 32)
]


if os.environ.get("TK_SANITIZE_QUICK") == "1":  # a subset for a short device call: short, tiled, partial D
    CASES = [CASES[0], CASES[2], CASES[4], CASES[7]]


def run_backend(backend: str) -> None:
    kernel_ops = tk.available_backends()
    assert backend in kernel_ops, (backend, kernel_ops)
    for B, T, N, H, D, dtype in CASES:
        lens = torch.randint(0, T + 1, (B,), generator=GEN)
        lens[0] = T
        if B > 1:
            lens[1] = 0  # a fully padded batch element
        lens = lens.to(DEV)
        for patch_major, unaligned in ((True, False), (False, True)):
            qkv = packed(B, T, N, H, D, dtype, patch_major, unaligned)
            q, k, v = qkv.unbind(3)
            for causal, frame_lens in ((False, None), (True, lens)):
                backward(tk.temporal_attention(q, k, v, causal=causal, frame_lens=frame_lens, backend=backend))
                backward(tk.temporal_attention_qkvpacked(qkv, causal=causal, frame_lens=frame_lens, backend=backend))
                backward(tk.joint_attention(q, k, v, causal=causal, frame_lens=frame_lens, backend=backend))
                if backend == "triton":  # the CUDA extension has no factorized op
                    backward(tk.factorized_attention(q, k, v, temporal_heads=H // 2, causal=causal, backend=backend))
            if T * N > 400:
                continue
            cls_qkv = randn(B, 3, H, D, dtype=dtype).requires_grad_()
            backward(tk.spatial_attention(q, k, v, backend=backend))
            backward(*tk.spatial_attention(q, k, v, cls=tuple(cls_qkv.unbind(1)), backend=backend))
            backward(tk.spatial_attention_qkvpacked(qkv, backend=backend))
            backward(*tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend=backend))
    # Spatial tiles over N beyond one block, with the CLS key (N = 197: the tensor-core kernels'
    # 16-key last tile and warps of padded rows), joint over several key tiles; factorized with
    # several spatial row blocks per frame behind the temporal heads' programs (short path at T = 8).
    qkv = packed(1, 2, 197, 2, 64, torch.bfloat16, patch_major=True)
    cls_qkv = randn(1, 3, 2, 64, dtype=torch.bfloat16).requires_grad_()
    backward(*tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv, backend=backend))
    backward(tk.joint_attention(*qkv.unbind(3), causal=True, backend=backend))
    if backend == "triton":
        qkv = packed(1, 8, 197, 4, 64, torch.bfloat16, patch_major=False)
        backward(tk.factorized_attention(*qkv.unbind(3), temporal_heads=2, backend=backend))


if __name__ == "__main__":
    for backend in os.environ.get("TK_SANITIZE_BACKENDS", "triton cuda").split():
        if backend in tk.available_backends():
            run_backend(backend)
            torch.cuda.synchronize()
            print(f"sanitize workload: {backend} done", flush=True)
        else:
            print(f"sanitize workload: {backend} unavailable, skipped", flush=True)
