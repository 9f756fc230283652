"""Repro of the torch.compile illegal memory access fixed in d251eda (log:
benchmarks/results/h100/logs/memcheck_spatial_compile_fix.log):

    compute-sanitizer --tool memcheck python scripts/repro_spatial_compile.py PUC

Variants: P = spatial_attention_qkvpacked, U = spatial_attention on the unbound views, C = with
the CLS token. Prints the relative error of the compiled gradients against eager.
"""
import sys, torch
import temporal_kernels as tk
from tests.helpers import packed_qkv, rel_err, DEVICE
variant = sys.argv[1] if len(sys.argv) > 1 else "PUC"
B, T, N, H, D = 2, 4, 197, 4, 64
dtype = torch.bfloat16
gen = torch.Generator().manual_seed(4)
qkv = packed_qkv("packed_nt", B, T, N, H, D, dtype, generator=gen).requires_grad_()
cls_qkv = torch.randn(B, 3, H, D, generator=gen).to(DEVICE, dtype).requires_grad_()
def f(qkv, cls_qkv):
    tot = 0
    if "P" in variant:
        out, cls_out = tk.spatial_attention_qkvpacked(qkv, cls_qkv=cls_qkv if "C" in variant else None, backend="triton")
        tot = tot + out.float().square().sum() + (cls_out.float().sum() if cls_out is not None else 0)
    if "U" in variant:
        q, k, v = qkv.unbind(3)
        res = tk.spatial_attention(q, k, v, cls=tuple(cls_qkv.unbind(1)) if "C" in variant else None, backend="triton")
        out2, cls_out2 = res if isinstance(res, tuple) else (res, None)
        tot = tot + out2.float().square().sum() + (cls_out2.float().sum() if cls_out2 is not None else 0)
    return tot + 0 * cls_qkv.float().sum()
compiled = torch.compile(f, fullgraph=True)
loss = compiled(qkv, cls_qkv)
print("fwd ok", flush=True); torch.cuda.synchronize()
grads = torch.autograd.grad(loss, (qkv, cls_qkv))
torch.cuda.synchronize()
grads_e = torch.autograd.grad(f(qkv, cls_qkv), (qkv, cls_qkv))
print("RESULT", variant, [rel_err(g, w) for g, w in zip(grads, grads_e)], flush=True)
