"""`ciard-fast teacher --method natural|sat|trades --model M --dataset D [--key value ...]`.

Trains a teacher with the same engine and the same recipe as the teachers `train()` makes when a
distillation config points to none (`ciard_fast.engine.teachers.ensure_teacher`), and prints its
test table. A finished run with the very same config in an output folder you name (`--out_dir`)
is reused, not trained again; the default folder `runs/teacher-<method>-<dataset>-<model>` moves a
new run to the next free numbered folder when it already holds one. Its `best.pt` is accepted as `--robust-teacher` / `--clean-teacher` by the distillation
methods. The `--key value` pairs are fields of the teacher's own run: `--epochs`, `--lr`,
`--student_args.width 16` (the model's kwargs), `--student_normalize`, the method's options.
"""
import os
import sys

from ..config import TrainConfig, build_config
from .cli_train import parse_extra
from .teachers import TEACHER_METHODS

ACCEPTS_EXTRA = True


def add_arguments(parser):
    parser.add_argument("--method", required=True, choices=TEACHER_METHODS,
                        help="natural: clean teacher; sat or trades: robust teacher")
    parser.add_argument("--model", required=True, help="a registered model name, e.g. wrn34_10 or resnet56")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | tinyimagenet | digits | synthetic")
    parser.add_argument("--config", default=None, help="YAML file of config keys")
    parser.epilog = "Any other --key value pair sets a TrainConfig field (e.g. --epochs 100 --out-dir runs/wrn)."


def run(args):
    from .checkpoint import is_finished_run
    from .teachers import TeacherSpec, ensure_teacher, teacher_run_config

    overrides = parse_extra(getattr(args, "extra", []), args.method)
    overrides.update(method=args.method, student=args.model, dataset=args.dataset)
    overrides.setdefault("epochs", TrainConfig.teacher_epochs)
    config = build_config(config_file=args.config, overrides=overrides)
    if config.swa_start is not None:  # the teacher's recipe has none (teachers.DISTILLATION_ONLY): say so
        raise ValueError(f"swa_start={config.swa_start!r}: teachers are trained without weight averaging; "
                         "SWA is a setting of the distillation run (ciard-fast train --swa_start ...)")
    # the default folder: a used one moves the run to the next numbered folder (engine/rundir.py)
    numbered = config.out_dir is None
    out_dir = config.out_dir or f"runs/teacher-{args.method}-{args.dataset}-{args.model}"
    spec = TeacherSpec(kind="clean" if config.method == "natural" else "robust", model=config.student,
                       model_args=config.student_args, normalize=config.student_normalize, method=config.method,
                       method_args=config.method_args, epochs=config.epochs, lr=config.lr)
    run_config = teacher_run_config(spec, config, out_dir=out_dir, tested=True)
    # A folder you named that holds this very run, finished, is reused (nothing is overwritten);
    # a default folder that holds a run moves this one to the next numbered folder.
    reused = not numbered and is_finished_run(os.path.join(out_dir, "last.pt"), run_config)
    last = ensure_teacher(spec, config, out_dir=out_dir, tested=True, reuse=not numbered, numbered=numbered)
    out_dir = os.path.dirname(last)
    results = os.path.join(out_dir, "results.md")
    if reused and os.path.isfile(results):
        print(f"reusing the finished teacher run in {out_dir}", file=sys.stderr)
        with open(results, encoding="utf-8") as f:
            print(f.read(), end="")
    best = os.path.join(out_dir, "best.pt")
    print(f"teacher checkpoint: {best if os.path.isfile(best) else last}")
    return 0
