#!/usr/bin/env bash
# The GPU checks, in one call, for a lent H100/H200 (under 10 minutes):
#   1. correctness on CUDA: tests/test_cuda.py (the loop sampler against generate, the fused LM
#      head and the tied-embedding gradient in bf16, bf16-mixed training steps) and, when vLLM is
#      installed, the real-engine test in tests/policy/test_vllm_backend.py;
#   2. bf16 training steps on a Qwen2.5-0.5B-shaped model (benchmarks/bench_vs_trl.py --size 0.5b):
#      step time, tokens/s, peak RSS and peak CUDA memory, the update phase's MFU, and the update
#      and generation against this GPU's own matmul throughput and read bandwidth (--utilization);
#      TRL side by side when it is installed.
# Each part's output goes to the terminal and to OUT_DIR (default: gpu-check-<date>), with a
# summary at the end. Record the figures in benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh                    # everything
#   bash benchmarks/gpu_check.sh --steps 6 --out /tmp/gpu-check
#   bash benchmarks/gpu_check.sh --dry-run          # print the commands, run nothing (any machine)
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "options: --python PY (default: python) --out DIR --steps N (default 10, at least 4)"
    echo "         --skip-tests --skip-bench --dry-run -h|--help"
}

PYTHON=python
OUT_DIR="gpu-check-$(date +%Y%m%d-%H%M%S)"
STEPS=10
RUN_TESTS=1
RUN_BENCH=1
DRY_RUN=0
refuse() {
    echo "gpu_check.sh: $1" >&2
    exit 2
}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) [[ $# -ge 2 ]] || refuse "--python needs an interpreter"; PYTHON="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || refuse "--out needs a directory"; OUT_DIR="$2"; shift 2 ;;
        --steps) [[ $# -ge 2 ]] || refuse "--steps needs a number"; STEPS="$2"; shift 2 ;;
        --skip-tests) RUN_TESTS=0; shift ;;
        --skip-bench) RUN_BENCH=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) refuse "unknown option '$1' (--help lists them)" ;;
    esac
done
if ! [[ "$STEPS" =~ ^[0-9]+$ ]] || (( STEPS < 4 )); then
    refuse "--steps must be a whole number >= 4 (3 steps are left out as warm-up), got '$STEPS'"
fi

cd "$(dirname "$0")/.."
TEST_CMD=(env WANDB_MODE=offline HF_HUB_OFFLINE=1 "$PYTHON" -m pytest -q -rs -m "slow or not slow"
    tests/test_cuda.py tests/policy/test_vllm_backend.py)
SIDES=(ours)
if [[ $DRY_RUN == 1 ]] || "$PYTHON" -c "import trl" 2>/dev/null; then SIDES+=(trl); fi
BENCH_CMD=("$PYTHON" benchmarks/bench_vs_trl.py --size 0.5b --device cuda --precision bf16 --threads 4
    --steps "$STEPS" --warmup 3 --repeats 1 --phases --utilization --sides "${SIDES[@]}")

if [[ $DRY_RUN == 1 ]]; then
    [[ $RUN_TESTS == 1 ]] && echo "${TEST_CMD[*]}"
    [[ $RUN_BENCH == 1 ]] && echo "${BENCH_CMD[*]}"
    exit 0
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    refuse "no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False); run it on a GPU machine, or --dry-run to see the commands"
fi

mkdir -p "$OUT_DIR"
"$PYTHON" - > "$OUT_DIR/environment.txt" <<'EOF'
import importlib.util, torch, transformers
print("gpu:", torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__)
print("vllm installed:", importlib.util.find_spec("vllm") is not None, "| trl installed:", importlib.util.find_spec("trl") is not None)
EOF
cat "$OUT_DIR/environment.txt"

status=0
if [[ $RUN_TESTS == 1 ]]; then
    echo "== correctness on CUDA: ${TEST_CMD[*]}"
    "${TEST_CMD[@]}" 2>&1 | tee "$OUT_DIR/tests.txt" || status=1
fi
if [[ $RUN_BENCH == 1 ]]; then
    echo "== bf16 training steps, Qwen2.5-0.5B-shaped: ${BENCH_CMD[*]}"
    "${BENCH_CMD[@]}" --json "$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.txt" || status=1
fi
echo "== summary (files in $OUT_DIR)"
cat "$OUT_DIR/environment.txt"
[[ -f "$OUT_DIR/tests.txt" ]] && tail -n 1 "$OUT_DIR/tests.txt"
[[ -f "$OUT_DIR/bench.txt" ]] && grep -E "^ +(ours|trl|ours/trl)" "$OUT_DIR/bench.txt"
exit $status
