#!/usr/bin/env bash
# The one script the lead runs on the GPU machine (device tool; cwd = repo root; $OUT comes back).
#
#   bash scripts/gpu_job.sh
#
# Steps: environment report -> editable install (builds the CUDA extension when csrc/ has
# sources; build time logged) -> GPU test suite (tee'd to $OUT/tests.log; failures do not stop
# the job) -> benchmarks (tee'd to $OUT/bench.log) -> results packed into $OUT/results.tar.gz.
# Files in $OUT (at most 8): env.txt build.log tests.log bench.log results.tar.gz results.csv
# PERFORMANCE.md summary.txt. Unpack on the lead's machine with
#   tar -xzf results.tar.gz -C benchmarks/results      # -> benchmarks/results/<gpu>/
#   python -m benchmarks.report                        # -> benchmarks/results/PERFORMANCE.md
#   python -m benchmarks.backend_table                 # -> temporal_kernels/_measured.py (backend=None's
#                                                      #    table; CI fails while it is stale)
#
# Knobs (environment):
#   TK_SKIP_INSTALL=1     skip the pip install (machine still warm from a previous call)
#   TK_SKIP_TESTS=1       skip the test suite
#   TK_SKIP_BENCH=1       skip the benchmarks
#   TK_E2E=1              first run the end-to-end models (benchmarks.e2e_timesformer with
#                         TK_E2E_ARGS, default "--compile --profile"; benchmarks.e2e_mini
#                         unless TK_E2E_MINI=0) into $OUT/e2e_*.{json,log}; half of what is
#                         left, all of it when it is the job's only step
#   TK_PYTEST_ARGS="..."  extra pytest arguments, e.g. "-k temporal" (shell-quoted words allowed)
#   TK_TEST_TIMEOUT=300   per-test timeout (pytest-timeout), seconds
#   TK_TEST_BUDGET_S=...  the test suite's wall budget (default: a third of what is left when the
#                         benchmarks run too, all of it otherwise)
#   TK_SANITIZE=1         run scripts/sanitize.sh (TK_SANITIZE_* knobs pass through; default quick,
#                         Triton only, tools side by side) in the background from the install
#                         on, beside the tests; waited for before the benchmarks, which must run
#                         alone. Logs packed into $OUT/sanitize.tar.gz
#   TK_TEST_SHARD=i/n     run every n-th test from the i-th (tests/conftest.py): the GPU suite takes
#                         ~12 min with 6 workers, so run it as 1/2 and 2/2 in two device calls
#   TK_BENCH_ARGS="..."   extra benchmark arguments, e.g. "--quick" or "--ops temporal"
#   TK_DEADLINE_S=570     the whole job's wall budget; the test suite and the benchmarks are cut
#                         (SIGINT: the benchmark writes the rows it has) to finish within it
#   TK_COMMIT=<sha>       commit recorded in the results when the tree is not a git checkout
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/tk_out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=${TK_DEADLINE_S:-570}
PY=${PY:-python}

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
section() { echo; echo "=== $* ($(( $(date +%s) - START )) s elapsed) ==="; }

if [ -z "${TK_COMMIT:-}" ]; then
    TK_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then TK_COMMIT="$TK_COMMIT-dirty"; fi
    export TK_COMMIT
fi

section "environment"
{
    nvidia-smi || echo "nvidia-smi failed"
    echo
    $PY - <<'PYEOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("triton", "matplotlib", "tqdm", "pytest", "pytest_benchmark", "pytest_timeout", "transformers"):
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING", exc)
PYEOF
    echo "commit $TK_COMMIT"
    command -v nvcc >/dev/null && nvcc --version | tail -2
} 2>&1 | tee "$OUT/env.txt"

if [ "${TK_SKIP_INSTALL:-0}" != "1" ]; then
    section "install (pip install --no-build-isolation --no-deps -e .)"
    t0=$(date +%s)
    # On the GPU machine the extension must build: TEMPORAL_KERNELS_BUILD_EXT=1 fails loudly.
    TEMPORAL_KERNELS_BUILD_EXT=${TEMPORAL_KERNELS_BUILD_EXT:-1} $PY -m pip install -v --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
    rc=$?
    t1=$(date +%s)
    echo "install rc=$rc, took $(( t1 - t0 )) s (CUDA extension built if csrc/ has sources)" | tee -a "$OUT/build.log"
    grep -E "temporal_kernels:|error|Error" "$OUT/build.log" | tail -20
fi
$PY -c "import temporal_kernels as tk; from temporal_kernels import _extension as e; print('available backends:', tk.available_backends(), e.load_error())" 2>&1 | tee -a "$OUT/env.txt"

