"""What a comparison asks SLURM for (`compare --launcher slurm`): `SlurmOptions`, checked up front,
and their translation into submitit's `AutoExecutor` parameters (`executor_parameters`).

    SlurmOptions(partition="gpu", gpus_per_job=1, cpus_per_task=8, mem="32G", time="24:00:00",
                 options={"constraint": "a100"})

One job per (method, seed) run, all in one job array, and one job for the teachers the array
depends on (`engine/launchers.py`). A job with `gpus_per_job` > 1 starts one task per GPU and
trains its run under DDP (`engine/cluster_job.py`). SLURM sends SIGUSR2 `SIGNAL_DELAY_S` seconds
before the time limit (and on a preemption where the cluster sets preempt_send_user_signal); the
run then writes its mid-epoch checkpoint and requeues itself, at most `max_timeouts` times for
time limits (preemptions do not count).
"""
import dataclasses
import math
import re
from typing import Optional

SIGNAL_DELAY_S = 90  # submitit's default: the warning signal comes this long before the time limit

# sbatch options compare sets itself (a pass-through value would break the job array, its logs,
# the requeue signal or the teachers' dependency) and those with an option of their own.
OWNED_SBATCH_OPTIONS = ("array", "output", "error", "open-mode", "signal", "dependency", "ntasks-per-node",
                        "ntasks", "nodes", "job-name", "wckey")
DEDICATED_SBATCH_OPTIONS = {"partition": "partition", "gpus-per-node": "gpus_per_job", "gres": "gpus_per_job",
                            "cpus-per-task": "cpus_per_task", "mem": "mem", "time": "time", "account": "account",
                            "qos": "qos"}
_TIME_FORMS = "minutes (90), MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 24:00:00 or 2-00:00:00)"


