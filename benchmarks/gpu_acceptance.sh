#!/usr/bin/env bash
# GPU acceptance run: `ciard-fast doctor`, the GPU tests, the kernel tests and the three benchmarks
# at GPU sizes, in under 8 minutes, then everything packed into OUT/gpu_results.tgz beside
# OUT/summary.md (a lent GPU machine may bring back only a few files: those two are enough).
#
#   bash benchmarks/gpu_acceptance.sh [OUT]               # OUT default: benchmarks/results/<date>-<gpu>
#   bash benchmarks/gpu_acceptance.sh --cpu-smoke [OUT]   # every step tiny, on the CPU: tests this script
#
# Runs unchanged on a bare device image that has its own python3 with torch and triton and nothing
# installable: if ciard_fast is not importable from this checkout it is installed with
# `pip install --no-deps --no-build-isolation -e .` (torch is never touched), and a torchattacks
# wheel under .whl/ is installed with --no-deps when torchattacks is missing (else its bench row is
# skipped). PYTHON overrides the interpreter (default: python3, else python).
#
# Each step runs under its own time limit (capped by what is left of the 8 minutes); a failing or
# timed-out step is reported and the run goes on; the script exits 1 at the end if any step failed.
# Without a usable CUDA GPU (and without --cpu-smoke) it stops at once with exit status 2.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SMOKE=0
if [[ "${1:-}" == "--cpu-smoke" ]]; then SMOKE=1; shift; fi
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
TOTAL_BUDGET_S="${TOTAL_BUDGET_S:-480}"

die() { echo "gpu_acceptance: ERROR: $*" >&2; exit 2; }
[[ -n "$PYTHON" ]] || die "no python3 or python on PATH (set PYTHON=...)"

# ---- a GPU, or a loud stop -------------------------------------------------------------------------
if (( SMOKE )); then
    GPU_NAME="cpu-smoke"
    DEVICE=cpu
else
    command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this script needs an NVIDIA GPU (or --cpu-smoke)"
    GPU_NAME="$("$PYTHON" -c 'import torch, sys
if not torch.cuda.is_available():
    sys.exit("torch " + torch.__version__ + " sees no CUDA device (CPU-only build, or no GPU)")
print(torch.cuda.get_device_name(0))')" || die "no usable CUDA GPU (see the line above)"
    DEVICE=cuda
fi

SLUG="$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/^nvidia //; s/[^a-z0-9]+/-/g; s/^-|-$//g')"
OUT="${1:-benchmarks/results/$(date -u +%Y-%m-%d)-$SLUG}"
mkdir -p "$OUT/logs" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
STATUS="$OUT/status.tsv"
printf 'step\tstatus\tseconds\tlog\n' > "$STATUS"
echo "gpu_acceptance: $GPU_NAME -> $OUT ($PYTHON)"
(( SMOKE )) || nvidia-smi > "$OUT/logs/nvidia-smi.txt" 2>&1 || true

START=$SECONDS
FAILED=0

# step NAME BUDGET_S COMMAND...: run with a time limit, log to $OUT/logs/NAME.log, record status.
step() {
    local name="$1" budget="$2"; shift 2
    local left=$(( TOTAL_BUDGET_S - (SECONDS - START) ))
    local log="$OUT/logs/$name.log"
    if (( left < 10 )); then
        echo "[$name] SKIPPED: the ${TOTAL_BUDGET_S} s budget is spent" | tee "$log"
        printf '%s\tskipped (budget spent)\t0\t%s\n' "$name" "logs/$name.log" >> "$STATUS"
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
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "logs/$name.log" >> "$STATUS"
    echo "[$name] $status in ${took} s; last lines of logs/$name.log:"
    tail -n 15 "$log" | sed 's/^/    /'
}

# ---- install what is missing, never torch ------------------------------------------------------------
importable_here() {  # is ciard_fast importable, and from this checkout?
    "$PYTHON" - "$REPO" <<'PY' >/dev/null 2>&1
import os, sys
import ciard_fast, ciard_fast.kernels
sys.exit(0 if os.path.realpath(ciard_fast.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep) else 1)
PY
}
if ! importable_here; then
    if (( SMOKE )); then
        step install 5 sh -c "echo 'ciard_fast is not importable from $REPO; --cpu-smoke installs nothing: run pip install -e . first'; exit 1"
    else
        step install 120 "$PYTHON" -m pip install --no-deps --no-build-isolation -e .
    fi
fi
WHEEL="$(ls "$REPO"/.whl/torchattacks-*.whl 2>/dev/null | head -n 1 || true)"
if ! "$PYTHON" -c 'import torchattacks' >/dev/null 2>&1; then
    if [[ -n "$WHEEL" ]] && (( ! SMOKE )); then
        step install_torchattacks 60 "$PYTHON" -m pip install --no-deps "$WHEEL"
    else
        echo "[torchattacks] not installed${WHEEL:+ (wheel $WHEEL not installed in --cpu-smoke)}: bench_pgd skips its row"
    fi
