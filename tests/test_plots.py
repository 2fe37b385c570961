"""ciard_fast/plots.py: curves.png panels of a run, comparison.png and per_attack.png of a comparison."""
import json

import pytest

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.engine.compare import CompareResult, aggregate
from ciard_fast.plots import curve_panels, plot_comparison, plot_curves, plot_per_attack

from test_compare import TINY, _png

# what a CIARD run logs per epoch (metrics.jsonl), validation every second epoch
CIARD_HISTORY = [
    {"epoch": e, "lr": 0.1 / e, "train_student_loss": 1.0 / e, "train_L_adv": 0.8 / e, "train_L_nat": 0.5 / e,
     "train_L_push": 0.1, "train_mask_count": 17.0 + e, "train_teacher_loss": 0.3, "tau_adv": 1.0 + e,
     "tau_nat": 1.5, "w_adv": 0.5 + 0.01 * e, "w_nat": 0.5 - 0.01 * e, "lambda": 0.02 * e,
     "train_seconds": 3.2, "train_images_per_s": 512.0,
     **({"val_clean": 50.0 + 5 * e, "val_pgd": 20.0 + 3 * e} if e % 2 == 0 else {})}
    for e in range(1, 7)
]


def test_curve_panels_put_each_kind_of_value_on_its_own_panel():
    panels = dict(curve_panels(CIARD_HISTORY))
    assert list(panels) == ["training losses", "learning rate", "validation accuracy (%)", "temperature τ",
                            "loss weights w", "push weight λ"]
    assert panels["training losses"] == ["train_student_loss", "train_L_adv", "train_L_nat", "train_L_push",
                                         "train_teacher_loss"]
    assert panels["learning rate"] == ["lr"] and panels["validation accuracy (%)"] == ["val_clean", "val_pgd"]
    assert panels["temperature τ"] == ["tau_adv", "tau_nat"] and panels["loss weights w"] == ["w_adv", "w_nat"]
    assert panels["push weight λ"] == ["lambda"]
    plotted = {k for keys in panels.values() for k in keys}
    # counts, seconds and throughput are logged but are not curves
    assert not plotted & {"train_mask_count", "train_seconds", "train_images_per_s", "epoch"}


def test_curve_panels_of_a_plain_method_and_other_values():
    history = [{"epoch": 1, "lr": 0.1, "train_ce": 2.0, "class_weight_max": 1.3, "train_seconds": 1.0}]
    assert curve_panels(history) == [("training losses", ["train_ce"]), ("learning rate", ["lr"]),
                                     ("other logged values", ["class_weight_max"])]


def test_plot_curves_writes_a_real_png(tmp_path):
    path = plot_curves(CIARD_HISTORY, str(tmp_path / "curves.png"))
    assert path == str(tmp_path / "curves.png")
    _png(tmp_path / "curves.png", min_bytes=20000)
    with pytest.raises(ValueError, match="at least one epoch"):
        plot_curves([], str(tmp_path / "empty.png"))
    assert not (tmp_path / "empty.png").exists()


def test_every_training_run_writes_curves_png(tmp_path):
    config = build_config(overrides={**TINY, "method": "ciard", "epochs": 2, "plot": True,
                                     "out_dir": str(tmp_path / "run"), "test_attacks": ("clean",)})
    ciard_fast.train(config)
    _png(tmp_path / "run" / "curves.png", min_bytes=20000)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    titles = [t for t, _ in curve_panels(rows)]
    assert {"training losses", "learning rate", "validation accuracy (%)", "temperature τ", "loss weights w",
            "push weight λ"} <= set(titles)


def _result(seeds, runs):
    result = CompareResult(out_dir="", methods=list(runs), rows={}, teachers={},
                           config={"eps": 8 / 255, "dataset": "digits", "seed": 0}, seeds=seeds,
                           baseline=next(iter(runs)), runs=runs)
    return aggregate(result)


def _run(clean, worst, seed):
    return {"clean": clean, "fgsm": worst + 3, "pgd_sat": worst + 1, "worst": worst, "train_seconds": 10.0,
            "images_per_s": 300.0, "student": "small_cnn", "seed": seed}


@pytest.mark.parametrize("seeds", [[0, 1, 2], [0]])
def test_comparison_and_per_attack_pictures(tmp_path, seeds):
    runs = {"ciard": [_run(91 + s, 78 - s, s) for s in seeds], "rslad": [_run(92 - s, 80 + s / 2, s) for s in seeds],
            "natural": [_run(94, 1.5 + s, s) for s in seeds]}
    result = _result(seeds, runs)
    assert plot_comparison(result, str(tmp_path / "c.png")) == str(tmp_path / "c.png")
    assert plot_per_attack(result, str(tmp_path / "p.png")) == str(tmp_path / "p.png")
    _png(tmp_path / "c.png")
    _png(tmp_path / "p.png")


def test_comparison_needs_the_columns_it_plots(tmp_path):
    result = _result([0], {"ciard": [{"clean": 90.0, "seed": 0, "student": "s"}]})
    with pytest.raises(ValueError, match="'worst'"):
        plot_comparison(result, str(tmp_path / "c.png"))
    assert not (tmp_path / "c.png").exists()
