#!/usr/bin/env bash
# GPU acceptance run: the GPU tests, the kernel tests and the three benchmarks at GPU sizes, in
# under 8 minutes, with every JSON, every log and a Markdown summary written to one folder.
#
#   bash benchmarks/gpu_acceptance.sh [OUT]      # OUT default: benchmarks/results/<date>-<gpu>
#
# Each step runs under its own time budget (capped by what is left of the 8 minutes); a failing
# or timed-out step is reported and the run goes on, and the script exits non-zero at the end if
# any step failed. Without a usable CUDA GPU it stops at once with exit status 2.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python}"
TOTAL_BUDGET_S=480

die() { echo "gpu_acceptance: ERROR: $*" >&2; exit 2; }

# ---- a GPU, or a loud stop -------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this script needs an NVIDIA GPU"
GPU_NAME="$("$PYTHON" -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit("torch " + torch.__version__ + " sees no CUDA device (CPU-only build, or no GPU)")
print(torch.cuda.get_device_name(0))')" || die "no usable CUDA GPU (see the line above)"
"$PYTHON" -c 'import ciard_fast, ciard_fast.kernels' 2>/dev/null \
    || die "ciard_fast is not importable: run 'pip install -e .' in $REPO first (torch is left alone)"

SLUG="$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/^nvidia //; s/[^a-z0-9]+/-/g; s/^-|-$//g')"
OUT="${1:-benchmarks/results/$(date -u +%Y-%m-%d)-$SLUG}"
mkdir -p "$OUT/logs" || die "cannot create $OUT"
STATUS="$OUT/status.tsv"
printf 'step\tstatus\tseconds\tlog\n' > "$STATUS"
echo "gpu_acceptance: $GPU_NAME -> $OUT"
nvidia-smi > "$OUT/logs/nvidia-smi.txt" 2>&1 || true

START=$SECONDS
FAILED=0

# step NAME BUDGET_S COMMAND...: run with a time limit, log to $OUT/logs/NAME.log, record status.
step() {
    local name="$1" budget="$2"; shift 2
    local left=$(( TOTAL_BUDGET_S - (SECONDS - START) ))
    local log="$OUT/logs/$name.log"
    if (( left < 10 )); then
        echo "[$name] SKIPPED: the ${TOTAL_BUDGET_S} s budget is spent" | tee "$log"
        printf '%s\tskipped (budget spent)\t0\t%s\n' "$name" "$log" >> "$STATUS"
        FAILED=1
        return
    fi
    (( budget > left )) && budget=$left
    echo "[$name] (≤ ${budget} s) $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$budget" "$@" > "$log" 2>&1
    rc=$?
    local took=$(( SECONDS - t0 )) status
    case $rc in
        0) status="ok" ;;
        124|137) status="TIMEOUT after ${budget} s"; FAILED=1 ;;
        *) status="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$log" >> "$STATUS"
    echo "[$name] $status in ${took} s; last lines of $log:"
    tail -n 15 "$log" | sed 's/^/    /'
}

# ---- tests -----------------------------------------------------------------------------------------
step gpu_tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests
step kernel_tests 100 "$PYTHON" -m pytest -q -p no:cacheprovider -m "not gpu" \
    tests/test_kernels_pgd.py tests/test_kernels_loss.py tests/test_kernels_compile.py tests/test_kernels_native.py

# ---- benchmarks (GPU sizes); the last one gets whatever is left of the total ----------------------
step bench_pgd 110 "$PYTHON" benchmarks/bench_pgd.py --full --json "$OUT/bench_pgd.json"
step bench_losses 50 "$PYTHON" benchmarks/bench_losses.py --full --json "$OUT/bench_losses.json"
step bench_train_b128 60 "$PYTHON" benchmarks/bench_train.py --full --batch 128 --json "$OUT/bench_train_b128.json"
step bench_train_b512 "$TOTAL_BUDGET_S" "$PYTHON" benchmarks/bench_train.py --full --batch 512 --json "$OUT/bench_train_b512.json"

# ---- summary ---------------------------------------------------------------------------------------
"$PYTHON" - "$OUT" "$GPU_NAME" "$(( SECONDS - START ))" <<'PY' || FAILED=1
"""Write OUT/summary.md: the step statuses, then one Markdown table per benchmark table."""
import glob, json, os, sys

out, gpu, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
META = {"benchmark", "date", "device", "device_type", "torch", "triton", "python", "memory_gib", "cuda",
        "capability", "cpu_threads", "logical_cores", "table"}


def cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value).replace("|", "/")


lines = [f"# GPU acceptance run: {gpu}", "", f"Total time: {seconds} s. Logs under `logs/`.", "",
         "| step | status | seconds |", "| --- | --- | ---: |"]
with open(os.path.join(out, "status.tsv")) as f:
    for row in list(f)[1:]:
        name, status, took, _ = row.rstrip("\n").split("\t")
        lines.append(f"| {name} | {status} | {took} |")
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    with open(path) as f:
        payload = json.load(f)
    lines += ["", f"## {os.path.basename(path)}", "",
              f"{payload.get('device')} · torch {payload.get('torch')} · triton {payload.get('triton')} · "
              f"CUDA {payload.get('cuda')} · {payload.get('date')}"]
    tables = {}
    for row in payload.get("rows", []):
        tables.setdefault(row.get("table", ""), []).append(row)
    for table, rows in tables.items():
        columns = []
        for row in rows:
            columns += [k for k in row if k not in META and k not in columns]
        lines += ["", f"### {table or 'rows'}" if table else "", "| " + " | ".join(columns) + " |",
                  "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {os.path.join(out, 'summary.md')}")
PY

echo
cat "$STATUS" | column -t -s $'\t' 2>/dev/null || cat "$STATUS"
if (( FAILED )); then
    echo "gpu_acceptance: FAILED (see $OUT/status.tsv and $OUT/logs/)" >&2
    exit 1
fi
echo "gpu_acceptance: all steps passed in $(( SECONDS - START )) s; results in $OUT"
