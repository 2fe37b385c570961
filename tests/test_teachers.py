"""Teachers as data (`ciard_fast.engine.teachers`) and configs derived with dataclasses.replace:
the teacher run, compare's per-method runs and the natural student inherit every field except
their declared overrides; teachers are resolved before the student's run, never by recursion."""
import ast
import dataclasses
import os
import pathlib

import pytest

import ciard_fast
from ciard_fast.config import FIELD_NAMES, TrainConfig, build_config
from ciard_fast.engine import api, checkpoint as ckpt, compare as compare_module
from ciard_fast.engine.teachers import (
    TEACHER_FIELDS, TEACHER_RUN_OVERRIDES, TeacherSpec, ensure_teacher, teacher_run_config, teacher_spec,
    teacher_specs,
)

TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 8}, val_size=16,
    student="small_cnn", student_args={"width": 4},
    robust_teacher_model="small_cnn", robust_teacher_args={"width": 4}, robust_teacher_normalize=True,
    clean_teacher_model="small_cnn", clean_teacher_args={"width": 4},
    teacher_epochs=1, epochs=1, batch_size=32, attack_steps=1, eval_pgd_steps=1, test_attacks=("clean",),
    test_n=8, compare_natural_student=False, progress=False, plot=False, device="cpu",
)

# Non-default values for fields a derived run must inherit (optimizer and sync_batchnorm were
# once silently dropped by a hand-copied field list).
NON_DEFAULT = dict(optimizer="sgd", sync_batchnorm=True, momentum=0.5, weight_decay=1e-3, crop_padding=1,
                   flip=False, precision="fp32", channels_last=False, cuda_graphs=False, compile=False, seed=7,
                   eps=4 / 255, alpha=1 / 255, attack_random_start="uniform", eval_pgd_steps=3, eval_n=40,
                   log_every=3, loader="device", data_root="/nonexistent/data", batch_size=16, device="cpu")


def base_config(**overrides):
    return build_config(overrides={**TINY, **NON_DEFAULT, "out_dir": "/tmp/unused-base", **overrides})


def assert_inherits(derived, parent, overrides):
    """Every TrainConfig field is either in `overrides` or equal to the parent's."""
    assert set(overrides) <= set(FIELD_NAMES), sorted(set(overrides) - set(FIELD_NAMES))
    inherited = [f for f in FIELD_NAMES if f not in overrides]
    for name in inherited:
        assert getattr(derived, name) == getattr(parent, name), name
    assert set(inherited) | set(overrides) == set(FIELD_NAMES)


# ---- the teacher's run config ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["robust", "clean"])
def test_teacher_run_inherits_every_field_but_the_declared_overrides(kind):
    base = base_config(robust_teacher_method="sat")
    run = teacher_run_config(teacher_spec(base, kind), base)
    assert_inherits(run, base, TEACHER_RUN_OVERRIDES)
    assert run.optimizer == "sgd" and run.sync_batchnorm is True  # once dropped
    # the overrides hold what the teacher's recipe says
    assert run.method == ("sat" if kind == "robust" else "natural") and run.method_args == {}
    assert (run.student, run.student_args) == ("small_cnn", {"width": 4})
    assert run.epochs == run.eval_every == base.teacher_epochs and run.lr == base.teacher_lr
    assert run.out_dir == os.path.join(base.out_dir, "teachers", kind)
    assert run.test_attacks == () and run.resume is None and run.stop_after is None
    # the distillation-only fields are back to their defaults: they cannot invalidate the cache
    defaults = TrainConfig()
    for name in (*TEACHER_FIELDS["robust"].values(), *TEACHER_FIELDS["clean"].values(), "teacher_epochs"):
        assert getattr(run, name) == getattr(defaults, name), name


def test_a_new_config_field_reaches_the_teacher_run_by_default():
    @dataclasses.dataclass
    class Extended(TrainConfig):
        future_knob: int = 1

    fields = {f.name: getattr(base_config(), f.name) for f in dataclasses.fields(TrainConfig)}
    base = Extended(**{**fields, "future_knob": 5})
    run = teacher_run_config(teacher_spec(base, "robust"), base)
    assert isinstance(run, Extended) and run.future_knob == 5


def test_teacher_run_config_is_the_same_for_settings_that_only_concern_the_student():
    base = base_config()
    reference = teacher_run_config(teacher_spec(base, "robust"), base)
    for change in (dict(T_push=3.0), dict(epochs=9), dict(lr=0.5), dict(test_n=4), dict(clean_teacher_model="small_resnet"),
                   dict(student="small_resnet"), dict(compare_natural_student=True), dict(stop_after=1)):
        other = base_config(**change)
        assert teacher_run_config(teacher_spec(other, "robust"), other) == reference, change
    # ... but not for one that changes how the teacher is trained
    other = base_config(teacher_lr=0.05)
    assert teacher_run_config(teacher_spec(other, "robust"), other).lr == 0.05


