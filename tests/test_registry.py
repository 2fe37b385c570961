"""Registries: the generic helper, and extending the library by registration alone.

The end-to-end test adds a method and an evaluation column without editing any library file,
trains the method for one epoch through `ciard_fast.train` and finds the column in the result
table and in results.json; the method's generated presets appear in `list_presets()`.
"""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import ciard_fast
from ciard_fast.attacks.columns import ATTACK_REGISTRY, list_attacks, register_attack
from ciard_fast.config import TrainConfig, build_config, list_presets
from ciard_fast.data import list_datasets, load_dataset, register_dataset
from ciard_fast.data.registry import DATASETS
from ciard_fast.methods import METHODS, Method, get_method, list_methods, register_method
from ciard_fast.models import create_model, list_models
from ciard_fast.registry import Registry
from ciard_fast.tables import column_label, order_columns, render_table


# ---- the helper ----------------------------------------------------------------------------------
def test_registry_register_get_names_and_errors():
    reg = Registry("widget")
    first = reg.register("alpha")(lambda: 1)
    reg.register("beta", object())
    assert reg.get("alpha") is first and reg.names() == ["alpha", "beta"] and "beta" in reg
    reg.register("alpha", first)  # the same object again: a no-op (a module imported twice)
    with pytest.raises(ValueError, match="widget name 'alpha' is already registered"):
        reg.register("alpha", lambda: 2)
    with pytest.raises(ValueError, match=r"unknown widget 'alpah' \(did you mean 'alpha'\?\); valid widgets: alpha"):
        reg.get("alpah")
    with pytest.raises(TypeError, match="non-empty name"):
        reg.register("")
    with pytest.raises(TypeError, match="widget name must be a str"):
        reg.get(3)
    reg.unregister("beta")
    assert reg.names() == ["alpha"]


def test_registry_discovers_once_and_retries_after_a_failure():
    calls = []

    def discover():
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("broken plugin")
        reg.register("found", 1)

    reg = Registry("thing", discover=discover)
    with pytest.raises(ImportError):
        reg.names()
    assert reg.names() == ["found"] and reg.get("found") == 1 and len(calls) == 2


def test_every_extension_point_uses_it():
    assert list_methods() == METHODS.names() and "ciard" in list_methods()
    with pytest.raises(ValueError, match=r"unknown method 'ciadr' \(did you mean 'ciard'"):
        get_method("ciadr")
    with pytest.raises(ValueError, match=r"unknown model 'resnet81' \(did you mean 'resnet18'"):
        create_model("resnet81")
    assert "resnet18" in list_models()
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar11' \(did you mean"):
        load_dataset("cifar11")
    assert list_attacks()[:5] == ["clean", "fgsm", "pgd_sat", "pgd_trades", "cw"] and list_attacks()[-1] == "aa"


def test_register_dataset_then_load_it():
    def loader(root, part, download, n=40):
        g = torch.Generator().manual_seed(0 if part == "train" else 1)
        images = torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8).numpy()
        labels = (torch.arange(n) % 3).numpy()
        return images, labels, {"num_classes": 3, "mean": (0.5,) * 3, "std": (0.25,) * 3}

    register_dataset("toy_squares", loader, val_size=10, accepted=("n",))
    try:
        assert "toy_squares" in list_datasets()
        train = load_dataset("toy_squares", n=40)
        assert len(train.labels) == 30 and train.num_classes == 3  # 10 carved for validation
        with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['m'\]; it accepts n"):
            load_dataset("toy_squares", m=3)
    finally:
        DATASETS.unregister("toy_squares")


# ---- tables ------------------------------------------------------------------------------------
def test_one_renderer_and_label_map():
    assert [column_label(c) for c in ("clean", "pgd_sat", "cw", "aa", "worst", "mystery")] == \
        ["Clean", "PGD-SAT", "CW∞", "AA", "Worst", "mystery"]
    assert order_columns(["worst", "aa", "mystery", "pgd_sat", "clean", "clean"]) == \
        ["clean", "pgd_sat", "aa", "worst", "mystery"]
    assert render_table(["m", "Clean"], [["a", "1.00"]]) == ["| m | Clean |", "| --- | ---: |", "| a | 1.00 |"]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        render_table(["a", "b", "c"], [["1", "2"]])


# ---- extending by registration only -----------------------------------------------------------
TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 32, "image_size": 16}, val_size=16,
    student="small_cnn", student_args={"width": 4}, epochs=1, batch_size=16, attack_steps=2, eval_pgd_steps=1,
    test_n=16, compare_natural_student=False, progress=False, plot=False, device="cpu",
)


class ToyAT(Method):
    """Adversarial training on CE with a configurable weight: defined outside the library."""

    name = "toy_at"
    paper_epochs = 40
    milestones = (20, 30)
    attack_start = "uniform"
    preset_overrides = {"weight_decay": 1e-3, "method_args": {"scale": 1.0}}

    @dataclasses.dataclass
    class Options:
        scale: float = 1.0

    def training_step(self, x, y):
        x_adv = self.attack_student(x, y, loss="ce")
        loss = self.options.scale * F.cross_entropy(self.student(x_adv).float(), y)
        return {"loss": loss, "toy_ce": loss.detach()}


