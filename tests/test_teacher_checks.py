"""Teachers checked before they teach: `auto` normalisation, teachers.json, the weak-teacher stop.

The teachers here are exact nearest-template classifiers of the synthetic dataset, built in one
input space (raw [0, 1] pixels, or the dataset's statistics as the public hub checkpoints are):
nearly perfect in that space, worse in the other, so which normalisation a checkpoint expects is
a fact the check must recover from the validation split alone.
"""
import json

import pytest
import torch
import torch.nn.functional as F

import ciard_fast
from ciard_fast.config import build_config
from ciard_fast.data import load_dataset
from ciard_fast.engine.teacher_checks import (TeacherToCheck, WeakTeacherError, check_teachers,
                                              normalization_candidates)
from ciard_fast.models import create_model
from ciard_fast.models.base import ImageClassifier
from ciard_fast.models.normalization import DATASET_STATS
from ciard_fast.models.registry import register_model

DATA = dict(dataset="synthetic", dataset_args={"num_samples": 160, "num_test": 32, "image_size": 16, "noise": 0.3},
            val_size=64)
GRID = 4  # the synthetic templates are 4x4 grids per channel


def probe_features(x, threshold):
    """relu(mean over GRID×GRID cells − threshold): [B, 3·GRID²]. The threshold (the data's mean
    level in the space the probe was fitted in) makes the features non-affine in the input, so a
    probe fed the wrong normalisation loses accuracy instead of merely rescaling its logits."""
    return F.relu(F.adaptive_avg_pool2d(x, GRID).flatten(1) - threshold)


class TemplateProbe(ImageClassifier):
    """logits_k = −‖features(x) − T_k‖² · 10 (nearest class mean); T: [K, 3·GRID²]."""

    def __init__(self, num_classes=10, normalize=None):
        super().__init__(num_classes, normalize)
        self.templates = torch.nn.Parameter(torch.zeros(num_classes, 3 * GRID * GRID))
        self.register_buffer("threshold", torch.zeros(()))

    def forward_normalized(self, x):
        features = probe_features(x, self.threshold)
        return -10.0 * ((features[:, None, :] - self.templates[None]) ** 2).sum(-1)


@pytest.fixture(autouse=True, scope="module")
def _template_probe_registered():
    """The probe is a registered model only while this module's tests run (other modules list
    every registered model)."""
    from ciard_fast.models.registry import MODELS

    register_model("test_template_probe")(TemplateProbe)
    yield
    MODELS.unregister("test_template_probe")


def train_split():
    return load_dataset("synthetic", split="train", val_size=DATA["val_size"], **DATA["dataset_args"])


