"""`compare()` / `ciard-fast compare`: several methods on the same data and teachers, one table."""
import json
import os

import pytest

from ciard_fast.cli import main
from ciard_fast.engine.compare import CompareResult, compare, preset_for

# Seconds on a CPU: 16×16 synthetic images, width-4 models, one epoch, 2-step attacks.
TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 96, "num_test": 32, "image_size": 16}, val_size=32,
    student="small_cnn", student_args={"width": 4},
    robust_teacher_model="small_cnn", robust_teacher_args={"width": 4}, robust_teacher_normalize=True,
    clean_teacher_model="small_cnn", clean_teacher_args={"width": 4},
    teacher_epochs=1, epochs=1, batch_size=32, attack_steps=2, eval_pgd_steps=2, eval_every=1,
    test_attacks=("clean", "fgsm", "pgd_sat"), test_n=16, progress=False, plot=False, device="cpu",
)


def table_rows(table):
    return [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]


def test_compare_trains_teachers_once_and_tabulates_every_method(tmp_path):
    out = tmp_path / "cmp"
    result = compare(["rslad", "mtard"], preset=None, out_dir=str(out), eta_w=0.05, **TINY)

    assert result.methods == ["rslad", "mtard"] and list(result.rows) == ["rslad", "mtard"]
    for row in result.rows.values():
        assert {"clean", "fgsm", "pgd_sat", "worst"} <= set(row)
        assert all(0.0 <= row[k] <= 100.0 for k in ("clean", "fgsm", "pgd_sat"))
        assert row["train_seconds"] > 0 and row["images_per_s"] > 0 and row["epochs"] == 1
    # one Markdown row per method, with the attack, time and throughput columns
    rows = [r for r in table_rows(result.table) if not r.startswith("| ---")]
    assert [r.split("|")[1].strip() for r in rows] == ["rslad", "mtard"]
    header = next(line for line in result.table.splitlines() if line.startswith("| method"))
    for column in ("Clean", "FGSM", "PGD-SAT", "train time (s)", "img/s"):
        assert column in header

    # teachers were trained once, under <out>/teachers, and handed to the methods as weights files
    assert (out / "teachers" / "robust" / "last.pt").is_file() and (out / "teachers" / "clean" / "last.pt").is_file()
    assert not (out / "rslad" / "teachers").exists() and not (out / "mtard" / "teachers").exists()
    rslad = json.loads((out / "rslad" / "results.json").read_text())
    mtard = json.loads((out / "mtard" / "results.json").read_text())
    assert rslad["teachers"] == {"robust": str(out / "teachers" / "robust.pt")}  # no clean teacher for RSLAD
    assert set(mtard["teachers"]) == {"robust", "clean"}
    # a method option goes only to the methods that have it
    assert mtard["config"]["method_args"] == {"eta_w": 0.05} and rslad["config"]["method_args"] == {}
    assert rslad["config"]["seed"] == mtard["config"]["seed"] and rslad["config"]["dataset"] == "synthetic"

    # JSON and Markdown written; the JSON reads back to the same result
    assert CompareResult.load(str(out / "compare.json")) == result
    assert (out / "compare.md").read_text() == result.table

    # a second call reuses the finished runs instead of training again
    stamp = os.path.getmtime(out / "rslad" / "last.pt")
    again = compare(["rslad", "mtard"], preset=None, out_dir=str(out), eta_w=0.05, **TINY)
    assert again.rows == result.rows and os.path.getmtime(out / "rslad" / "last.pt") == stamp


def test_single_teacher_methods_need_no_clean_teacher(tmp_path):
    out = tmp_path / "cmp"
    result = compare("ard,natural", preset=None, out_dir=str(out), tau=10.0, **TINY)
    assert set(result.teachers) == {"robust"}
    assert not (out / "teachers" / "clean").exists()
    ard = json.loads((out / "ard" / "results.json").read_text())
    assert ard["config"]["method_args"] == {"tau": 10.0}


def test_per_method_presets_pick_each_methods_recipe():
    assert preset_for("cifar10-resnet18", "rslad") == "cifar10-resnet18-rslad"
    assert preset_for("cifar100-mobilenetv2", "adaad") == "cifar100-mobilenetv2-adaad"
    assert preset_for("cifar10-resnet18", "ciard") == "cifar10-resnet18"  # CIARD's own preset
    assert preset_for("demo", "rslad") == "demo"
    assert preset_for("cifar10-resnet18", "rslad", per_method_presets=False) == "cifar10-resnet18"


def test_per_method_presets_change_the_recipe_not_the_data_or_teachers(tmp_path):
    out = tmp_path / "cmp"
    result = compare("adaad,ard", preset="cifar10-resnet18", per_method_presets=True, out_dir=str(out), **TINY)
    adaad = json.loads((out / "adaad" / "results.json").read_text())["config"]
    ard = json.loads((out / "ard" / "results.json").read_text())["config"]
    assert adaad["weight_decay"] == 5e-4 and ard["weight_decay"] == 2e-4  # each paper's recipe
    assert ard["method_args"] == {"tau": 30.0, "kd_weight": 1.0}
    for key in ("dataset", "seed", "robust_teacher_model", "robust_teacher", "test_n"):
        assert adaad[key] == ard[key], key
    assert list(result.rows) == ["adaad", "ard"]


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": "ciard,nope"}, "unknown method 'nope'; valid methods: .*rslad"),
    ({"methods": "ard,ard"}, "listed twice"),
    ({"methods": ""}, "at least one method"),
    ({"methods": "ard", "method": "ciard"}, "methods="),
    ({"methods": "ard,rslad", "T_push": 3.0}, "unknown config key 'T_push'"),
])
def test_bad_arguments_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare(preset=None, out_dir=str(tmp_path), **{**TINY, **kwargs})


@pytest.mark.slow
def test_cli_compare_on_the_demo_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["compare", "--methods", "ard,bmtard", "--preset", "demo", "--epochs", "1", "--teacher_epochs", "1",
                 "--test_n", "50", "--eval_n", "50", "--attack_steps", "2", "--out_dir", str(out),
                 "--progress", "false", "--plot", "false",
                 "--allow_weak_teacher", "true"])  # 1-epoch teachers are near chance
    assert code == 0
    result = CompareResult.load(str(out / "compare.json"))
    assert list(result.rows) == ["ard", "bmtard"]
    assert {"clean", "fgsm", "pgd_sat", "pgd_trades", "cw"} <= set(result.rows["ard"])
    printed = capsys.readouterr().out
    assert "| ard | small_cnn |" in printed and "| bmtard | small_cnn |" in printed