def test_teacher_spec_reads_the_config_slots():
    base = base_config(robust_teacher="r.pt", robust_teacher_normalize="cifar10_legacy", clean_teacher_normalize=False)
    robust, clean = teacher_spec(base, "robust"), teacher_spec(base, "clean")
    assert robust == TeacherSpec(kind="robust", model="small_cnn", model_args={"width": 4}, weights="r.pt",
                                 normalize="cifar10_legacy", method="trades", epochs=1, lr=0.1)
    assert clean.weights is None and clean.method == "natural" and clean.normalize is False
    assert robust.method_keyword == "robust_teacher" and clean.method_keyword == "clean_teacher"
    assert set(teacher_specs(base)) == {"robust", "clean"}  # CIARD needs both
    assert set(teacher_specs(base.replace(method="rslad"))) == {"robust"}
    assert teacher_specs(base.replace(method="trades")) == {}


@pytest.mark.parametrize("change, match", [
    (dict(robust_teacher_method="ciard"), "robust_teacher_method must be one of trades, sat, natural; got 'ciard'"),
    (dict(teacher_epochs=0), "teacher_epochs must be >= 1, got 0"),
    (dict(teacher_lr=0.0), "teacher_lr must be > 0"),
])
def test_bad_teacher_settings_are_clear_errors(change, match):
    with pytest.raises(ValueError, match=match):
        teacher_spec(base_config(**change), "robust")


def test_unknown_teacher_method_option_is_rejected():
    spec = TeacherSpec(kind="robust", model="small_cnn", method="trades", method_args={"T_push": 1.0})
    with pytest.raises(ValueError, match="no option.*T_push"):
        teacher_run_config(spec, base_config())


# ---- ensure_teacher -------------------------------------------------------------------------------
def test_ensure_teacher_returns_a_given_file_without_training(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "train", lambda *a, **k: pytest.fail("nothing to train"))
    given = tmp_path / "given.pt"
    given.write_bytes(b"weights")
    base = base_config(out_dir=str(tmp_path / "run"), robust_teacher=str(given))
    assert ensure_teacher(teacher_spec(base, "robust"), base) == str(given)
    assert not (tmp_path / "run").exists()
    # a missing file is named, with the fix, before anything is trained
    monkeypatch.undo()
    monkeypatch.setattr(api, "_run", lambda *a, **k: pytest.fail("nothing to run"))
    base = base_config(out_dir=str(tmp_path / "run"), robust_teacher=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="robust_teacher=.*missing.pt.*no such file.*leave robust_teacher unset"):
        api.train(base)
    assert not (tmp_path / "run").exists()


def test_ensure_teacher_trains_once_through_train_then_reuses(tmp_path, monkeypatch):
    base = build_config(overrides={**TINY, "out_dir": str(tmp_path / "run")})
    spec = teacher_spec(base, "clean")
    calls = []
    real_train = api.train
    monkeypatch.setattr(api, "train", lambda config, **kw: calls.append(config) or real_train(config, **kw))
    path = ensure_teacher(spec, base)
    assert path == str(tmp_path / "run" / "teachers" / "clean" / "last.pt") and os.path.isfile(path)
    # the public entry point, with the derived config (in a folder the engine owns: overwrite)
    assert calls == [teacher_run_config(spec, base).replace(overwrite=True)]
    stamp = os.path.getmtime(path)
    assert ensure_teacher(spec, base) == path and len(calls) == 1 and os.path.getmtime(path) == stamp
    # another teacher recipe is another run: trained again
    ensure_teacher(dataclasses.replace(spec, lr=0.05), base)
    assert len(calls) == 2 and calls[-1].lr == 0.05
    # the file loads as the teacher's weights
    model = ciard_fast.create_model("small_cnn", num_classes=10, width=4)
    ciard_fast.load_weights(model, path)


def test_train_resolves_teachers_first_and_never_reenters_the_run(tmp_path, monkeypatch):
    """train() -> ensure_teachers -> train(teacher run) -> _run, then the student's _run: no _run
    inside a _run, and the student's result points at the cached teachers."""
    depth, deepest, runs = [0], [0], []
    real_run = api._run

    def spy(config, *args, **kwargs):
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        runs.append(config.method)
        try:
            return real_run(config, *args, **kwargs)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(api, "_run", spy)
    config = build_config(overrides={**TINY, "out_dir": str(tmp_path / "run"), "compare_natural_student": True})
    result = ciard_fast.train(config)
    # robust teacher (TRADES), clean teacher, natural comparison student, then the CIARD student
    assert runs == ["trades", "natural", "natural", "ciard"] and deepest[0] == 1
    teachers = tmp_path / "run" / "teachers"
    assert result.teachers == {"robust": str(teachers / "robust" / "last.pt"),
                               "clean": str(teachers / "clean" / "last.pt")}
    assert set(result.comparison) == {"ciard student (small_cnn)", "natural student (small_cnn)"}
    # run again: the teachers and the natural student are finished runs, only the student trains
    natural = tmp_path / "run" / "natural_student" / "last.pt"
    stamp = os.path.getmtime(natural)
    runs.clear()
    again = ciard_fast.train(config.replace(overwrite=True))  # the student's folder is the user's: replaced on request
    assert runs == ["ciard"] and os.path.getmtime(natural) == stamp
    assert again.comparison == result.comparison  # and the same numbers, whether cached or not


