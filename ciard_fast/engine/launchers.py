"""Where a comparison's runs execute: `compare(..., launcher="inline" | "local" | "slurm")`.

    inline  one run after the other in this process (`engine/compare.py`; the default)
    local   each (method, seed) run as its own process through submitit's LocalExecutor, at most
            `max_parallel` at a time (default: one per GPU, each job seeing its own GPU; 1 on a
            machine without one), after the teachers are trained here
    slurm   one SLURM job array through submitit's AutoExecutor (`engine/slurm.py`), after one job
            that trains the teachers (the array starts once it succeeded: afterok); a job with
            several GPUs trains its run under DDP (`engine/cluster_job.py`)

Every job runs `compare.run_planned` on its `PlannedRun` inside `ClusterJob`, which writes the
run's row into its folder exactly as inline does; the comparison is collated from those rows.
submitit's files and each job's stdout/stderr go to `<out_dir>/jobs/` (`<job id>_<task>_log.out`
and `.err`); the job ids and logs are printed when they are submitted.

Reruns: the same command again collates what finished (finished runs are reused), leaves the
SLURM jobs still queued or running alone (`<out_dir>/jobs/submitted.json` records them) and
submits only what is missing or failed. `wait=False` (`--no_wait`) submits and returns. A run
that fails is reported by name with its job id, its error and its log (`JobsFailed`); nothing is
collated then.

Preemption and time limits (slurm): SLURM's warning signal makes the run write a mid-epoch
checkpoint, then submitit requeues the job and it resumes exactly (`engine/cluster_job.py`).
"""
import contextlib
import datetime
import json
import os
import signal
import sys
import threading
import time

from ..atomic import write_text_atomic
from .signals import RunInterrupted

LAUNCHERS = ("inline", "local", "slurm")
JOBS_DIR = "jobs"
RECORD_FILE = "submitted.json"
# local jobs have no time limit: submitit's LocalExecutor would signal (and then kill) a job at
# its timeout_min, so it is set beyond any run (about 20 months)
LOCAL_TIMEOUT_MIN = 2 ** 20
POLL_S = {"local": 0.5, "slurm": 2.0}  # how often the jobs' states are read while waiting
UNKNOWN_GRACE_S = 600  # a recorded job sacct does not know yet counts as queued this long after sbatch
# SLURM states of a job that is still queued or running (sacct's State, first word)
IN_FLIGHT = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
             "SUSPENDED", "PREEMPTED", "READY", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD")


class JobsFailed(RuntimeError):
    """Runs (or the teachers' job) of a comparison failed; the message names each with its job id,
    its error and its log, and says how to continue."""


def require_submitit(launcher):
    """The submitit package, or one clear ImportError naming the extra to install."""
    try:
        import submitit
    except ImportError as err:
        raise ImportError(f"--launcher {launcher} needs the optional package 'submitit', which is not installed "
                          f"({err}); install it with pip install 'ciard-fast[cluster]' or use --launcher inline"
                          ) from None
    return submitit


def make_launcher(launcher="inline", max_parallel=None, slurm=None, wait=True):
    """The launcher of `compare` (None for inline), with every option checked before any work:
    ValueError/TypeError naming the option and the fix; ImportError without submitit."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: give one of {', '.join(LAUNCHERS)}")
    if max_parallel is not None:
        if launcher != "local":
            raise ValueError(f"max_parallel is for launcher 'local' (runs at a time on this machine); with launcher "
                             f"{launcher!r} leave it out" + (" (SLURM: slurm_array_parallelism)"
                                                             if launcher == "slurm" else ""))
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be an integer >= 1, got {max_parallel!r}")
    if slurm is not None and launcher != "slurm":
        raise ValueError(f"SLURM options were given but the launcher is {launcher!r}; add launcher='slurm' "
                         "(--launcher slurm) or leave them out")
    if not isinstance(wait, bool):
        raise TypeError(f"wait must be True or False, got {wait!r}")
    if not wait and launcher != "slurm":
        raise ValueError(f"not waiting (wait=False, --no_wait) is for launcher 'slurm', whose scheduler runs the jobs "
                         f"after this command returns; launcher {launcher!r} runs them under this command")
    if launcher == "inline":
        return None
    if launcher == "local":
        return LocalLauncher(max_parallel)
    from .slurm import SlurmOptions

    options = SlurmOptions.from_any(slurm)
    return SlurmLauncher(options, wait)


# ---- shared pieces --------------------------------------------------------------------------------
def _say(message):
    print(f"[compare] {message}", flush=True)


def _failure_of(job):
    """None when the finished `job` (a submitit Job) returned a result on every task, else a
    one-line reason: the run's exception, or how the job ended."""
    from submitit.core.utils import pickle_load

    tasks = [job.task(i) for i in range(job.num_tasks)]
    for task in tasks:
        if not task.paths.result_pickle.exists():
            return (f"ended without a result (state {_state_word(job.state)}: cancelled, killed or out of time; "
                    "the run's checkpoint is kept)")
        outcome, value = pickle_load(task.paths.result_pickle)
        if outcome != "success":
            lines = [line for line in str(value).strip().splitlines() if line.strip()]
            return lines[-1].strip() if lines else "failed"
    return None


