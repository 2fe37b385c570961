"""A stand-in SLURM for the tests: `sbatch`, `srun`, `sacct`, `squeue`, `scancel` and `scontrol`
that run each job on this machine the way SLURM would, so that submitit's SLURM path (and
compare's use of it) runs for real without a cluster.

    python fake_slurm.py <command> [args...]     (the tests put one-line shell wrappers on PATH)

State lives in $FAKE_SLURM_DIR (state.json under a file lock; one JSON per submission in
submissions/). Job ids start at $FAKE_SLURM_FIRST_ID (so ids never repeat across tests, as on a
real cluster).

What it does like SLURM:
  * sbatch copies the job script at once (submitit moves it after sbatch returns), prints
    "Submitted batch job <id>", and starts a runner process that begins the job after a short
    delay (submitit writes the job's pickle only once it knows the id); `--dependency=afterok:<id>`
    holds the job PENDING until that job COMPLETED (forever if it failed: DependencyNeverSatisfied);
  * `--array=0-N%P`: one task per index, at most P at a time; array task i gets its own
    SLURM_JOB_ID (first id + i), SLURM_ARRAY_JOB_ID (the first id) and SLURM_ARRAY_TASK_ID = i
    (single jobs get no SLURM_ARRAY_* variables); %A, %a, %j (and %t in srun) in output paths;
  * `--ntasks-per-node=N`: srun starts N tasks (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS);
  * `--time=T` (scaled: $FAKE_SLURM_SECONDS_PER_MINUTE seconds per minute, default 60) with
    `--signal=[B:]SIG@S`: SIG to the job step S seconds before the limit, then at the limit
    SIGTERM, SIGKILL after $FAKE_SLURM_KILL_WAIT seconds (default 2), state TIMEOUT;
  * `scancel --signal=SIG <id>` signals the running step; `scancel <id>` cancels (SIGTERM, then
    SIGKILL); `scontrol requeue <id>` puts a running task back in the queue when it exits (same
    id, SLURM_RESTART_COUNT + 1); `sacct -o JobID,State,NodeList --parsable2 -j <id>` and
    `squeue` report the states (PENDING, RUNNING, REQUEUED, COMPLETED, FAILED, CANCELLED, TIMEOUT).
Only the standard library: every call is a fresh interpreter.
"""
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
START_DELAY_S = 0.3


def state_dir():
    return os.environ["FAKE_SLURM_DIR"]


@contextlib.contextmanager
def locked_state():
    """The state (a dict), read and written back under an exclusive file lock."""
    folder = state_dir()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(folder, "state.json")
        state = {"next_id": int(os.environ.get("FAKE_SLURM_FIRST_ID", "1000")), "jobs": {}}
        if os.path.isfile(path):
            with open(path) as f:
                state = json.load(f)
        yield state
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, path)


def read_state():
    with locked_state() as state:
        return json.loads(json.dumps(state))


# ---- sbatch ---------------------------------------------------------------------------------------
def parse_directives(text):
    """#SBATCH --key=value / --flag lines -> {key: value or True}."""
    params = {}
    for line in text.splitlines():
        match = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?\s*$", line)
        if match:
            value = match.group(2)
            params[match.group(1)] = True if value is None else value.strip().strip("'\"")
    return params


def minutes_of(text):
    """SLURM time forms -> minutes (float)."""
    days, _, clock = text.rpartition("-") if "-" in text else ("", "", text)
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return int(days) * 1440 + hours * 60 + minutes + seconds / 60
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0] + parts[1] / 60
    return parts[0] * 60 + parts[1] + parts[2] / 60


