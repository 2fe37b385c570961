"""`compare --launcher local|slurm`: each (method, seed) run as its own job through submitit.

local runs real subprocesses; slurm runs against the stand-in sbatch/srun/sacct/squeue/scancel/
scontrol of tests/fake_slurm.py, put first on PATH, which run every job on this machine the way
SLURM would (job arrays, dependencies, %A/%a/%j logs, signals, requeue). Faults are injected
inside the jobs by tests/_cluster_hooks.py. Every table is checked against the inline one, to the
last digit."""
import copy
import functools
import itertools
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import _cluster_hooks
import fake_slurm
from ciard_fast.cli import main
from ciard_fast.engine import compare as compare_module
from ciard_fast.engine.checkpoint import load_checkpoint
from ciard_fast.engine.compare import CompareResult, aggregate, compare, markdown_table
from ciard_fast.engine.launchers import JobsFailed, make_launcher
from ciard_fast.engine.slurm import SlurmOptions, executor_parameters, time_minutes

submitit = pytest.importorskip("submitit")

# The digits demo at tiny settings: 2 epochs of 74 steps, a 2-epoch robust teacher (RSLAD's),
# eps 2/255 so that the robust columns are not all zero. Seconds per run on one thread.
DIGITS = dict(epochs=2, teacher_epochs=2, batch_size=16, eps=2 / 255, attack_steps=2, eval_pgd_steps=2, eval_n=60,
              test_n=100, test_attacks=("clean", "fgsm", "pgd_sat"), progress=False, plot=False,
              allow_weak_teacher=True,  # 2-epoch teachers are weak
              student_args={"width": 8, "stem_stride": 2}, robust_teacher_args={"width": 8, "stem_stride": 2},
              clean_teacher_args={"width": 8, "stem_stride": 2})
DIGITS_CLI = ["--methods", "natural,rslad", "--preset", "demo", "--seeds", "0,1", "--epochs", "2",
              "--teacher_epochs", "2", "--batch_size", "16", "--eps", "2/255", "--attack_steps", "2",
              "--eval_pgd_steps", "2", "--eval_n", "60", "--test_n", "100", "--test_attacks", "clean,fgsm,pgd_sat",
              "--progress", "false", "--plot", "false", "--allow_weak_teacher", "true",
              "--student_args", "{width: 8, stem_stride: 2}", "--robust_teacher_args", "{width: 8, stem_stride: 2}",
              "--clean_teacher_args", "{width: 8, stem_stride: 2}"]
# seconds on a CPU: 16x16 synthetic images, width-4 models, one epoch
TINY = dict(dataset="synthetic", dataset_args={"num_samples": 96, "num_test": 32, "image_size": 16}, val_size=32,
            student="small_cnn", student_args={"width": 4}, epochs=1, batch_size=32, attack_steps=2,
            eval_pgd_steps=2, test_attacks=("clean", "fgsm"), test_n=16, progress=False, plot=False, device="cpu")
TIME_ENTRIES = ("train_seconds", "images_per_s", "wall_seconds")


def timeless_table(result):
    """The comparison's Markdown with the time columns zeroed and the folder made neutral: what
    must be equal to the last digit whichever launcher ran the runs."""
    result = copy.deepcopy(result)
    for runs in result.runs.values():
        for run in runs:
            run.update({k: 0.0 for k in TIME_ENTRIES}, out_dir="")
    result.rows, result.summary, result.differences = {}, {}, {}
    aggregate(result)
    return markdown_table(result).replace(result.out_dir, "<out>")


def accuracies(result):
    return {name: [{k: v for k, v in run.items() if k not in TIME_ENTRIES + ("out_dir",)} for run in runs]
            for name, runs in result.runs.items()}


@pytest.fixture(scope="module")
def inline_digits(tmp_path_factory):
    """The inline comparison every launcher must reproduce (natural and RSLAD, seeds 0 and 1)."""
    out = tmp_path_factory.mktemp("inline") / "cmp"
    return compare("natural,rslad", preset="demo", seeds="0,1", out_dir=str(out), **DIGITS)


