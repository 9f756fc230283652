#!/usr/bin/env bash
# compute-sanitizer memcheck, racecheck, initcheck and synccheck over every kernel of the Triton
# backend and of the CUDA extension (temporal_kernels._C), forward and backward: the workload is
# scripts/sanitize_workload.py (tiny shapes: every dtype, both packed token orders, causal +
# frame_lens with a fully padded batch element, the short and tiled temporal paths, spatial with
# and without CLS, joint, factorized, partial head-dim blocks, unaligned base pointers).
#
#   bash scripts/sanitize.sh          # on the GPU machine, repo root; logs go to $OUT
#   TK_SANITIZE_QUICK=1 (a subset of shapes), TK_SANITIZE_TIMEOUT_S (per tool, default 150),
#   TK_SANITIZE_TOOLS (default "memcheck racecheck initcheck synccheck"),
#   TK_SANITIZE_BACKENDS (default "triton cuda"; "triton" skips building the extension),
#   TK_SANITIZE_PARALLEL=1 (the tools run side by side, one process each: the sanitizers are
#   host-bound, so on a 16-core machine they take about the time of the slowest alone),
#   SAN_OUT (directory of the logs, default $OUT)
#
# Builds the extension first if it does not import (TEMPORAL_KERNELS_BUILD_EXT=1). The caching
# allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1) so every tensor is its own allocation and
# memcheck sees any access past it. Files: $OUT/sanitize_{memcheck,racecheck,initcheck,synccheck}.log,
# $OUT/sanitize_summary.txt (one line per tool: exit code and the sanitizer's error summary),
# $OUT/sanitize_warmup.log.
set -uo pipefail
OUT=${SAN_OUT:-${OUT:-/tmp/tk_out}}
mkdir -p "$OUT"
PY=${PY:-python}
SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")

if [[ " ${TK_SANITIZE_BACKENDS:-triton cuda} " == *" cuda "* ]] && ! $PY -c "import torch, temporal_kernels._C" 2>/dev/null; then
    echo "building the extension (log: $OUT/sanitize_build.log)"
    if ! TEMPORAL_KERNELS_BUILD_EXT=1 $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/sanitize_build.log" 2>&1; then
        tail -40 "$OUT/sanitize_build.log"
        exit 1
    fi
fi

SCRIPT=scripts/sanitize_workload.py

# One run without a sanitizer first: it JIT-compiles every Triton kernel into Triton's on-disk
# cache, so the sanitized runs load cubins instead of compiling under the sanitizer (which made
# memcheck, racecheck and initcheck outlast a 95 s limit in quick mode).
t0=$(date +%s)
$PY "$SCRIPT" > "$OUT/sanitize_warmup.log" 2>&1
echo "warm-up run (no sanitizer): exit $?, $(( $(date +%s) - t0 )) s"

export PYTORCH_NO_CUDA_MEMORY_CACHING=1
: > "$OUT/sanitize_summary.txt"
run_tool() {
    local tool=$1 log="$OUT/sanitize_$1.log" rc summary
    timeout "${TK_SANITIZE_TIMEOUT_S:-150}" "$SAN" --tool "$tool" --error-exitcode 99 --print-limit 100 $PY "$SCRIPT" > "$log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)
    echo "$tool: exit $rc; ${summary:-no summary line (see $log)}" | tee -a "$OUT/sanitize_summary.txt"
    return $rc
}
status=0
pids=()
for tool in ${TK_SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
    if [ "${TK_SANITIZE_PARALLEL:-0}" = "1" ]; then
        run_tool "$tool" &
        pids+=($!)
    else
        echo "=== $tool ==="
        run_tool "$tool" || status=1
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
exit $status
