"""Tests of ciard_fast.evaluate: the report's consistency, input forms, sanity checks, JSON/Markdown."""
import importlib
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ciard_fast
from ciard_fast.attacks import (AdversarialCheckError, EvalReport, evaluate, EvaluationCheckError,
                                EvaluationWarning)
from ciard_fast.attacks.checks import check_attack_ordering

columns_module = importlib.import_module("ciard_fast.attacks.columns")
K = 4
EPS = 2 / 255  # a radius where the columns differ on this data (at 8/255 everything is 0%)
QUICK_AA = {"aa": {"attacks_to_run": ["apgd-ce"]}}


def _synthetic(n, seed=0):
    """4 classes whose means differ by ±0.02 per pixel under N(0, 0.08²) noise, quantised to k/255."""
    g = torch.Generator().manual_seed(seed)
    means = 0.5 + 0.02 * (torch.randint(0, 2, (K, 3, 16, 16), generator=g).float() * 2 - 1)
    g2 = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, K, (n,), generator=g2)
    x = (means[y] + 0.08 * torch.randn(n, 3, 16, 16, generator=g2)).clamp(0, 1)
    return (x * 255).round() / 255, y


@pytest.fixture(scope="module")
def trained():
    x, y = _synthetic(1024)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 256, 32), nn.ReLU(),
                          nn.Linear(32, K))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(8):
        perm = torch.randperm(768)
        for i in range(0, 768, 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval(), x[768:], y[768:]


@pytest.fixture(scope="module")
def report(trained):
    model, x, y = trained
    return evaluate(model, (x, y), eps=EPS, batch_size=64, n=128, progress=False, attack_params=QUICK_AA)


def test_report_is_consistent(report):
    acc = report.accuracy
    assert report.columns == ["clean", "fgsm", "pgd_sat", "pgd_trades", "cw", "aa", "worst"]
    assert report.n == 128
    for column in report.columns:
        assert acc[column] == report.correct[column] / 128
        assert acc["worst"] <= acc[column] <= acc["clean"]
    assert acc["clean"] >= 0.9
    assert acc["pgd_sat"] <= acc["fgsm"] and acc["pgd_trades"] <= acc["fgsm"]
    assert acc["pgd_sat"] < acc["clean"] - 0.2  # the attacks do something at this radius
    # The worst case is a per-example AND: at least as low as every column, and each column can
    # only remove examples that were correct, so it is bounded below by a union bound.
    assert acc["worst"] >= acc["clean"] - sum(acc["clean"] - acc[c] for c in report.columns[1:-1])
    # Forward counts measured through the model: the attack's steps + one scoring forward.
    per_example = {c: report.forwards_per_example(c) for c in report.forwards}
    assert per_example["clean"] == 1 and per_example["fgsm"] == 2
    assert per_example["pgd_sat"] == 21 and per_example["pgd_trades"] == 21 and per_example["cw"] == 31
    assert per_example["aa"] > 30
    hp = report.hyperparameters
    assert hp["pgd_sat"] == {"eps": EPS, "alpha": 2 / 255, "steps": 20, "random_start": "uniform", "loss": "ce"}
    assert hp["pgd_trades"]["alpha"] == 0.003 and hp["cw"]["kappa"] == 50.0 and hp["cw"]["random_start"] is None
    assert hp["aa"]["attacks"] == ["apgd-ce"]
    assert any("not AutoAttack's standard number" in note for note in report.notes)
    assert set(report.seconds) == set(report.forwards) and report.total_seconds >= sum(report.seconds.values())
    assert report.warnings == [] and report.skipped == {}


def test_worst_is_the_per_example_and(trained):
    model, x, y = trained
    x, y = x[:64], y[:64]
    r = evaluate(model, (x, y), attacks=("fgsm", "cw"), eps=EPS, batch_size=64, progress=False)
    from ciard_fast.attacks import cw_inf, fgsm
    with torch.no_grad():
        ok = [model(a).argmax(1) == y for a in (x, fgsm(model, x, y, eps=EPS), cw_inf(model, x, y, eps=EPS))]
    assert r.correct["worst"] == int((ok[0] & ok[1] & ok[2]).sum())
    assert r.correct["fgsm"] == int(ok[1].sum()) and r.correct["cw"] == int(ok[2].sum())
    assert r.columns == ["clean", "fgsm", "cw", "worst"]  # clean is always reported


def test_json_round_trip_and_markdown(report, tmp_path):
    path = report.save_json(tmp_path / "sub" / "eval.json")
    assert EvalReport.load_json(path) == report
    data = json.loads((tmp_path / "sub" / "eval.json").read_text())
    assert data["accuracy"]["pgd_sat"] == report.accuracy["pgd_sat"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["eval.json"]  # no temp file left behind
    text = str(report)
    assert text == report.to_markdown()
    header = next(line for line in text.splitlines() if line.startswith("| Clean"))
    assert header == "| Clean | FGSM | PGD-SAT | PGD-TRADES | CW∞ | AA | Worst |"
    assert f"| {100 * report.accuracy['clean']:.2f} |" in text
    assert "steps=20" in text and "alpha=0.003" in text and "kappa=50" in text and "2/255" in text
    with pytest.raises(ValueError, match="unknown keys"):
        EvalReport.from_dict({**report.to_dict(), "bogus": 1})


def test_dataset_tuple_and_loader_give_the_same_numbers(trained):
    model, x, y = trained
    x, y = x[:96], y[:96]
    dataset = types.SimpleNamespace(images=(x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous(),
                                    labels=y, num_classes=K)
    loader = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    kw = dict(attacks=("clean", "fgsm", "pgd_sat", "cw"), eps=EPS, batch_size=32, progress=False)
    reports = [evaluate(model, data, **kw) for data in (dataset, (x, y), loader)]
    assert reports[0].accuracy == reports[1].accuracy == reports[2].accuracy
    # n truncates every input form the same way, mid-batch included
    cut = [evaluate(model, data, n=40, **kw) for data in (dataset, (x, y), iter(loader))]
    assert all(r.n == 40 for r in cut) and cut[0].accuracy == cut[1].accuracy == cut[2].accuracy


def test_top_level_export_and_default_seed_is_reproducible(trained):
    model, x, y = trained
    kw = dict(attacks="clean,pgd_sat", eps=EPS, batch_size=32, n=64, progress=False)
    a, b = ciard_fast.evaluate(model, (x, y), **kw), evaluate(model, (x, y), **kw)
    assert a.accuracy == b.accuracy


def test_progress_bar_goes_to_stderr_and_can_be_disabled(trained, capsys):
    model, x, y = trained
    evaluate(model, (x[:16], y[:16]), attacks=("clean", "fgsm"), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "evaluate" in err and "2/2" in err
    evaluate(model, (x[:16], y[:16]), attacks=("clean", "fgsm"), progress=False)
    assert capsys.readouterr() == ("", "")


# --------------------------------------------------------------------------------------------
# Sanity checks: warn, or raise in strict mode
# --------------------------------------------------------------------------------------------
class _WithBN(nn.Module):
    def __init__(self, softmax=False, noise=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, K)
        self.softmax, self.noise = softmax, noise

    def forward(self, x):
        out = self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))
        if self.noise:
            out = out + self.noise * torch.randn_like(out)
        return out.softmax(1) if self.softmax else out


def _zero_weight_linear():
    linear = nn.Linear(3 * 16 * 16, K)
    with torch.no_grad():
        linear.weight.zero_()  # constant logits: the input gradient is exactly zero
    return nn.Sequential(nn.Flatten(), linear)


@pytest.mark.parametrize("make, pattern", [
    (lambda: _WithBN().train(), "train mode"),
    (lambda: _WithBN(softmax=True).eval(), "probabilities"),
    (lambda: _WithBN(noise=1.0).eval(), "differ"),
    (lambda: _zero_weight_linear().eval(), "zero input gradient"),
])
def test_suspicious_models_warn_or_raise_in_strict_mode(trained, make, pattern):
    _, x, y = trained
    data = (x[:32], y[:32])
    with pytest.raises(EvaluationCheckError, match=pattern):
        evaluate(make(), data, attacks=("clean", "fgsm"), strict=True, progress=False)
    with pytest.warns(EvaluationWarning, match=pattern):
        r = evaluate(make(), data, attacks=("clean", "fgsm"), progress=False)
    assert any(pattern in w for w in r.warnings)
    assert any(pattern in w for w in r.to_markdown().split("Warnings:")[1].splitlines())


def test_train_mode_is_left_as_found(trained):
    _, x, y = trained
    model = _WithBN().train()
    with pytest.warns(EvaluationWarning):
        evaluate(model, (x[:16], y[:16]), attacks=("clean",), progress=False)
    assert model.training and model.bn.training


def test_pgd_above_fgsm_is_flagged():
    acc = {"clean": 0.9, "fgsm": 0.4, "pgd_sat": 0.5, "pgd_trades": 0.3}
    with pytest.warns(EvaluationWarning, match="pgd_sat accuracy 0.5000 is higher than fgsm"):
        messages = check_attack_ordering(acc)
    assert len(messages) == 1
    with pytest.raises(EvaluationCheckError, match="pgd_sat"):
        check_attack_ordering(acc, strict=True)
    assert check_attack_ordering({"fgsm": 0.4, "pgd_sat": 0.4}, strict=True) == []


def test_a_broken_attack_is_asserted_not_logged(trained, monkeypatch):
    model, x, y = trained

    def out_of_ball(model, x, y, eps, **kwargs):
        return (x + 2 * eps).clamp(0, 1)

    monkeypatch.setattr(columns_module, "pgd", out_of_ball)
    with pytest.raises(AdversarialCheckError, match="pgd_sat: x_adv outside the ε-ball"):
        evaluate(model, (x[:16], y[:16]), attacks=("pgd_sat",), progress=False)

    def nan_attack(model, x, y, eps, **kwargs):
        return x * float("nan")

    monkeypatch.setattr(columns_module, "fgsm", nan_attack)
    with pytest.raises(AdversarialCheckError, match="fgsm: x_adv has .* non-finite"):
        evaluate(model, (x[:16], y[:16]), attacks=("fgsm",), progress=False)


def test_aa_is_skipped_without_pyautoattack_and_an_error_in_strict_mode(trained, monkeypatch):
    model, x, y = trained
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.warns(EvaluationWarning, match="ciard-fast\\[autoattack\\]"):
        r = evaluate(model, (x[:16], y[:16]), attacks=("clean", "fgsm", "aa"), progress=False)
    assert "aa" in r.skipped and "aa" not in r.accuracy and r.columns == ["clean", "fgsm", "worst"]
    assert "Skipped AA" in str(r)
    with pytest.raises(ImportError, match="pip install"):
        evaluate(model, (x[:16], y[:16]), attacks=("clean", "aa"), strict=True, progress=False)


def test_aa_on_robust_only(trained):
    pytest.importorskip("pyautoattack", reason="pyautoattack (extra [autoattack]) is not installed")
    model, x, y = trained
    r = evaluate(model, (x[:64], y[:64]), attacks=("clean", "pgd_sat", "aa"), eps=EPS, progress=False,
                 attack_params=QUICK_AA, aa_on_robust_only=True)
    assert r.accuracy["aa"] == r.accuracy["worst"] <= r.accuracy["pgd_sat"]
    assert r.hyperparameters["aa"]["subset"] == "robust to all other columns"
    assert any("robust to every other column" in note for note in r.notes)
    # AutoAttack saw fewer examples than a full run would give it
    full = evaluate(model, (x[:64], y[:64]), attacks=("clean", "pgd_sat", "aa"), eps=EPS, progress=False,
                    attack_params=QUICK_AA)
    assert r.forwards["aa"] < full.forwards["aa"]
    assert full.accuracy["worst"] == r.accuracy["worst"]


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(attacks=("clean", "pgd")), ValueError, "unknown attack 'pgd'; choose from clean, fgsm"),
    (dict(attacks=("fgsm", "fgsm")), ValueError, "twice"),
    (dict(n=0), ValueError, "n must be an int >= 1 or None, got 0"),
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
    (dict(eps=8.0), ValueError, "eps must be in .*got 8"),
    (dict(attack_params={"pgd_sat": {"stepz": 3}}), ValueError, "cannot set \\['stepz'\\]"),
    (dict(attack_params={"fgsm": {"steps": 3}}), ValueError, "fgsm.*cannot set \\['steps'\\]"),
    (dict(attack_params={"aa": {"version": "fast"}}), ValueError, "unknown AutoAttack version 'fast'"),
    (dict(attack_params={"pgd_sat": {"steps": 0}}, attacks=("pgd_sat",)), ValueError, "steps must be"),
    (dict(device="meta"), ValueError, "device='meta'"),
])
def test_evaluate_validation(trained, kwargs, error, pattern):
    model, x, y = trained
    with pytest.raises(error, match=pattern):
        evaluate(model, (x[:8], y[:8]), progress=False, **kwargs)


