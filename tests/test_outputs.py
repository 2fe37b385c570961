"""Nothing a user owns is overwritten by accident (`ciard_fast/outputs.py`): every output path the
user names (export --out and its model cards, eval --json, doctor --json, the JSON report, the
out_dir of train / teacher / compare) is refused, exit 2 naming both paths, when writing it would
replace a file being read or a run's own file; nothing is written then."""
import hashlib
import os

import pytest
import torch

import ciard_fast
from ciard_fast.outputs import OutputPathError, check_output_file, run_folder_of

from _cli import run_cli

TINY = dict(
    dataset="synthetic", dataset_args={"num_samples": 96, "num_test": 32, "image_size": 16}, val_size=32,
    student="small_cnn", student_args={"width": 4}, robust_teacher_model="small_cnn",
    robust_teacher_args={"width": 4}, robust_teacher_normalize=True, teacher_epochs=1, epochs=1, batch_size=32,
    attack_steps=1, eval_pgd_steps=1, test_attacks=("clean",), progress=False, plot=False, device="cpu",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished ARD run (its robust teacher trained first into teachers/robust/)."""
    out = tmp_path_factory.mktemp("outputs") / "student"
    return ciard_fast.train({**TINY, "method": "ard", "out_dir": str(out)})


def digest(folder):
    """{relative path: sha256} of every file under `folder` (to show nothing changed)."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def cli(*argv):
    """(exit status, stderr) of `ciard-fast *argv`."""
    code, _, err = run_cli(*argv)
    return code, err


def refused(code, err, *paths):
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and "Traceback" not in err and all(str(p) in err for p in paths)


# ---- the owner ----------------------------------------------------------------------------------------
def test_the_same_file_under_another_spelling_or_a_link_is_refused(tmp_path):
    read = tmp_path / "weights.pt"
    read.write_bytes(b"x")
    (tmp_path / "link.pt").symlink_to(read)
    for spelling in (read, tmp_path / "." / "weights.pt", tmp_path / "link.pt"):
        with pytest.raises(OutputPathError, match="the file this command reads"):
            check_output_file(spelling, option="--out", reads=(str(read),))
    assert check_output_file(tmp_path / "other.pt", option="--out", reads=(str(read),))


@pytest.mark.parametrize("name", ["last.pt", "best.pt", "results.json", "results.md", "metrics.csv", "metrics.jsonl",
                                  "model_card.json", "teachers.json", "compare_row.json", "curves.png", "run.lock"])
def test_a_runs_own_files_are_refused_existing_or_not(run, name):
    path = os.path.join(run.out_dir, name)
    with pytest.raises(OutputPathError, match="run folder"):
        check_output_file(path, option="--out")
    assert run_folder_of(path)[0] == os.path.realpath(run.out_dir)


def test_anything_under_a_runs_teacher_or_natural_student_folder_is_refused(run):
    for path in (os.path.join(run.out_dir, "teachers", "robust", "student.onnx"),
                 os.path.join(run.out_dir, "teachers", "robust.pt"),
                 os.path.join(run.out_dir, "natural_student", "x.pt")):
        with pytest.raises(OutputPathError, match="its teachers/ folder|its natural_student/ folder"):
            check_output_file(path, option="--out")


def test_new_files_in_a_run_folder_and_run_file_names_elsewhere_are_allowed(run, tmp_path):
    assert check_output_file(os.path.join(run.out_dir, "student.onnx"), option="--out")  # export's default
    assert check_output_file(tmp_path / "best.pt", option="--out")  # no run there, no file there
    assert check_output_file(tmp_path / "results.json", option="--out")


def test_a_training_checkpoint_copied_anywhere_is_refused(run, tmp_path):
    copy = tmp_path / "my_model.pt"
    copy.write_bytes(open(run.best_checkpoint, "rb").read())
    with pytest.raises(OutputPathError, match="training checkpoint"):
        check_output_file(copy, option="--out")
    torch.save({"weight": torch.ones(1)}, tmp_path / "plain.pt")  # a plain state dict is the user's to replace
    assert check_output_file(tmp_path / "plain.pt", option="--out")


def test_a_folder_is_no_output_file(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path, option="--json")


# ---- every writer uses it ------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["best.pt", "last.pt", "results.json", "metrics.csv",
                                    os.path.join("teachers", "robust", "last.pt")])
def test_export_out_never_replaces_a_run_file(run, target):
    before = digest(run.out_dir)
    out = os.path.join(run.out_dir, target)
    code, err = cli("export", "--checkpoint", run.best_checkpoint, "--format", "safetensors", "--out", out)
    assert refused(code, err, out), err
    assert digest(run.out_dir) == before


