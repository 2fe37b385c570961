"""The command line's one convention (`ciard_fast/cli_options.py`): no abbreviations, underscores
documented and dashes accepted, booleans as `--flag true|false` or a bare `--flag`, typed errors that
name the option and the expected type, every config field in `--help`, and under torchrun only
rank 0 prints."""
import argparse
import contextlib
import os
import sys

import pytest
import torch

from ciard_fast import cli
from ciard_fast.cli import SUBCOMMANDS, build_parser, main
from ciard_fast.cli_options import parse_config_options
from ciard_fast.config import FIELD_GROUPS, FIELD_NAMES, GROUP_TITLES, TrainConfig

sys.path.insert(0, os.path.dirname(__file__))
from _tiny import tiny_convnet  # noqa: E402
from _cli import run_cli  # noqa: E402


def one_line_error(code, err, *words):
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and "Traceback" not in err and all(w in err for w in words)


def subparser(name):
    parser = build_parser(name)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


# ---- abbreviations -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_no_parser_accepts_abbreviations(name):
    assert build_parser(name).allow_abbrev is False
    assert subparser(name).allow_abbrev is False


@pytest.mark.parametrize("argv,words", [
    (["compare", "--method", "ard"], ["--methods"]),                          # not silently --methods
    (["compare", "--methods", "natural", "--baseli", "natural"], ["baseli"]),  # not --baseline
    (["eval", "--weight", "w.pt"], ["--weights"]),
    (["export", "--check", "c.pt", "--format", "onnx", "--out", "x.onnx"], ["--checkpoint"]),
    (["train", "--pre", "demo"], ["pre"]),                                     # not --preset
    (["teacher", "--meth", "natural", "--model", "small_cnn"], ["--method"]),
    (["doctor", "--dev", "cpu"], ["--dev"]),
])
def test_a_prefix_of_an_option_is_an_error(argv, words):
    code, out, err = run_cli(*argv)
    assert one_line_error(code, err, *words), (code, err)


# ---- one spelling documented, both accepted --------------------------------------------------------
def test_dashes_and_underscores_are_the_same_option():
    eval_parser = subparser("eval")
    for spelling in ("--batch_size", "--batch-size"):
        assert eval_parser.parse_args(["--weights", "w.pt", spelling, "8"]).batch_size == 8
    for spelling in ("--data_root", "--data-root", "--root"):  # --root: the earlier name
        assert eval_parser.parse_args(["--weights", "w.pt", spelling, "d"]).data_root == "d"
    export_parser = subparser("export")
    for spelling in ("--fold_bn", "--fold-bn"):
        args = export_parser.parse_args(["--checkpoint", "c", "--format", "onnx", "--out", "o", spelling, "false"])
        assert args.fold_bn is False
    compare_parser = subparser("compare")
    assert compare_parser.parse_args(["--methods", "ard", "--per-method-presets"]).per_method_presets is True
    assert compare_parser.parse_args(["--methods", "ard", "--per_method_presets", "false"]).per_method_presets is False
    assert parse_config_options(["--batch-size", "8", "--eval_pgd_steps", "3"], "ciard") == \
        {"batch_size": 8, "eval_pgd_steps": 3}


@pytest.mark.parametrize("name", ["eval", "export", "compare", "doctor"])
def test_help_documents_the_underscore_spelling_only(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out
    options = [word for word in text.split() if word.startswith("--")]
    assert options and not [o for o in options if "-" in o[2:].split("=")[0]], options


@pytest.mark.parametrize("given,expected", [([], False), (["--strict"], True), (["--strict", "true"], True),
                                            (["--strict", "false"], False), (["--strict", "no"], False),
                                            (["--strict", "1"], True), (["--strict", "OFF"], False)])
def test_booleans_are_a_bare_flag_or_true_false(given, expected):
    assert subparser("eval").parse_args(["--weights", "w.pt", *given]).strict is expected


def test_every_boolean_option_takes_true_or_false():
    flags = {"eval": ["strict", "aa_on_robust_only", "progress"], "export": ["fold_bn", "allow_teacher"],
             "compare": ["aa", "per_method_presets", "retrain"]}
    required = {"eval": ["--weights", "w"], "export": ["--checkpoint", "c", "--format", "onnx", "--out", "o"],
                "compare": ["--methods", "ard"]}
    for name, options in flags.items():
        for option in options:
            parser = subparser(name)
            assert getattr(parser.parse_args(required[name] + [f"--{option}", "true"]), option) is True
            assert getattr(parser.parse_args(required[name] + [f"--{option}", "false"]), option) is False
    # eval's earlier negative spelling still works
    assert subparser("eval").parse_args(["--weights", "w", "--no-progress"]).progress is False
    # train's booleans are config fields: the same words
    assert parse_config_options(["--plot", "--overwrite", "true", "--flip", "off"], "ciard") == \
        {"plot": True, "overwrite": True, "flip": False}


# ---- typed errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["train", "--lr", "abc"], ["--lr", "expected a number"]),
    (["train", "--eps", "nan"], ["--eps", "finite"]),
    (["train", "--alpha", "inf"], ["--alpha", "finite"]),
    (["train", "--teacher_lr", "-inf"], ["--teacher_lr", "finite"]),
    (["train", "--epochs", "2.5"], ["--epochs", "expected an integer"]),
    (["train", "--val_size", "many"], ["--val_size", "expected an integer"]),
    (["train", "--flip", "maybe"], ["--flip", "true or false"]),
    (["train", "--student_args", "[1, 2]"], ["--student_args", "mapping"]),
    (["train", "--T_push", "nan"], ["--T_push", "finite"]),
    (["compare", "--methods", "ard", "--epochs", "x"], ["--epochs", "expected an integer"]),
    (["eval", "--weights", "w.pt", "--n", "abc"], ["--n", "integer"]),
    (["eval", "--weights", "w.pt", "--eps", "inf"], ["--eps", "finite"]),
    (["eval", "--weights", "w.pt", "--seed", "-1"], ["--seed", ">= 0"]),
    (["export", "--checkpoint", "c", "--format", "onnx", "--out", "o", "--n", "0"], ["--n", ">= 1"]),
])
def test_a_wrong_value_names_the_option_and_the_expected_type(argv, words):
    code, out, err = run_cli(*argv)
    assert one_line_error(code, err, *words), (code, err)
    assert "int()" not in err and "could not convert" not in err


