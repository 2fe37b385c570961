"""`ciard-fast compare --methods ciard,rslad,mtard [--seeds 0,1,2] [--baseline ciard] [--preset demo] [--aa] [--key value ...]`.

Trains the teachers once, then every listed method on the same data and teachers once per seed, and
prints one table (clean / FGSM / PGD-SAT / PGD-TRADES / CW∞ / (AA) accuracy, training time,
images/s; mean ± std, 95 % intervals and paired differences to the baseline over several seeds),
saved as compare.json, compare.md and compare.csv (+ comparison.png, per_attack.png) in the output
folder. Any other `--key value` sets a
TrainConfig field for every method or an option of the methods that have it (e.g. `--epochs 5`,
`--tau 10`).
"""
from ..cli_options import add_option
from ..config import config_help, list_presets

ACCEPTS_EXTRA = True
# `ciard_fast.cli` adds this to "interrupted" after a Ctrl-C outside training
INTERRUPT_HINT = ("; rerun the same compare command: finished runs are reused and an interrupted one "
                  "continues from its last.pt")


def add_arguments(parser):
    add_option(parser, "methods", required=True,
               help="comma-separated method names, e.g. ciard,rslad,mtard,bmtard,ard,iad,adaad,natural")
    add_option(parser, "preset", default="demo",
               help=f"preset every method starts from (default: demo); one of {', '.join(list_presets())}")
    add_option(parser, "seeds", default=None,
               help="comma-separated seeds, e.g. 0,1,2: every method is trained once per seed (student init, "
                    "data order, attack noise; same data split and teachers); default: --seed alone")
    add_option(parser, "baseline", default=None,
               help="method the others are compared with seed by seed (default: the first of --methods)")
    add_option(parser, "config", default=None, help="YAML file of config keys (applied after the preset)")
    add_option(parser, "aa", flag=True, help="add AutoAttack to the table (needs pyautoattack)")
    add_option(parser, "per_method_presets", flag=True,
               help="start each method from '<preset>-<method>' when that preset exists (its paper's recipe)")
    add_option(parser, "retrain", flag=True,
               help="train every method again even if its run in the output folder already finished")
    parser.epilog = ("Every other option below is a TrainConfig field for every method, or an option of the methods "
                     "that have it (e.g. --epochs 5 --tau 10).\n\n" + config_help())


def run(args):
    from .cli_train import parse_extra
    from .compare import compare

    overrides = parse_extra(getattr(args, "extra", []), None)
    result = compare(args.methods, preset=args.preset, config_file=args.config, aa=args.aa,
                     per_method_presets=args.per_method_presets, reuse=not args.retrain, seeds=args.seeds,
                     baseline=args.baseline, **overrides)
    print(f"results: {result.out_dir}/compare.md, {result.out_dir}/compare.json, {result.out_dir}/compare.csv")
    return 0
