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
    assert not (out / "rslad" / "seed-0" / "teachers").exists() and not (out / "mtard" / "seed-0" / "teachers").exists()
    rslad = json.loads((out / "rslad" / "seed-0" / "results.json").read_text())
    mtard = json.loads((out / "mtard" / "seed-0" / "results.json").read_text())
    assert rslad["teachers"] == {"robust": str(out / "teachers" / "robust.pt")}  # no clean teacher for RSLAD
    assert set(mtard["teachers"]) == {"robust", "clean"}
    # a method option goes only to the methods that have it
    assert mtard["config"]["method_args"] == {"eta_w": 0.05} and rslad["config"]["method_args"] == {}
    assert rslad["config"]["seed"] == mtard["config"]["seed"] and rslad["config"]["dataset"] == "synthetic"

    # JSON and Markdown written; the JSON reads back to the same result
    assert CompareResult.load(str(out / "compare.json")) == result
    assert (out / "compare.md").read_text() == result.table

    # a second call reuses the finished runs instead of training again
    stamp = os.path.getmtime(out / "rslad" / "seed-0" / "last.pt")
    again = compare(["rslad", "mtard"], preset=None, out_dir=str(out), eta_w=0.05, **TINY)
    assert again.rows == result.rows and os.path.getmtime(out / "rslad" / "seed-0" / "last.pt") == stamp


def test_single_teacher_methods_need_no_clean_teacher(tmp_path):
    out = tmp_path / "cmp"
    result = compare("ard,natural", preset=None, out_dir=str(out), tau=10.0, **TINY)
    assert set(result.teachers) == {"robust"}
    assert not (out / "teachers" / "clean").exists()
    ard = json.loads((out / "ard" / "seed-0" / "results.json").read_text())
    assert ard["config"]["method_args"] == {"tau": 10.0}


def test_per_method_presets_pick_each_methods_recipe():
    assert preset_for("cifar10-resnet18", "rslad") == "cifar10-resnet18-rslad"
    assert preset_for("cifar100-mobilenetv2", "adaad") == "cifar100-mobilenetv2-adaad"
    assert preset_for("cifar10-resnet18", "ciard") == "cifar10-resnet18"  # CIARD's own preset
    assert preset_for("demo", "rslad") == "demo-rslad"  # the demo's schedule with RSLAD's recipe
    assert preset_for("demo", "ciard") == "demo"
    assert preset_for("cifar10-resnet18", "rslad", per_method_presets=False) == "cifar10-resnet18"


def test_per_method_presets_change_the_recipe_not_the_data_or_teachers(tmp_path):
    out = tmp_path / "cmp"
    result = compare("adaad,ard", preset="cifar10-resnet18", per_method_presets=True, out_dir=str(out), **TINY)
    adaad = json.loads((out / "adaad" / "seed-0" / "results.json").read_text())["config"]
    ard = json.loads((out / "ard" / "seed-0" / "results.json").read_text())["config"]
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
    ({"methods": "ard,rslad", "baseline": "ciard"}, "baseline 'ciard' is not one of the compared methods"),
    ({"methods": "ard", "seeds": "0,x"}, "comma-separated integers"),
    ({"methods": "ard", "seeds": [0, 0]}, "listed twice"),
    ({"methods": "ard", "seeds": [-1]}, "integer >= 0"),
    ({"methods": "ard", "seeds": []}, "seeds is empty"),
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


def _png(path, min_bytes=8000):
    """The file is a PNG that decodes, of a real figure's size, and not one flat colour."""
    from PIL import Image

    assert path.is_file(), path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 400 and height >= 300
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 50  # axes, text, markers: many colours


