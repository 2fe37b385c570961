"""`ciard-fast doctor`: every check reported with a status; any failure makes it exit 1."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from ciard_fast import cli, diagnostics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED = {"versions", "device", "bf16+channels_last", "cuda_graphs", "dali", "nccl", "throughput"}


@pytest.mark.slow
def test_doctor_on_this_cpu_passes_and_lists_every_check(tmp_path):
    out = tmp_path / "doctor.json"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # doctor sets it for its own kernel subprocess
    result = subprocess.run([sys.executable, "-m", "ciard_fast", "doctor", "--device", "cpu", "--json", str(out)],
                            capture_output=True, text=True, timeout=240, cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    payload = json.loads(out.read_text())
    assert payload["ok"] is True and payload["device"] == "cpu"
    names = {c["name"] for c in payload["checks"]}
    assert EXPECTED <= names, names
    kernels = [c for c in payload["checks"] if c["name"].startswith("kernel:")]
    if kernels:  # triton importable: every op, fp32 and bf16, checked under the interpreter
        assert {c["data"]["op"] for c in kernels} == {"pgd_step", "pgd_random_start", "distill_loss"}
        assert all(c["status"] == "pass" and c["data"]["result"]["max_error"] is not None for c in kernels)
    for check in payload["checks"]:
        assert check["status"] in ("pass", "fail", "skip") and check["detail"]
    lines = [line for line in result.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == len(payload["checks"])


def fake_checks(monkeypatch, failing=None, kernel_ok=True):
    """Replace the slow checks with instant ones (the wiring, not the checks, is under test)."""
    def make(name):
        def check(device):
            if name == failing:
                raise RuntimeError(f"injected failure in {name}")
            return ("skip" if name == "nccl" else "pass"), f"{name} fine", {}
        return check

    monkeypatch.setattr(diagnostics, "_CHECKS", [(n, None if n == "kernels" else make(n))
                                                 for n, _ in diagnostics._CHECKS])
    row = {"op": "pgd_step", "dtype": "float32", "layout": "contiguous", "backend": "triton", "error": None,
           "result": {"ok": kernel_ok, "max_error": 0.0 if kernel_ok else 0.5, "tolerance": 0.0, "seconds": 0.01,
                      "error": None if kernel_ok else "differs from the reference (max error 0.5)"}}
    monkeypatch.setattr(diagnostics, "_kernel_rows", lambda device: ([row], None))


def run_cli(tmp_path, capsys):
    out = tmp_path / "d.json"
    rc = cli.main(["doctor", "--device", "cpu", "--json", str(out)])
    return rc, json.loads(out.read_text()), capsys.readouterr().out


def test_all_passing_exits_zero(tmp_path, monkeypatch, capsys):
    fake_checks(monkeypatch)
    rc, payload, text = run_cli(tmp_path, capsys)
    assert rc == 0 and payload["ok"] and "0 failed" in text
    assert [c["status"] for c in payload["checks"]].count("skip") == 1


def test_a_crashing_check_fails_the_run_and_is_named(tmp_path, monkeypatch, capsys):
    fake_checks(monkeypatch, failing="bf16+channels_last")
    rc, payload, text = run_cli(tmp_path, capsys)
    assert rc == 1 and not payload["ok"]
    (bad,) = [c for c in payload["checks"] if c["status"] == "fail"]
    assert bad["name"] == "bf16+channels_last" and "injected failure" in bad["detail"]
    assert "FAILED: bf16+channels_last" in text and "FAIL  bf16+channels_last" in text
    assert {c["name"] for c in payload["checks"]} >= EXPECTED  # the other checks still ran


def test_a_failed_kernel_self_check_fails_the_run(tmp_path, monkeypatch, capsys):
    fake_checks(monkeypatch, kernel_ok=False)
    rc, payload, _ = run_cli(tmp_path, capsys)
    (bad,) = [c for c in payload["checks"] if c["status"] == "fail"]
    assert rc == 1 and bad["name"] == "kernel:pgd_step[float32,contiguous]" and "differs" in bad["detail"]


def test_cuda_requested_without_a_gpu_fails(monkeypatch, capsys):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = diagnostics.doctor("cuda", stream=False)
    assert not report.ok and report.checks[0].name == "device" and "no CUDA device" in report.checks[0].detail
    with pytest.raises(ValueError, match="device must be"):
        diagnostics.doctor("tpu", stream=False)
    # on the command line: one line, the failed device check (nothing else could run)
    from ciard_fast.cli import main

    capsys.readouterr()
    assert main(["doctor", "--device", "cuda"]) == 1
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAIL") and "--device cuda" in lines[0] and "no CUDA device" in lines[0]


def test_public_entry_point():
    import ciard_fast
    assert ciard_fast.doctor is diagnostics.doctor
    parser = argparse.ArgumentParser()
    diagnostics.add_arguments(parser)
    assert parser.parse_args(["--device", "cpu"]).json is None