fi

# ---- doctor first: versions, kernel self-checks, bf16, CUDA graphs ----------------------------------
step doctor 75 "$PYTHON" -m ciard_fast doctor --device "$DEVICE" --json "$OUT/doctor.json"

# ---- tests and benchmarks; the last benchmark gets whatever is left of the total -----------------------
KERNEL_TESTS=(tests/test_kernels_pgd.py tests/test_kernels_loss.py tests/test_kernels_compile.py
              tests/test_kernels_native.py tests/test_kernels_selfcheck.py tests/test_graph_cache.py)
if (( SMOKE )); then
    step gpu_tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_performance_options.py
    step kernel_tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_kernels_selfcheck.py
    step bench_pgd 60 "$PYTHON" benchmarks/bench_pgd.py --batch 4 --steps 1 --repeats 1 --warmup 0 --threads 1 \
        --json "$OUT/bench_pgd.json"
    step bench_losses 60 "$PYTHON" benchmarks/bench_losses.py --batch 8 --classes 10 --repeats 1 --warmup 0 \
        --threads 1 --json "$OUT/bench_losses.json"
    step bench_train 90 "$PYTHON" benchmarks/bench_train.py --batch 4 --image-size 16 --repeats 1 --warmup 0 \
        --profile-steps 0 --threads 1 --json "$OUT/bench_train.json"
else
    step gpu_tests 80 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests
    step kernel_tests 80 "$PYTHON" -m pytest -q -p no:cacheprovider -m "not gpu" "${KERNEL_TESTS[@]}"
    step bench_pgd 100 "$PYTHON" benchmarks/bench_pgd.py --full --json "$OUT/bench_pgd.json"
    step bench_losses 40 "$PYTHON" benchmarks/bench_losses.py --full --json "$OUT/bench_losses.json"
    step bench_train_b128 50 "$PYTHON" benchmarks/bench_train.py --full --batch 128 --json "$OUT/bench_train_b128.json"
    step bench_train_b512 "$TOTAL_BUDGET_S" "$PYTHON" benchmarks/bench_train.py --full --batch 512 \
        --json "$OUT/bench_train_b512.json"
fi

# ---- summary -------------------------------------------------------------------------------------------
"$PYTHON" - "$OUT" "$GPU_NAME" "$(( SECONDS - START ))" <<'PY' || FAILED=1
"""Write OUT/summary.md: the step statuses, doctor's checks, then one Markdown table per benchmark table."""
import glob, json, os, sys

out, gpu, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
META = {"benchmark", "date", "device", "device_type", "torch", "triton", "python", "memory_gib", "cuda",
        "capability", "cpu_threads", "logical_cores", "table"}


def cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value).replace("|", "/").replace("\n", " ")


lines = [f"# GPU acceptance run: {gpu}", "", f"Total time: {seconds} s. Logs under `logs/` in gpu_results.tgz.", "",
         "| step | status | seconds |", "| --- | --- | ---: |"]
with open(os.path.join(out, "status.tsv")) as f:
    for row in list(f)[1:]:
        name, status, took, _ = row.rstrip("\n").split("\t")
        lines.append(f"| {name} | {status} | {took} |")
doctor = os.path.join(out, "doctor.json")
if os.path.isfile(doctor):
    with open(doctor) as f:
        report = json.load(f)
    lines += ["", f"## doctor ({'all passed' if report.get('ok') else 'FAILURES'}, {report.get('seconds')} s)", "",
              "| check | status | detail |", "| --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['status']} | {cell(c['detail'])} |" for c in report.get("checks", [])]
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    if path == doctor:
        continue
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
        lines += ["", f"### {table or 'rows'}", "", "| " + " | ".join(columns) + " |",
                  "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"wrote {os.path.join(out, 'summary.md')}")
PY

# ---- one archive of everything, beside the summary ----------------------------------------------------------
# written outside $OUT and then moved in (benchmarks/pack_results.sh says why)
bash "$REPO/benchmarks/pack_results.sh" "$OUT" \
    || { echo "gpu_acceptance: could not write $OUT/gpu_results.tgz" >&2; FAILED=1; }

echo
column -t -s $'\t' "$STATUS" 2>/dev/null || cat "$STATUS"
if (( FAILED )); then
    echo "gpu_acceptance: FAILED (see $OUT/summary.md; everything is in $OUT/gpu_results.tgz)" >&2
    exit 1
fi
echo "gpu_acceptance: all steps passed in $(( SECONDS - START )) s; $OUT/summary.md and $OUT/gpu_results.tgz"