@pytest.fixture
def one_thread_jobs(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs' processes, as this one (conftest)


_IDS = itertools.count(1)


@pytest.fixture
def slurm(tmp_path, monkeypatch, one_thread_jobs):
    """The stand-in SLURM first on PATH; every job it still holds is cancelled at the end."""
    fake_slurm.install(str(tmp_path / "bin"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path / "slurm"))
    # ids never repeat within this process (submitit caches job states by id), as on a cluster
    monkeypatch.setenv("FAKE_SLURM_FIRST_ID", str((os.getpid() % 900 + 100) * 100000 + next(_IDS) * 1000))
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "slurm"
    fake_slurm.shutdown()


@pytest.fixture
def hooks(monkeypatch):
    """Install fault hooks into the jobs: hooks(dict) replaces compare.run_planned by the hooked one."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(_cluster_hooks)

    def install(spec):
        monkeypatch.setattr(compare_module, "run_planned", functools.partial(_cluster_hooks.run_with_hooks, spec))

    yield install
    cloudpickle.unregister_pickle_by_value(_cluster_hooks)


def submissions(state_dir):
    folder = state_dir / "submissions"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"), key=lambda p: int(p.stem))]


def stand_in_tasks(state_dir):
    return {key: task for job in json.loads((state_dir / "state.json").read_text())["jobs"].values()
            for key, task in job["tasks"].items()}


def ended_tasks(state_dir, timeout=60):
    """The stand-in's tasks once every one has ended (a job's result is written a moment before
    its processes have exited, as on SLURM)."""
    deadline = time.time() + timeout
    while True:
        with fake_slurm.locked_state() as state:
            tasks = {key: dict(task) for job in state["jobs"].values() for key, task in job["tasks"].items()}
        if all(task["state"] in fake_slurm.TERMINAL for task in tasks.values()) or time.time() > deadline:
            return tasks
        time.sleep(0.1)


# ---- options, checked before any work ---------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(launcher="cloud"), ValueError, "launcher 'cloud': give one of inline, local, slurm"),
    (dict(launcher="slurm", max_parallel=2, slurm={"time": "1:00:00"}), ValueError, "slurm_array_parallelism"),
    (dict(launcher="local", max_parallel=0), ValueError, "max_parallel must be an integer >= 1"),
    (dict(launcher="inline", slurm={"time": "10"}), ValueError, "add launcher='slurm'"),
    (dict(launcher="local", wait=False), ValueError, "not waiting .* is for launcher 'slurm'"),
    (dict(launcher="slurm", slurm={}), ValueError, "needs the jobs' time limit: --slurm_time"),
    (dict(launcher="slurm", slurm={"time": "1:00:00", "gpus": 2}), ValueError, r"unknown slurm option\(s\) \['gpus'\]"),
    (dict(launcher="slurm", slurm={"time": "1:00:00", "mem": "lots"}), ValueError, "slurm mem 'lots'"),
    (dict(launcher="slurm", slurm={"time": "1:00:00", "gpus_per_job": -1}), ValueError, "gpus_per_job must be"),
    (dict(launcher="slurm", slurm={"time": "1:00:00", "options": {"array": "0-3"}}), ValueError, "set by compare"),
    (dict(launcher="slurm", slurm={"time": "1:00:00", "options": {"partition": "x"}}), ValueError,
     "--slurm_partition"),
    (dict(launcher="slurm", slurm={"time": "1"}), ValueError, "shorter than the 90 s warning"),
])
def test_bad_launcher_options_are_one_clear_error_before_any_work(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), **TINY, **kwargs)
    assert not (tmp_path / "cmp").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("text, minutes", [("90", 90), (90, 90), ("10:30", 11), ("1:30:00", 90), ("2-00", 2880),
                                           ("1-12:30", 2190), ("2-00:00:01", 2881)])
def test_slurm_time_forms(text, minutes):
    assert time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["", "1:2:3:4", "1h", "-5", "0", "0:00:00", "a-01"])
def test_bad_slurm_time(text):
    with pytest.raises(ValueError, match="slurm time"):
        time_minutes(text)


def test_slurm_options_become_submitit_parameters():
    options = SlurmOptions(partition="gpu", gpus_per_job=4, cpus_per_task=8, mem="64G", time="2-00:00:00",
                           account="lab", qos="high", array_parallelism=16, options={"constraint": "a100",
                                                                                     "mail_type": "END"})
    params = executor_parameters(options, "ciard-x", tasks=options.tasks_per_job, gpus=options.gpus_per_job,
                                 dependency="77")
    assert params == {"slurm_job_name": "ciard-x", "slurm_time": 2880, "slurm_ntasks_per_node": 4,
                      "slurm_signal_delay_s": 90, "slurm_partition": "gpu", "slurm_cpus_per_task": 8,
                      "slurm_mem": "64G", "slurm_account": "lab", "slurm_qos": "high", "slurm_array_parallelism": 16,
                      "slurm_gpus_per_node": 4, "slurm_dependency": "afterok:77",
                      "slurm_additional_parameters": {"time": "2-00:00:00", "constraint": "a100", "mail-type": "END"}}
    cpu = executor_parameters(SlurmOptions(time="60", gpus_per_job=0), "n", tasks=1, gpus=0)
    assert "slurm_gpus_per_node" not in cpu and "slurm_dependency" not in cpu and cpu["slurm_ntasks_per_node"] == 1


def test_without_submitit_local_and_slurm_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(ImportError, match=r"--launcher local needs the optional package 'submitit'.*"
                                          r"pip install 'ciard-fast\[cluster\]'"):
        make_launcher("local")
    code = main(["compare", "--methods", "natural", "--launcher", "slurm", "--slurm_time", "1:00:00",
                 "--out_dir", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--launcher slurm needs the optional package 'submitit'" in err and "[cluster]" in err
    assert not (tmp_path / "cmp").exists()


def test_slurm_without_srun_on_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(ValueError, match="Could not detect \"srun\".*login node"):
        compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), launcher="slurm", slurm={"time": "60"},
                **TINY)


def test_cli_maps_every_launcher_option(monkeypatch):
    seen = {}

    def fake_compare(methods, **kwargs):
        seen.update(kwargs, methods=methods)
        return None

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    code = main(["compare", "--methods", "ard", "--launcher", "slurm", "--no-wait", "--slurm_time", "4:00:00",
                 "--slurm-partition", "gpu", "--slurm_gpus_per_job", "2", "--slurm_cpus_per_task", "6",
                 "--slurm_mem", "32G", "--slurm_account", "lab", "--slurm_qos", "low",
                 "--slurm_array_parallelism", "3", "--slurm_max_timeouts", "5", "--slurm_option", "constraint=a100",
                 "--slurm-option", "exclusive", "--epochs", "2"])
    assert code == 0
    assert seen["launcher"] == "slurm" and seen["wait"] is False and seen["max_parallel"] is None
    assert seen["slurm"] == {"time": "4:00:00", "partition": "gpu", "gpus_per_job": 2, "cpus_per_task": 6,
                             "mem": "32G", "account": "lab", "qos": "low", "array_parallelism": 3, "max_timeouts": 5,
                             "options": {"constraint": "a100", "exclusive": True}}
    assert seen["epochs"] == 2  # config keys still pass through
    main(["compare", "--methods", "ard", "--launcher", "local", "--max-parallel", "3", "--no_wait", "false"])
    assert seen["launcher"] == "local" and seen["max_parallel"] == 3 and seen["wait"] is True and seen["slurm"] is None


# ---- local ----------------------------------------------------------------------------------------
def test_local_jobs_get_one_gpu_each_the_least_busy_and_at_most_max_parallel_run(tmp_path, monkeypatch):
    """The scheduling of --launcher local on a 2-GPU machine, with jobs that end on their own."""
    from ciard_fast.engine import launchers

    class Job:
        def __init__(self, number, gpus):
            self.job_id, self.gpus, self.polls = str(1000 + number), gpus, 0
            self.paths = type("P", (), {"stderr": "e", "stdout": "o"})()

        def done(self):
            self.polls += 1
            return self.polls > 2

    class Executor:
        def __init__(self):
            self.params, self.jobs = {}, []

        def update_parameters(self, **params):
            self.params.update(params)

        def submit(self, job):
            running = sum(not j.polls > 2 for j in self.jobs)
            assert running < 3  # never more than max_parallel at once
            self.jobs.append(Job(len(self.jobs), (self.params["gpus_per_node"], tuple(self.params["visible_gpus"]))))
            return self.jobs[-1]

    executor = Executor()
    launcher = launchers.LocalLauncher(max_parallel=3)
    launcher.gpus = 2
    monkeypatch.setattr(launcher, "_executor", lambda folder: executor)
    monkeypatch.setattr(launchers, "_failure_of", lambda job: None)
    monkeypatch.setattr(launchers, "POLL_S", {"local": 0.0, "slurm": 0.0})
    plan = [compare_module.PlannedRun(method="natural", seed=s, config=None, teachers={}, reuse=False)
            for s in range(5)]
    rows = launcher.run(plan, execute=None, finished=lambda run: {"seed": run.seed}, out_dir=str(tmp_path),
                        prepare_teachers=lambda: None, teachers_ready=lambda: True)
    assert rows == {f"natural/seed-{s}": {"seed": s} for s in range(5)}
    assert [job.gpus for job in executor.jobs[:3]] == [(1, (0,)), (1, (1,)), (1, (0,))]
    assert all(gpus[0] == 1 and len(gpus[1]) == 1 for gpus in (job.gpus for job in executor.jobs))


@pytest.mark.slow
def test_local_launcher_gives_the_inline_table_to_the_last_digit(tmp_path, inline_digits, one_thread_jobs, capsys):
    out = tmp_path / "cmp"
    result = compare("natural,rslad", preset="demo", seeds="0,1", out_dir=str(out), launcher="local", max_parallel=2,
                     **DIGITS)
    assert accuracies(result) == accuracies(inline_digits)
    assert timeless_table(result) == timeless_table(inline_digits)
    assert result.summary["rslad"]["pgd_sat"] == inline_digits.summary["rslad"]["pgd_sat"]
    assert CompareResult.load(str(out / "compare.json")) == result
    # each (method, seed) run was its own process, with its log under the comparison's folder
    printed = capsys.readouterr().out
    logs = {}
    for key in ("natural/seed-0", "natural/seed-1", "rslad/seed-0", "rslad/seed-1"):
        line = next(line for line in printed.splitlines() if line.startswith(f"[compare] {key}: local job "))
        job_id = line.split("local job ")[1].split(",")[0]
        log = out / "jobs" / f"{job_id}_0_log.err"
        assert f"log: {log}" in line and log.is_file()
        assert f"[job] {key}: job {job_id}" in log.read_text()
        logs[key] = job_id
    assert len(set(logs.values())) == 4 and str(os.getpid()) not in logs.values()
    # a rerun reuses every finished run and starts no job
    again = compare("natural,rslad", preset="demo", seeds="0,1", out_dir=str(out), launcher="local", **DIGITS)
    assert accuracies(again) == accuracies(result) and "local job" not in capsys.readouterr().out


# ---- slurm ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_slurm_no_wait_then_rerun_collects_and_a_signalled_run_is_requeued_and_resumes_exactly(
        tmp_path, inline_digits, slurm, hooks, capsys):
    out = tmp_path / "cmp"
    marker = tmp_path / "signalled"
    hooks({"signal": {"key": "rslad/seed-1", "step": 30, "signum": "SIGUSR2", "marker": str(marker)}})
    command = ["compare", *DIGITS_CLI, "--out_dir", str(out), "--launcher", "slurm", "--slurm_time", "1:00:00",
               "--slurm_partition", "gpu", "--slurm_gpus_per_job", "1", "--slurm_cpus_per_task", "2",
               "--slurm_mem", "4G", "--slurm_account", "lab", "--slurm_qos", "normal",
               "--slurm_array_parallelism", "2", "--slurm_max_timeouts", "2", "--slurm_option", "constraint=a100",
               "--slurm_option", "mail-type=END", "--slurm_option", "exclusive"]
    start = time.perf_counter()
    assert main(command + ["--no-wait"]) == 0
    printed = capsys.readouterr().out
    teacher_sub, array_sub = submissions(slurm)
    teacher_id, array_id = teacher_sub["job_id"], array_sub["job_id"]
    assert f"[compare] teachers: SLURM job {teacher_id}, log: {out / 'jobs' / f'{teacher_id}_0_log.err'}" in printed
    assert f"4 run(s): SLURM job array {array_id}, starting after job {teacher_id} succeeds" in printed
    for index, key in enumerate(("natural/seed-0", "natural/seed-1", "rslad/seed-0", "rslad/seed-1")):
        assert f"  {key}: job {array_id}_{index}, log: {out / 'jobs' / f'{array_id}_{index}_0_log.err'}" in printed
    assert "not waiting (--no_wait)" in printed

    # the generated sbatch scripts carry every option given (and the array, its dependency, the logs)
    expected = {"partition": "gpu", "gpus-per-node": "1", "ntasks-per-node": "1", "cpus-per-task": "2", "mem": "4G",
                "time": "1:00:00", "account": "lab", "qos": "normal", "constraint": "a100", "mail-type": "END",
                "exclusive": True, "signal": "USR2@90"}
    script = (out / "jobs" / f"{array_id}_submission.sh").read_text()
    assert fake_slurm.parse_directives(script) == array_sub["params"]
    assert expected.items() <= array_sub["params"].items()
    assert array_sub["params"]["array"] == "0-3%2" and array_sub["params"]["dependency"] == f"afterok:{teacher_id}"
    assert array_sub["params"]["output"] == str(out / "jobs" / "%A_%a_0_log.out")
    assert array_sub["params"]["job-name"] == "ciard-cmp"
    assert {**expected, "job-name": "ciard-cmp-teachers"}.items() <= teacher_sub["params"].items()
    assert "array" not in teacher_sub["params"] and "dependency" not in teacher_sub["params"]

    # the same command again (waiting): it attaches to the queued jobs, submits nothing, collates
    assert main(command + ["--no_wait", "false"]) == 0
    seconds = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert len(submissions(slurm)) == 2
    assert f"rslad/seed-1: SLURM job {array_id}_3 (submitted earlier" in printed
    result = CompareResult.load(str(out / "compare.json"))
    assert accuracies(result) == accuracies(inline_digits)
    assert timeless_table(result) == timeless_table(inline_digits)

    # rslad/seed-1 got SLURM's warning signal after step 30 of epoch 1, wrote its mid-epoch
    # checkpoint, was requeued by submitit (same job, restarted once) and resumed from that step
    tasks = ended_tasks(slurm)
    assert tasks[f"{array_id}_3"]["restarts"] == 1 and tasks[f"{array_id}_3"]["state"] == "COMPLETED"
    assert all(tasks[k]["restarts"] == 0 for k in tasks if k != f"{array_id}_3")
    resumed = json.loads((tmp_path / "signalled.resumed").read_text())
    assert resumed == {"epoch": 0, "step": 30, "mid_epoch": 1, "mid_epoch_steps": 30, "restart": "1"}
    log = (out / "jobs" / f"{array_id}_3_0_log.err").read_text()
    assert "SIGUSR2 received; the run stopped at epoch 1, step 30" in log
    assert "restarted 1 time(s)" in log and "continuing the interrupted run from" in log
    assert f"Requeued job {array_id}_3" in (out / "jobs" / f"{array_id}_3_0_log.out").read_text()  # by submitit
    reference = os.path.join(inline_digits.out_dir, "rslad", "seed-1", "last.pt")
    mine, theirs = load_checkpoint(out / "rslad" / "seed-1" / "last.pt"), load_checkpoint(reference)
    assert all(torch.equal(mine["student"][k], theirs["student"][k]) for k in theirs["student"])
    print(f"\nstand-in SLURM, 2 methods x 2 seeds, one requeue: {seconds:.1f} s from submission to the table")


@pytest.mark.slow
def test_a_failed_job_is_reported_by_name_with_its_log_and_a_rerun_submits_only_it(tmp_path, slurm, hooks, capsys):
    out = tmp_path / "cmp"
    command = ["compare", "--methods", "natural", "--seeds", "0,1", "--dataset", "synthetic",
               "--dataset_args", "{num_samples: 96, num_test: 32, image_size: 16}", "--val_size", "32",
               "--student", "small_cnn", "--student_args", "{width: 4}", "--epochs", "1", "--batch_size", "32",
               "--test_attacks", "clean", "--test_n", "16", "--progress", "false", "--plot", "false",
               "--device", "cpu", "--out_dir", str(out), "--launcher", "slurm", "--slurm_time", "60",
               "--slurm_gpus_per_job", "0"]
    hooks({"fail": "natural/seed-1"})
    assert main(command) == 1
    captured = capsys.readouterr()
    [array] = submissions(slurm)
    assert "teachers" not in captured.out  # natural needs none: no teachers' job
    log = out / "jobs" / f"{array['job_id']}_1_0_log.err"
    assert (f"1 of 2 run(s) failed:\n  natural/seed-1 (job {array['job_id']}_1): RuntimeError: injected failure in "
            f"natural/seed-1\n    log: {log}") in captured.err
    assert "rerun the same command" in captured.err and "natural/seed-0" not in captured.err
    assert "RuntimeError: injected failure in natural/seed-1" in log.read_text()
    assert not (out / "compare.json").exists()  # no table from an incomplete comparison
    stamp = os.path.getmtime(out / "natural" / "seed-0" / "last.pt")

    hooks({})  # the fault is gone
    assert main(command) == 0
    printed = capsys.readouterr().out
    first, again = submissions(slurm)
    assert again["tasks"] == [str(again["job_id"])] and "array" not in again["params"]  # one job: natural/seed-1
    assert f"natural/seed-1: job {again['job_id']}, log:" in printed
    assert "natural/seed-0: finished earlier, reused" in printed
    assert os.path.getmtime(out / "natural" / "seed-0" / "last.pt") == stamp
    result = CompareResult.load(str(out / "compare.json"))
    assert [r["seed"] for r in result.runs["natural"]] == [0, 1]


@pytest.mark.slow
def test_a_failed_teachers_job_cancels_the_runs_waiting_for_it_and_a_rerun_submits_both_again(
        tmp_path, slurm, hooks, monkeypatch):
    hooks({})
    kwargs = dict(preset=None, out_dir=str(tmp_path / "cmp"), launcher="slurm", slurm={"time": "60", "gpus_per_job": 0},
                  robust_teacher_model="small_cnn", robust_teacher_args={"width": 4}, robust_teacher_normalize=True,
                  teacher_epochs=1, **TINY)
    with monkeypatch.context() as patch, pytest.raises(JobsFailed) as failed:
        patch.setattr(compare_module, "prepare_teachers", _cluster_hooks.failing_teachers)
        compare("rslad", **kwargs)
    teachers, array = submissions(slurm)
    assert array["params"]["dependency"] == f"afterok:{teachers['job_id']}"
    message = str(failed.value)
    assert f"the teachers' job {teachers['job_id']} failed: RuntimeError: injected failure while training the " \
           f"teachers ['robust']" in message
    assert f"log: {tmp_path / 'cmp' / 'jobs' / (str(teachers['job_id']) + '_0_log.err')}" in message
    assert "Its 1 dependent run(s) were cancelled" in message
    tasks = ended_tasks(slurm)
    assert tasks[str(teachers["job_id"])]["state"] == "FAILED"
    assert tasks[str(array["job_id"])]["state"] == "CANCELLED"  # it never started
    assert not (tmp_path / "cmp" / "rslad").exists()

    # submitted without waiting: the run stays PENDING behind the failed teachers' job, as on SLURM
    with monkeypatch.context() as patch:
        patch.setattr(compare_module, "prepare_teachers", _cluster_hooks.failing_teachers)
        assert compare("rslad", wait=False, **kwargs) is None
    _, _, teachers2, array2 = submissions(slurm)
    deadline = time.time() + 120
    while stand_in_tasks(slurm)[str(teachers2["job_id"])]["state"] != "FAILED" and time.time() < deadline:
        time.sleep(0.1)
    assert stand_in_tasks(slurm)[str(array2["job_id"])]["state"] == "PENDING"
    # the same command, fixed: that run is cancelled (it could never start), the teachers' job and
    # the run are submitted again, and the table comes
    result = compare("rslad", **kwargs)
    assert len(submissions(slurm)) == 6 and set(result.teachers) == {"robust"}
    assert ended_tasks(slurm)[str(array2["job_id"])]["state"] == "CANCELLED"
    assert (tmp_path / "cmp" / "teachers" / "robust.pt").is_file()


def test_only_rank_0_writes_a_runs_row(tmp_path, monkeypatch):
    # Every rank of a multi-GPU job runs the same compare step; only rank 0 evaluates the test split.
    # Rank 1's row (no accuracies) once overwrote rank 0's now and then, and the table came out empty.
    from types import SimpleNamespace

    from ciard_fast.config import build_config
    from ciard_fast.engine import api
    from ciard_fast.engine.distributed import DistContext

    config = build_config(overrides={**TINY, "method": "natural", "out_dir": str(tmp_path / "run")})
    row_file = tmp_path / "run" / compare_module.ROW_FILE

    def fake_train(config, **kwargs):
        os.makedirs(config.resolved_out_dir(), exist_ok=True)
        metrics = {"clean": 50.0} if compare_module.get_context().is_main else {}
        return SimpleNamespace(metrics=metrics, history=[], evaluated_weights="best.pt")

    monkeypatch.setattr(api, "train", fake_train)
    monkeypatch.setattr(compare_module, "get_context", lambda: DistContext(rank=1, world_size=2))
    assert compare_module._run_method(config, reuse=False, teacher_times={}).get("clean") is None
    assert not row_file.exists()
    monkeypatch.setattr(compare_module, "get_context", lambda: DistContext(rank=0, world_size=2))
    compare_module._run_method(config, reuse=False, teacher_times={})
    assert json.loads(row_file.read_text())["row"]["clean"] == 50.0


@pytest.mark.slow
def test_a_job_with_two_gpus_trains_its_run_under_ddp(tmp_path, slurm, hooks):
    world = tmp_path / "world"
    world.mkdir()
    hooks({"world": str(world)})
    result = compare("natural", preset=None, out_dir=str(tmp_path / "cmp"), launcher="slurm",
                     slurm={"time": "60", "gpus_per_job": 2}, **TINY)
    # two tasks of one job (one per GPU), each a rank of the same DDP run, as torchrun would start
    assert sorted(os.listdir(world)) == ["rank-0-of-2", "rank-1-of-2"]
    [submission] = submissions(slurm)
    assert submission["params"]["ntasks-per-node"] == "2" and submission["params"]["gpus-per-node"] == "2"
    job_id = submission["job_id"]
    assert (tmp_path / "cmp" / "jobs" / f"{job_id}_1_log.err").is_file()  # rank 1's own log
    assert set(result.runs["natural"][0]) >= {"clean", "fgsm", "worst"}


@pytest.mark.slow
def test_the_stand_in_signals_a_job_before_its_time_limit(tmp_path, slurm, monkeypatch):
    """The stand-in itself: SIG@delay before --time, then SIGTERM/SIGKILL and TIMEOUT (scaled
    minutes), as the slurm path above relies on it for submitit's time-outs."""
    monkeypatch.setenv("FAKE_SLURM_SECONDS_PER_MINUTE", "4")  # --time=1 is 4 s; USR2@45 comes 3 s before
    script = tmp_path / "job.sh"
    got = tmp_path / "got"
    script.write_text(
        "#!/bin/bash\n#SBATCH --time=1\n#SBATCH --signal=USR2@45\n#SBATCH --output=" + str(tmp_path / "%j.out") + "\n"
        f"srun {sys.executable} -c \"import signal, time; "
        f"signal.signal(signal.SIGUSR2, lambda *a: open('{got}', 'w').write('USR2')); "
        "[time.sleep(0.05) for _ in range(400)]\"\n")
    done = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, check=True)
    job_id = done.stdout.split()[-1]
    assert ended_tasks(slurm)[job_id]["state"] == "TIMEOUT"
    assert got.read_text() == "USR2"


