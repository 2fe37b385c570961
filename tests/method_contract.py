"""The method contract, checked on every method (`methods/base.py`).

These are test functions over the fixture `contract_case`, which `conftest.py` parametrizes at
collection: in `test_method_contract.py` over every registered method (`list_methods()`) and each
of its registered variants; in a test file that defines ``TEST_METHODS`` (method classes it
registers for its own duration, see conftest.py) over those. A test file gets all of them with

    from method_contract import *  # noqa: F401,F403

For each method:
  * a step (the method's, the optimisers', the hooks') makes no host sync, before and after its
    schedules change (first and last epoch);
  * a step returns a 0-d "loss" and detached 0-d logged values; `log_values()` too;
  * a network declared frozen stays bit-identical, without gradients, in eval mode;
  * the checkpoint's method entry, put into a fresh method at the same epoch, gives back every
    tensor the method holds (no state left unregistered) and the same next step;
  * a run interrupted inside an epoch (SIGTERM) and resumed ends bit-identical to the
    uninterrupted run: student, networks, optimisers, method state, history, results;
  * every out-of-range, wrong-choice or wrong-type option fails when the config is built, before
    any data is loaded or teacher trained.
"""
import dataclasses
import math
import os
import signal
import typing

import pytest
import torch

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.engine import api as api_module
from ciard_fast.engine import checkpoint as ckpt
from ciard_fast.engine import trainer as trainer_module
from ciard_fast.engine.optim import RunOptimizers
from ciard_fast.engine.signals import RunInterrupted
from ciard_fast.methods import AttackSettings
from ciard_fast.models import create_model

from _tiny import tiny_convnet
from test_ciard_method import forbid_host_sync

__all__ = ["test_contract_step_makes_no_host_sync", "test_contract_logged_values_are_0d_tensors",
           "test_contract_frozen_networks_stay_frozen", "test_contract_state_round_trip_restores_every_tensor",
           "test_contract_mid_epoch_resume_is_exact",
           "test_contract_bad_options_fail_at_config_time", "teacher_files",
           "teachers_of"]

EPOCHS = 6  # CIARD's ITT from epoch 2, IAD's introspection from epoch 2: epochs 1 and 6 see both sides


# ---- set-up ---------------------------------------------------------------------------------------
def build(case, epochs=EPOCHS, num_classes=10, steps=2):
    """The case's method on tiny networks: the student and one network per declared role."""
    options = case.cls.Options(**case.options)
    specs = case.cls.variant_for(options).declare_networks(options)
    networks = {spec.role: tiny_convnet(num_classes, seed=index + 1) for index, spec in enumerate(specs)}
    return case.cls(tiny_convnet(num_classes, seed=0), num_classes=num_classes, epochs=epochs, options=options,
                    attack=AttackSettings(8 / 255, 2 / 255, steps), **networks)


def batch(seed=0, B=8, C=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 16, 16, generator=g), torch.randint(0, C, (B,), generator=g)


def engine_step(method, optimizers, x, y):
    """One step as the engine runs it (`engine/trainer.py`)."""
    out = trainer_module.step_forward(method, optimizers, x, y, lambda: _null(), None)
    trainer_module.step_update(method, optimizers, out, {})
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def start(method, optimizers, epoch):
    optimizers.set_epoch(epoch)
    method.start_epoch(epoch)


# ---- the checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch", [1, EPOCHS])
def test_contract_step_makes_no_host_sync(contract_case, monkeypatch, epoch):
    method = build(contract_case)
    optimizers = RunOptimizers(method, momentum=0.9, kind="sgd")
    start(method, optimizers, epoch)
    engine_step(method, optimizers, *batch(0))  # first-step work (e.g. L⁰) happens here
    with forbid_host_sync(monkeypatch) as calls:
        engine_step(method, optimizers, *batch(1))
        engine_step(method, optimizers, *batch(2))
    assert calls == []


def test_contract_logged_values_are_0d_tensors(contract_case):
    method = build(contract_case)
    optimizers = RunOptimizers(method, kind="sgd")
    for epoch in (1, EPOCHS):
        start(method, optimizers, epoch)
        out = engine_step(method, optimizers, *batch(epoch))
        trainer_module.check_step_output(method, out)  # the engine's own check of the contract
        assert out["loss"].dim() == 0 and out["loss"].requires_grad
        for key, value in out.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, key
            assert key == "loss" or not value.requires_grad, key
        assert set(method.progress_hidden) <= set(out), "progress_hidden names a value the step does not log"
        for key, value in method.log_values().items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0 and torch.isfinite(value), key
        method.end_epoch(epoch)


