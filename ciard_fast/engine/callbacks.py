"""Engine callbacks: features of the training loop that are neither the loop nor a method
(weight averaging, EMA, extra logging), each turned on by the config.

A feature registers a factory once::

    @register_callback("swa")
    def _swa(config):                  # -> a Callback, or None when the config does not ask for it
        return SWACallback(config.swa_start) if config.swa_start is not None else None

and every run (`ciard_fast.train`, teachers and comparisons included) builds the callbacks its
config asks for, in registration-name order, and calls their hooks. The hooks, in the order the
trainer calls them:

  ``on_fit_start(trainer)``          after a resume's state is put back, before the first epoch
  ``after_optimizer_step(trainer)``  after every optimiser step and the method's own hook
  ``on_epoch_end(trainer, epoch)``   after the epoch's last step and `Method.end_epoch`
  ``before_validation(trainer, epoch)``  before the validation of `epoch` (only when it validates)
  ``on_fit_end(trainer)``            after the last epoch of a run that reached it

and for checkpoints and evaluation:

  ``state_dict() / load_state_dict(state)``  what a checkpoint (epoch-end or mid-epoch) carries;
      `load_state_dict(None)` when resuming a checkpoint written without this callback
  ``eval_model(trainer)``   a module to validate instead of the student (e.g. averaged weights),
      or None
  ``eval_weights(trainer)`` (description, state dict) of the weights a checkpoint's readers
      evaluate instead of the student's (`engine.checkpoint.eval_weights`), or None

Hooks run on every rank; none may read a device value on the host inside `after_optimizer_step`
(it runs every step).
"""
import importlib
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..registry import Registry

__all__ = ["Callback", "CALLBACKS", "register_callback", "build_callbacks"]


class Callback:
    """Base class of an engine callback; every hook is a no-op here (see the module docstring)."""

    name: str = "callback"

    def on_fit_start(self, trainer) -> None:
        pass

    def after_optimizer_step(self, trainer) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: int) -> None:
        pass

    def before_validation(self, trainer, epoch: int) -> None:
        pass

    def on_fit_end(self, trainer) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        pass

    def eval_model(self, trainer) -> Optional[nn.Module]:
        return None

    def eval_weights(self, trainer) -> Optional[Tuple[str, Dict[str, Any]]]:
        return None


# The engine features shipped with the library (modules that register a callback), imported on
# the first lookup; user code registers its own before `train()`.
BUILTIN_CALLBACK_MODULES: Tuple[str, ...] = ("ciard_fast.engine.swa",)


def _discover():
    for module in BUILTIN_CALLBACK_MODULES:
        importlib.import_module(module)


CALLBACKS = Registry("callback", discover=_discover)


def register_callback(name: str, factory: Optional[Callable] = None):
    """Register ``factory(config) -> Callback | None`` under `name` (usable as a decorator). The
    name is the callback's key in checkpoints."""
    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"register_callback({name!r}) needs a factory callable(config), got {fn!r}")
        return CALLBACKS.register(name, fn)

    return decorator if factory is None else decorator(factory)


def build_callbacks(config) -> List[Callback]:
    """The callbacks `config` asks for, each named by its registration name."""
    built = []
    for name in CALLBACKS.names():
        callback = CALLBACKS.get(name)(config)
        if callback is None:
            continue
        if not isinstance(callback, Callback):
            raise TypeError(f"callback factory {name!r} returned {type(callback).__name__}, not a Callback or None")
        callback.name = name
        built.append(callback)
    return built
