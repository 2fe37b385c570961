"""One `resolve_normalization(value, dataset)` and one table of dataset statistics, used by
training, `ciard-fast eval` and the data loaders alike."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import ciard_fast
from ciard_fast.cli import main
from ciard_fast.data import load_dataset
from ciard_fast.engine.builders import build_model
from ciard_fast.models import DATASET_STATS
from ciard_fast.models.normalization import resolve_normalization


@pytest.fixture(scope="module")
def digits_train():
    return load_dataset("digits", split="train")


def test_every_spelling_resolves_to_concrete_statistics(digits_train):
    assert resolve_normalization(True, digits_train) == (digits_train.mean, digits_train.std)
    assert resolve_normalization(True, "cifar10") == DATASET_STATS["cifar10"]
    for off in (False, None):
        assert resolve_normalization(off, digits_train) is None and resolve_normalization(off) is None
    assert resolve_normalization("cifar10_legacy", digits_train) == DATASET_STATS["cifar10_legacy"]
    pair = ([0.1, 0.2, 0.3], np.array([0.4, 0.5, 0.6]))
    assert resolve_normalization(pair) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    one_channel = load_dataset("synthetic", num_samples=8, image_size=4, channels=1)
    mean, std = resolve_normalization(True, one_channel)  # channels follow the dataset
    assert len(mean) == len(std) == 1


@pytest.mark.parametrize("value, dataset, error, match", [
    ("auto", "cifar10", ValueError, "'auto' must be resolved by the teacher check first"),
    ("cifar1000", None, ValueError, r"not a known dataset; use one of \['cifar10', 'cifar100', 'cifar10_legacy'"),
    (True, None, ValueError, "no dataset was given"),
    (True, "digits", ValueError, "dataset 'digits', which has none in DATASET_STATS.*loaded ImageDataset"),
    (((0.5, 0.5), (0.5, 0.5)), None, ValueError, "3 per-channel values"),
    (((0.5,) * 3, (0.5, 0.0, 0.5)), None, ValueError, "std must be > 0"),
    (((0.5, 0.5, float("nan")), (0.5,) * 3), None, ValueError, "finite"),
    (0.5, None, TypeError, "normalize must be True, False/None, a dataset name or a"),
    ("cifar10", 3, TypeError, "channels=..."),
])
def test_bad_values_are_clear_errors(value, dataset, error, match):
    with pytest.raises(error, match=match):
        resolve_normalization(value, dataset)


def test_cifar10_std_is_the_rounded_population_std():
    # the exact population std of the 50,000 training images, to 8 decimals (see the table's
    # docstring for how it is computed); the table holds it rounded, not 0.2471
    exact = (0.24703223, 0.24348513, 0.26158784)
    assert DATASET_STATS["cifar10"][1] == tuple(round(s, 4) for s in exact)


def _write_cifar10(root, n=2):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [0, 1][:n]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)


def _write_tinyimagenet_cache(root):
    from ciard_fast.data import tinyimagenet

    folder = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(os.path.join(folder, tinyimagenet.CACHE_DIR))
    with open(os.path.join(folder, "wnids.txt"), "w") as f:
        f.write("n01\nn02\n")
    for part in ("train", "test"):
        np.save(os.path.join(folder, tinyimagenet.CACHE_DIR, f"{part}_labels.npy"), np.array([0, 1]))
        np.save(os.path.join(folder, tinyimagenet.CACHE_DIR, f"{part}_images.npy"),
                np.zeros((2, 8, 8, 3), dtype=np.uint8))


def test_the_loaders_report_the_tables_statistics(tmp_path):
    _write_cifar10(str(tmp_path))
    _write_tinyimagenet_cache(str(tmp_path))
    for name in ("cifar10", "tinyimagenet"):
        ds = load_dataset(name, root=str(tmp_path), split="test", download=False)
        assert (ds.mean, ds.std) == DATASET_STATS[name], name
        # so a model built with normalize=True and one built with the dataset's name agree
        config = ciard_fast.TrainConfig(device="cpu", channels_last=False)
        by_flag = build_model("small_cnn", ds, True, "cpu", config)
        by_name = build_model("small_cnn", ds, name, "cpu", config)
        assert by_flag.normalization == by_name.normalization == DATASET_STATS[name]
        assert torch.equal(by_flag.std, by_name.std)


# ---- ciard-fast eval rebuilds the run's normalisation ------------------------------------------
@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory):
    """A short natural run on the digits with statistics that are not the digits' own."""
    out = tmp_path_factory.mktemp("legacy") / "run"
    torch.manual_seed(0)
    result = ciard_fast.train(
        method="natural", dataset="digits", crop_padding=0, flip=False, student="small_cnn",
        student_args={"width": 8, "stem_stride": 2}, student_normalize="cifar10_legacy", epochs=8, batch_size=64,
        lr=0.1, eval_every=4, eval_n=64, test_attacks=("clean",), test_n=200, progress=False, plot=False,
        device="cpu", out_dir=str(out), compare_natural_student=False)
    return result


def _eval_clean(capsys, weights, *extra):
    code = main(["eval", "--weights", weights, "--attacks", "clean", "--n", "200", "--no-progress",
                 "--device", "cpu", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_eval_reproduces_the_runs_accuracy_with_its_named_statistics(legacy_run, capsys, tmp_path):
    saved = json.loads(open(os.path.join(legacy_run.out_dir, "results.json")).read())
    clean = next(iter(saved["test"].values()))["clean"]
    assert clean > 50  # a trained model, so a wrong normalisation would show
    json_path = tmp_path / "eval.json"
    out = _eval_clean(capsys, legacy_run.best_checkpoint, "--json", str(json_path))
    assert "normalize=cifar10_legacy [checkpoint config]" in out
    assert 100 * json.loads(json_path.read_text())["accuracy"]["clean"] == clean  # exactly the run's number
    # the old behaviour (the flag turned into "the dataset's statistics") evaluates another model
    out = _eval_clean(capsys, legacy_run.best_checkpoint, "--normalize", "dataset", "--json", str(json_path))
    assert "normalize=dataset [--normalize]" in out
    assert 100 * json.loads(json_path.read_text())["accuracy"]["clean"] != clean
    # a name on the command line works too, and a bad one is one clear line
    out = _eval_clean(capsys, legacy_run.best_checkpoint, "--normalize", "cifar10_legacy", "--json", str(json_path))
    assert 100 * json.loads(json_path.read_text())["accuracy"]["clean"] == clean
    code = main(["eval", "--weights", legacy_run.best_checkpoint, "--normalize", "cifar1000", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cifar10_legacy" in err and "Traceback" not in err


def test_eval_resolves_true_against_the_runs_own_dataset(tmp_path, capsys):
    """normalize=True of a synthetic run means the synthetic training images' statistics."""
    out = tmp_path / "run"
    args = dict(method="natural", dataset="synthetic", dataset_args={"num_samples": 64, "num_test": 16, "image_size": 8},
                val_size=16, student="small_cnn", student_args={"width": 4}, epochs=1, batch_size=32,
                test_attacks=("clean",), test_n=16, progress=False, plot=False, device="cpu", out_dir=str(out))
    result = ciard_fast.train(**args)
    clean = result.metrics["clean"]
    json_path = tmp_path / "eval.json"
    printed = _eval_clean(capsys, result.best_checkpoint, "--n", "16", "--json", str(json_path))
    assert "normalize=dataset [checkpoint config]" in printed
    assert 100 * json.loads(json_path.read_text())["accuracy"]["clean"] == clean