def test_contract_frozen_networks_stay_frozen(contract_case):
    method = build(contract_case)
    frozen = [spec.role for spec in method.network_specs if not spec.trainable]
    before = {role: {k: v.clone() for k, v in getattr(method, role).state_dict().items()} for role in frozen}
    student_before = {k: v.clone() for k, v in method.student.state_dict().items()}
    optimizers = RunOptimizers(method, kind="sgd")
    for epoch in (1, EPOCHS):
        start(method, optimizers, epoch)
        for seed in range(2):
            engine_step(method, optimizers, *batch(seed))
        method.end_epoch(epoch)
    for role in frozen:
        network = getattr(method, role)
        assert not network.training, f"{role} is in train mode"
        for k, v in network.state_dict().items():
            assert torch.equal(v, before[role][k]), f"frozen {role} changed: {k}"
        assert all(p.grad is None and not p.requires_grad for p in network.parameters()), role
    assert any(not torch.equal(v, student_before[k]) for k, v in method.student.state_dict().items())


def _tensors(method):
    """Every tensor the method object holds directly (its state, caches), by attribute name."""
    return {k: v for k, v in vars(method).items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("epoch", [1, EPOCHS])
def test_contract_state_round_trip_restores_every_tensor(contract_case, epoch):
    a = build(contract_case)
    a_opt = RunOptimizers(a, momentum=0.9, kind="sgd")
    start(a, a_opt, epoch)
    for seed in range(3):
        engine_step(a, a_opt, *batch(seed))
    # what a mid-epoch resume does: a fresh method, the epoch started, then the checkpoint's entry
    b = build(contract_case)
    b_opt = RunOptimizers(b, momentum=0.9, kind="sgd")
    start(b, b_opt, epoch)
    ckpt.restore_method_entry(b, b_opt, ckpt.method_entry(a, a_opt.state_dict()))
    b.student.load_state_dict(a.student.state_dict())
    b_opt["student"].load_state_dict(a_opt["student"].state_dict())
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), f"{name} differs after the round trip: register it as state"
    torch.manual_seed(7)
    out_a = engine_step(a, a_opt, *batch(9))
    torch.manual_seed(7)
    out_b = engine_step(b, b_opt, *batch(9))
    _assert_same({k: v.detach() for k, v in out_a.items()}, {k: v.detach() for k, v in out_b.items()}, "step")
    a.end_epoch(epoch)
    b.end_epoch(epoch)
    for name, value in _tensors(a).items():
        assert torch.equal(value, _tensors(b)[name]), name


# ---- a whole run, cut inside an epoch and resumed ------------------------------------------------------
TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 16}, val_size=16,
    student="small_cnn", student_args={"width": 4}, epochs=3, batch_size=16, attack_steps=1, eval_pgd_steps=1,
    eval_every=1, test_attacks=("clean",), test_n=16, compare_natural_student=False, progress=False, plot=False,
    device="cpu", log_every=2, allow_weak_teacher=True,
    robust_teacher_model="small_cnn", robust_teacher_args={"width": 4}, robust_teacher_normalize=False,
    clean_teacher_model="small_cnn", clean_teacher_args={"width": 4}, clean_teacher_normalize=False,
)  # 48 training images: 3 steps an epoch


@pytest.fixture(scope="session")
def teacher_files(tmp_path_factory):
    """Weights files for both teacher slots (untrained small CNNs: the contract, not accuracy)."""
    folder = tmp_path_factory.mktemp("contract_teachers")
    files = {}
    for seed, slot in enumerate(("robust", "clean"), start=1):
        torch.manual_seed(seed)
        path = str(folder / f"{slot}.pt")
        torch.save(create_model("small_cnn", num_classes=10, width=4).state_dict(), path)
        files[f"{slot}_teacher"] = path
    return files


