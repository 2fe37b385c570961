"""ciard-fast: fast, exact adversarial robustness distillation.

The public face of the library. Names are imported lazily so that ``import ciard_fast`` stays
cheap (the CLI's ``--help`` should not pay for Triton or scikit-learn).

    >>> import ciard_fast
    >>> result = ciard_fast.train()                    # the embedded digits demo
    >>> table = ciard_fast.compare(["ciard", "rslad", "mtard"], preset="demo")
    >>> model = ciard_fast.create_model("resnet18", num_classes=10, normalize="cifar10")
    >>> teacher = ciard_fast.load_robustbench("Zhang2019Theoretically")   # models/cifar10/Linf/...pt
    >>> x_adv = ciard_fast.pgd(model, x, y, eps=8/255, alpha=2/255, steps=10)
    >>> report = ciard_fast.evaluate(model, ciard_fast.load_dataset("cifar10", split="test"))
"""
from importlib import import_module

from .version import __version__

# public name -> module that defines it
_EXPORTS = {
    "train": "ciard_fast.engine.api",
    "compare": "ciard_fast.engine.compare",
    "TrainConfig": "ciard_fast.config",
    "TrainResult": "ciard_fast.engine.api",
    "evaluate": "ciard_fast.attacks.evaluate",
    "pgd": "ciard_fast.attacks.pgd",
    "fgsm": "ciard_fast.attacks.fgsm",
    "cw_inf": "ciard_fast.attacks.cw",
    "autoattack": "ciard_fast.attacks.autoattack",
    "create_model": "ciard_fast.models",
    "list_models": "ciard_fast.models",
    "register_model": "ciard_fast.models",
    "load_weights": "ciard_fast.models",
    "load_robustbench": "ciard_fast.models.robustbench",
    "load_dataset": "ciard_fast.data",
    "register_dataset": "ciard_fast.data",
    "register_method": "ciard_fast.methods",
    "register_callback": "ciard_fast.engine.callbacks",
    "list_methods": "ciard_fast.methods",
    "register_attack": "ciard_fast.attacks.columns",
    "list_attacks": "ciard_fast.attacks.columns",
    "DeviceLoader": "ciard_fast.data",
    "export": "ciard_fast.deploy",
    "doctor": "ciard_fast.diagnostics",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ciard_fast' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # cache: the next lookup is a plain attribute
    return value


def __dir__():
    return __all__