def probe_state(normalized):
    """A state_dict of TemplateProbe fitted (class means) in raw or dataset-normalised space."""
    data = train_split()
    x = torch.as_tensor(data.images).permute(0, 3, 1, 2).double() / 255
    if normalized:
        mean = torch.tensor(data.mean, dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor(data.std, dtype=torch.float64).view(1, 3, 1, 1)
        x = (x - mean) / std
    threshold = 0.0 if normalized else 0.5
    features = probe_features(x, threshold)
    labels = torch.as_tensor(data.labels)
    templates = torch.stack([features[labels == k].mean(0) for k in range(data.num_classes)])
    return {"templates": templates.float(), "threshold": torch.tensor(threshold)}


def save(state, path):
    torch.save(state, path)
    return str(path)


def run(tmp_path, name, robust, clean, **overrides):
    config = build_config(overrides={
        **DATA, "method": "ciard", "student": "small_cnn", "student_args": {"width": 4},
        "robust_teacher": robust, "robust_teacher_model": "test_template_probe",
        "clean_teacher": clean, "clean_teacher_model": "test_template_probe",
        "epochs": 1, "batch_size": 32, "attack_steps": 1, "eval_pgd_steps": 2, "test_attacks": (),
        "progress": False, "plot": False, "device": "cpu", "out_dir": str(tmp_path / name), **overrides})
    return ciard_fast.train(config)


def test_auto_recognises_a_raw_teacher_and_a_normalised_one(tmp_path, capsys):
    raw = save(probe_state(normalized=False), tmp_path / "raw.pt")
    hub = save(probe_state(normalized=True), tmp_path / "hub.pt")
    run(tmp_path, "run", robust=raw, clean=hub)  # both normalisations default to auto for files
    report = json.loads((tmp_path / "run" / "teachers.json").read_text())
    assert report["unit"] == "percent"                   # the file says in what its accuracies are
    assert report["robust"]["normalize"] is False        # raw pixels
    assert report["clean"]["normalize"] is True          # the dataset's statistics
    assert report["robust"]["path"] == raw and report["clean"]["path"] == hub
    assert report["robust"]["model"] == "test_template_probe"
    for kind, right, wrong in (("robust", "raw pixels", "dataset statistics"),
                               ("clean", "dataset statistics", "raw pixels")):
        measured = report[kind]["auto"]
        assert set(measured) == {"raw pixels", "dataset statistics"}  # synthetic: no published stats
        assert measured[right] > 90 and measured[wrong] < measured[right] - 20, (kind, measured)  # percent
        assert report[kind]["val_clean"] == pytest.approx(measured[right])
    assert 0.0 <= report["robust"]["val_pgd"] <= report["robust"]["val_clean"] <= 100.0
    assert "val_pgd" not in report["clean"]
    out = capsys.readouterr().out
    assert "[robust teacher] test_template_probe" in out and "input: raw pixels" in out
    assert "[clean teacher]" in out and "input: dataset statistics" in out


def test_explicit_normalisation_is_kept_and_a_better_one_is_warned_about(tmp_path, capsys):
    raw = save(probe_state(normalized=False), tmp_path / "raw.pt")
    # right for the robust teacher, wrong (dataset statistics for a raw-pixel checkpoint) for the clean one
    run(tmp_path, "run", robust=raw, clean=raw, robust_teacher_normalize=False, clean_teacher_normalize=True)
    report = json.loads((tmp_path / "run" / "teachers.json").read_text())
    assert report["robust"]["normalize"] is False and "auto" not in report["robust"]
    assert report["robust"]["val_clean"] > 90  # percent
    assert report["clean"]["normalize"] is True  # kept as configured
    assert report["clean"]["alternatives"]["raw pixels"] > report["clean"]["val_clean"] + 20
    out = capsys.readouterr().out
    assert "[clean teacher] WARNING: configured input dataset statistics" in out and "raw pixels gives" in out
    assert "[robust teacher] WARNING" not in out


def test_random_teacher_stops_the_run_naming_it(tmp_path):
    good = save(probe_state(normalized=False), tmp_path / "raw.pt")
    torch.manual_seed(0)
    random_state = {"templates": torch.randn(10, 3 * GRID * GRID) * 5, "threshold": torch.tensor(0.0)}
    bad = save(random_state, tmp_path / "random.pt")
    with pytest.raises(WeakTeacherError) as info:
        run(tmp_path, "run", robust=good, clean=bad)
    message = str(info.value)
    assert "clean teacher" in message and "random.pt" in message and "test_template_probe" in message
    assert "raw pixels" in message and "dataset statistics" in message  # every normalisation tried
    assert "allow_weak_teacher" in message and "1.5x chance" in message
    report = json.loads((tmp_path / "run" / "teachers.json").read_text())
    assert report["clean"]["weak"] is True and report["robust"]["weak"] is False
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing was distilled
    # the override: recorded, and the run goes on
    run(tmp_path, "allowed", robust=good, clean=bad, allow_weak_teacher=True)
    assert json.loads((tmp_path / "allowed" / "teachers.json").read_text())["clean"]["weak"] is True
    assert (tmp_path / "allowed" / "last.pt").exists()


def test_candidates_include_published_statistics_once():
    mean, std = DATASET_STATS["cifar10"]
    assert normalization_candidates("cifar10", mean, std) == [False, True, "cifar10_legacy"]
    assert normalization_candidates("cifar10", (0.5,) * 3, (0.25,) * 3) == [False, True, "cifar10", "cifar10_legacy"]
    assert normalization_candidates("digits", (0.5,) * 3, (0.25,) * 3) == [False, True]


def test_check_teachers_directly_leaves_the_chosen_normalisation_applied(tmp_path):
    data = train_split()
    model = create_model("test_template_probe", num_classes=10)
    model.load_state_dict(probe_state(normalized=True))
    val = load_dataset("synthetic", split="val", val_size=DATA["val_size"], **DATA["dataset_args"])
    x = torch.as_tensor(val.images).permute(0, 3, 1, 2).float() / 255
    y = torch.as_tensor(val.labels)

    def set_normalize(value):
        model.set_normalization((data.mean, data.std) if value is True else (value or None))

    teacher = TeacherToCheck("clean", model, "hub.pt", "test_template_probe", "auto", candidates=(False, True),
                             set_normalize=set_normalize)
    lines = []
    report = check_teachers([teacher], [(x, y)], num_classes=10, eps=8 / 255, out_dir=str(tmp_path), log=lines.append)
    assert report["clean"]["normalize"] is True and model.normalization is not None
    assert json.loads((tmp_path / "teachers.json").read_text()) == json.loads(json.dumps(report))
    assert len(lines) == 1 and "auto:" in lines[0]


def test_resume_reuses_the_recorded_auto_choice(tmp_path, monkeypatch):
    from ciard_fast.engine import builders

    raw = save(probe_state(normalized=False), tmp_path / "raw.pt")
    hub = save(probe_state(normalized=True), tmp_path / "hub.pt")
    run(tmp_path, "run", robust=raw, clean=hub, epochs=2, stop_after=1)
    built = []
    original = builders.build_model  # teachers are built by engine/teachers.py through builders
    monkeypatch.setattr(builders, "build_model", lambda name, data, normalize, *a, **k: (
        built.append((name, normalize)), original(name, data, normalize, *a, **k))[1])
    resumed = ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))
    assert resumed.history[-1]["epoch"] == 2
    # the teachers were rebuilt with the choice recorded at the start (raw robust, normalised clean)
    assert [n for name, n in built if name == "test_template_probe"] == [False, True]
    # without the record, 'auto' cannot be resumed: a clear error instead of a silent raw guess
    (tmp_path / "run" / "teachers.json").unlink()
    with pytest.raises(ValueError, match="teachers.json"):
        ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))


