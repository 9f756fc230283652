#!/usr/bin/env bash
# compute-sanitizer memcheck, racecheck and synccheck of every op of the CUDA extension
# (temporal_kernels._C), forward and backward, on tiny shapes covering every dtype, the packed
# form, causal + frame_lens, the multi-tile path, partial head-dim chunks and unaligned inputs.
#
#   bash scripts/sanitize.sh          # on the GPU machine, repo root; logs go to $OUT
#
# Builds the extension first if it does not import (TEMPORAL_KERNELS_BUILD_EXT=1). The caching
# allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1) so every tensor is its own allocation and
# memcheck sees any access past it. Files: $OUT/sanitize_{memcheck,racecheck,synccheck}.log,
# $OUT/sanitize_summary.txt (one line per tool: exit code and the sanitizer's error summary).
set -uo pipefail
OUT=${OUT:-/tmp/tk_out}
mkdir -p "$OUT"
PY=${PY:-python}
SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")

if ! $PY -c "import torch, temporal_kernels._C" 2>/dev/null; then
    echo "building the extension (log: $OUT/sanitize_build.log)"
    if ! TEMPORAL_KERNELS_BUILD_EXT=1 $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/sanitize_build.log" 2>&1; then
        tail -40 "$OUT/sanitize_build.log"
        exit 1
    fi
fi

SCRIPT=$(mktemp --suffix=.py)
trap 'rm -f "$SCRIPT"' EXIT
cat > "$SCRIPT" <<'EOF'
import torch
import temporal_kernels as tk

ops = torch.ops.temporal_kernels
dev = "cuda"
cases = [  # (B, T, N, H, D, dtype)
    (3, 7, 3, 2, 40, torch.bfloat16),   # short T, several groups per block
    (3, 8, 5, 2, 64, torch.float16),
    (2, 9, 3, 2, 20, torch.float32),    # partial chunk (scalar loads)
    (2, 20, 1, 2, 256, torch.float64),  # tiles of few frames
    (1, 100, 1, 2, 64, torch.float32),  # long T: row passes x tiles
    (2, 1, 4, 2, 8, torch.float16),     # T = 1
]
for B, T, N, H, D, dtype in cases:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, N, T, 3, H, D, generator=g, dtype=torch.float64).to(dev, dtype).permute(0, 2, 1, 3, 4, 5)
    lens = torch.randint(0, T + 1, (B,), generator=g)
    lens[0] = T
    lens = lens.to(dev)
    for causal in (False, True):
        for frame_lens in (None, lens):
            q, k, v = qkv.unbind(3)
            out, lse = ops.cuda_temporal_fwd(q, k, v, frame_lens, causal, D ** -0.5)
            dout = torch.ones_like(out)
            ops.cuda_temporal_bwd(dout, q, k, v, out, lse, frame_lens, causal, D ** -0.5)
            out, lse = ops.cuda_temporal_qkvpacked_fwd(qkv, frame_lens, causal, D ** -0.5)
            ops.cuda_temporal_qkvpacked_bwd(dout, qkv, out, lse, frame_lens, causal, D ** -0.5)
    # Unaligned base pointers (scalar-load path), through the public API with autograd.
    flat = torch.randn(3 * B * T * N * H * D + 1, generator=g, dtype=torch.float64).to(dev, dtype)
    q, k, v = (x.requires_grad_() for x in flat[1:].view(B, T, N, 3, H, D).unbind(3))
    out = tk.temporal_attention(q, k, v, causal=True, frame_lens=lens, backend="cuda")
    out.backward(torch.ones_like(out))
torch.cuda.synchronize()
print("sanitize workload done")
EOF

export PYTORCH_NO_CUDA_MEMORY_CACHING=1
: > "$OUT/sanitize_summary.txt"
status=0
for tool in memcheck racecheck synccheck; do
    log="$OUT/sanitize_$tool.log"
    echo "=== $tool ==="
    timeout 180 "$SAN" --tool "$tool" --error-exitcode 99 --print-limit 100 $PY "$SCRIPT" > "$log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)
    echo "$tool: exit $rc; ${summary:-no summary line (see $log)}" | tee -a "$OUT/sanitize_summary.txt"
    [ "$rc" -ne 0 ] && status=1
done
exit $status