def test_export_out_equal_to_the_checkpoint_names_both(run, tmp_path):
    copy = tmp_path / "copy" / "best.pt"
    copy.parent.mkdir()
    copy.write_bytes(open(run.best_checkpoint, "rb").read())
    spelled = os.path.join(str(tmp_path), "copy", ".", "best.pt")
    code, err = cli("export", "--checkpoint", str(copy), "--format", "onnx", "--out", spelled)
    assert refused(code, err, spelled, str(copy)) and "reads" in err
    assert open(copy, "rb").read() == open(run.best_checkpoint, "rb").read()


def test_the_model_cards_beside_the_export_are_checked_too(run):
    before = digest(run.out_dir)
    out = os.path.join(run.out_dir, "results")  # its card would be results.model_card.json: a results.* file
    code, err = cli("export", "--checkpoint", run.best_checkpoint, "--format", "safetensors", "--out", out)
    assert refused(code, err, "results.model_card.json") and "the model card" in err
    assert digest(run.out_dir) == before and not os.path.exists(out)


def test_eval_json_is_checked_before_the_evaluation(run, tmp_path):
    for target in (run.best_checkpoint, os.path.join(run.out_dir, "results.md")):
        before = digest(run.out_dir)
        code, err = cli("eval", "--weights", run.best_checkpoint, "--json", target, "--progress", "false")
        assert refused(code, err, target), err
        assert digest(run.out_dir) == before
    code, err = cli("eval", "--weights", run.best_checkpoint, "--attacks", "clean", "--n", "8", "--progress", "false",
                    "--json", str(tmp_path / "eval.json"))
    assert code == 0 and (tmp_path / "eval.json").is_file()


def test_the_json_report_and_doctor_json_refuse_a_run_file(run):
    from ciard_fast import evaluate
    from ciard_fast.diagnostics import doctor

    report = evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)).eval(),
                      (torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)), attacks="clean", progress=False)
    before = digest(run.out_dir)
    with pytest.raises(OutputPathError, match="results.json"):
        report.save_json(os.path.join(run.out_dir, "results.json"))
    with pytest.raises(OutputPathError, match="metrics.csv"):
        doctor("cpu", json_path=os.path.join(run.out_dir, "metrics.csv"), stream=False)  # before any check runs
    assert digest(run.out_dir) == before


def test_train_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        ciard_fast.train({**TINY, "method": "natural", "out_dir": str(tmp_path / "afile")})
    assert (tmp_path / "afile").read_text() == "mine"


def test_overwrite_never_deletes_a_teacher_file_the_run_reads(run, tmp_path):
    """overwrite=true deletes the earlier run's files before the run starts: when one of them is
    the teacher the run is told to read, that is refused, naming both."""
    import shutil

    folder = tmp_path / "reused"
    shutil.copytree(run.out_dir, folder)
    before = digest(folder)
    with pytest.raises(OutputPathError, match="overwrite=true deletes it") as info:
        ciard_fast.train({**TINY, "method": "ard", "robust_teacher": str(folder / "best.pt"), "out_dir": str(folder),
                          "overwrite": True})
    assert str(folder / "best.pt") in str(info.value)
    assert digest(folder) == before


def test_a_teacher_file_inside_the_folder_where_a_teacher_is_trained_is_refused(run, tmp_path):
    """The robust teacher given as a file, the clean one trained into <out_dir>/teachers/clean/: a
    robust file inside that folder would be replaced by the clean teacher's run."""
    folder = tmp_path / "run"
    (folder / "teachers" / "clean").mkdir(parents=True)
    teacher = folder / "teachers" / "clean" / "last.pt"
    teacher.write_bytes(open(os.path.join(run.out_dir, "teachers", "robust", "last.pt"), "rb").read())
    with pytest.raises(OutputPathError, match="the clean teacher is trained there"):
        ciard_fast.train({**TINY, "method": "ciard", "robust_teacher": str(teacher), "clean_teacher_model": "small_cnn",
                          "clean_teacher_args": {"width": 4}, "out_dir": str(folder)})


def test_compare_refuses_the_folder_of_a_training_run(run):
    from ciard_fast.engine.compare import compare

    before = digest(run.out_dir)
    with pytest.raises(OutputPathError, match="holds a training run"):
        compare("natural", preset=None, out_dir=run.out_dir, **TINY)
    assert digest(run.out_dir) == before