def test_evaluate_rejects_bad_data(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match=r"must have values in \[0, 1\], got min \d+ and max 2\d\d"):
        evaluate(model, (x[:8] * 255, y[:8]), attacks=("clean",), progress=False)
    with pytest.raises(ValueError, match="class index 7 but the model outputs 4"):
        evaluate(model, (x[:8], torch.full((8,), 7)), attacks=("clean",), progress=False)
    with pytest.raises(TypeError, match="ImageDataset"):
        evaluate(model, 3, progress=False)
    with pytest.raises(ValueError, match="same length"):
        evaluate(model, (x[:8], y[:7]), progress=False)
    with pytest.raises(ValueError, match="no examples"):
        evaluate(model, [], attacks=("clean",), progress=False)


def test_attack_params_override_and_are_reported(trained):
    model, x, y = trained
    r = evaluate(model, (x[:32], y[:32]), attacks=("pgd_sat", "cw"), eps=EPS, progress=False,
                 attack_params={"pgd_sat": {"steps": 5, "eps": 4 / 255}, "cw": {"kappa": 0.0}})
    assert r.hyperparameters["pgd_sat"]["steps"] == 5 and r.forwards_per_example("pgd_sat") == 6
    assert r.hyperparameters["pgd_sat"]["eps"] == 4 / 255  # its own ball is the one checked
    assert r.hyperparameters["cw"]["kappa"] == 0.0 and "kappa=0" in str(r)
