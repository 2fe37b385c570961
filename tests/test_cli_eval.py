"""``ciard-fast eval`` end to end, in-process: a small_cnn trained briefly on the embedded digits,
saved as a plain state dict and as a trainer-style checkpoint, evaluated from the command line."""
import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from ciard_fast.cli import main
from ciard_fast.cli_eval import parse_eps


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from ciard_fast.data import load_dataset
    from ciard_fast.models import create_model

    train = load_dataset("digits", split="train")
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=train.num_classes, normalize=(train.mean, train.std))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = train.images.permute(0, 3, 1, 2).float() / 255
    for _ in range(30):
        idx = torch.randint(0, x.shape[0], (64,))
        loss = F.cross_entropy(model(x[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # 30 steps leave BatchNorm's running averages behind the weights; re-estimate them once.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration forward
        model(x[:512])
    folder = tmp_path_factory.mktemp("ckpt")
    plain = folder / "plain.pt"
    torch.save(model.state_dict(), plain)
    trainer = folder / "trainer.pt"
    torch.save({"student": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1,
                "config": {"student": "small_cnn", "dataset": "digits", "student_normalize": True}}, trainer)
    return plain, trainer


def _run(capsys, *argv):
    code = main(["eval", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_prints_the_table_for_a_plain_state_dict(checkpoints, capsys):
    plain, _ = checkpoints
    code, out, err = _run(capsys, "--model", "small_cnn", "--weights", str(plain), "--dataset", "digits",
                          "--normalize", "dataset", "--attacks", "clean,fgsm,pgd_sat", "--n", "32")
    assert code == 0, err
    assert "normalize=dataset [--normalize]" in out and "dataset digits/test (300 images)" in out
    lines = out.splitlines()
    header = lines.index("| Clean | FGSM | PGD-SAT | Worst |")
    values = [float(v) for v in lines[header + 2].strip("| ").split(" | ")]
    clean, fgsm, pgd, worst = values
    assert clean >= 50.0  # a briefly trained small_cnn on digits
    assert worst <= pgd <= fgsm <= clean
    assert "n = 32, L∞ ε = 8/255" in out and "steps=20" in out


def test_eval_with_trainer_checkpoint_uses_its_config(checkpoints, capsys, tmp_path):
    _, trainer = checkpoints
    json_path = tmp_path / "out" / "eval.json"
    code, out, err = _run(capsys, "--weights", str(trainer), "--attacks", "clean,cw,aa", "--n", "8",
                          "--eps", "4/255", "--batch-size", "4", "--json", str(json_path))
    assert code == 0, err
    assert "model small_cnn (10 classes, normalize=dataset [checkpoint config])" in out
    assert "| Clean | CW∞ | AA | Worst |" in out and f"wrote {json_path}" in out
    data = json.loads(json_path.read_text())
    assert data["n"] == 8 and data["model"] == "small_cnn" and data["eps"] == 4 / 255
    assert data["hyperparameters"]["aa"]["version"] == "standard"
    acc = data["accuracy"]
    assert acc["worst"] <= min(acc["cw"], acc["aa"]) <= acc["clean"]
    assert f"| {100 * acc['clean']:.2f} |" in out

    # --normalize none overrides the config (the weights then see raw pixels: another model)
    code, out, err = _run(capsys, "--weights", str(trainer), "--attacks", "clean", "--n", "8", "--normalize", "none")
    assert code == 0 and "normalize=none [--normalize]" in out


def test_eval_errors_are_clear(checkpoints, capsys, tmp_path):
    plain, _ = checkpoints
    code, _, err = _run(capsys, "--weights", str(tmp_path / "missing.pt"), "--model", "small_cnn",
                        "--dataset", "digits")
    assert code == 2 and "no weights file" in err
    code, _, err = _run(capsys, "--weights", str(plain))
    assert code == 2 and "--model and --dataset required" in err
    code, _, err = _run(capsys, "--weights", str(plain), "--model", "small_cnn", "--dataset", "digits",
                        "--attacks", "clean,pgd")
    assert code == 2 and "unknown attack 'pgd'" in err
    code, out, err = _run(capsys, "--weights", str(plain), "--model", "resnet20", "--dataset", "digits")
    assert code == 2 and "does not fit" in err and "| Clean" not in out
    not_a_checkpoint = tmp_path / "junk.pt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    code, _, err = _run(capsys, "--weights", str(not_a_checkpoint), "--model", "small_cnn", "--dataset", "digits")
    assert code == 2 and "junk.pt" in err and "is a text file, not a file saved with torch.save" in err
    with pytest.raises(SystemExit):
        main(["eval", "--weights", str(plain), "--eps", "8"])
    err = capsys.readouterr().err
    assert "--eps" in err and "in [0, 1]" in err and "8/255, not 8" in err


def test_parse_eps():
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps("0.5") == 0.5 and parse_eps("0") == 0.0
    for bad in ("8", "abc", "1/0", "-1/255"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_eps(bad)
