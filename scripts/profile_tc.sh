#!/usr/bin/env bash
# Nsight Compute over scripts/profile_tc.py (device machine; cwd = repo root; $OUT comes back):
# install unless TK_SKIP_INSTALL=1, then one report per kernel, the details page as text.
#   TK_PROFILE_ARGS="--cases spatial196 --backends cuda"  passed to profile_tc.py
#   TK_NCU_SET=full                                       ncu section set
set -uo pipefail
OUT=${OUT:-/tmp/tk_out}
mkdir -p "$OUT"
if [ "${TK_SKIP_INSTALL:-0}" != "1" ]; then
    t0=$(date +%s)
    TEMPORAL_KERNELS_BUILD_EXT=1 python -m pip install -v --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
    echo "install rc=$?, took $(( $(date +%s) - t0 )) s"
fi
eval "ARGS=(${TK_PROFILE_ARGS:-})"
ncu --profile-from-start off --clock-control none --set "${TK_NCU_SET:-full}" -f -o "$OUT/tc" \
    python scripts/profile_tc.py "${ARGS[@]}" > "$OUT/ncu_run.log" 2>&1
echo "ncu rc=$?"
tail -5 "$OUT/ncu_run.log"
ncu --import "$OUT/tc.ncu-rep" --page details --print-units base > "$OUT/ncu_details.txt" 2>&1
ncu --import "$OUT/tc.ncu-rep" --page raw --csv \
    --metrics gpu__time_duration.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__inst_executed_pipe_tensor_op_hmma.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem \
    > "$OUT/ncu_summary.csv" 2>&1
rm -f "$OUT/tc.ncu-rep"
wc -l "$OUT"/ncu_*