def teachers_of(method, teacher_files, method_args=None):
    """The entries of `teacher_files` that `method` reads (a teacher file given to a method that
    uses no such teacher is warned about)."""
    from ciard_fast.engine.teachers import needed_teachers

    kinds = needed_teachers(method, method_args)
    return {field: path for field, path in teacher_files.items() if field[:-len("_teacher")] in kinds}


def _config(case, teacher_files, out_dir, **extra):
    given = teachers_of(case.cls.name, teacher_files, dict(case.options))
    return build_config(overrides={**TINY, **given, "method": case.cls.name, "method_args": dict(case.options),
                                   "out_dir": out_dir, **extra})


def _assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def test_contract_mid_epoch_resume_is_exact(contract_case, teacher_files, tmp_path, monkeypatch):
    full = ciard_fast.train(_config(contract_case, teacher_files, str(tmp_path / "full")))
    real = trainer_module.step_update
    count = {"n": 0}

    def update(*args):
        real(*args)
        count["n"] += 1
        if count["n"] == 4:  # epoch 2, after its first step
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "step_update", update)
        with pytest.raises(RunInterrupted):
            ciard_fast.train(_config(contract_case, teacher_files, str(tmp_path / "cut")))
    cut = ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["epoch"] == 1 and cut["mid_epoch"]["epoch"] == 2 and cut["mid_epoch"]["steps"] == 1
    resumed = ciard_fast.train(resume=str(tmp_path / "cut" / "last.pt"))
    a, b = ckpt.load_checkpoint(full.last_checkpoint), ckpt.load_checkpoint(resumed.last_checkpoint)
    timing = ("train_seconds", "train_images_per_s")
    for state in (a, b):
        state["history"] = [{k: v for k, v in row.items() if k not in timing} for row in state["history"]]
    for key in ("epoch", "step", "student", "optimizer", "method", "history", "best_epoch", "best_score",
                "callbacks", "eval_weights"):
        _assert_same(a.get(key), b.get(key), key)
    assert full.metrics == resumed.metrics


# ---- options ------------------------------------------------------------------------------------------
def _bad_values(field, annotation):
    """(value, error type) pairs that the option must refuse: outside its range, not one of its
    choices, of the wrong type."""
    from ciard_fast.options import _BOUNDS, _CHOICES

    bad = []
    elements = typing.get_args(annotation) if typing.get_origin(annotation) is tuple else None
    bounds = field.metadata.get(_BOUNDS)
    if bounds is not None:
        low, low_inc, high, high_inc = bounds
        for value in ([low - 1 if low_inc else low] if low is not None else []) + \
                     ([high + 1 if high_inc else high] if high is not None else []):
            value = float(value) if float in _types(annotation) else int(value)
            if elements is not None:
                value = (value,) * (len(elements) if Ellipsis not in elements else 1)
            bad.append((value, ValueError))
    if _CHOICES in field.metadata:
        bad.append(("not-a-choice", ValueError))
    kinds = _types(annotation)
    if kinds & {int, float, bool}:
        bad.append(("1", TypeError))   # a number or boolean written as text (from Python)
    elif str in kinds:
        bad.append((1.5, TypeError))
    return bad


def _types(annotation):
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, tuple):
        return set().union(*(_types(a) for a in args if a is not Ellipsis))
    return {annotation}


def test_contract_bad_options_fail_at_config_time(contract_case, tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded (or a teacher resolved) before the options were checked")

    monkeypatch.setattr(api_module, "load_splits", no_data)
    monkeypatch.setattr(api_module, "ensure_teachers", no_data)
    options = contract_case.cls.Options
    hints = typing.get_type_hints(options)
    tried = 0
    for field in dataclasses.fields(options):
        if field.name in contract_case.options:
            continue  # the variant's own switch
        for value, error in _bad_values(field, hints[field.name]):
            with pytest.raises(error, match=field.name):
                ciard_fast.train({**TINY, "method": contract_case.cls.name,
                                  "method_args": {**contract_case.options, field.name: value},
                                  "out_dir": str(tmp_path / "never")})
            tried += 1
    with pytest.raises(ValueError, match="no_such_option"):
        ciard_fast.train({**TINY, "method": contract_case.cls.name,
                          "method_args": {**contract_case.options, "no_such_option": 1},
                          "out_dir": str(tmp_path / "never")})
    assert not (tmp_path / "never").exists()
    assert tried >= len(dataclasses.fields(options)) - len(contract_case.options)