def time_minutes(value):
    """A SLURM time limit ("90", "1:30:00", "2-00:00:00", or an int of minutes) -> whole minutes
    (rounded up), the unit submitit counts time-outs in. Raises ValueError naming the forms."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"slurm time must be a string such as '24:00:00' or an int of minutes, got {value!r}")
    text = str(value).strip()
    days, _, clock = text.rpartition("-") if "-" in text else ("", "", text)
    parts = clock.split(":")
    if not all(re.fullmatch(r"\d+", p) for p in parts) or ("-" in text and not re.fullmatch(r"\d+", days)) \
            or len(parts) > 3:
        raise ValueError(f"slurm time {value!r}: give {_TIME_FORMS}")
    numbers = [int(p) for p in parts]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        total = int(days) * 1440 + hours * 60 + minutes + seconds / 60
    elif len(numbers) == 1:  # minutes
        total = numbers[0]
    elif len(numbers) == 2:  # MM:SS
        total = numbers[0] + numbers[1] / 60
    else:  # HH:MM:SS
        total = numbers[0] * 60 + numbers[1] + numbers[2] / 60
    if total <= 0:
        raise ValueError(f"slurm time {value!r} is zero; give the jobs' time limit, e.g. 24:00:00")
    if total * 60 <= SIGNAL_DELAY_S:
        raise ValueError(f"slurm time {value!r} is shorter than the {SIGNAL_DELAY_S} s warning before the time "
                         "limit that lets a run checkpoint and requeue; give a longer limit")
    return math.ceil(total)


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """The resources of every job of a comparison on SLURM.

    partition, account, qos: sbatch's --partition/--account/--qos (None: the cluster's default).
    gpus_per_job: GPUs of each job (default 1); one task per GPU, so > 1 trains the run under DDP
        (0: a CPU job).
    cpus_per_task: sbatch --cpus-per-task (None: the cluster's default).
    mem: sbatch --mem per node, e.g. "32G" or "64000" (MB) (None: the cluster's default).
    time: the time limit of each job (required), e.g. "24:00:00", "2-00:00:00" or 90 (minutes). A
        run that reaches it is checkpointed and requeued (see max_timeouts).
    array_parallelism: at most this many runs of the array at a time (None: submitit's 256).
    max_timeouts: how many times a job is requeued after reaching its time limit (default 3;
        requeues after a preemption do not count).
    options: any other sbatch option, {"constraint": "a100", "exclusive": True, "mail-type": "END"}
        (True: a flag without value); not the options compare sets itself.
    """

    partition: Optional[str] = None
    gpus_per_job: int = 1
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None
    time: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    array_parallelism: Optional[int] = None
    max_timeouts: int = 3
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("partition", "account", "qos"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not re.fullmatch(r"[\w.,+-]+", value)):
                raise ValueError(f"slurm {name} {value!r}: give a name such as 'gpu' (letters, digits, . , + - _)")
        for name, low in (("gpus_per_job", 0), ("cpus_per_task", 1), ("array_parallelism", 1), ("max_timeouts", 0)):
            value = getattr(self, name)
            if value is None and name in ("cpus_per_task", "array_parallelism"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"slurm {name} must be an integer >= {low}, got {value!r}")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", str(self.mem), flags=re.IGNORECASE):
            raise ValueError(f"slurm mem {self.mem!r}: give sbatch's --mem form, e.g. 32G, 500M or 64000 (MB)")
        if self.time is None:
            raise ValueError("--launcher slurm needs the jobs' time limit: --slurm_time, e.g. 24:00:00 (a run that "
                             "reaches it is checkpointed and requeued, so a limit below a run's length is fine)")
        time_minutes(self.time)
        if not isinstance(self.options, dict):
            raise TypeError(f"slurm options must be a mapping of sbatch option -> value, got {self.options!r}")
        for key, value in self.options.items():
            flag = str(key).replace("_", "-")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", flag):
                raise ValueError(f"sbatch option {key!r}: give its long name without dashes, e.g. constraint")
            if flag in DEDICATED_SBATCH_OPTIONS:
                raise ValueError(f"sbatch option {key!r} has its own setting: --slurm_{DEDICATED_SBATCH_OPTIONS[flag]}")
            if flag in OWNED_SBATCH_OPTIONS:
                raise ValueError(f"sbatch option {key!r} is set by compare itself (job array, logs, requeue signal, "
                                 "the teachers' dependency) and cannot be passed through")
            valid = value is True or (isinstance(value, (str, int, float)) and not isinstance(value, bool)
                                      and str(value).strip() != "")
            if not valid:
                raise ValueError(f"sbatch option {key!r}: give a string value, or True for a flag; got {value!r}")

    @classmethod
    def from_any(cls, value):
        """None, a mapping of these fields, or SlurmOptions -> SlurmOptions."""
        if isinstance(value, cls):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise TypeError(f"slurm must be a SlurmOptions or a dict of its fields, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown slurm option(s) {unknown}; valid: {', '.join(sorted(known))}")
        return cls(**value)

    @property
    def tasks_per_job(self):
        return max(1, self.gpus_per_job)


def executor_parameters(options, name, tasks, gpus, dependency=None):
    """submitit AutoExecutor parameters (slurm_*) of one job (or job array) with `tasks` tasks and
    `gpus` GPUs (the run jobs: `options.tasks_per_job` and `options.gpus_per_job`; the teachers'
    job: one task). `dependency`: a job id the job starts after, once it succeeded (afterok)."""
    params = {"slurm_job_name": name, "slurm_time": time_minutes(options.time), "slurm_ntasks_per_node": tasks,
              "slurm_signal_delay_s": SIGNAL_DELAY_S}
    for field in ("partition", "cpus_per_task", "mem", "account", "qos", "array_parallelism"):
        value = getattr(options, field)
        if value is not None:
            params[f"slurm_{field}"] = value
    if gpus:
        params["slurm_gpus_per_node"] = gpus
    if dependency:
        params["slurm_dependency"] = f"afterok:{dependency}"
    # the limit as the user wrote it (submitit counts in whole minutes, above), then the pass-through
    additional = {"time": str(options.time).strip()}
    additional.update({str(k).replace("_", "-"): v for k, v in options.options.items()})
    params["slurm_additional_parameters"] = additional
    return params
