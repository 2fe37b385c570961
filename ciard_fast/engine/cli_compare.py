"""`ciard-fast compare --methods ciard,rslad,mtard [--seeds 0,1,2] [--baseline ciard] [--preset demo] [--aa] [--key value ...]`.

Trains the teachers once, then every listed method on the same data and teachers once per seed, and
prints one table (clean / FGSM / PGD-SAT / PGD-TRADES / CW∞ / (AA) accuracy, training time,
images/s; mean ± std, 95 % intervals and paired differences to the baseline over several seeds),
saved as compare.json, compare.md and compare.csv (+ comparison.png, per_attack.png) in the output
folder. Any other `--key value` sets a
TrainConfig field for every method or an option of the methods that have it (e.g. `--epochs 5`,
`--tau 10`).

`--launcher local|slurm` runs each (method, seed) run as its own job through submitit (the
[cluster] extra; `engine/launchers.py`): `local` on this machine, `--max_parallel` at a time;
`slurm` as one SLURM job array after a job that trains the teachers, with the `--slurm_*` options
(`engine/slurm.py`). `--no_wait` (slurm) submits and returns; the same command later collects.
"""
import sys

from ..cli_options import add_option, nonnegative_int, positive_int
from ..config import config_help, list_presets

ACCEPTS_EXTRA = True
# `ciard_fast.cli` adds this to "interrupted" after a Ctrl-C outside training
INTERRUPT_HINT = ("; rerun the same compare command: finished runs are reused and an interrupted one "
                  "continues from its last.pt")


def parse_sbatch_option(text):
    """'constraint=a100' -> ('constraint', 'a100'); 'exclusive' -> ('exclusive', True)."""
    key, eq, value = str(text).partition("=")
    key = key.strip().lstrip("-")
    if not key or (eq and not value.strip()):
        import argparse

        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (or a bare KEY for a flag), e.g. constraint=a100; "
                                         f"got {text!r}")
    return key, value.strip() if eq else True


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
    cluster = parser.add_argument_group(
        "where the runs execute (local and slurm need the [cluster] extra: pip install 'ciard-fast[cluster]')")
    add_option(cluster, "launcher", default="inline", choices=("inline", "local", "slurm"),
               help="inline (default): one run after the other in this process; local: each (method, seed) "
                    "run its own process; slurm: one SLURM job array, after one job for the teachers. "
                    "Jobs' files and logs: <out_dir>/jobs/")
    add_option(cluster, "max_parallel", type=positive_int, default=None, metavar="N",
               help="local: runs at a time (default: one per GPU, each job on its own GPU; 1 without a GPU)")
    add_option(cluster, "no_wait", flag=True,
               help="slurm: submit the jobs and return; run the same command again to collect the table "
                    "(finished runs are reused, failed or missing ones submitted again)")
    slurm = parser.add_argument_group("SLURM (--launcher slurm)")
    add_option(slurm, "slurm_time", default=None, metavar="LIMIT",
               help="time limit of each job (required), e.g. 24:00:00 or 2-00:00:00; a run that reaches it "
                    "writes a checkpoint and is requeued")
    add_option(slurm, "slurm_partition", default=None, help="sbatch --partition")
    add_option(slurm, "slurm_gpus_per_job", type=nonnegative_int, default=None, metavar="N",
               help="GPUs of each run's job (default 1; one task per GPU, so N > 1 trains the run under DDP; "
                    "0: CPU jobs)")
    add_option(slurm, "slurm_cpus_per_task", type=positive_int, default=None, metavar="N",
               help="CPUs of each task (sbatch option cpus-per-task)")
    add_option(slurm, "slurm_mem", default=None, help="sbatch --mem (per node), e.g. 32G")
    add_option(slurm, "slurm_account", default=None, help="sbatch --account")
    add_option(slurm, "slurm_qos", default=None, help="sbatch --qos")
    add_option(slurm, "slurm_array_parallelism", type=positive_int, default=None,
               metavar="N", help="at most N runs of the array at a time (default: submitit's 256)")
    add_option(slurm, "slurm_max_timeouts", type=positive_int, default=None, metavar="N",
               help="requeues of a job after its time limit (default 3; preemptions do not count)")
    add_option(slurm, "slurm_option", type=parse_sbatch_option, action="append", default=[],
               metavar="KEY=VALUE",
               help="any other sbatch option, repeatable: --slurm_option constraint=a100 --slurm_option "
                    "exclusive")
    parser.epilog = ("Every other option below is a TrainConfig field for every method, or an option of the methods "
                     "that have it (e.g. --epochs 5 --tau 10).\n\n" + config_help())


SLURM_ARGS = ("time", "partition", "gpus_per_job", "cpus_per_task", "mem", "account", "qos", "array_parallelism",
              "max_timeouts")


def slurm_options(args):
    """The --slurm_* options given -> a dict of SlurmOptions fields (None when none was given)."""
    given = {name: getattr(args, f"slurm_{name}") for name in SLURM_ARGS if getattr(args, f"slurm_{name}") is not None}
    if args.slurm_option:
        given["options"] = dict(args.slurm_option)
    return given or None


def run(args):
    from .cli_train import parse_extra
    from .compare import compare
    from .launchers import JobsFailed

    overrides = parse_extra(getattr(args, "extra", []), None)
    slurm = slurm_options(args)
    if args.launcher == "slurm" and slurm is None:
        slurm = {}  # SlurmOptions says which option is missing
    try:
        result = compare(args.methods, preset=args.preset, config_file=args.config, aa=args.aa,
                         per_method_presets=args.per_method_presets, reuse=not args.retrain, seeds=args.seeds,
                         baseline=args.baseline, launcher=args.launcher, max_parallel=args.max_parallel, slurm=slurm,
                         wait=not args.no_wait, **overrides)
    except JobsFailed as exc:  # each failed run with its job and log, and how to continue
        print(f"ciard-fast compare: error: {exc}", file=sys.stderr)
        return 1
    if result is None:  # --no_wait: the jobs are queued or running
        return 0
    print(f"results: {result.out_dir}/compare.md, {result.out_dir}/compare.json, {result.out_dir}/compare.csv")
    return 0
