#!/usr/bin/env bash
# Issue 9: the fused ops under DDP and FSDP2 on two GPUs, in one device call (nvidia-h200-x2):
#
#   bash scripts/multi_gpu.sh            # from the repo root; logs come back in $OUT
#
# Steps: environment report (nvidia-smi, torch, GPU count, NCCL) -> editable install (without the
# CUDA extension: tk.convert runs the Triton kernels; TEMPORAL_KERNELS_BUILD_EXT=1 builds it, so
# the next step covers the CUDA backend too) -> the second-device tests of issue 8 (every tensor
# on cuda:1 while cuda:0 is current; TK_SECOND_DEVICE=0 skips them; their output goes to
# console.txt, a line to summary.txt; informational) -> scripts/multi_gpu.py under torchrun with
# 2 processes: DDP, FSDP2, both under torch.compile (all float32, checked against one process
# within SPEC §3's 1e-5) -> a bfloat16 run of both (informational: it does not decide the exit
# code). Each run has its own timeout, cut to what is left of TK_DEADLINE_S (default 530 s).
# Files in $OUT (8): env.txt install.log ddp.log fsdp.log compile.log bf16.log console.txt
# summary.txt. Exit code 0 iff the three float32 runs printed "MULTI_GPU: PASS".
#
# Knobs (environment): NPROC=2, TK_SKIP_INSTALL=1, TK_DEADLINE_S=530, TEMPORAL_KERNELS_BUILD_EXT
# (default 0 here), PY (default python, else python3), TK_MULTI_GPU_ARGS (extra script arguments),
# TK_DEVICE=cpu (dry run on a CPU machine: gloo, reference backend).
set -uo pipefail
# NVLink multicast must stay off on the shared multi-GPU hosts (.library/device/KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the tree even if the install fails
export TEMPORAL_KERNELS_BUILD_EXT=${TEMPORAL_KERNELS_BUILD_EXT:-0}
OUT=${OUT:-/tmp/tk_multi_gpu}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=${TK_DEADLINE_S:-530}
NPROC=${NPROC:-2}
PY=${PY:-$(command -v python >/dev/null && echo python || echo python3)}
EXTRA=${TK_MULTI_GPU_ARGS:-}
DEVICE=${TK_DEVICE:-cuda}  # cpu: a dry run of this script with gloo (no GPU needed)

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
section() { echo; echo "=== $* ($(( $(date +%s) - START )) s elapsed) ===" | tee -a "$OUT/console.txt"; }

section "environment"
{
    nvidia-smi || echo "nvidia-smi failed"
    nvidia-smi topo -m 2>/dev/null || true
    $PY - <<'PYEOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpus", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print("nccl", torch.cuda.nccl.version() if torch.cuda.is_available() else "n/a")
for name in ("triton", "transformers"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "MISSING", exc)
PYEOF
    env | grep -E '^(NCCL_|TORCH_SYMM|NVSHMEM_)' | sort
} 2>&1 | tee "$OUT/env.txt"

if [ "${TK_SKIP_INSTALL:-0}" != 1 ]; then
    section "install"
    $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1
    echo "pip install rc=$?" | tee -a "$OUT/install.log"
    tail -2 "$OUT/install.log"
fi

declare -A RC
run() {  # run NAME PLANNED_TIMEOUT_S ARGS...
    local name=$1 planned=$2
    shift 2
    local budget
    budget=$(left)
    budget=$(( budget - 5 < planned ? budget - 5 : planned ))
    section "$name (timeout ${budget} s): $*"
    if [ "$budget" -lt 20 ]; then
        echo "MULTI_GPU: FAIL $name not run: out of time" | tee -a "$OUT/$name.log" "$OUT/console.txt"
        RC[$name]=124
        return
    fi
    # shellcheck disable=SC2086
    timeout -k 10 "$budget" $PY -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
        scripts/multi_gpu.py --device "$DEVICE" --log-file "$OUT/$name.log" "$@" $EXTRA 2>&1 | tee -a "$OUT/console.txt"
    RC[$name]=${PIPESTATUS[0]}
    if [ "${RC[$name]}" = 124 ] || [ "${RC[$name]}" = 137 ]; then
        echo "MULTI_GPU: FAIL $name timed out after ${budget} s" | tee -a "$OUT/$name.log" "$OUT/console.txt"
    fi
}

SECOND_DEVICE="not run"
if [ "${TK_SECOND_DEVICE:-1}" = 1 ] && [ "$DEVICE" = cuda ]; then
    section "second-device tests (tests/test_gpu_reliability.py -k second_device)"
    XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 4")
    # shellcheck disable=SC2086
    timeout -k 10 "$(( $(left) / 4 ))" $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu_reliability.py \
        -k second_device $XDIST 2>&1 | tee -a "$OUT/console.txt"
    SECOND_DEVICE="pytest rc=${PIPESTATUS[0]}: $(grep -E "(passed|failed|skipped)( |,).* in " "$OUT/console.txt" | tail -1)"
fi

run ddp 150 --mode ddp
run fsdp 120 --mode fsdp
run compile 200 --mode both --compile
run bf16 60 --mode both --dtype bfloat16

section "summary"
{
    status=PASS
    for name in ddp fsdp compile bf16; do
        line=$(grep -h "^MULTI_GPU:" "$OUT/$name.log" 2>/dev/null | tail -1)
        echo "$name rc=${RC[$name]:-?}: ${line:-no MULTI_GPU line (crashed? see console.txt)}"
        if [ "$name" != bf16 ] && { [ "${RC[$name]:-1}" != 0 ] || [[ "$line" != "MULTI_GPU: PASS"* ]]; }; then
            status=FAIL
        fi
    done
    echo "second-device tests (informational): $SECOND_DEVICE"
    echo "MULTI_GPU_JOB: $status (float32 ddp, fsdp, compile; bf16 informational) in $(( $(date +%s) - START )) s"
} | tee "$OUT/summary.txt"
grep -q "MULTI_GPU_JOB: PASS" "$OUT/summary.txt"