def _collect(key, job, run, finished, rows, failed, of=None):
    """A job that is done: its row into `rows` (read from the run's folder), or (key, job, reason)
    into `failed` when it raised or returned without leaving the row of this config."""
    reason, row = _failure_of(job), None
    if reason is None:
        row = finished(run)
        reason = None if row is not None else "returned, but its folder holds no row of this config"
    if reason:
        failed.append((key, job, reason))
        _say(f"{key}: FAILED ({reason})")
    else:
        rows[key] = row
        _say(f"{key}: done" + (f" ({len(rows)} of {of})" if of is not None else ""))


def _state_word(state):
    return (state or "UNKNOWN").split()[0].upper()


def _logs(job):
    return f"log: {job.paths.stderr} (stdout: {job.paths.stdout})"


def _report(failed, total, collect_hint):
    """The JobsFailed message: one line per failed run (name, job id, error, log)."""
    lines = [f"{len(failed)} of {total} run(s) failed:"]
    lines += [f"  {key} (job {job.job_id}): {reason}\n    {_logs(job)}" for key, job, reason in failed]
    lines.append(collect_hint)
    return "\n".join(lines)


@contextlib.contextmanager
def _signals_as_interrupt():
    """SIGTERM to the waiting process raises KeyboardInterrupt like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_signum(exc):
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT


class LaunchInterrupted(RunInterrupted):
    """The waiting comparison was stopped (Ctrl-C, SIGTERM); the message says what happened to the
    jobs and how to continue. `exit_code`: 128 + the signal, as for an interrupted run."""

    def __init__(self, signum, text):
        self.text = text
        super().__init__(int(signum), None, None, None, resume_hint="the same compare command")

    def message(self):
        return self.text


# ---- local ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while a job's controller process starts: it inherits that, so a Ctrl-C reaches
    the run itself (which checkpoints) and not submitit's controller (which would kill the run a
    second later)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class LocalLauncher:
    """Each run its own process on this machine (submitit LocalExecutor), `max_parallel` at a time."""

    name = "local"

    def __init__(self, max_parallel=None):
        self.submitit = require_submitit("local")
        import torch

        self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.max_parallel = max_parallel or max(1, self.gpus)

    def run(self, plan, execute, finished, out_dir, prepare_teachers, teachers_ready):
        from .cluster_job import ClusterJob

        prepare_teachers()  # here, once, before any run
        rows = {run.key: finished(run) for run in plan if run.reuse}
        todo = [run for run in plan if rows.get(run.key) is None]
        rows = {k: v for k, v in rows.items() if v is not None}
        for key in rows:
            _say(f"{key}: finished earlier, reused")
        folder = os.path.join(out_dir, JOBS_DIR)
        executor = self._executor(folder)
        jobs_on = {gpu: 0 for gpu in range(self.gpus)}  # GPU -> its running jobs (more than one: max_parallel > GPUs)
        running, failed = {}, []
        with _signals_as_interrupt():
            try:
                while todo or running:
                    while todo and len(running) < self.max_parallel:
                        run = todo.pop(0)
                        gpu = min(jobs_on, key=lambda g: (jobs_on[g], g)) if jobs_on else None
                        if gpu is not None:
                            jobs_on[gpu] += 1
                        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=0 if gpu is None else 1,
                                                   visible_gpus=() if gpu is None else (gpu,))
                        with _sigint_ignored():
                            job = executor.submit(ClusterJob(run.key, execute, run))
                        running[run.key] = (run, job, gpu)
                        _say(f"{run.key}: local job {job.job_id}" + (f" on GPU {gpu}" if gpu is not None else "")
                             + f", {_logs(job)}")
                    for key, (run, job, gpu) in list(running.items()):
                        if job.done():
                            del running[key]
                            if gpu is not None:
                                jobs_on[gpu] -= 1
                            _collect(key, job, run, finished, rows, failed)
                    if running:
                        time.sleep(POLL_S["local"])
            except KeyboardInterrupt as stop:
                signum = _interrupt_signum(stop)
                self._stop(running)
                raise LaunchInterrupted(signum, f"{signal.Signals(signum).name} received: the running local jobs "
                                                "were stopped (a run inside an epoch first wrote its checkpoint); "
                                                "rerun the same compare command to continue (finished runs are "
                                                "reused, interrupted ones continue exactly)") from None
        if failed:
            raise JobsFailed(_report(failed, len(plan), "Fix the cause and rerun the same command: finished runs are "
                                                        "reused and only the failed ones run again."))
        return rows

    def _executor(self, folder):
        return self.submitit.LocalExecutor(folder=folder)

    @staticmethod
    def _stop(running):
        """SIGTERM to every running job (its controller passes it on to the run, which writes its
        mid-epoch checkpoint), then wait for them; a second Ctrl-C stops waiting."""
        for _, job, _ in running.values():
            process = getattr(job, "_process", None)  # submitit keeps the controller's Popen there
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        with contextlib.suppress(KeyboardInterrupt):
            while any(not job.done() for _, job, _ in running.values()):
                time.sleep(POLL_S["local"])


# ---- slurm ----------------------------------------------------------------------------------------
class SlurmLauncher:
    """One SLURM job array for the runs, after one job for the teachers (submitit AutoExecutor)."""

    name = "slurm"

    def __init__(self, options, wait=True):
        self.submitit = require_submitit("slurm")
        self.options = options
        self.wait = wait

    def _executor(self, folder, params):
        try:
            executor = self.submitit.AutoExecutor(folder=folder, cluster="slurm",
                                                  slurm_max_num_timeout=self.options.max_timeouts)
        except RuntimeError as err:  # submitit: no srun on PATH
            raise ValueError(f"--launcher slurm: {err} (run compare on a login node of the cluster, where sbatch, "
                             "srun and sacct are on PATH)") from None
        executor.update_parameters(**params)
        return executor

    def _job(self, folder, job_id, tasks=1):
        return self.submitit.SlurmJob(folder=folder, job_id=job_id, tasks=list(range(tasks)))

    def _state(self, job):
        return _state_word(job.watcher.get_state(job.job_id, mode="force"))

    def _in_flight(self, job, entry):
        """Is the recorded job still queued or running? A job sacct does not know (yet) counts as
        queued for UNKNOWN_GRACE_S after its submission (the accounting can lag behind sbatch)."""
        state = self._state(job)
        if state == "UNKNOWN":
            try:
                submitted = datetime.datetime.fromisoformat(entry.get("submitted", ""))
            except ValueError:
                return False
            return (datetime.datetime.now(datetime.timezone.utc) - submitted).total_seconds() < UNKNOWN_GRACE_S
        return state in IN_FLIGHT

    def run(self, plan, execute, finished, out_dir, prepare_teachers, teachers_ready):
        from .cluster_job import ClusterJob
        from .rundir import RunLock
        from .slurm import executor_parameters

        folder = os.path.abspath(os.path.join(out_dir, JOBS_DIR))
        name = f"ciard-{os.path.basename(os.path.abspath(out_dir))}"
        rows, jobs = {}, {}  # key -> row (finished) / key -> submitit job (queued or running)
        dependent = set()  # keys of the jobs that start only after the teachers' job succeeded
        with RunLock(folder):  # one submitting command at a time: the record stays whole
            record = _read_record(folder)
            teacher_job = None
            if not teachers_ready():
                entry = record.get("teachers")
                if entry and self._in_flight(self._job(folder, entry["job_id"]), entry):
                    teacher_job = self._job(folder, entry["job_id"])
                    _say(f"teachers: SLURM job {teacher_job.job_id} (submitted earlier, "
                         f"{self._state(teacher_job).lower()}), {_logs(teacher_job)}")
                else:
                    executor = self._executor(folder, executor_parameters(
                        self.options, f"{name}-teachers", tasks=1, gpus=min(1, self.options.gpus_per_job)))
                    teacher_job = executor.submit(ClusterJob("teachers", prepare_teachers))
                    record["teachers"] = {"job_id": teacher_job.job_id, "submitted": _now(),
                                          "stdout": str(teacher_job.paths.stdout),
                                          "stderr": str(teacher_job.paths.stderr)}
                    _say(f"teachers: SLURM job {teacher_job.job_id}, {_logs(teacher_job)}")
            todo = []
            for run in plan:
                # a run with teachers waits for the teachers' job, then decides in its own job
                # whether its row still holds (inline decides after training the teachers too)
                reusable = run.reuse and not (teacher_job is not None and run.teachers)
                row = finished(run) if reusable else None
                if row is not None:
                    rows[run.key] = row
                    _say(f"{run.key}: finished earlier, reused")
                    continue
                attached = self._attach(folder, record.get("runs", {}).get(run.key), run, teacher_job)
                if attached is not None:
                    jobs[run.key] = attached
                    entry = record["runs"][run.key]
                    if teacher_job is not None and entry.get("after") == teacher_job.job_id:
                        dependent.add(run.key)
                    _say(f"{run.key}: SLURM job {attached.job_id} (submitted earlier, {self._state(attached).lower()}),"
                         f" {_logs(attached)}")
                else:
                    todo.append(run)
            if todo:
                after = teacher_job.job_id if teacher_job is not None else None
                executor = self._executor(folder, executor_parameters(
                    self.options, name, tasks=self.options.tasks_per_job, gpus=self.options.gpus_per_job,
                    dependency=after))
                with executor.batch():
                    submitted = [executor.submit(ClusterJob(run.key, execute, run)) for run in todo]
                array = submitted[0].job_id.split("_")[0]
                _say(f"{len(todo)} run(s): SLURM job {'array ' if len(todo) > 1 else ''}{array}"
                     + (f", starting after job {after} succeeds" if after else ""))
                runs_record = record.setdefault("runs", {})
                for run, job in zip(todo, submitted):
                    jobs[run.key] = job
                    if after:
                        dependent.add(run.key)
                    runs_record[run.key] = {"job_id": job.job_id, "digest": run.digest, "after": after,
                                            "submitted": _now(), "stdout": str(job.paths.stdout),
                                            "stderr": str(job.paths.stderr)}
                    _say(f"  {run.key}: job {job.job_id}, {_logs(job)}")
            _write_record(folder, record)
        if not self.wait and (jobs or teacher_job is not None):
            _say("not waiting (--no_wait): the jobs run on the cluster; run the same command again to collect the "
                 "table (finished runs are reused, failed ones are submitted again)")
            return None
        with _signals_as_interrupt():
            try:
                self._wait(plan, jobs, teacher_job, dependent, rows, finished)
            except KeyboardInterrupt as stop:
                signum = _interrupt_signum(stop)
                ids = ", ".join(sorted({job.job_id.split("_")[0] for job in jobs.values()}))
                raise LaunchInterrupted(signum, f"{signal.Signals(signum).name} received: stopped waiting; the SLURM "
                                                f"jobs ({ids}) keep running. Run the same compare command again to "
                                                f"collect the table (or scancel {ids})") from None
        return rows

    def _attach(self, folder, entry, run, teacher_job):
        """The job an earlier command submitted for `run` when it is still queued or running (and
        can still start), else None (the run is submitted again)."""
        if not entry:
            return None
        job = self._job(folder, entry["job_id"], self.options.tasks_per_job)
        if not self._in_flight(job, entry):
            return None
        state = self._state(job)
        if entry.get("digest") != run.digest:
            raise ValueError(f"{run.key}: SLURM job {job.job_id} of an earlier configuration of this run is still "
                             f"{state.lower()} in {os.path.dirname(folder)}; wait for it or cancel it (scancel "
                             f"{job.job_id}), then run this command again")
        after = entry.get("after")
        if state == "PENDING" and after and (teacher_job is None or teacher_job.job_id != after):
            dependency = self._state(self._job(folder, after))
            if dependency not in IN_FLIGHT and dependency != "COMPLETED":
                # waiting for a teachers' job that failed: SLURM would never start it
                job.cancel(check=False)
                return None
        return job

    def _wait(self, plan, jobs, teacher_job, dependent, rows, finished):
        """Poll until every job is done; rows of the finished runs into `rows`; JobsFailed otherwise
        (a failed teachers' job first cancels the `dependent` jobs, which SLURM would never start)."""
        by_key = {run.key: run for run in plan}
        pending, failed = dict(jobs), []
        if pending:
            _say(f"waiting for {len(pending)} job(s) (Ctrl-C stops waiting; the jobs keep running)")
        while pending:
            if teacher_job is not None and teacher_job.done():
                reason = _failure_of(teacher_job)
                if reason:
                    waiting = [key for key in pending if key in dependent]
                    for key in waiting:
                        pending[key].cancel(check=False)
                    raise JobsFailed(
                        f"the teachers' job {teacher_job.job_id} failed: {reason}\n    {_logs(teacher_job)}\n"
                        f"Its {len(waiting)} dependent run(s) were cancelled. Fix the cause and rerun the same "
                        "command: a finished teacher is reused, an interrupted one continues, and the runs are "
                        "submitted again.")
                teacher_job = None
            for key, job in list(pending.items()):
                if job.done():
                    del pending[key]
                    run = by_key[key]
                    _collect(key, job, run, finished, rows, failed, of=len(plan))
            if pending:
                time.sleep(POLL_S["slurm"])
        if failed:
            raise JobsFailed(_report(failed, len(plan), "Fix the cause and rerun the same command: finished runs are "
                                                        "reused and only the failed ones are submitted again."))


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read_record(folder):
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        print(f"note: {path} could not be read ({err}); earlier jobs are not attached, their runs are submitted "
              "again", file=sys.stderr)
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(folder, record):
    write_text_atomic(os.path.join(folder, RECORD_FILE), json.dumps(record, indent=2))


__all__ = ["LAUNCHERS", "JobsFailed", "LaunchInterrupted", "LocalLauncher", "SlurmLauncher", "make_launcher",
           "require_submitit"]
