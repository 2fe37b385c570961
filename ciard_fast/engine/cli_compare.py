"""`ciard-fast compare --methods ciard,rslad,mtard [--preset demo] [--aa] [--key value ...]`.

Trains the teachers once, then every listed method on the same data, teachers and seed, and prints
one table (clean / FGSM / PGD-SAT / PGD-TRADES / CW∞ / (AA) accuracy, training time, images/s),
saved as compare.json and compare.md in the output folder. Any other `--key value` sets a
TrainConfig field for every method or an option of the methods that have it (e.g. `--epochs 5`,
`--tau 10`).
"""
from ..config import list_presets

ACCEPTS_EXTRA = True


def add_arguments(parser):
    parser.add_argument("--methods", required=True,
                        help="comma-separated method names, e.g. ciard,rslad,mtard,bmtard,ard,iad,adaad,natural")
    parser.add_argument("--preset", default="demo",
                        help=f"preset every method starts from (default: demo); one of {', '.join(list_presets())}")
    parser.add_argument("--config", default=None, help="YAML file of config keys (applied after the preset)")
    parser.add_argument("--aa", action="store_true", help="add AutoAttack to the table (needs pyautoattack)")
    parser.add_argument("--per-method-presets", action="store_true",
                        help="start each method from '<preset>-<method>' when that preset exists (its paper's recipe)")
    parser.add_argument("--retrain", action="store_true",
                        help="train every method again even if its run in the output folder already finished")
    parser.epilog = "Any other --key value pair sets a TrainConfig field or a method option (e.g. --epochs 5)."


def run(args):
    from .cli_train import parse_extra
    from .compare import compare

    overrides = parse_extra(getattr(args, "extra", []), None)
    result = compare(args.methods, preset=args.preset, config_file=args.config, aa=args.aa,
                     per_method_presets=args.per_method_presets, reuse=not args.retrain, **overrides)
    print(f"results: {result.out_dir}/compare.md, {result.out_dir}/compare.json")
    return 0
