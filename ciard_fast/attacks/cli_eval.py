"""``ciard-fast eval``: evaluate saved weights under the standard attack table and print it.

    ciard-fast eval --weights runs/ciard/best.pt                     # model/dataset from its config
    ciard-fast eval --model wrn34_10 --weights model_cifar_wrn.pt --dataset cifar10 --normalize none
    ciard-fast eval --model resnet18 --weights w.pt --dataset cifar10 --attacks clean,pgd_sat --n 1000 \\
        --eps 8/255 --json eval.json
    ciard-fast eval --protocol ciard-paper --weights runs/x/best.pt --surrogate robustbench:Zhang2019Theoretically
    ciard-fast eval --model robustbench:Zhang2019Theoretically --n 1000     # a zoo model (models/cifar10/Linf/)

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
from .protocols import PROTOCOLS

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
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="state dict or checkpoint (.pt); a trainer checkpoint's 'student' is used (not needed "
                             "with --model robustbench:NAME, which reads --model_dir)")
    parser.add_argument("--model", default=None,
                        help="registered model name (default: the checkpoint config's student), or robustbench:NAME "
                             "for a RobustBench zoo model (its architecture and normalisation come with the entry)")
    parser.add_argument("--dataset", default=None,
                        help="dataset name, e.g. cifar10 (default: the checkpoint config's dataset)")
    parser.add_argument("--root", default=None, metavar="DIR", help="dataset folder (default: $CIARD_FAST_DATA)")
    parser.add_argument("--split", default="test", choices=("test", "val"), help="split to evaluate (default test)")
    parser.add_argument("--attacks", default=None,
                        help=f"comma-separated columns from {','.join(list_attacks())} (default: the protocol's; "
                             f"standard: {','.join(ATTACKS)})")
    parser.add_argument("--protocol", default="standard", choices=tuple(PROTOCOLS),
                        help="standard (default) or ciard-paper: the CIARD paper's nine columns in its order "
                             "(Clean, FGSM, PGD-SAT, PGD-TRADES, CW, BB PGD-TRADES, Square 100 queries, BB CW, AA); "
                             "needs --surrogate")
    parser.add_argument("--surrogate", default=None, metavar="PATH|robustbench:NAME",
                        help="the model the transfer (BB) columns are crafted on: a weights file or a RobustBench "
                             "entry (e.g. robustbench:Zhang2019Theoretically, the CIARD script's)")
    parser.add_argument("--surrogate_model", default=None, metavar="NAME",
                        help="registered model name of --surrogate PATH (default: its checkpoint config's)")
    parser.add_argument("--surrogate_normalize", default=None, metavar="{dataset,none,NAME}",
                        help="input normalisation of --surrogate PATH, as --normalize (default: its checkpoint "
                             "config's setting, else none)")
    parser.add_argument("--model_dir", default="models", metavar="DIR",
                        help="RobustBench's download folder: robustbench:NAME reads DIR/<dataset>/Linf/NAME.pt "
                             "(default: models)")
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


def _build_from_file(path, checkpoint, model_name, normalize_text, dataset, dataset_name, root, num_classes, role):
    """A model of our zoo filled from the weights file `path` (`checkpoint`: what
    :func:`read_checkpoint` returned for it: a state dict, or a trainer checkpoint whose config
    names the architecture and normalisation). `role` ("model" or "surrogate") names the options
    in errors. Returns (model, description dict)."""
    from ..models import create_model, load_weights
    from ..models.normalization import resolve_normalization

    option = "--model" if role == "model" else "--surrogate_model"
    normalize_option = "--normalize" if role == "model" else "--surrogate_normalize"
    state, config = checkpoint
    config = config or {}
    model_name = model_name or config.get("student")
    if model_name is None:
        raise ValueError(f"{option} required: {path!r} has no training config naming its architecture")
    if normalize_text is not None:
        normalize, normalize_from = _normalize_arg(normalize_text), normalize_option
    elif "student_normalize" in config:
        normalize, normalize_from = config["student_normalize"], "checkpoint config"
    else:
        normalize, normalize_from = False, "default"
    # The run's own model keyword arguments (e.g. a width) apply when the model is the run's own.
    model_args = config.get("student_args") or {} if model_name == config.get("student") else {}
    # True means the statistics of the dataset the weights were trained on: the run's own
    source = (_statistics_source(config, dataset, dataset_name, root)
              if normalize is True and normalize_from == "checkpoint config" else dataset)
    stats = resolve_normalization(normalize, source)
    model = create_model(model_name, num_classes=num_classes, normalize=stats, **model_args)
    try:
        load_weights(model, state)
    except (ValueError, TypeError) as err:
        if role == "model":
            raise
        raise type(err)(f"--surrogate {path!r} (built as {model_name}; choose it with {option}): {err}") from None
    return model, {"name": model_name, "normalize": normalize, "normalize_from": normalize_from, "weights": path}


def _robustbench_entry(reference, dataset_name):
    """The ZooEntry of `robustbench:NAME` for `dataset_name`, or, with no dataset given, for the
    one dataset that has an entry of that name."""
    from ..models import robustbench

    name = robustbench.parse_reference(reference)
    if dataset_name is None:
        datasets = sorted({d for (d, _), names in robustbench.ZOO.items() if name in names})
        if len(datasets) > 1:
            raise ValueError(f"{reference} exists for {' and '.join(datasets)}: give --dataset")
        dataset_name = datasets[0] if datasets else "cifar10"  # unknown names: the error lists cifar10's
    return robustbench.get_entry(name, dataset_name)


def _build_robustbench(reference, dataset_name, weights, model_dir):
    """(model, entry, file) of a RobustBench entry: from `weights` when given, else from
    `model_dir` in RobustBench's layout."""
    from ..models import load_weights, robustbench

    entry = _robustbench_entry(reference, dataset_name)
    model = robustbench.build_entry_model(entry)
    if weights is None:
        path = robustbench.load_entry_weights(model, entry, model_dir)
    else:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"no weights file at {weights!r}")
        load_weights(model, robustbench.read_state_dict(weights))
        model.set_normalization(entry.normalization)
        path = weights
    model.robustbench = entry
    return model, entry, path


