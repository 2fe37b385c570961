"""Fault hooks for tests/test_launchers.py, run inside the comparison's jobs.

The tests put `functools.partial(run_with_hooks, hooks)` in place of `compare.run_planned`; the
launcher pickles it into each job (this module by value: cloudpickle.register_pickle_by_value),
where it sets the hooks up and then calls the real `compare.run_planned`.

hooks (a dict, every entry optional):
  signal: {"key": "rslad/seed-1", "step": 30, "signum": "SIGUSR2", "marker": path}
      in that run's first attempt (no marker yet): after the given optimiser step, ask the
      scheduler to signal this job (`scancel --signal=... <job id>`, as an operator or SLURM's own
      preemption would) and hold the step until the signal has arrived, so the run stops exactly
      there; in the requeued attempt, record the checkpoint it resumes from in <marker>.resumed.
  fail: "ard/seed-1"    raise in that run (a crash inside a job).
  world: folder         each task writes rank-<r>-of-<w> there after its run.
"""
import json
import os
import signal
import subprocess
import time


def run_with_hooks(hooks, run):
    from ciard_fast.engine import compare

    spec = hooks.get("signal")
    if spec and spec["key"] == run.key:
        if os.path.exists(spec["marker"]):
            _record_resume_point(run, spec["marker"] + ".resumed")
        else:
            _signal_at_step(spec)
    if hooks.get("fail") == run.key:
        raise RuntimeError(f"injected failure in {run.key}")
    row = compare.run_planned(run)
    if hooks.get("world"):
        from ciard_fast.engine.distributed import get_context

        context = get_context()
        with open(os.path.join(hooks["world"], f"rank-{context.rank}-of-{context.world_size}"), "w") as f:
            f.write(run.key)
    return row


def _signal_at_step(spec):
    from submitit import JobEnvironment

    from ciard_fast.engine import trainer
    from ciard_fast.engine.signals import stop_requested

    real_update, count = trainer.step_update, [0]
    job_id = JobEnvironment().job_id

    def update(*args):
        real_update(*args)
        count[0] += 1
        if count[0] == spec["step"]:
            with open(spec["marker"], "w") as f:
                f.write(job_id)
            subprocess.run(["scancel", f"--signal={spec['signum']}", job_id], check=True)
            deadline = time.time() + 120
            while stop_requested() != getattr(signal, spec["signum"]):
                if time.time() > deadline:
                    raise RuntimeError(f"{spec['signum']} did not arrive within 120 s")
                time.sleep(0.01)

    trainer.step_update = update


def _record_resume_point(run, path):
    from ciard_fast.engine.checkpoint import load_checkpoint

    state = load_checkpoint(os.path.join(run.config.resolved_out_dir(), "last.pt"))
    mid = state.get("mid_epoch") or {}
    with open(path, "w") as f:
        json.dump({"epoch": state["epoch"], "step": state["step"], "mid_epoch": mid.get("epoch"),
                   "mid_epoch_steps": mid.get("steps"), "restart": os.environ.get("SLURM_RESTART_COUNT")}, f)


def failing_teachers(base, kinds, out_dir):
    """In place of compare.prepare_teachers: the teachers' job crashes."""
    raise RuntimeError(f"injected failure while training the teachers {list(kinds)}")
