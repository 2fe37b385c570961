"""`ciard-fast train [--preset P] [--config file.yaml] [--resume PATH] [--key value ...]`.

With no arguments: the embedded demo (digits, small models, minutes on a CPU). Any TrainConfig
field or option of the chosen method can be given as `--key value` (dashes or underscores),
e.g. `--epochs 30 --student mobilenet_v2 --T_push 3 --itt false --eps 8/255`.
"""
import sys

from ..cli_options import add_option, parse_config_options
from ..config import build_config, config_help, list_presets

ACCEPTS_EXTRA = True

# the name under which the tests and the other subcommands know the parser of `--key value` options
parse_extra = parse_config_options


def add_arguments(parser):
    add_option(parser, "preset", default=None,
               help=f"preset to start from (default: demo); one of {', '.join(list_presets())}")
    add_option(parser, "config", default=None, help="YAML file of config keys (applied after the preset)")
    add_option(parser, "resume", default=None, help="checkpoint to continue from exactly (e.g. runs/x/last.pt)")
    parser.epilog = config_help()


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
    elif not result.config.test_attacks:
        weights = result.best_checkpoint or result.last_checkpoint
        print(f"note: no test table (test_attacks is empty); evaluate with: ciard-fast eval --weights {weights}",
              file=sys.stderr)
    print(f"run folder: {result.out_dir}\nlast checkpoint: {result.last_checkpoint}\nbest checkpoint: {result.best_checkpoint}")
    return 0