def test_python_floats_must_be_finite_too():
    for field in ("lr", "teacher_lr", "momentum", "weight_decay", "eps", "alpha"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"{field} must be (a )?finite"):
                TrainConfig(**{field: value})


# ---- --help lists every config field -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["train", "teacher", "compare"])
def test_help_lists_every_config_field_with_its_default_and_meaning(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    block = text[text.index("config fields"):]  # the epilog generated from TrainConfig
    for field in FIELD_NAMES:
        line = next((ln for ln in block.splitlines() if ln.startswith(f"    --{field} ")), None)
        assert line is not None and "(default " in line, field
        meaning = block.splitlines()[block.splitlines().index(line) + 1].strip()
        assert meaning and not meaning.startswith("--"), field
    positions = [text.index(GROUP_TITLES[group]) for group in FIELD_GROUPS]
    assert positions == sorted(positions)  # grouped, in the documented order
    assert "--eps float (default 8/255)" in text and "--test_attacks list of str (default clean,fgsm" in text


# ---- under torchrun only rank 0 prints -----------------------------------------------------------------
@pytest.fixture
def weights(tmp_path):
    from ciard_fast.models import create_model

    path = tmp_path / "w.pt"
    torch.save(create_model("small_cnn", num_classes=10).state_dict(), path)
    return str(path)


EVAL = ["--model", "small_cnn", "--dataset", "digits", "--n", "8", "--attacks", "clean", "--progress", "false"]


def test_a_fake_rank_one_prints_nothing_and_rank_zero_prints_the_table(weights, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli("eval", "--weights", weights, *EVAL)
    assert code == 0 and out == "" and err == ""
    code, out, err = run_cli("eval", "--weights", weights, *EVAL, "--epz", "1")  # bad input: rank 0 says it
    assert code == 2 and out == "" and err == ""
    monkeypatch.setenv("RANK", "0")
    code, out, err = run_cli("eval", "--weights", weights, *EVAL)
    assert code == 0 and "| Clean" in out


def test_a_failure_of_one_rank_alone_is_said_by_that_rank(weights, monkeypatch):
    """Bad input is the same on every rank (rank 0 says it); a runtime failure may hit one rank
    only, so that rank says it, marked with its rank."""
    from ciard_fast import cli_eval

    def disk_full(args):
        raise OSError("[Errno 28] No space left on device")

    monkeypatch.setattr(cli_eval, "run", disk_full)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli("eval", "--weights", weights)
    assert code == 1 and out == "" and err.strip() == "[rank 1] ciard-fast eval: error: [Errno 28] No space left on device"


def _rank_worker(rank, world_size, port, out_dir, log_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ciard_fast.engine import distributed

    distributed.reset_context()
    argv = ["train", "--method", "natural", "--dataset", "synthetic",
            "--dataset_args", "{num_samples: 96, num_test: 32, image_size: 16}", "--val_size", "32",
            "--student", "small_cnn", "--student_args.width", "4", "--epochs", "1", "--batch_size", "32",
            "--test_attacks", "clean", "--progress", "false", "--plot", "false", "--device", "cpu",
            "--out_dir", out_dir]
    with open(os.path.join(log_dir, f"rank{rank}.out"), "w") as out, \
            open(os.path.join(log_dir, f"rank{rank}.err"), "w") as err, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    with open(os.path.join(log_dir, f"rank{rank}.code"), "w") as f:
        f.write(str(code))
    import torch.distributed as dist

    dist.destroy_process_group()
    distributed.reset_context()


@pytest.mark.slow
def test_under_two_real_ranks_only_rank_zero_prints_the_closing_lines(tmp_path):
    import torch.multiprocessing as mp

    from test_distributed import free_port

    mp.spawn(_rank_worker, args=(2, free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.code").read_text() for r in (0, 1)] == ["0", "0"]
    zero = (tmp_path / "rank0.out").read_text()
    assert "run folder:" in zero and "last checkpoint:" in zero and "| Clean" in zero
    assert (tmp_path / "rank1.out").read_text() == "" and (tmp_path / "rank1.err").read_text() == ""


def test_warnings_are_one_line(tmp_path, weights, monkeypatch):
    import warnings

    from ciard_fast import cli_eval

    def warn(args):
        warnings.warn("something the user should know\nacross two lines", UserWarning)
        return 0

    monkeypatch.setattr(cli_eval, "run", warn)
    code, out, err = run_cli("eval", "--weights", weights)
    assert code == 0 and err == "ciard-fast eval: warning: something the user should know across two lines\n"


def test_a_model_forward_returning_a_tuple_is_a_clear_type_error():
    from ciard_fast import evaluate, pgd

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_convnet(10, 4).eval()

        def forward(self, x):
            return self.net(x), None

    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for call in (lambda: pgd(Pair(), x, y, steps=1), lambda: evaluate(Pair(), (x, y), attacks="clean", progress=False)):
        with pytest.raises(TypeError, match=r"returned a tuple of 2.*one tensor of logits \[batch, classes\]"):
            call()
