"""`ciard-fast train [--preset P] [--config file.yaml] [--resume PATH] [--key value ...]`.

With no arguments: the embedded demo (digits, small models, minutes on a CPU). Any TrainConfig
field or option of the chosen method can be given as `--key value` (dashes or underscores),
e.g. `--epochs 30 --student mobilenet_v2 --T_push 3 --itt false --eps 8/255`.
"""
import typing

from ..config import build_config, field_types, list_presets

ACCEPTS_EXTRA = True


def add_arguments(parser):
    parser.add_argument("--preset", default=None,
                        help=f"preset to start from (default: demo); one of {', '.join(list_presets())}")
    parser.add_argument("--config", default=None, help="YAML file of config keys (applied after the preset)")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from exactly (e.g. runs/x/last.pt)")
    parser.epilog = "Any other --key value pair sets a TrainConfig field or a method option."


def parse_extra(extra, method):
    """['--epochs', '3', '--itt=false', '--no_plot'?] -> {'epochs': 3, 'itt': False} (typed)."""
    overrides, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}: give config keys as --key value")
        key, _, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not _:
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value, i = extra[i + 1], i + 1
            else:
                value = None  # a bare flag: --progress means --progress true (booleans only)
        overrides[key] = value
        i += 1
    method = overrides.get("method", method)
    try:
        types = field_types(method)
    except ValueError as exc:
        raise ValueError(f"--method {method!r}: {exc}") from None
    from ..config import parse_value

    for key, value in overrides.items():
        if value is None:
            kind = types.get(key, typing.Any)
            if kind not in (bool, typing.Optional[bool], typing.Any):
                raise ValueError(f"--{key} needs a value (e.g. --{key} VALUE)")
            overrides[key] = "true"

    typed = {}
    for key, value in overrides.items():
        field, dot, sub = key.partition(".")
        try:
            if dot:  # --student_args.width 16, --method_args.T_push 3
                if types.get(field) is not dict:
                    raise ValueError(f"only dict-valued keys take a '.': {field!r} is not one")
                typed.setdefault(field, {})[sub] = parse_value(value, typing.Any)
            else:
                typed[key] = parse_value(value, types.get(key, typing.Any))
        except ValueError as exc:
            raise ValueError(f"--{key} {value!r}: {exc}") from None
    return typed


def config_from_args(args, forced=None):
    from ..config import load_preset

    preset = args.preset or ("demo" if not args.config and not args.resume else None)
    method = (load_preset(preset).get("method") if preset else None) or "ciard"
    overrides = parse_extra(getattr(args, "extra", []), method)
    overrides.update(forced or {})
    return preset, overrides


def run(args):
    from .api import train

    preset, overrides = config_from_args(args)
    if args.resume:
        result = train(args.preset or (args.config if args.config else None), resume=args.resume, **overrides)
    else:
        result = train(build_config(preset=preset, config_file=args.config, overrides=overrides))
    if result.evaluated:
        print(f"test table from: {result.evaluated}")
    print(f"run folder: {result.out_dir}\nlast checkpoint: {result.last_checkpoint}\nbest checkpoint: {result.best_checkpoint}")
    return 0