def test_a_teachers_json_in_fractions_of_an_earlier_version_is_read_in_percent(tmp_path):
    """Files written before teachers.json recorded its unit hold fractions: read back in percent
    (resume, reuse, the model card), and recognised by the missing "unit" key."""
    from ciard_fast.engine.teacher_checks import read_teachers_json, teacher_entries

    old = {"robust": {"path": "r.pt", "model": "m", "normalize": False, "val_clean": 0.875, "val_pgd": 0.5,
                      "auto": {"raw pixels": 0.875, "dataset statistics": 0.25}, "weak": False},
           "clean": {"path": "c.pt", "model": "m", "normalize": True, "val_clean": 0.9,
                     "alternatives": {"raw pixels": 0.125}, "weak": False}}
    (tmp_path / "teachers.json").write_text(json.dumps(old))
    report = read_teachers_json(str(tmp_path))
    assert report["unit"] == "percent"
    assert report["robust"]["val_clean"] == pytest.approx(87.5) and report["robust"]["val_pgd"] == pytest.approx(50.0)
    assert report["robust"]["auto"] == {"raw pixels": pytest.approx(87.5), "dataset statistics": pytest.approx(25.0)}
    assert report["clean"]["alternatives"]["raw pixels"] == pytest.approx(12.5)
    assert report["robust"]["normalize"] is False and report["robust"]["weak"] is False  # not numbers: unchanged
    assert set(teacher_entries(report)) == {"robust", "clean"}
    # a file in percent is read as it is
    (tmp_path / "teachers.json").write_text(json.dumps({"unit": "percent", "clean": {"val_clean": 87.5}}))
    assert read_teachers_json(str(tmp_path))["clean"]["val_clean"] == 87.5
    # a damaged file is one error naming it
    (tmp_path / "teachers.json").write_text("{not json")
    with pytest.raises(ValueError, match="teachers.json could not be read"):
        read_teachers_json(str(tmp_path))


def test_resume_reads_an_auto_choice_recorded_in_fractions(tmp_path, monkeypatch):
    """A run started by an earlier version (teachers.json in fractions) resumes with its recorded
    normalisation, and its model card shows the teachers' accuracies in percent."""
    raw = save(probe_state(normalized=False), tmp_path / "raw.pt")
    hub = save(probe_state(normalized=True), tmp_path / "hub.pt")
    run(tmp_path, "run", robust=raw, clean=hub, epochs=2, stop_after=1)
    path = tmp_path / "run" / "teachers.json"
    report = json.loads(path.read_text())
    percent = {kind: report[kind]["val_clean"] for kind in ("robust", "clean")}
    old = {kind: dict(entry, val_clean=entry["val_clean"] / 100) for kind, entry in report.items() if kind != "unit"}
    path.write_text(json.dumps(old))  # as an earlier version wrote it
    resumed = ciard_fast.train(resume=str(tmp_path / "run" / "last.pt"))
    assert resumed.history[-1]["epoch"] == 2
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    for kind in ("robust", "clean"):
        assert card["teachers"][kind]["val_clean"] == pytest.approx(percent[kind])
        assert card["teachers"][kind]["unit"] == "percent"
