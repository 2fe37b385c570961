"""benchmarks/gpu_acceptance.sh on the CPU: --cpu-smoke runs every step tiny; the budget, the exit
codes and the archive that a lent GPU machine brings back."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_acceptance.sh")
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def run(args, tmp_path, **env):
    environ = dict(os.environ, PYTHON=sys.executable, **env)
    environ.pop("TRITON_INTERPRET", None)  # the script's steps decide for themselves
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=500, env=environ,
                          cwd=str(tmp_path))


def archive_names(out):
    with tarfile.open(out / "gpu_results.tgz") as tar:
        return {name.lstrip("./") for name in tar.getnames()}


def test_without_a_gpu_it_stops_with_status_2(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    result = run([str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2 and "needs an NVIDIA GPU" in result.stderr
    assert not (tmp_path / "out").exists()


def test_spent_budget_fails_every_step_but_still_packs_the_results(tmp_path):
    out = tmp_path / "out"
    result = run(["--cpu-smoke", str(out)], tmp_path, TOTAL_BUDGET_S="5")
    assert result.returncode == 1, result.stdout + result.stderr
    status = (out / "status.tsv").read_text().splitlines()[1:]
    assert status and all("skipped (budget spent)" in line for line in status)
    summary = (out / "summary.md").read_text()
    assert "| doctor | skipped (budget spent) |" in summary
    assert {"summary.md", "status.tsv", "logs/doctor.log"} <= archive_names(out)


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_packs_one_archive(tmp_path):
    out = tmp_path / "out"
    result = run(["--cpu-smoke", str(out)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [line.split("\t") for line in (out / "status.tsv").read_text().splitlines()[1:]]
    assert [s[0] for s in steps] == ["doctor", "gpu_tests", "kernel_tests", "bench_pgd", "bench_losses", "bench_train"]
    assert all(s[1] == "ok" for s in steps), steps
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["ok"] and doctor["checks"]
    names = archive_names(out)
    assert {"summary.md", "doctor.json", "bench_pgd.json", "bench_losses.json", "bench_train.json",
            "logs/doctor.log", "logs/bench_train.log"} <= names
    summary = (out / "summary.md").read_text()
    assert "## doctor (all passed" in summary and "## bench_train.json" in summary
