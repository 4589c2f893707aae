#!/usr/bin/env bash
# GPU check: the test suite on CuPy, the GPU parity tests and the GPU benchmarks, then one summary table.
#
#   scripts/gpu_check.sh            # from anywhere; uses $PYTHON (default: python)
#
# Budget: under 5 minutes on one GPU (the step timeouts add up to 300 s). Exit status:
# 0 all passed, 1 something failed, 2 no usable GPU (nothing was run).
# GPU_CHECK_FORCE=1 runs the steps even without a GPU (to check this script on a CPU
# machine: the GPU tests then skip and the benchmark reports that it needs a GPU).
# GPU_CHECK_TESTS overrides the test paths of step 1 (default: tests).
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TINYLLM_TEST_BACKENDS=numpy,cupy
LOG=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$LOG"' EXIT

"$PY" -c 'import sys; from tinyllm import backend; sys.exit(0 if backend.gpu_available() else 1)'
HAVE_GPU=$?
if [ "$HAVE_GPU" -ne 0 ]; then
    reason=$("$PY" -c 'from tinyllm import backend; print(backend.gpu_problem())')
    echo "gpu_check: no usable GPU on this machine: $reason"
    if [ "${GPU_CHECK_FORCE:-0}" != "1" ]; then
        echo "gpu_check: nothing was run (the CPU suite is: python -m pytest). GPU_CHECK_FORCE=1 runs the steps anyway."
        exit 2
    fi
    echo "gpu_check: GPU_CHECK_FORCE=1: running the steps on the CPU to check this script; GPU results are not real"
fi
"$PY" -c 'from tinyllm import backend; print("gpu_check:", backend.describe("auto"))'

STEPS=()
status=0
# run_step NAME TIMEOUT_S CMD...: runs CMD with a timeout, records status, seconds and a one-line detail
run_step() {
    local name=$1 limit=$2; shift 2
    local out="$LOG/$name.log" t0 t1 rc detail
    echo "gpu_check: [$name] $*"
    t0=$(date +%s)
    timeout "$limit" "$@" >"$out" 2>&1
    rc=$?
    t1=$(date +%s)
    tail -n 40 "$out"
    case $rc in
        0) state=ok ;;
        124) state="TIMEOUT (${limit}s)"; status=1 ;;
        *) state="FAILED (rc=$rc)"; status=1 ;;
    esac
    # pytest's last line ("12 passed, 3 skipped in 4.2s") or the benchmark's last line
    detail=$(grep -E '(passed|failed|error|skipped)' "$out" | tail -n 1 | sed -E 's/=+//g; s/^ +| +$//g')
    [ -z "$detail" ] && detail=$(tail -n 1 "$out" | cut -c1-70)
    STEPS+=("$name|$state|$((t1 - t0))|$detail")
}

# 1. every test, with the xp fixture on NumPy and CuPy (kernels, layers, models, the CPU-side checks of
#    CUDA-graph decoding and of quantised weights); 2. CPU-vs-GPU parity: SmolLM2 logits with the fused
#    kernels on and off, CUDA-graph decode tokens, Q4_1/Q8_0 weights through the fused kernel, GPT loss
#    curve; 3. the benchmarks (fused on/off, CUDA graph on/off, Q4_1 vs float32, against torch/transformers).
run_step "tests-on-cupy" 130 "$PY" -m pytest ${GPU_CHECK_TESTS:-tests} -o addopts="" -p no:cacheprovider -q \
    --ignore tests/test_gpu_parity.py
run_step "gpu-parity" 60 "$PY" -m pytest tests/test_gpu_parity.py -o addopts="" -p no:cacheprovider -q -rs
run_step "gpu-bench" 110 "$PY" benchmarks/gpu_bench.py --quick --summary "$LOG/bench.tsv"
if [ "$HAVE_GPU" -ne 0 ]; then   # forced run on a CPU: the benchmark is expected to refuse (exit 2)
    last=$((${#STEPS[@]} - 1))
    STEPS[$last]=$(echo "${STEPS[$last]}" | sed 's/FAILED (rc=2)/skipped (no GPU)/')
    status=2
fi

# one table: a row per step, then a row per benchmark figure
echo
echo "==================== gpu_check summary ===================="
printf '%-62s %-18s %s\n' item result detail
for row in "${STEPS[@]}"; do
    IFS='|' read -r n s t d <<<"$row"
    printf '%-62s %-18s %s\n' "step: $n" "$s" "${t}s; $d"
done
if [ -s "$LOG/bench.tsv" ]; then
    while IFS=$'\t' read -r m v u; do printf '%-62s %-18s %s\n' "$m" "$v" "$u"; done <"$LOG/bench.tsv"
fi
exit $status
