"""``ciard-fast eval``: evaluate saved weights under the standard attack table and print it.

    ciard-fast eval --weights runs/ciard/best.pt                     # model/dataset from its config
    ciard-fast eval --model wrn34_10 --weights model_cifar_wrn.pt --dataset cifar10 --normalize none
    ciard-fast eval --model resnet18 --weights w.pt --dataset cifar10 --attacks clean,pgd_sat --n 1000 \\
        --eps 8/255 --json eval.json

The weights file may be a plain state dict, any checkpoint ``ciard_fast.models.load_weights``
understands (``{"state_dict"|"model"|"net": ...}``, ``module.`` prefixes), or a checkpoint of our
trainer: ``{"student": state_dict, "config": {...}, ...}``. In the last case the model name and
the dataset default to the training run's config, and the model normalises its input exactly as
that run's did: its ``student_normalize`` (True, False, a ``DATASET_STATS`` name such as
``cifar10_legacy``, or a (mean, std) pair), resolved by
``ciard_fast.models.normalization.resolve_normalization`` against the run's dataset.
"""
import argparse
import os
import sys
from fractions import Fraction

import torch

from .checks import EvaluationCheckError
from .columns import list_attacks
from .evaluate import ATTACKS

__all__ = ["add_arguments", "run", "parse_eps", "positive_int", "read_checkpoint", "describe_normalization"]


def parse_eps(text):
    """'8/255' -> 0.0313..., '0.03' -> 0.03; argparse type (raises ArgumentTypeError)."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"eps must be a number or a fraction like 8/255, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"eps must be in [0, 1] (pixels in [0, 1]: 8/255, not 8), got {text!r}")
    return value


def positive_int(text):
    """'3' -> 3; argparse type for counts (raises ArgumentTypeError below 1 or for a non-integer)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_arguments(parser):
    parser.add_argument("--weights", required=True, metavar="PATH",
                        help="state dict or checkpoint (.pt); a trainer checkpoint's 'student' is used")
    parser.add_argument("--model", default=None,
                        help="registered model name (default: the checkpoint config's student)")
    parser.add_argument("--dataset", default=None,
                        help="dataset name, e.g. cifar10 (default: the checkpoint config's dataset)")
    parser.add_argument("--root", default=None, metavar="DIR", help="dataset folder (default: $CIARD_FAST_DATA)")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="split to evaluate (default test)")
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help=f"comma-separated columns from {','.join(list_attacks())} (default: "
                             f"{','.join(ATTACKS)})")
    parser.add_argument("--n", type=positive_int, default=None, help="evaluate the first N examples (default: all)")
    parser.add_argument("--eps", type=parse_eps, default=8 / 255, help="L-inf radius, e.g. 8/255 (default)")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--num-classes", type=positive_int, default=None,
                        help="model output classes (default: the dataset's)")
    parser.add_argument("--normalize", default=None, metavar="{dataset,none,NAME}",
                        help="'dataset': the model normalises with the dataset's mean/std; 'none': raw [0,1] "
                             "input; or a name of published statistics (e.g. cifar10_legacy; see "
                             "ciard_fast.models.DATASET_STATS). Default: the checkpoint config's setting, else none")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random starts and AutoAttack")
    parser.add_argument("--strict", action="store_true",
                        help="raise on a failed sanity check (train mode, probabilities, PGD > FGSM ...)")
    parser.add_argument("--aa-on-robust-only", action="store_true",
                        help="run AutoAttack only on examples robust to every other column (faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return parser


def read_checkpoint(path):
    """Return (state_dict-or-checkpoint mapping for load_weights, config dict or None).

    Our trainer stores ``{"student": state_dict, "config": {...}}`` (and, when an engine callback
    evaluates other weights, those: `engine.checkpoint.eval_weights`); anything else is passed on
    to ``load_weights`` unchanged. Read with ``weights_only=True`` (no arbitrary code).
    """
    from ..engine.checkpoint import eval_weights

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read {path!r} as a tensor checkpoint (torch.load with weights_only=True "
                         f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}); if you trust the file, "
                         f"re-save its state_dict with torch.save") from err
    config = None
    if isinstance(state, dict) and "student" in state and isinstance(state["student"], dict):
        config = state.get("config") if isinstance(state.get("config"), dict) else None
        state = eval_weights(state)
    return state, config


