# Shared by the GPU check scripts (bench/gpu_*.sh); sourced, not run. Each script is one device call: its rows'
# time limits add up to at most BUDGET seconds (8 minutes, under the 10-minute limit of one call, with margin for
# starting the machine's Python and for the summary), and it fails itself if they do not.
#   bash bench/gpu_X.sh            # on a GPU: writes $OUT/gpu_X.log (or ./gpu_X.log)
#   DRY=1 bash bench/gpu_X.sh      # the same commands on tiny shapes, on a CPU (CI: tests/test_bench.py); each
#                                  # row prints the limit it gets on a GPU
# The GPU machine has torch, transformers and peft preinstalled and no network: ftlab runs from src/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
NAME="$(basename "$0" .sh)"
LOG="${OUT:-.}/$NAME.log"
BUDGET=480
ALLOWED=0
FAILED=0
: > "$LOG"
row() {  # row LIMIT_S COMMAND...: one figure under its own time limit, so one slow case spares the others
    local limit=$1; shift
    ALLOWED=$((ALLOWED + limit))
    echo "### $* (limit ${limit}s)" | tee -a "$LOG"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep -v -i "warn" | tee -a "$LOG"
    local status=${PIPESTATUS[0]}
    echo "    (took $((SECONDS - start))s of ${limit}s)" | tee -a "$LOG"
    if [ "$status" -ne 0 ]; then echo "!!! exit status $status" | tee -a "$LOG"; FAILED=1; fi
}
header() {
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
      python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
    } 2>&1 | tee -a "$LOG"
}
gpu_gib() {  # the GPU's memory in GiB (0 without one)
    python -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30) if torch.cuda.is_available() else 0)"
}
finish() {
    local result="every row ran"; [ "$FAILED" -eq 0 ] || result="some row failed (!!! above)"
    if [ "$ALLOWED" -gt "$BUDGET" ]; then result="the rows' limits add up to more than ${BUDGET}s"; FAILED=1; fi
    echo "### done: $result; rows allowed ${ALLOWED}s of ${BUDGET}s on a GPU" | tee -a "$LOG"
    exit "$FAILED"
}
