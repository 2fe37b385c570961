"""Presets hold only what differs from their base; methods generate their own presets.

`tests/data/preset_snapshot.json` holds the resolved `TrainConfig.to_dict()` of every preset as
the YAML files defined them before they were reduced to their differences (computed from those
files, not written by hand): every one must still resolve to exactly that.
"""
import json
import os

import pytest

from ciard_fast.config import TrainConfig, build_config, list_presets, load_preset

SNAPSHOT = os.path.join(os.path.dirname(__file__), "data", "preset_snapshot.json")


def snapshot():
    with open(SNAPSHOT, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(snapshot()))
def test_every_former_preset_resolves_exactly_as_before(name):
    assert name in list_presets()
    resolved = json.loads(json.dumps(TrainConfig.from_preset(name).to_dict()))
    assert resolved == snapshot()[name]


def test_generated_presets_are_listed_and_loadable():
    names = set(list_presets())
    assert {"cifar10-resnet18-sat", "tinyimagenet-mobilenetv2-rslad", "cifar100-resnet18-ard"} <= names
    assert "cifar10-resnet18-ciard" not in names  # the base is CIARD's own preset
    assert "demo-ciard" not in names  # the demo is CIARD's own
    assert load_preset("cifar100-resnet18-ard")["batch_size"] == 256  # ARD's CIFAR-100 batch
    assert TrainConfig.from_preset("tinyimagenet-resnet18-fair_ard").batch_size == 128


def test_demo_method_presets_keep_the_demo_schedule_and_take_the_methods_recipe():
    from ciard_fast.methods import get_method

    demo = TrainConfig.from_preset("demo")
    for method in ("ard", "saad", "peeraid", "absld"):
        cls = get_method(method)
        config = TrainConfig.from_preset(f"demo-{method}")
        digits = cls.preset_overrides_by_dataset.get("digits", {})
        assert config.method == method
        # the demo's data, models and schedule, not the paper's
        for field in ("dataset", "student", "student_args", "epochs", "batch_size", "weight_decay", "test_attacks"):
            assert getattr(config, field) == getattr(demo, field), (method, field)
        assert config.lr == digits.get("lr", demo.lr)
        # the method's recipe: its options, and SWA at the same fraction of the (shorter) run
        for key, value in cls.preset_overrides.get("method_args", {}).items():
            assert config.method_args[key] == digits.get("method_args", {}).get(key, value), (method, key)
        paper_swa = cls.preset_overrides.get("swa_start")
        assert config.swa_start == paper_swa, method
    assert TrainConfig.from_preset("demo-saad").swa_start == 95 / 200
    assert TrainConfig.from_preset("demo-ard").swa_start is None


def test_a_config_file_may_name_a_base(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: cifar10-resnet18-ard\nlr: 0.05\nmethod_args:\n  tau: 10.0\n")
    config = build_config(config_file=str(path))
    assert (config.method, config.epochs, config.lr) == ("ard", 200, 0.05)
    assert config.method_args == {"tau": 10.0, "kd_weight": 1.0}  # merged key by key


def test_bad_bases_are_clear_errors(tmp_path, monkeypatch):
    path = tmp_path / "bad.yaml"
    path.write_text("base: cifar10-resnet81\n")
    with pytest.raises(ValueError, match="unknown preset 'cifar10-resnet81'. Did you mean cifar10-resnet18"):
        build_config(config_file=str(path))
    path.write_text("base: [1]\n")
    with pytest.raises(ValueError, match=r"base must be the name of a preset, got \[1\]"):
        build_config(config_file=str(path))
    # a cycle among presets
    from ciard_fast import config as config_module

    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    monkeypatch.setattr(config_module, "PRESET_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="presets inherit in a cycle: a -> b -> a"):
        load_preset("a")
