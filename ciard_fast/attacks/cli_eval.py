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

from ..cli_options import add_option, fraction_in_unit_interval, nonnegative_int, positive_int
from .checks import EvaluationCheckError
from .columns import get_attack, list_attacks
from .evaluate import ATTACKS

__all__ = ["add_arguments", "run", "parse_eps", "positive_int", "read_checkpoint", "describe_normalization"]


# argparse types of the command line's one convention (`ciard_fast.cli_options`), under the names
# other modules import them by
parse_eps = fraction_in_unit_interval


def add_arguments(parser):
    add_option(parser, "weights", required=True, metavar="PATH",
               help="state dict or checkpoint (.pt); a trainer checkpoint's 'student' is used")
    add_option(parser, "model", default=None, help="registered model name (default: the checkpoint config's student)")
    add_option(parser, "dataset", default=None,
               help="dataset name, e.g. cifar10 (default: the checkpoint config's dataset)")
    add_option(parser, "data_root", "--root", default=None, metavar="DIR",
               help="dataset folder (default: the checkpoint config's data_root, else $CIARD_FAST_DATA)")
    add_option(parser, "split", default="test", choices=("test", "val"), help="split to evaluate (default test)")
    add_option(parser, "attacks", default=",".join(ATTACKS),
               help=f"comma-separated columns from {','.join(list_attacks())} (default: {','.join(ATTACKS)})")
    add_option(parser, "n", type=positive_int, default=None, help="evaluate the first N examples (default: all)")
    add_option(parser, "eps", type=parse_eps, default=8 / 255, help="L-inf radius, e.g. 8/255 (default)")
    add_option(parser, "batch_size", type=positive_int, default=256, help="images per batch (default 256)")
    add_option(parser, "num_classes", type=positive_int, default=None,
               help="model output classes (default: the dataset's)")
    add_option(parser, "normalize", default=None, metavar="{dataset,none,NAME}",
               help="'dataset': the model normalises with the dataset's mean/std; 'none': raw [0,1] "
                    "input; or a name of published statistics (e.g. cifar10_legacy; see "
                    "ciard_fast.models.DATASET_STATS). Default: the checkpoint config's setting, else none")
    add_option(parser, "json", default=None, metavar="PATH", help="also write the report as JSON")
    add_option(parser, "device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    add_option(parser, "seed", type=nonnegative_int, default=0, help="seed of the random starts and AutoAttack")
    add_option(parser, "strict", flag=True,
               help="raise on a failed sanity check (train mode, probabilities, PGD > FGSM ...)")
    add_option(parser, "aa_on_robust_only", flag=True,
               help="run AutoAttack only on examples robust to every other column (faster)")
    add_option(parser, "progress", flag=True, default=True, help="progress line on stderr (default true)")
    # the earlier spelling of --progress false
    parser.add_argument("--no_progress", "--no-progress", dest="progress", action="store_false",
                        help=argparse.SUPPRESS)
    return parser


def read_checkpoint(path):
    """Return (state_dict-or-checkpoint mapping for load_weights, config dict or None).

    Our trainer stores ``{"student": state_dict, "config": {...}}``; anything else is passed on to
    ``load_weights`` unchanged. Read with ``weights_only=True`` (no arbitrary code).
    """
    from ..models.weights import read_tensor_file, read_weights_file

    if os.fspath(path).endswith(".safetensors"):  # e.g. a student written by ciard-fast export
        return read_weights_file(path), None
    state = read_tensor_file(path, what="weights file",
                             fix="give a state dict or a checkpoint of ciard-fast train (copy or download it again "
                                 "if it was cut short)")
    config = None
    if isinstance(state, dict) and "student" in state and isinstance(state["student"], dict):
        config = state.get("config") if isinstance(state.get("config"), dict) else None
        state = state["student"]
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

    from ..engine.precision import resolve_device
    from ..outputs import check_output_file

    try:
        if args.json:  # before the evaluation, not after it
            check_output_file(args.json, option="--json", reads=(args.weights,))
        device = resolve_device(args.device or "auto")  # a device that is not there: one line, first
        attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
        if not attacks:
            raise ValueError(f"--attacks {args.attacks!r} lists no column; give e.g. clean,pgd_sat (one of "
                             f"{','.join(list_attacks())})")
        for name in attacks:
            get_attack(name)  # an unknown column: said before the data and the model are loaded
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
        root = args.data_root if args.data_root is not None else config.get("data_root")
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
        try:
            load_weights(model, state)
        except (TypeError, ValueError) as exc:  # what the file holds does not fit: name the file
            raise ValueError(f"{args.weights!r}: {exc}; give the weights of a {model_name} (or the matching "
                             "--model)") from None
        model = model.to(device).eval()
        print(f"model {model_name} ({num_classes} classes, normalize={describe_normalization(normalize)} "
              f"[{normalize_from}]), weights {args.weights}, dataset {dataset_name}/{args.split} "
              f"({len(dataset.labels)} images)")
        report = evaluate(model, dataset, attacks=attacks, eps=args.eps, batch_size=args.batch_size, n=args.n,
                          strict=args.strict, device=device, progress=args.progress, seed=args.seed,
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
