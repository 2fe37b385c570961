"""Training methods: one file per method, each registered by name.

Every module in this package is imported on first use, so adding a method is adding a file
with a `@register_method` class — nothing else (not the engine, not this file) changes. A method
defined outside the package registers the same way (its module must be imported before use).
The contract a method fulfils (networks by role, optimisers, options, state, hooks, the step's
return value) is written down in `methods/base.py`; loss terms in `methods/terms.py`.
"""
import dataclasses
import importlib
import pkgutil
from typing import Any, Mapping, Type

from ..options import MethodOptions, check_option_fields, option
from ..registry import Registry
from .base import AttackSettings, Method, Network, OptimizerSpec, freeze
from .terms import LossSum, LossTerm, StepContext


def _discover():
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "terms"):
            importlib.import_module(f"{__name__}.{info.name}")


METHODS = Registry("method", discover=_discover)


def register_method(cls):
    """Class decorator: make `cls` available as `get_method(cls.name)`."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method expects a Method subclass, got {cls!r}")
    return METHODS.register(cls.name, cls)


def register_variant(option_name: str):
    """Class decorator on a subclass of a registered method: the parent's boolean option
    `option_name`, when true, builds this subclass instead of the parent (same name, same options,
    same presets). E.g. ``@register_variant("reference_code")`` on CIARD's reference-code step, so
    ``method: ciard, reference_code: true`` runs it. The contract tests run every variant too."""

    def decorator(cls: Type[Method]) -> Type[Method]:
        parent = cls.__mro__[1]
        if not (issubclass(cls, Method) and issubclass(parent, Method)) or cls.name != parent.name:
            raise TypeError(f"register_variant: {cls.__qualname__} must subclass a method and keep its name")
        fields = {f.name: f for f in dataclasses.fields(parent.Options)}
        if option_name not in fields or fields[option_name].type not in (bool, "bool"):
            raise TypeError(f"register_variant: {parent.name!r} has no boolean option {option_name!r}")
        current = parent.variants.get(option_name)
        if current is not None and current is not cls:
            raise ValueError(f"option {option_name!r} of method {parent.name!r} already selects {current.__qualname__}")
        parent.variants = {**parent.variants, option_name: cls}
        return cls

    return decorator


def list_methods():
    """Names of all registered methods, sorted."""
    return METHODS.names()


def get_method(name):
    """The Method subclass registered as `name`; ValueError listing valid names otherwise."""
    return METHODS.get(name)


def make_options(method: str, method_args: Mapping[str, Any]) -> MethodOptions:
    """The checked `Options` of method `method` from its `method_args`: a ValueError for an
    unknown option, and every type/range/choice error of the options themselves, each naming
    the method (the config calls this when it is built, before any data or teacher)."""
    cls = get_method(method)
    valid = [f.name for f in dataclasses.fields(cls.Options)]
    unknown = sorted(set(method_args) - set(valid))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; its options: {', '.join(valid) or 'none'}")
    try:
        options = cls.Options(**method_args)
        if not isinstance(options, MethodOptions):  # a plain dataclass (a method written before MethodOptions)
            check_option_fields(options)
        return options
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"method {method!r}: {exc}") from None


__all__ = ["AttackSettings", "Method", "Network", "OptimizerSpec", "MethodOptions", "option", "freeze",
           "StepContext", "LossTerm", "LossSum", "register_method", "register_variant", "list_methods",
           "get_method", "make_options", "METHODS"]