def sbatch(args):
    parsable = "--parsable" in args
    script = [a for a in args if not a.startswith("-")][-1]
    with open(script) as f:
        text = f.read()
    params = parse_directives(text)
    folder = state_dir()
    with locked_state() as state:
        job_id = state["next_id"]
        indices = None
        parallelism = None
        if "array" in params:
            spec, _, limit = params["array"].partition("%")
            low, _, high = spec.partition("-")
            indices = list(range(int(low), int(high or low) + 1))
            parallelism = int(limit) if limit else None
        state["next_id"] = job_id + (len(indices) if indices else 1) + 10
        copy = os.path.join(folder, f"script-{job_id}.sh")
        shutil.copyfile(script, copy)  # at once: submitit moves the script after sbatch returns
        dependency = []
        if "dependency" in params:
            kind, _, ids = params["dependency"].partition(":")
            assert kind == "afterok", params["dependency"]
            dependency = ids.split(":")
        tasks = {}
        for n, index in enumerate(indices if indices is not None else [None]):
            key = str(job_id) if index is None else f"{job_id}_{index}"
            tasks[key] = {"job_id": job_id + n, "index": index, "state": "PENDING", "restarts": 0,
                          "requeue": False, "cancel": False, "reason": "None", "step_pid": None, "pgid": None}
        state["jobs"][str(job_id)] = {
            "params": params, "script": copy, "cwd": os.getcwd(), "dependency": dependency,
            "parallelism": parallelism, "tasks": tasks, "runner": None, "array": indices is not None}
        with open(os.path.join(folder, f"env-{job_id}.json"), "w") as f:
            json.dump(dict(os.environ), f)
        os.makedirs(os.path.join(folder, "submissions"), exist_ok=True)
        with open(os.path.join(folder, "submissions", f"{job_id}.json"), "w") as f:
            json.dump({"job_id": job_id, "params": params, "script": copy, "tasks": sorted(tasks)}, f)
        runner = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_run", str(job_id)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        state["jobs"][str(job_id)]["runner"] = runner.pid
    print(job_id if parsable else f"Submitted batch job {job_id}")


# ---- the runner: one process per submission -------------------------------------------------------
def expand(path, job_id, array_id, index, task="0"):
    path = path.replace("%A", str(array_id)).replace("%a", "" if index is None else str(index))
    return path.replace("%j", str(job_id)).replace("%t", str(task))


def signal_number(name):
    name = name.upper()
    return getattr(signal, name if name.startswith("SIG") else "SIG" + name)


def update_task(job, key, **changes):
    with locked_state() as state:
        state["jobs"][job]["tasks"][key].update(changes)
        return dict(state["jobs"][job]["tasks"][key])


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid, signum):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def run_task(job, key, info, env, slots):
    params = info["params"]
    scale = float(os.environ.get("FAKE_SLURM_SECONDS_PER_MINUTE", "60"))
    kill_wait = float(os.environ.get("FAKE_SLURM_KILL_WAIT", "2"))
    limit = minutes_of(params["time"]) * scale if "time" in params else None
    warn = None
    if "signal" in params:
        name, _, delay = params["signal"].partition("@")
        to_batch = name.startswith("B:")
        warn = (signal_number(name[2:] if to_batch else name), float(delay or 60) * scale / 60, to_batch)
    array_id = int(job)
    while True:
        with slots:
            task = read_state()["jobs"][job]["tasks"][key]
            if task["cancel"]:
                update_task(job, key, state="CANCELLED")
                return
            task_env = dict(env)
            task_env.update(SLURM_JOB_ID=str(task["job_id"]), SLURM_JOBID=str(task["job_id"]),
                            SLURM_NTASKS=str(int(params.get("ntasks-per-node", 1)) * int(params.get("nodes", 1))),
                            SLURM_JOB_NUM_NODES=str(params.get("nodes", 1)), SLURM_NODEID="0",
                            SLURM_JOB_NODELIST="localhost", SLURM_RESTART_COUNT=str(task["restarts"]),
                            SLURM_JOB_NAME=str(params.get("job-name", "")), SLURM_SUBMIT_DIR=info["cwd"])
            for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_PROCID",
                         "SLURM_LOCALID"):
                task_env.pop(name, None)
            if task["index"] is not None:
                task_env.update(SLURM_ARRAY_JOB_ID=str(array_id), SLURM_ARRAY_TASK_ID=str(task["index"]),
                                SLURM_ARRAY_TASK_COUNT=str(len(info["tasks"])))
            out = expand(params.get("output", "slurm-%j.out"), task["job_id"], array_id, task["index"])
            err = expand(params.get("error", out), task["job_id"], array_id, task["index"])
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "a") as stdout, open(err, "a") as stderr:
                process = subprocess.Popen(["bash", info["script"]], cwd=info["cwd"], env=task_env, stdout=stdout,
                                           stderr=stderr, start_new_session=True)
            update_task(job, key, state="RUNNING", pgid=process.pid, reason="None")
            start, warned, timed_out = time.time(), False, False
            while process.poll() is None:
                elapsed = time.time() - start
                if warn and not warned and limit is not None and elapsed >= limit - warn[1]:
                    warned = True
                    if warn[2]:
                        with contextlib.suppress(ProcessLookupError):
                            process.send_signal(warn[0])
                    else:
                        send_to_step(job, key, warn[0])
                if limit is not None and elapsed >= limit and not timed_out:
                    timed_out = True
                    kill_group(process.pid, signal.SIGTERM)
                    deadline = time.time() + kill_wait
                    while process.poll() is None and time.time() < deadline:
                        time.sleep(0.05)
                    kill_group(process.pid, signal.SIGKILL)
                time.sleep(0.05)
            # SLURM ends a job when every process of it has ended
            deadline = time.time() + kill_wait
            while group_alive(process.pid) and time.time() < deadline:
                time.sleep(0.05)
            kill_group(process.pid, signal.SIGKILL)
            code = process.returncode
            with locked_state() as state:
                task = state["jobs"][job]["tasks"][key]
                task.update(step_pid=None, pgid=None, exit_code=code)
                if task["requeue"] and not task["cancel"]:
                    task.update(requeue=False, restarts=task["restarts"] + 1, state="REQUEUED")
                    requeued = True
                else:
                    requeued = False
                    task["state"] = ("CANCELLED" if task["cancel"] else "TIMEOUT" if timed_out
                                     else "COMPLETED" if code == 0 else "FAILED")
        if not requeued:
            return
        time.sleep(START_DELAY_S)
        update_task(job, key, state="PENDING")


