M='--metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,regex:sm__pipe_.*cycles_active.avg.pct_of_peak_sustained_active,regex:sm__inst_executed_pipe_.*.avg.pct_of_peak_sustained_active'
S='--section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats'
n() { echo "=== $1: $2 ==="; timeout 100 ncu --clock-control none --kernel-name "regex:$2" --launch-skip 1 --launch-count 1 $S $M python scripts/ncu_op.py $3 2>&1 | grep -v '^==PROF==' | grep -v '^ *-' ; }
n T256-triton '_temporal_attn_fwd_tiled' '--op temporal --shape 1,256,64,12,64 --backend triton'
n T256-cuda 'flash_fwd_wgmma' '--op temporal --shape 1,256,64,12,64 --backend cuda'
n T256-fa2 '^flash_fwd_kernel' '--op temporal --shape 1,256,64,12,64 --peer'
n S196-triton '_attn_fwd_kernel' '--op spatial --shape 8,8,196,12,64 --backend triton'
n S196-cuda 'flash_fwd_wgmma' '--op spatial --shape 8,8,196,12,64 --backend cuda'
