"""What runs inside a job of `compare --launcher local|slurm`: `ClusterJob`, the callable submitit
pickles into the job and calls there.

    ClusterJob("ard/seed-0", run_planned, run)()    # in the job's process: run_planned(run)

Inside the job:
  * several tasks (a SLURM job with several GPUs): the torch.distributed variables are exported
    from the job's environment (`submitit.helpers.TorchDistributedEnvironment`: MASTER_ADDR/PORT,
    RANK, WORLD_SIZE, LOCAL_RANK), so the run takes the same DDP path as under torchrun
    (`engine/distributed.py`);
  * the run is inside `graceful_stop(also=(SIGUSR2,))`: SLURM's warning before a time limit or a
    preemption (SIGUSR2, see `engine/slurm.py`), SIGTERM and SIGINT all finish the current step and
    write a resumable mid-epoch `last.pt` (`engine/signals.py`);
  * after SIGUSR2 the job then hands over to submitit, which calls `__submitit_checkpoint__` (the
    same job again) and requeues it; the requeued job finds the checkpoint and resumes exactly
    (`compare.run_planned`). After SIGTERM/SIGINT (a cancel, a preemption without the user signal,
    Ctrl-C) the job just ends without a result: the checkpoint stays, and rerunning the comparison
    continues the run from it.
"""
import os
import signal
import sys


class ClusterJob:
    """`fn(*args)` as a submitit job named `name` (e.g. "ard/seed-0"); see the module docstring.
    Picklable when `fn` is a module-level function and `args` are picklable."""

    def __init__(self, name, fn, *args):
        self.name, self.fn, self.args = name, fn, args

    def __call__(self):
        from submitit import JobEnvironment

        from .signals import RunInterrupted, graceful_stop

        env = JobEnvironment()
        warning = getattr(signal, "SIG" + env.USR_SIG)  # SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
        requeue = signal.getsignal(warning)  # submitit's: checkpoint, requeue, exit
        with graceful_stop(also=(warning,)):
            restarts = os.environ.get("SLURM_RESTART_COUNT")
            print(f"[job] {self.name}: job {env.job_id}, task {env.global_rank} of {env.num_tasks}"
                  + (f", restarted {restarts} time(s)" if restarts and restarts != "0" else ""), file=sys.stderr,
                  flush=True)
            export_distributed(env)
            try:
                return self.fn(*self.args)
            except RunInterrupted as stop:
                print(f"[job] {self.name}: {stop.signal_name} received; the run stopped at epoch {stop.epoch}, step "
                      f"{stop.step} after writing {stop.checkpoint}", file=sys.stderr, flush=True)
                if stop.signum == warning and callable(requeue):
                    requeue(stop.signum, None)  # submitit: __submitit_checkpoint__, requeue, sys.exit
                # no result: the job's state says how it ended; the checkpoint stays for the rerun
                raise SystemExit(stop.exit_code) from None

    def __submitit_checkpoint__(self, *args, **kwargs):
        """What submitit requeues after the warning signal: this job as it was submitted (the run
        itself resumes from its last.pt)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def __repr__(self):
        return f"ClusterJob({self.name!r})"


def export_distributed(env):
    """Under a job of several tasks, torchrun's variables from the job environment `env` (a
    submitit JobEnvironment), so that `engine/distributed.get_context` starts the same DDP as under
    torchrun. Every task sees every GPU of its node (the device is cuda:LOCAL_RANK); on a cluster
    that binds one GPU to each task, LOCAL_RANK is 0 (each task's own cuda:0)."""
    if env.num_tasks <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    dist_env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < dist_env.local_world_size:
        os.environ["LOCAL_RANK"] = "0"
