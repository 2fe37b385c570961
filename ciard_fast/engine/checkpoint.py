"""Checkpoints: written atomically, read with clear errors.

A checkpoint is a dict of tensors and plain Python values (loadable with `weights_only=True`):

    format, version, config, epoch, step, rng, history, best_score, best_epoch
    best_of      whose weights best.pt evaluates: "student" or the engine callback's name (absent
                 in older checkpoints: the student's)
    student      the student's weights (state dict)
    optimizer    the student's optimiser
    method       the method's entry (`method_entry`): "epoch", every registered state tensor (τ, w,
                 L⁰ ...), every other network by role (teachers, a peer) and every other
                 optimiser by name (CIARD's "teacher_optimizer")
    callbacks    name -> state of each engine callback (absent when the run has none)
    eval_weights {"source": what they are, "weights": state dict} when an engine callback
                 evaluates other weights than the student's (e.g. averaged ones); absent otherwise
    mid_epoch    only inside an epoch: what the rest of the epoch needs to continue exactly

The layout is the one checkpoints had before networks and optimisers were declared, so those
resume unchanged. Every reader of a checkpoint takes the weights it evaluates from
`eval_weights(state)`, never from state["student"] directly.
"""
import os
from typing import Any, Dict, Mapping, Optional

import torch

from ..atomic import save_torch_atomic
from ..version import __version__

FORMAT = "ciard-fast-checkpoint"


def save_checkpoint(path, state):
    """Write `state` to `path` atomically (`ciard_fast.atomic`): a crash or a full disk leaves
    either the old checkpoint or the new one, never half of one."""
    payload = dict(state, format=FORMAT, version=__version__)
    return save_torch_atomic(payload, path)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by `save_checkpoint`.

    Raises ValueError naming the file when it is missing, truncated/corrupt, or not a ciard-fast
    training checkpoint (e.g. a bare state dict: load that with `ciard_fast.load_weights`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong magic number ...
        raise ValueError(
            f"checkpoint {path!r} could not be read: it is truncated or corrupt ({type(exc).__name__}: {exc}). "
            "Resume from another checkpoint (e.g. best.pt) or start a new run."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a ciard-fast training checkpoint (no '{FORMAT}' marker); "
            "to use model weights, load them with ciard_fast.load_weights or pass them as a teacher"
        )
    return state


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
        return load_checkpoint(path)
    except ValueError:
        return None


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


# ---- the weights a checkpoint's readers evaluate ------------------------------------------------
def eval_weights(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The weights to evaluate, export, describe or reuse from a checkpoint: the engine
    callback's (e.g. averaged) weights when the run recorded some, else the student's."""
    recorded = state.get("eval_weights")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("weights"), Mapping):
        return recorded["weights"]
    if not isinstance(state.get("student"), Mapping):
        raise ValueError("the checkpoint holds no student weights; give a checkpoint written by ciard-fast train")
    return state["student"]


def eval_weights_source(state: Mapping[str, Any]) -> Optional[str]:
    """What `eval_weights(state)` are when they are not the student's own (e.g. "SWA average of
    epochs 95-200"), or None for the student's weights."""
    recorded = state.get("eval_weights")
    return str(recorded.get("source")) if isinstance(recorded, Mapping) and "weights" in recorded else None


# ---- the method's entry: its state, its other networks and optimisers ---------------------------
def method_entry(method, optimizer_states: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint's "method" entry: `method.state_dict()` (epoch, registered state), every
    network but the student by role, and every optimiser but the student's by name."""
    entry = dict(method.state_dict())
    for role, module in method.all_networks().items():
        if role != "student":
            entry[role] = module.state_dict()
    for name, value in optimizer_states.items():
        if name != "student":
            entry[name] = value
    return entry


def check_entry_names(method, optimizer_names) -> None:
    """ValueError when a role, an optimiser and a state tensor of the method share a name (they
    share the checkpoint's method entry)."""
    seen = {"epoch": "the epoch"}
    named = [(role, f"network {role!r}") for role in method.all_networks() if role != "student"]
    named += [(name, f"optimiser {name!r}") for name in optimizer_names if name != "student"]
    named += [(name, f"state tensor {name!r}") for name in method.state_names()]
    for key, what in named:
        if key in seen:
            raise ValueError(f"method {method.name!r}: {what} and {seen[key]} share the checkpoint key {key!r}; "
                             "rename one")
        seen[key] = what


def restore_method_entry(method, optimizers, entry: Mapping[str, Any], path: str = "the checkpoint") -> None:
    """Put back what `method_entry` wrote: the method's state, its networks and optimisers. A
    checkpoint of another method (or options) is one ValueError naming what it lacks."""
    networks = {role: m for role, m in method.all_networks().items() if role != "student"}
    names = [name for name in optimizers.names() if name != "student"]
    missing = [key for key in list(networks) + names if key not in entry]
    if missing:
        raise ValueError(f"{path} holds no {', '.join(missing)} for method {method.name!r} (a checkpoint of another "
                         "method or options?); resume it with the config that wrote it, or start a new run")
    method.load_state_dict(entry)
    for role, module in networks.items():
        module.load_state_dict(entry[role])
    states = {name: entry[name] for name in names}
    for name in names:
        optimizers[name].load_state_dict(states[name])