def runner(job):
    time.sleep(START_DELAY_S)
    info = read_state()["jobs"][job]
    with open(os.path.join(state_dir(), f"env-{job}.json")) as f:
        env = json.load(f)
    while info["dependency"]:  # afterok
        states = read_state()["jobs"]
        deps = [task["state"] for dep in info["dependency"] for task in states[dep]["tasks"].values()]
        if all(s == "COMPLETED" for s in deps):
            break
        if any(s in TERMINAL for s in deps):
            for key in info["tasks"]:
                update_task(job, key, reason="DependencyNeverSatisfied")
            return  # pending until cancelled, as SLURM leaves it
        if all(t["cancel"] for t in read_state()["jobs"][job]["tasks"].values()):
            return
        time.sleep(0.2)
    slots = threading.BoundedSemaphore(info["parallelism"] or len(info["tasks"]))
    threads = [threading.Thread(target=run_task, args=(job, key, info, env, slots)) for key in sorted(
        info["tasks"], key=lambda k: info["tasks"][k]["job_id"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# ---- srun -----------------------------------------------------------------------------------------
def step_file(job_id):
    return os.path.join(state_dir(), "steps", f"{job_id}.pid")


def srun(args):
    """srun [--unbuffered] [--output X] [--error Y] [other --options] command...: SLURM_NTASKS tasks."""
    output = error = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        option, _, value = args[i].partition("=")
        if option in ("--output", "-o", "--error", "-e") and not value:
            value, i = args[i + 1], i + 1
        if option in ("--output", "-o"):
            output = value
        elif option in ("--error", "-e"):
            error = value
        i += 1
    command = args[i:]
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    job_id = os.environ["SLURM_JOB_ID"]
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID", job_id)
    index = os.environ.get("SLURM_ARRAY_TASK_ID")
    children, files = [], []
    for rank in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_STEP_ID="0")
        out = open(expand(output, job_id, array_id, index, rank), "a") if output else None
        err = open(expand(error, job_id, array_id, index, rank), "a") if error else out
        files += [f for f in (out, err) if f is not None]
        children.append(subprocess.Popen(command, env=env, stdout=out, stderr=err))

    def forward(signum, frame):
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT):
        signal.signal(signum, forward)
    os.makedirs(os.path.dirname(step_file(job_id)), exist_ok=True)
    with open(step_file(job_id), "w") as f:
        f.write(str(os.getpid()))
    codes = [child.wait() for child in children]
    with contextlib.suppress(FileNotFoundError):
        os.remove(step_file(job_id))
    for f in files:
        f.close()
    sys.exit(next((c if c > 0 else 128 - c for c in codes if c != 0), 0))


def send_to_step(job, key, signum):
    task = read_state()["jobs"][job]["tasks"][key]
    try:
        with open(step_file(task["job_id"])) as f:
            pid = int(f.read())
    except (FileNotFoundError, ValueError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    return True


# ---- queries and control --------------------------------------------------------------------------
def targets(state, ident):
    """'1000' (a job or a whole array), '1000_3' (an array task) or a task's own SLURM_JOB_ID ->
    [(job, task key)]."""
    ident = str(ident)
    if ident in state["jobs"]:
        return [(ident, key) for key in state["jobs"][ident]["tasks"]]
    for job, info in state["jobs"].items():
        for key, task in info["tasks"].items():
            if key == ident or str(task["job_id"]) == ident:
                return [(job, key)]
    return []


def sacct(args):
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    state = read_state()
    print("JobID|State|NodeList")
    for ident in ids:
        for job, key in targets(state, ident):
            task = state["jobs"][job]["tasks"][key]
            print(f"{key}|{task['state']}|{'localhost' if task['state'] != 'PENDING' else 'None assigned'}")


def squeue(args):
    state = read_state()
    ids = [a for i, a in enumerate(args) if i and args[i - 1] in ("-j", "--jobs")]
    print("JOBID STATE REASON")
    for job, info in state["jobs"].items():
        for key, task in info["tasks"].items():
            if task["state"] in TERMINAL or (ids and job not in ids and key not in ids):
                continue
            print(f"{key} {task['state']} {task['reason']}")


def scancel(args):
    signum, ids, i = None, [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--signal="):
            signum = signal_number(arg.split("=", 1)[1])
        elif arg in ("--signal", "-s"):
            signum, i = signal_number(args[i + 1]), i + 1
        else:
            ids.append(arg)
        i += 1
    state = read_state()
    found = [t for ident in ids for t in targets(state, ident)]
    if not found:
        print(f"scancel: error: Invalid job id {' '.join(ids)}", file=sys.stderr)
        sys.exit(1)
    for job, key in found:
        if signum is not None:
            if not send_to_step(job, key, signum):
                print(f"scancel: error: no running step of job {key}", file=sys.stderr)
                sys.exit(1)
            continue
        task = update_task(job, key, cancel=True)
        if task["state"] in ("PENDING", "REQUEUED"):
            update_task(job, key, state="CANCELLED")
        elif task["state"] == "RUNNING" and task["pgid"]:
            kill_group(task["pgid"], signal.SIGTERM)


def scontrol(args):
    if args[:1] != ["requeue"]:
        print(f"scontrol: only 'requeue' is implemented, got {args}", file=sys.stderr)
        sys.exit(1)
    state = read_state()
    for ident in args[1:]:
        for job, key in targets(state, ident):
            if state["jobs"][job]["tasks"][key]["state"] == "RUNNING":
                update_task(job, key, requeue=True)


COMMANDS = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "squeue": squeue, "scancel": scancel,
            "scontrol": scontrol}


def install(bin_dir):
    """Write the one-line shell wrappers (sbatch, srun, ...) into `bin_dir`."""
    os.makedirs(bin_dir, exist_ok=True)
    for name in COMMANDS:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" {name} "$@"\n')
        os.chmod(path, 0o755)


def shutdown(timeout=30.0):
    """Cancel every job that has not ended and wait for their processes (test teardown)."""
    state = read_state()
    for job, info in state["jobs"].items():
        for key, task in info["tasks"].items():
            if task["state"] not in TERMINAL:
                scancel([key])
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = read_state()
        live = [info["runner"] for info in state["jobs"].values() if info["runner"] and group_alive(info["runner"])]
        if not live:
            return
        time.sleep(0.1)
    for info in read_state()["jobs"].values():
        if info["runner"]:
            kill_group(info["runner"], signal.SIGKILL)
        for task in info["tasks"].values():
            if task["pgid"]:
                kill_group(task["pgid"], signal.SIGKILL)


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "_run":
        runner(rest[0])
    else:
        COMMANDS[command](rest)
