"""Checkpoints: written atomically, read with clear errors.

A checkpoint is a dict of tensors and plain Python values (loadable with `weights_only=True`):
format/version, config, epoch/step, the student, its optimiser, the method's state (teachers,
their optimisers, τ, w, L⁰ ...), RNG states, the metric history and the best score so far.
"""
import os

import torch

from ..atomic import save_torch_atomic
from ..version import __version__

FORMAT = "ciard-fast-checkpoint"


def save_checkpoint(path, state):
    """Write `state` to `path` atomically (`ciard_fast.atomic`): a crash or a full disk leaves
    either the old checkpoint or the new one, never half of one."""
    payload = dict(state, format=FORMAT, version=__version__)
    return save_torch_atomic(payload, path)


def load_checkpoint(path, map_location="cpu", fix=None):
    """Read a checkpoint written by `save_checkpoint`.

    Raises ValueError naming the file when it is missing, a folder, empty, truncated/corrupt, or
    not a ciard-fast training checkpoint (e.g. a bare state dict: load that with
    `ciard_fast.load_weights`). `fix`: what the message tells the user to do instead (default:
    resume from another checkpoint or start anew). `check_resumable` checks the keys a resume needs.
    """
    from ..models.weights import read_tensor_file

    path = os.fspath(path)
    fix = fix or "resume from another checkpoint (e.g. best.pt) or start a new run"
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    state = read_tensor_file(path, what="checkpoint", fix=fix, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a ciard-fast training checkpoint (no '{FORMAT}' marker); "
            "to use model weights, load them with ciard_fast.load_weights or pass them as a teacher"
        )
    return state


# what continuing a run exactly needs from its checkpoint
RESUME_KEYS = ("config", "epoch", "student", "optimizer", "method", "rng", "step", "best_score", "best_epoch",
               "history")


def check_resumable(state, path):
    """Raise ValueError naming `path` when the checkpoint `state` lacks what a resume needs."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if not missing and not (isinstance(state["config"], dict) and isinstance(state["epoch"], int)):
        missing = ["config", "epoch"]
    if missing:
        raise ValueError(f"checkpoint {path!r} cannot be resumed: it has no {', '.join(map(repr, missing))} (a "
                         "damaged file, or not a last.pt of ciard-fast train); resume from the run's last.pt, or "
                         "start a new run")


def rng_state():
    """The global RNG states a step consumes (the attack's random start)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Config keys that change what a run shows, logs or how it may reuse its folder, never its numbers:
# a cached teacher / natural-student run, or a comparison's run, that differs only in them is
# reused (or continued).
RESULT_NEUTRAL = ("progress", "plot", "tensorboard", "log_every", "overwrite", "checkpoint_every_steps")


def same_run_config(saved, config, ignore=()):
    """True when a checkpoint's saved config dict describes the run `config` (a TrainConfig),
    apart from `RESULT_NEUTRAL` and the keys in `ignore`."""
    skip = RESULT_NEUTRAL + tuple(ignore)
    return all(saved.get(k) == v for k, v in config.to_dict().items() if k not in skip)


def _readable(path):
    if not os.path.isfile(path):
        return None
    try:
        state = load_checkpoint(path)
    except ValueError:
        return None
    # a damaged checkpoint without its config or epoch is no run to reuse or continue
    return state if isinstance(state.get("config"), dict) and isinstance(state.get("epoch"), int) else None


def is_finished_run(path, config):
    """True when `path` is a readable checkpoint of a run that finished (epoch >= config.epochs)
    with the very same config as `config` (a TrainConfig), apart from `RESULT_NEUTRAL`.
    Cached teacher and natural-student runs are reused only then."""
    state = _readable(path)
    return state is not None and state["epoch"] >= config.epochs and same_run_config(dict(state["config"]), config)


def is_interrupted_run(path, config):
    """True when `path` is a readable checkpoint of an unfinished run of `config` (killed,
    preempted by SIGTERM): it can be continued exactly with `resume=path`."""
    state = _readable(path)
    return (state is not None and state["epoch"] < config.epochs
            and same_run_config(dict(state["config"]), config, ignore=("resume", "stop_after")))