@pytest.mark.slow
def test_two_methods_two_seeds_on_a_reduced_demo(tmp_path):
    import csv

    from ciard_fast.config import build_config
    from ciard_fast.engine.builders import load_splits
    from ciard_fast.engine.stats import paired_difference, summarize

    out = tmp_path / "demo"
    result = compare("ard,rslad", preset="demo", out_dir=str(out), seeds="0,1", epochs=1, teacher_epochs=1,
                     attack_steps=1, eval_pgd_steps=1, eval_n=60, test_n=60, test_attacks=("clean", "fgsm", "pgd_sat"),
                     progress=False, plot=True, allow_weak_teacher=True)  # 1-epoch teachers are near chance
    assert result.seeds == [0, 1] and result.baseline == "ard"
    for name in ("ard", "rslad"):
        runs = result.runs[name]
        assert [r["seed"] for r in runs] == [0, 1]
        assert [r["out_dir"] for r in runs] == [str(out / name / "seed-0"), str(out / name / "seed-1")]
        for column in ("clean", "fgsm", "pgd_sat", "worst", "train_seconds"):
            s = result.summary[name][column]
            values = [r[column] for r in runs]
            assert s["n"] == 2 and s["values"] == values and s["mean"] == pytest.approx(sum(values) / 2)
            assert s == summarize(values)
        assert result.rows[name]["clean"] == pytest.approx(sum(r["clean"] for r in runs) / 2)
    # the paired difference is rslad's seed-s row minus ard's seed-s row
    for column in ("clean", "pgd_sat", "worst"):
        by_hand = [result.runs["rslad"][i][column] - result.runs["ard"][i][column] for i in range(2)]
        assert result.differences["rslad"][column]["values"] == pytest.approx(by_hand)
        assert result.differences["rslad"][column] == paired_difference(
            [r[column] for r in result.runs["rslad"]], [r[column] for r in result.runs["ard"]])
    assert result.differences["ard"] == {}

    # the seed changes the student, not the data split or the teachers
    configs = [json.loads((out / n / f"seed-{s}" / "results.json").read_text()) for n in ("ard", "rslad")
               for s in (0, 1)]
    assert [c["config"]["seed"] for c in configs] == [0, 1, 0, 1]
    assert {c["config"]["split_seed"] for c in configs} == {0}
    assert {c["teachers"]["robust"] for c in configs} == {str(out / "teachers" / "robust.pt")}
    splits = [load_splits(build_config(overrides={**c["config"], "resume": None})) for c in configs[:2]]
    assert (splits[0]["val"].labels == splits[1]["val"].labels).all()
    assert (splits[0]["train"].images == splits[1]["train"].images).all()
    import torch

    w0, w1 = (torch.load(out / "ard" / f"seed-{s}" / "last.pt", weights_only=False)["student"] for s in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0 if w0[k].is_floating_point())

    # JSON / Markdown / CSV
    assert CompareResult.load(str(out / "compare.json")) == result
    table = (out / "compare.md").read_text()
    assert table == result.table
    assert "mean ± std over 2 seeds (0, 1)" in table and "95 % confidence interval" in table
    assert "Paired difference to ard" in table and "| rslad | " in table
    mean, std = result.summary["rslad"]["clean"]["mean"], result.summary["rslad"]["clean"]["std"]
    assert f"| rslad | small_cnn | 2 | {mean:.2f} ± {std:.2f} |" in table
    with open(out / "compare.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert {(r["method"], r["column"]) for r in lines} >= {(m, c) for m in ("ard", "rslad")
                                                          for c in ("clean", "fgsm", "pgd_sat", "worst")}
    for line in lines:
        s = result.summary[line["method"]][line["column"]]
        assert int(line["n"]) == 2 and float(line["mean"]) == s["mean"] and float(line["ci95_low"]) == s["ci_low"]
        assert [float(v) for v in line["values"].split(";")] == s["values"] and line["seeds"] == "0;1"
    rslad_clean = next(r for r in lines if r["method"] == "rslad" and r["column"] == "clean")
    assert float(rslad_clean["diff_mean"]) == result.differences["rslad"]["clean"]["mean"]

    # the pictures
    _png(out / "comparison.png")
    _png(out / "per_attack.png")


def test_an_interrupted_comparison_resumes_without_retraining_finished_runs(tmp_path, monkeypatch):
    import ciard_fast.engine.api as api

    real_train = api.train
    trained = []

    def crashing_train(config, **kw):
        if (config.method, config.seed) == ("mtard", 1):
            raise RuntimeError("injected crash in the middle of the comparison")
        if config.method in ("rslad", "mtard"):  # not the teacher runs, which also go through train()
            trained.append((config.method, config.seed))
        return real_train(config, **kw)

    out = tmp_path / "cmp"
    monkeypatch.setattr(api, "train", crashing_train)
    with pytest.raises(RuntimeError, match="injected crash"):
        compare("rslad,mtard", preset=None, out_dir=str(out), seeds=[0, 1], **TINY)
    assert trained == [("rslad", 0), ("rslad", 1), ("mtard", 0)]
    assert not (out / "compare.json").exists()  # no table from a half-finished comparison
    stamps = {(m, s): os.path.getmtime(out / m / f"seed-{s}" / "last.pt") for m, s in trained}

    def counting_train(config, **kw):
        if config.method in ("rslad", "mtard"):  # the teachers' runs go through train() too
            trained.append((config.method, config.seed))
        return real_train(config, **kw)

    trained.clear()
    monkeypatch.setattr(api, "train", counting_train)
    result = compare("rslad,mtard", preset=None, out_dir=str(out), seeds=[0, 1], **TINY)
    assert trained == [("mtard", 1)]  # only the run that had not finished
    assert {k: os.path.getmtime(out / k[0] / f"seed-{k[1]}" / "last.pt") for k in stamps} == stamps
    assert all(len(result.runs[m]) == 2 and result.summary[m]["clean"]["n"] == 2 for m in ("rslad", "mtard"))

    # a different seed list reuses what overlaps and trains only the new seed
    trained.clear()
    result = compare("rslad,mtard", preset=None, out_dir=str(out), seeds=[1, 2], **TINY)
    assert trained == [("rslad", 2), ("mtard", 2)] and result.seeds == [1, 2]

    # what a run shows is not part of its identity: no retraining for --plot/--progress
    trained.clear()
    again = compare("rslad,mtard", preset=None, out_dir=str(out), seeds=[1, 2],
                    **{**TINY, "plot": True, "progress": True})
    assert trained == [] and again.runs == result.runs
    # but anything that changes the numbers does retrain (here also the TRADES teacher, whose
    # attack inherits attack_steps)
    compare("rslad", preset=None, out_dir=str(out), seeds=[1], **{**TINY, "attack_steps": 1})
    assert trained == [("rslad", 1)]


