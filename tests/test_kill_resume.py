"""Fault injection in a subprocess: SIGKILL at random times and aimed at checkpoint writes, each
followed by `--resume`; SIGTERM / SIGINT mid-epoch. After every kill the on-disk invariant holds
(last.pt loads; the best.pt it names is on disk, or best.pt is the one epoch after last.pt whose
write the kill interrupted), and the final results equal an uninterrupted run's, bit for bit."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ciard_fast.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# The child: the real CLI, plus two fault hooks set by environment variables.
#   KILL_AT=<file>:<n>:<before|after>  SIGKILL itself just before/after the n-th os.replace onto <file>
#                                      (before: the temporary is written but not in place; after
#                                      best.pt: the window between best.pt and last.pt)
#   SIGNAL_AT_STEP=<n>:<signum>        send itself a real signal after the n-th optimiser step
DRIVER = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
spec = os.environ.get("KILL_AT")
if spec:
    name, n, when = spec.split(":")
    real_replace, seen = os.replace, [0]
    def replace(src, dst):
        if os.path.basename(dst) == name:
            seen[0] += 1
            if seen[0] == int(n) and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if os.path.basename(dst) == name and seen[0] == int(n) and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
at = os.environ.get("SIGNAL_AT_STEP")
if at:
    step, signum = map(int, at.split(":"))
    from ciard_fast.engine import trainer
    real_update, count = trainer.step_update, [0]
    def update(*args):
        real_update(*args)
        count[0] += 1
        if count[0] == step:
            os.kill(os.getpid(), signum)
    trainer.step_update = update
from ciard_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""

RUN = ["--method", "natural", "--dataset", "synthetic",
       "--dataset_args", "{num_samples: 96, num_test: 16, image_size: 16}", "--val_size", "16",
       "--student", "small_cnn", "--student_args.width", "4", "--epochs", "6", "--batch_size", "16",
       "--eval_every", "1", "--eval_pgd_steps", "1", "--test_attacks", "clean,fgsm", "--test_n", "16",
       "--compare_natural_student", "false", "--progress", "false", "--plot", "false", "--device", "cpu",
       "--log_every", "2", "--checkpoint_every_steps", "2"]  # 5 steps an epoch


def child(args, env=None, timeout=300):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-c", DRIVER, *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def start(folder):
    """The command that (re)starts the run in `folder`: --resume when a last.pt is there."""
    last = os.path.join(folder, "last.pt")
    return ["train", "--resume", last] if os.path.isfile(last) else ["train", *RUN, "--out_dir", folder]


def check_invariant(folder):
    """The on-disk state a kill may leave; returns (last epoch or None, best.pt epoch or None)."""
    last_path, best_path = os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt")
    if not os.path.isfile(last_path):
        assert not os.path.isfile(best_path) or load_checkpoint(best_path)["epoch"] == 1
        return None, None
    last = load_checkpoint(last_path)  # never corrupt (raises otherwise)
    if last["best_epoch"] == 0:
        return last["epoch"], None
    best = load_checkpoint(best_path)
    assert best["epoch"] in (last["best_epoch"], last["epoch"] + 1), (best["epoch"], last["best_epoch"], last["epoch"])
    if best["epoch"] == last["best_epoch"]:
        assert best["best_epoch"] == best["epoch"]
    return last["epoch"], best["epoch"]


def comparable(folder):
    results = json.load(open(os.path.join(folder, "results.json")))
    state = load_checkpoint(os.path.join(folder, "last.pt"))
    history = [{k: v for k, v in row.items() if k not in ("train_seconds", "train_images_per_s")}
               for row in state["history"]]
    return results["test"], results["evaluated"], history, state["student"]


def assert_same(a, b):
    test_a, eval_a, hist_a, student_a = a
    test_b, eval_b, hist_b, student_b = b
    assert test_a == test_b and eval_a == eval_b and hist_a == hist_b
    assert all(torch.equal(student_a[k], student_b[k]) for k in student_a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("reference") / "run")
    done = child(["train", *RUN, "--out_dir", folder])
    assert done.returncode == 0, done.stderr
    return comparable(folder)


AIMED = ["best.pt:1:after", "last.pt:2:before", "last.pt:1:after", "best.pt:1:before", "metrics.jsonl:1:before",
         "last.pt:3:before", "best.pt:1:after", "last.pt:2:after", "results.json:1:before"]


def finish(folder):
    """Resume once more, unkilled: it finishes the run (or, if the kill came after the end,
    evaluates the finished run again) and takes over the stale lock the last SIGKILL left."""
    done = child(start(folder))
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(os.path.join(folder, "last.pt"))["epoch"] == 6
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")] and "run.lock" not in os.listdir(folder)


def test_sigkill_loop_keeps_the_invariant_and_the_final_results(tmp_path, reference):
    aimed_folder, random_folder = str(tmp_path / "aimed"), str(tmp_path / "random")
    aimed = random_kills = checks = 0
    for spec in AIMED:  # kills aimed at the writes of best.pt, last.pt, the logs and the results
        done = child(start(aimed_folder), env={"KILL_AT": spec})
        assert done.returncode in (0, -signal.SIGKILL), done.stderr  # 0: it finished before that write came
        aimed += done.returncode == -signal.SIGKILL
        check_invariant(aimed_folder)
        checks += 1
    finish(aimed_folder)
    assert_same(comparable(aimed_folder), reference)
    rng = random.Random(0)
    for _ in range(4):  # kills at random times, from outside, on another run from scratch
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, *start(random_folder)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(rng.uniform(2.0, 5.0))
        if proc.poll() is None:
            proc.kill()
            random_kills += 1
        proc.wait()
        check_invariant(random_folder)
        checks += 1
    finish(random_folder)
    assert_same(comparable(random_folder), reference)
    print(f"kill loop: {aimed} aimed + {random_kills} random SIGKILLs, {checks} invariant checks, "
          "both final results equal the uninterrupted run's")
    assert aimed >= 7


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_prints_the_resume_command_and_resume_is_exact(tmp_path, reference, signum, code):
    folder = str(tmp_path / "run")
    done = child(["train", *RUN, "--out_dir", folder], env={"SIGNAL_AT_STEP": f"8:{int(signum)}"})  # epoch 2
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert f"{signal.Signals(signum).name} received: stopped at epoch 2, step 8" in lines[0]
    command = lines[0].split("resume with: ")[1].split()
    assert command[:3] == ["ciard-fast", "train", "--resume"] and command[3] == os.path.join(folder, "last.pt")
    state = load_checkpoint(command[3])
    assert state["mid_epoch"]["epoch"] == 2 and state["mid_epoch"]["steps"] == 3
    resumed = child(command[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert_same(comparable(folder), reference)
