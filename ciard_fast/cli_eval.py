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

from .cli_options import add_option, fraction_in_unit_interval, nonnegative_int, positive_int
from .attacks.checks import EvaluationCheckError
from .attacks.columns import get_attack, list_attacks
from .attacks.evaluate import ATTACKS
from .attacks.protocols import PROTOCOLS

__all__ = ["add_arguments", "run", "parse_eps", "positive_int", "read_checkpoint", "describe_normalization"]


# argparse types of the command line's one convention (`ciard_fast.cli_options`), under the names
# other modules import them by
parse_eps = fraction_in_unit_interval


def add_arguments(parser):
    add_option(parser, "weights", default=None, metavar="PATH",
               help="state dict or checkpoint (.pt); a trainer checkpoint's evaluated weights are used (not needed "
                    "with --model robustbench:NAME, which reads --model_dir)")
    add_option(parser, "model", default=None,
               help="registered model name (default: the checkpoint config's student), or robustbench:NAME for a "
                    "RobustBench zoo model (its architecture and normalisation come with the entry)")
    add_option(parser, "dataset", default=None,
               help="dataset name, e.g. cifar10 (default: the checkpoint config's dataset)")
    add_option(parser, "data_root", "--root", default=None, metavar="DIR",
               help="dataset folder (default: the checkpoint config's data_root, else $CIARD_FAST_DATA)")
    add_option(parser, "split", default="test", choices=("test", "val"), help="split to evaluate (default test)")
    add_option(parser, "attacks", default=None,
               help=f"comma-separated columns from {','.join(list_attacks())} (default: the protocol's; "
                    f"standard: {','.join(ATTACKS)})")
    add_option(parser, "protocol", default="standard", choices=tuple(PROTOCOLS),
               help="standard (default) or ciard-paper: the CIARD paper's nine columns in its order (Clean, FGSM, "
                    "PGD-SAT, PGD-TRADES, CW, BB PGD-TRADES, Square 100 queries, BB CW, AA); needs --surrogate")
    add_option(parser, "surrogate", default=None, metavar="PATH|robustbench:NAME",
               help="the model the transfer (BB) columns are crafted on: a weights file or a RobustBench entry "
                    "(e.g. robustbench:Zhang2019Theoretically, the CIARD script's)")
    add_option(parser, "surrogate_model", default=None, metavar="NAME",
               help="registered model name of --surrogate PATH (default: its checkpoint config's)")
    add_option(parser, "surrogate_normalize", default=None, metavar="{dataset,none,NAME}",
               help="input normalisation of --surrogate PATH, as --normalize (default: its checkpoint config's "
                    "setting, else none)")
    add_option(parser, "model_dir", default="models", metavar="DIR",
               help="RobustBench's download folder: robustbench:NAME reads DIR/<dataset>/Linf/NAME.pt (default: "
                    "models)")
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

    Our trainer stores ``{"student": state_dict, "config": {...}}`` (and, when an engine callback
    evaluates other weights, those: `engine.checkpoint.eval_weights`); anything else is passed on
    to ``load_weights`` unchanged. Read with ``weights_only=True`` (no arbitrary code).
    """
    from .engine.checkpoint import eval_weights
    from .models.weights import read_tensor_file, read_weights_file

    if os.fspath(path).endswith(".safetensors"):  # e.g. a student written by ciard-fast export
        return read_weights_file(path), None
    state = read_tensor_file(path, what="weights file",
                             fix="give a state dict or a checkpoint of ciard-fast train (copy or download it again "
                                 "if it was cut short)")
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
    from .data import load_dataset
    from .models import DATASET_STATS

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
    from .models import create_model, load_weights
    from .models.normalization import resolve_normalization

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
    except (ValueError, TypeError) as err:  # what the file holds does not fit: name the file
        if role == "model":
            raise ValueError(f"{path!r}: {err}; give the weights of a {model_name} (or the matching {option})") from None
        raise type(err)(f"--surrogate {path!r} (built as {model_name}; choose it with {option}): {err}") from None
    return model, {"name": model_name, "normalize": normalize, "normalize_from": normalize_from, "weights": path}


def _robustbench_entry(reference, dataset_name):
    """The ZooEntry of `robustbench:NAME` for `dataset_name`, or, with no dataset given, for the
    one dataset that has an entry of that name."""
    from .models import robustbench

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
    from .models import load_weights, robustbench

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
    from .data import load_dataset
    from .engine.precision import resolve_device
    from .models import robustbench
    from .outputs import check_output_file
    from .attacks.evaluate import evaluate

    try:
        if args.json:  # before the evaluation, not after it
            check_output_file(args.json, option="--json",
                              reads=tuple(p for p in (args.weights, args.surrogate) if p is not None))
        device = resolve_device(args.device or "auto")  # a device that is not there: one line, first
        attacks = args.attacks
        if attacks is not None:
            attacks = [a.strip() for a in attacks.split(",") if a.strip()]
            if not attacks:
                raise ValueError(f"--attacks {args.attacks!r} lists no column; give e.g. clean,pgd_sat (one of "
                                 f"{','.join(list_attacks())})")
            for name in attacks:
                get_attack(name)  # an unknown column: said before the data and the model are loaded
        elif args.protocol == "standard":
            attacks = list(ATTACKS)
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
        root = args.data_root if args.data_root is not None else config.get("data_root")
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
        model = model.to(device).eval()
        print(f"model {header}, dataset {dataset_name}/{args.split} ({len(dataset.labels)} images)")
        if surrogate is not None:
            surrogate = surrogate.to(device).eval()
            print(f"surrogate of the transfer columns: {surrogate_header}")
        report = evaluate(model, dataset, attacks=attacks, eps=args.eps, batch_size=args.batch_size, n=args.n,
                          strict=args.strict, device=device, progress=args.progress, seed=args.seed,
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