def _normalize_arg(text):
    """--normalize text -> a resolve_normalization value: dataset -> True, none -> False, else a name."""
    lowered = text.strip().lower()
    return {"dataset": True, "none": False}.get(lowered, text.strip())


def describe_normalization(value):
    """How a normalisation value is printed: dataset, none, a DATASET_STATS name, or the pair."""
    if value is True:
        return "dataset"
    if value is None or value is False:
        return "none"
    if isinstance(value, str):
        return value
    mean, std = value
    return f"mean={tuple(mean)} std={tuple(std)}"


def _statistics_source(config, dataset, dataset_name, root):
    """What normalize=True of the checkpoint's run refers to: the run's own (training) dataset.
    The loaded dataset when it is that one (its mean/std are the training images' whatever the
    split), else the run's dataset by name, or loaded when the table has no entry for it."""
    from ..data import load_dataset
    from ..models import DATASET_STATS

    run_dataset = config.get("dataset")
    if run_dataset is None or run_dataset == dataset_name:
        return dataset
    if run_dataset in DATASET_STATS:
        return run_dataset
    return load_dataset(run_dataset, root=root, split="train_full", **(config.get("dataset_args") or {}))


def run(args):
    from ..data import load_dataset
    from ..models import create_model, load_weights
    from ..models.normalization import resolve_normalization
    from .evaluate import evaluate

    try:
        state, config = read_checkpoint(args.weights)
        config = config or {}
        model_name = args.model or config.get("student")
        dataset_name = args.dataset or config.get("dataset")
        if model_name is None or dataset_name is None:
            missing = " and ".join(f"--{k}" for k, v in (("model", model_name), ("dataset", dataset_name)) if v is None)
            raise ValueError(f"{missing} required: {args.weights!r} has no training config naming them")
        if args.normalize is not None:
            normalize, normalize_from = _normalize_arg(args.normalize), "--normalize"
        elif "student_normalize" in config:
            normalize, normalize_from = config["student_normalize"], "checkpoint config"
        else:
            normalize, normalize_from = False, "default"
        root = args.root if args.root is not None else config.get("data_root")
        # The run's own model/dataset keyword arguments (e.g. a width, a synthetic set's size)
        # apply when the model/dataset are the run's own.
        model_args = config.get("student_args") or {} if model_name == config.get("student") else {}
        dataset_args = config.get("dataset_args") or {} if dataset_name == config.get("dataset") else {}
        dataset = load_dataset(dataset_name, root=root, split=args.split, **dataset_args)
        num_classes = args.num_classes or dataset.num_classes
        # True means the statistics of the dataset the weights were trained on: the run's own
        source = (_statistics_source(config, dataset, dataset_name, root)
                  if normalize is True and normalize_from == "checkpoint config" else dataset)
        stats = resolve_normalization(normalize, source)
        model = create_model(model_name, num_classes=num_classes, normalize=stats, **model_args)
        load_weights(model, state)
        device = torch.device(args.device) if args.device else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device).eval()
        print(f"model {model_name} ({num_classes} classes, normalize={describe_normalization(normalize)} "
              f"[{normalize_from}]), weights {args.weights}, dataset {dataset_name}/{args.split} "
              f"({len(dataset.labels)} images)")
        report = evaluate(model, dataset, attacks=args.attacks, eps=args.eps, batch_size=args.batch_size, n=args.n,
                          strict=args.strict, device=device, progress=not args.no_progress, seed=args.seed,
                          aa_on_robust_only=args.aa_on_robust_only)
        report.model = model_name
    except EvaluationCheckError as err:  # the model failed a strict sanity check: not a usage error
        print(f"ciard-fast eval: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"ciard-fast eval: error: {err}", file=sys.stderr)
        return 2  # bad input, as every ciard-fast command
    print(report.to_markdown(), end="")
    if args.json:
        print(f"wrote {report.save_json(args.json)}")
    return 0