def test_aggregate_pairs_runs_by_seed():
    from ciard_fast.engine.compare import aggregate, markdown_table

    def run(seed, clean):
        return {"seed": seed, "clean": clean, "worst": clean - 10, "train_seconds": 1.0, "images_per_s": 5.0,
                "student": "s"}

    result = CompareResult(out_dir="", methods=["a", "b"], rows={}, teachers={},
                           config={"eps": 8 / 255, "dataset": "digits"}, seeds=[0, 1, 2], baseline="b",
                           runs={"a": [run(0, 90.0), run(1, 92.0), run(2, 95.0)], "b": [run(2, 91.0), run(1, 90.0)]})
    aggregate(result)
    # a - b on the shared seeds 1 and 2 (whatever the order of the runs): 92 - 90 = 2, 95 - 91 = 4
    assert result.differences["a"]["clean"]["values"] == [2.0, 4.0]
    assert result.differences["a"]["clean"]["mean"] == 3.0 and result.differences["b"] == {}
    assert result.summary["a"]["clean"]["n"] == 3 and result.summary["b"]["clean"]["n"] == 2
    assert result.rows["a"]["clean"] == pytest.approx(277 / 3)
    table = markdown_table(result)
    assert "| a | s | 3 | 92.33 ± 2.52 |" in table and "| b | s | 2 | 90.50 ± 0.71 |" in table
    assert "| a | +3.00 [" in table


def test_a_single_run_and_compares_seed_run_agree(tmp_path):
    """train() that trains its teachers first, train() again with them cached, and compare's run of
    the same seed (teachers handed over as files) give the same student: the teachers' training
    does not shift the student's random init."""
    import ciard_fast

    from ciard_fast.config import build_config

    tiny = {**TINY, "epochs": 2, "method": "ciard", "out_dir": str(tmp_path / "single")}
    fresh = ciard_fast.train(build_config(overrides=tiny))
    cached = ciard_fast.train(build_config(overrides={**tiny, "out_dir": str(tmp_path / "single2")}))
    assert fresh.metrics == cached.metrics  # (the second run trained its own teachers: same weights)
    again = ciard_fast.train(build_config(overrides={**tiny, "overwrite": True}))  # teachers read from single/teachers
    assert again.metrics == fresh.metrics
    result = compare("ciard", preset=None, out_dir=str(tmp_path / "cmp"), seeds=[0],
                     **{k: v for k, v in tiny.items() if k not in ("method", "out_dir")})
    assert {k: result.runs["ciard"][0][k] for k in fresh.metrics} == fresh.metrics


def test_an_interrupted_run_continues_exactly_when_the_comparison_is_run_again(tmp_path, monkeypatch, capsys):
    """SIGTERM inside a run's epoch (a preemption): the run writes its mid-epoch last.pt; running
    the same comparison again continues that run from it (not from scratch) to the very same
    numbers and weights as an uninterrupted comparison."""
    import signal

    import torch

    from ciard_fast.engine import trainer as trainer_module
    from ciard_fast.engine.checkpoint import load_checkpoint
    from ciard_fast.engine.signals import RunInterrupted

    settings = dict(preset=None, seeds="0,1", **{**TINY, "epochs": 2})  # 2 steps an epoch
    full = compare("natural", out_dir=str(tmp_path / "full"), **settings)
    real, count = trainer_module.step_update, [0]

    def update(*args):
        real(*args)
        count[0] += 1
        if count[0] == 4 + 3:  # seed 0's 4 steps, then seed 1's epoch 2, its 1st step
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch, pytest.raises(RunInterrupted):
        patch.setattr(trainer_module, "step_update", update)
        compare("natural", out_dir=str(tmp_path / "cut"), **settings)
    state = load_checkpoint(tmp_path / "cut" / "natural" / "seed-1" / "last.pt")
    assert state["epoch"] == 1 and state["mid_epoch"]["steps"] == 1
    stamp = os.path.getmtime(tmp_path / "cut" / "natural" / "seed-0" / "last.pt")
    capsys.readouterr()
    again = compare("natural", out_dir=str(tmp_path / "cut"), **settings)
    assert "natural seed 1: continuing the interrupted run from" in capsys.readouterr().err
    # continued, not retrained: epoch 1 is the interrupted attempt's own (its measured seconds)
    history = load_checkpoint(tmp_path / "cut" / "natural" / "seed-1" / "last.pt")["history"]
    assert history[0] == state["history"][0] and len(history) == 2
    assert os.path.getmtime(tmp_path / "cut" / "natural" / "seed-0" / "last.pt") == stamp  # reused
    drop = ("train_seconds", "images_per_s", "wall_seconds", "out_dir")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again.runs["natural"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full.runs["natural"]]
    a, b = (load_checkpoint(tmp_path / name / "natural" / "seed-1" / "last.pt")["student"] for name in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