# ---- Weights & Biases -----------------------------------------------------------------------------
def read_wandb_records(folder, timeout=60):
    """Every record of the offline W&B runs under `folder` (the .wandb files: LevelDB-style log
    blocks of protobuf Records), as (record type, protobuf) pairs, once each file holds its final
    "exit" record (W&B's service may still be writing the file when finish() returns)."""
    deadline = time.time() + timeout
    while True:
        records, complete = [], True
        for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
            found = _wandb_file_records(path)
            complete = complete and bool(found) and found[-1][0] == "exit"
            records += found
        if (records and complete) or time.time() > deadline:
            return records
        time.sleep(0.1)


def _wandb_file_records(path):
    import struct

    from wandb.proto import wandb_internal_pb2

    records, data, pos, pieces = [], path.read_bytes(), 7, b""  # 7: the ":W&B" header
    if data[:4] != b":W&B":
        return []  # not written yet
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # block padding
            pos += left
            continue
        if pos + 7 + length > len(data):
            break  # a record still being written
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pieces = chunk if kind in (1, 2) else pieces + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append((record.WhichOneof("record_type"), record))
    return records


def wandb_history(folder):
    rows = []
    for kind, record in read_wandb_records(folder):
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def test_wandb_offline_history_equals_metrics_jsonl(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "cmp"
    result = compare("natural", preset=None, out_dir=str(out), wandb=True, wandb_project="ciard-tests",
                     **{**TINY, "epochs": 3, "test_attacks": ("clean", "fgsm")})
    run_dir = out / "natural" / "seed-0"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3 and wandb_history(run_dir) == logged  # every scalar of every epoch, exactly
    records = read_wandb_records(run_dir)
    run = next(r.run for kind, r in records if kind == "run")
    assert (run.project, run.run_group, run.display_name) == ("ciard-tests", "cmp", "natural/seed-0")
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    saved = json.loads((run_dir / "results.json").read_text())["config"]
    assert config == saved and config["wandb_group"] == "cmp"
    summary = {}
    for kind, record in records:
        if kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    assert summary["test/clean"] == result.runs["natural"][0]["clean"]
    assert "| natural student (small_cnn) |" in summary["test_table_md"]
    assert json.loads((run_dir / "wandb_run.json").read_text())["id"] == run.run_id
    # the comparison's own W&B run in the group: the table
    comparison = next(r.run for kind, r in read_wandb_records(out) if kind == "run")
    assert (comparison.run_group, comparison.display_name, comparison.job_type) == ("cmp", "comparison", "compare")


def test_wandb_missing_is_a_clear_error_before_training(tmp_path, monkeypatch):
    from ciard_fast.config import build_config
    from ciard_fast.engine.api import train

    monkeypatch.setitem(sys.modules, "wandb", None)
    config = build_config(overrides={**TINY, "method": "natural", "wandb": True, "out_dir": str(tmp_path / "run"),
                                     "compare_natural_student": False})
    with pytest.raises(ImportError, match=r"pip install 'ciard-fast\[wandb\]'.*--wandb false"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()