# ---- other derived configs --------------------------------------------------------------------------
def test_natural_student_config_inherits_every_field_but_its_overrides():
    base = base_config(compare_natural_student=True, T_push=2.0)
    sub = api.natural_student_config(base)
    assert_inherits(sub, base, api.NATURAL_STUDENT_OVERRIDES)
    assert sub.method == "natural" and sub.method_args == {} and sub.lr == base.teacher_lr
    assert sub.test_attacks == () and not sub.compare_natural_student
    assert sub.out_dir == os.path.join(base.out_dir, "natural_student")


def test_compare_method_config_inherits_every_field_but_its_overrides(tmp_path):
    base = base_config(out_dir=str(tmp_path))
    config = compare_module.method_config(base, "mtard", None, None, None, {}, {"eta_w": 0.05},
                                          {"robust": ("r.pt", False), "clean": ("c.pt", "cifar10_legacy")},
                                          str(tmp_path / "mtard" / "seed-3"), ["clean", "fgsm"], seed=3, split_seed=0)
    assert_inherits(config, base, compare_module.METHOD_RUN_OVERRIDES)
    assert (config.method, config.method_args, config.robust_teacher, config.clean_teacher) == \
        ("mtard", {"eta_w": 0.05}, "r.pt", "c.pt")
    # the teachers' files come with the normalisation they were trained with (no `auto` guess)
    assert (config.robust_teacher_normalize, config.clean_teacher_normalize) == (False, "cifar10_legacy")
    assert config.out_dir == str(tmp_path / "mtard" / "seed-3") and config.test_attacks == ("clean", "fgsm")
    assert (config.seed, config.split_seed) == (3, 0)
    natural = compare_module.method_config(base, "natural", None, None, None, {}, {}, {}, str(tmp_path), ["clean"])
    assert natural.lr == base.teacher_lr  # cross-entropy rows train at the teachers' lr
    assert natural.robust_teacher is None


# ---- no module of the package imports another one's private names -------------------------------
def test_no_module_imports_private_names():
    root = pathlib.Path(ciard_fast.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{path.relative_to(root)}: from {'.' * node.level}{node.module or ''} "
                                     f"import {', '.join(private)}")
    assert not offenders, offenders


def test_teacher_cli_uses_the_same_recipe_and_reuses_a_finished_run(tmp_path, capsys):
    from ciard_fast.cli import main
    from ciard_fast.engine.checkpoint import load_checkpoint

    out = tmp_path / "teacher"
    argv = ["teacher", "--method", "trades", "--model", "small_cnn", "--dataset", "synthetic",
            "--dataset_args", "{num_samples: 64, num_test: 16, image_size: 8}", "--val_size", "16",
            "--student_args.width", "4", "--epochs", "1", "--batch_size", "32", "--attack_steps", "1",
            "--eval_pgd_steps", "1", "--test_attacks", "clean", "--optimizer", "sgd", "--beta", "3.0",
            "--progress", "false", "--plot", "false", "--device", "cpu", "--out-dir", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "| trades student (small_cnn) |" in first and f"teacher checkpoint: {out / 'best.pt'}" in first
    saved = load_checkpoint(out / "last.pt")["config"]
    assert saved["method_args"] == {"beta": 3.0} and saved["optimizer"] == "sgd"
    stamp = os.path.getmtime(out / "last.pt")
    assert main(argv) == 0
    again = capsys.readouterr()
    assert os.path.getmtime(out / "last.pt") == stamp  # not trained again
    assert "reusing the finished teacher run" in again.err and "| trades student (small_cnn) |" in again.out


def test_only_teachers_py_reads_the_teacher_slots_by_computed_name():
    """getattr(config, f"{kind}_teacher_...") belongs to engine/teachers.py (`teacher_spec`);
    every other module reads a TeacherSpec."""
    root = pathlib.Path(ciard_fast.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path == root / "engine" / "teachers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr")
                    and len(node.args) > 1 and not isinstance(node.args[1], ast.Constant)
                    and "teacher" in ast.unparse(node.args[1])):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


def test_a_finished_run_is_reused_whatever_its_result_neutral_fields(tmp_path):
    """One list (engine/checkpoint.RESULT_NEUTRAL) says which fields never change a run's numbers:
    the cached teacher / natural-student runs and compare's runs all reuse through it."""
    ciard_fast.train(build_config(overrides={**TINY, "method": "natural", "out_dir": str(tmp_path / "run")}))
    path = str(tmp_path / "run" / "last.pt")
    done = build_config(overrides={**TINY, "method": "natural", "out_dir": str(tmp_path / "run")})
    assert ckpt.is_finished_run(path, done)
    for change in (dict(log_every=7), dict(plot=False), dict(progress=False), dict(overwrite=True),
                   dict(checkpoint_every_steps=3)):
        assert ckpt.is_finished_run(path, done.replace(**change)), change
    assert not ckpt.is_finished_run(path, done.replace(lr=0.05))  # a field that changes the numbers
