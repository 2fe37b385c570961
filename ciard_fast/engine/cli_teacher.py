"""`ciard-fast teacher --method natural|sat|trades --model M --dataset D [--key value ...]`.

Trains a teacher with the same engine (data, attack, checkpoints, logs) and prints its test table.
Its `best.pt` is accepted as `--robust-teacher` / `--clean-teacher` by the distillation methods.
"""
from ..config import TrainConfig, build_config
from .cli_train import parse_extra

ACCEPTS_EXTRA = True
TEACHER_METHODS = ("natural", "sat", "trades")


def add_arguments(parser):
    parser.add_argument("--method", required=True, choices=TEACHER_METHODS,
                        help="natural: clean teacher; sat or trades: robust teacher")
    parser.add_argument("--model", required=True, help="a registered model name, e.g. wrn34_10 or resnet56")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | tinyimagenet | digits | synthetic")
    parser.add_argument("--config", default=None, help="YAML file of config keys")
    parser.epilog = "Any other --key value pair sets a TrainConfig field (e.g. --epochs 100 --out-dir runs/wrn)."


def run(args):
    from .api import train

    overrides = parse_extra(getattr(args, "extra", []), args.method)
    overrides.update(method=args.method, student=args.model, dataset=args.dataset)
    overrides.setdefault("epochs", TrainConfig.teacher_epochs)
    config = build_config(config_file=args.config, overrides=overrides)
    if config.out_dir is None:  # the default folder: a second teacher run goes to the next numbered one
        config = config.with_default_out_dir(f"runs/teacher-{args.method}-{args.dataset}-{args.model}")
    result = train(config)
    print(f"teacher checkpoint: {result.best_checkpoint or result.last_checkpoint}")
    return 0