SAN_PID=
if [ "${TK_SANITIZE:-0}" = "1" ]; then
    section "sanitizers (background)"
    mkdir -p "$OUT/sanitize"
    SAN_OUT="$OUT/sanitize" TK_SANITIZE_QUICK=${TK_SANITIZE_QUICK:-1} TK_SANITIZE_BACKENDS=${TK_SANITIZE_BACKENDS:-triton} \
        TK_SANITIZE_PARALLEL=${TK_SANITIZE_PARALLEL:-1} bash scripts/sanitize.sh > "$OUT/sanitize/sanitize.log" 2>&1 &
    SAN_PID=$!
fi
finish_sanitize() {
    [ -z "$SAN_PID" ] && return
    section "waiting for the sanitizers"
    wait "$SAN_PID"
    echo "sanitize.sh rc=$?"
    cat "$OUT/sanitize/sanitize.log"
    tar -czf "$OUT/sanitize.tar.gz" -C "$OUT" sanitize && rm -rf "$OUT/sanitize"
    SAN_PID=
}

if [ "${TK_E2E:-0}" = "1" ]; then
    section "end-to-end models (issue 7)"
    eval "E2E_EXTRA=(${TK_E2E_ARGS:---compile --profile})"
    e2e_budget=$(( $(left) / 2 ))
    [ "${TK_E2E_MINI:-1}" = "1" ] || [ "${TK_SKIP_TESTS:-0}${TK_SKIP_BENCH:-0}" != "11" ] || e2e_budget=$(( $(left) - 20 ))
    timeout -s INT -k 20 "$e2e_budget" $PY -m benchmarks.e2e_timesformer "${E2E_EXTRA[@]}" --out "$OUT/e2e_timesformer.json" 2>&1 | tee "$OUT/e2e_timesformer.log"
    if [ "${TK_E2E_MINI:-1}" = "1" ]; then
        timeout -s INT -k 20 "$(( $(left) / 2 ))" $PY -m benchmarks.e2e_mini --budget 1.5 --out "$OUT/e2e_mini.json" 2>&1 | tee "$OUT/e2e_mini.log"
    fi
fi

if [ "${TK_SKIP_TESTS:-0}" != "1" ]; then
    section "tests"
    eval "PYTEST_EXTRA=(${TK_PYTEST_ARGS:-})"
    budget=$(( $(left) - ${TK_BENCH_RESERVE_S:-0} - 30 ))
    if [ "${TK_SKIP_BENCH:-0}" != "1" ]; then budget=$(( budget / 3 )); fi  # leave most of the budget to benchmarks
    budget=${TK_TEST_BUDGET_S:-$budget}
    [ "$budget" -lt 30 ] && budget=30
    echo "test budget ${budget} s"
    # -v: a line per test (PASSED/FAILED/...) as it finishes, so the log names the failures even
    # when the time budget cuts the run before pytest's own summary
    timeout -s INT -k 20 "$budget" $PY -m pytest -v -rfE tests --timeout="${TK_TEST_TIMEOUT:-300}" "${PYTEST_EXTRA[@]}" 2>&1 | tee "$OUT/tests.log"
    echo "tests rc=${PIPESTATUS[0]} (124/130 = cut by the time budget)" | tee -a "$OUT/tests.log"
fi

finish_sanitize

if [ "${TK_SKIP_BENCH:-0}" != "1" ]; then
    section "benchmarks"
    SLUG=$($PY -c "from benchmarks.env import gpu_slug; print(gpu_slug())")
    RESULTS="benchmarks/results/$SLUG"
    eval "BENCH_EXTRA=(${TK_BENCH_ARGS:-})"
    budget=$(( $(left) - 25 ))
    [ "$budget" -lt 30 ] && budget=30
    echo "benchmark budget ${budget} s -> $RESULTS"
    timeout -s INT -k 20 "$budget" $PY -m benchmarks.run --out "$RESULTS" "${BENCH_EXTRA[@]}" 2>&1 | tee "$OUT/bench.log"
    echo "benchmarks rc=${PIPESTATUS[0]} (130/124 = cut by the time budget; rows measured so far are kept)" | tee -a "$OUT/bench.log"
    if [ -d "$RESULTS" ]; then
        tar -czf "$OUT/results.tar.gz" -C benchmarks/results "$SLUG"
        cp "$RESULTS/results.csv" "$OUT/" 2>/dev/null
        cp "$RESULTS/PERFORMANCE.md" "$OUT/" 2>/dev/null
        grep -A1000 "^summary" "$OUT/bench.log" > "$OUT/summary.txt" 2>/dev/null
        ls -la "$OUT"
    fi
fi
section "done"