def _describe_robustbench(entry, path):
    return (f"{entry.reference} ({entry.architecture}, {entry.layout} layout, normalisation "
            f"{entry.normalization_text}; listed clean {entry.clean_acc:.2f}% / AutoAttack {entry.autoattack_acc:.2f}% "
            f"at eps {entry.eps}), weights {path}")


def run(args):
    from ..data import load_dataset
    from ..models import robustbench
    from .evaluate import evaluate

    try:
        zoo_model = robustbench.is_reference(args.model)
        if args.weights is None and not zoo_model:
            raise ValueError("--weights required (or --model robustbench:NAME to evaluate a RobustBench model)")
        if zoo_model:
            if args.normalize is not None:
                raise ValueError(f"--normalize cannot be combined with --model {args.model}: the zoo entry fixes its "
                                 f"normalisation")
            entry = _robustbench_entry(args.model, args.dataset)
            dataset_name = args.dataset or entry.dataset
            if args.num_classes is not None and args.num_classes != entry.num_classes:
                raise ValueError(f"--num-classes {args.num_classes}: {args.model} has {entry.num_classes} classes")
            config = {}
        else:
            checkpoint = read_checkpoint(args.weights)
            config = checkpoint[1] or {}
            dataset_name = args.dataset or config.get("dataset")
            model_name = args.model or config.get("student")
            if model_name is None or dataset_name is None:
                missing = " and ".join(f"--{k}" for k, v in (("model", model_name), ("dataset", dataset_name))
                                       if v is None)
                raise ValueError(f"{missing} required: {args.weights!r} has no training config naming them")
        root = args.root if args.root is not None else config.get("data_root")
        # the run's own dataset keyword arguments (e.g. a synthetic set's size) apply to its own dataset
        dataset_args = config.get("dataset_args") or {} if dataset_name == config.get("dataset") else {}
        dataset = load_dataset(dataset_name, root=root, split=args.split, **dataset_args)
        num_classes = args.num_classes or dataset.num_classes
        if zoo_model:
            model, entry, path = _build_robustbench(args.model, dataset_name, args.weights, args.model_dir)
            model_name, header = args.model, _describe_robustbench(entry, path)
        else:
            model, info = _build_from_file(args.weights, checkpoint, args.model, args.normalize, dataset, dataset_name,
                                           root, num_classes, "model")
            model_name = info["name"]
            header = (f"{model_name} ({num_classes} classes, normalize={describe_normalization(info['normalize'])} "
                      f"[{info['normalize_from']}]), weights {args.weights}")
        surrogate, surrogate_name = None, None
        if args.surrogate is not None:
            if robustbench.is_reference(args.surrogate):
                surrogate, entry, path = _build_robustbench(args.surrogate, dataset_name, None, args.model_dir)
                surrogate_name = f"{entry.reference} ({path})"
                surrogate_header = _describe_robustbench(entry, path)
            else:
                surrogate, info = _build_from_file(args.surrogate, read_checkpoint(args.surrogate), args.surrogate_model,
                                                   args.surrogate_normalize, dataset, dataset_name, root, num_classes,
                                                   "surrogate")
                surrogate_name = f"{info['name']} ({args.surrogate})"
                surrogate_header = (f"{info['name']}, normalize={describe_normalization(info['normalize'])} "
                                    f"[{info['normalize_from']}], weights {args.surrogate}")
        elif args.protocol != "standard":
            raise ValueError(f"--protocol {args.protocol} has transfer columns (BB PGD-TRADES, BB CW∞) crafted on a "
                             f"surrogate: give --surrogate PATH or robustbench:NAME (the CIARD script uses the robust "
                             f"teacher's original file, robustbench:Zhang2019Theoretically on CIFAR-10)")
        device = torch.device(args.device) if args.device else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device).eval()
        print(f"model {header}, dataset {dataset_name}/{args.split} ({len(dataset.labels)} images)")
        if surrogate is not None:
            surrogate = surrogate.to(device).eval()
            print(f"surrogate of the transfer columns: {surrogate_header}")
        attacks = args.attacks
        if attacks is None and args.protocol == "standard":
            attacks = ",".join(ATTACKS)
        report = evaluate(model, dataset, attacks=attacks, eps=args.eps, batch_size=args.batch_size, n=args.n,
                          strict=args.strict, device=device, progress=not args.no_progress, seed=args.seed,
                          aa_on_robust_only=args.aa_on_robust_only, surrogate=surrogate, protocol=args.protocol,
                          surrogate_name=surrogate_name)
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