def toy_noise(model, x, y, params, ctx):
    """Random signed noise of radius ε (a weak attack, seeded by the column's generator)."""
    noise = torch.randint(0, 2, x.shape, generator=ctx.generator, device=x.device).to(x.dtype) * 2 - 1
    return (x + params["eps"] * noise).clamp(0, 1)


@pytest.fixture
def toy_extensions():
    register_method(ToyAT)
    register_attack("toy_noise", label="Toy-Noise", defaults=lambda eps, seed: {"eps": eps},
                    overridable=("eps",), run=toy_noise)
    try:
        yield
    finally:
        METHODS.unregister("toy_at")
        ATTACK_REGISTRY.unregister("toy_noise")


def test_a_method_and_a_column_added_only_by_registering(tmp_path, toy_extensions):
    assert "toy_at" in list_methods() and "toy_noise" in list_attacks()
    # the method's presets are generated from every <dataset>-<student> base, no YAML written
    assert {"cifar10-resnet18-toy_at", "cifar100-mobilenetv2-toy_at"} <= set(list_presets())
    preset = TrainConfig.from_preset("cifar10-resnet18-toy_at")
    assert (preset.method, preset.epochs, preset.weight_decay, preset.method_args) == ("toy_at", 40, 1e-3,
                                                                                        {"scale": 1.0})
    assert preset.clean_teacher_normalize == TrainConfig.clean_teacher_normalize  # the base's clean-teacher settings: unused, dropped

    config = build_config(overrides={**TINY, "method": "toy_at", "out_dir": str(tmp_path / "run"),
                                     "test_attacks": ("clean", "toy_noise", "pgd_sat")})
    result = ciard_fast.train(config)
    assert set(result.metrics) == {"clean", "toy_noise", "pgd_sat", "worst"}
    assert 0 <= result.metrics["worst"] <= result.metrics["toy_noise"] <= 100
    header = next(line for line in result.table.splitlines() if line.startswith("| model"))
    assert header == "| model | Clean | PGD-SAT | Toy-Noise | Worst |"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    row = saved["test"]["toy_at student (small_cnn)"]
    assert row["toy_noise"] == pytest.approx(result.metrics["toy_noise"])
    assert saved["config"]["test_attacks"] == ["clean", "toy_noise", "pgd_sat"]
    assert "Toy-Noise" in (tmp_path / "run" / "results.md").read_text()
    assert [r["epoch"] for r in result.history] == [1] and "train_toy_ce" in result.history[0]


def test_evaluate_picks_up_a_registered_column(toy_extensions):
    model = create_model("small_cnn", num_classes=10, width=4).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    report = ciard_fast.evaluate(model, (x, y), attacks=("clean", "toy_noise"), progress=False,
                                 attack_params={"toy_noise": {"eps": 4 / 255}})
    assert report.columns == ["clean", "toy_noise", "worst"]
    assert report.hyperparameters["toy_noise"] == {"eps": 4 / 255} and report.forwards["toy_noise"] == 8
    assert "| Clean | Toy-Noise | Worst |" in report.to_markdown()
    with pytest.raises(ValueError, match=r"attack_params\['toy_noise'\] cannot set \['steps'\]"):
        ciard_fast.evaluate(model, (x, y), attacks=("toy_noise",), progress=False,
                            attack_params={"toy_noise": {"steps": 3}})


def test_a_column_outside_the_ball_is_caught(toy_extensions):
    register_attack("toy_cheat", run=lambda model, x, y, params, ctx: (x + 2 * params["eps"]).clamp(0, 1))
    try:
        model = create_model("small_cnn", num_classes=10, width=4).eval()
        x, y = torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
        with pytest.raises(Exception, match="toy_cheat: x_adv outside the ε-ball"):
            ciard_fast.evaluate(model, (x, y), attacks=("toy_cheat",), progress=False)
    finally:
        ATTACK_REGISTRY.unregister("toy_cheat")


def test_a_column_with_bad_defaults_is_named(toy_extensions):
    register_attack("toy_bad", defaults=lambda eps, seed: [eps], run=toy_noise)
    try:
        with pytest.raises(TypeError, match="column 'toy_bad' must return a dict"):
            ciard_fast.evaluate(torch.nn.Flatten(), (torch.rand(2, 1, 2, 5), torch.zeros(2, dtype=torch.long)),
                                attacks=("clean",), progress=False)
    finally:
        ATTACK_REGISTRY.unregister("toy_bad")


def test_unknown_test_attack_fails_before_training():
    with pytest.raises(ValueError, match=r"test_attacks: unknown attack 'pgd'; choose from clean, fgsm"):
        build_config(overrides={**TINY, "test_attacks": ("clean", "pgd")})
