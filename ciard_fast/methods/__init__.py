"""Training methods: one file per method, each registered by name.

Every module in this package is imported on first use, so adding a method is adding a file
with a `@register_method` class — nothing else (not the engine, not this file) changes. A method
defined outside the package registers the same way (its module must be imported before use).
"""
import importlib
import pkgutil

from ..registry import Registry
from .base import AttackSettings, Method, freeze


def _discover():
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


METHODS = Registry("method", discover=_discover)


def register_method(cls):
    """Class decorator: make `cls` available as `get_method(cls.name)`."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method expects a Method subclass, got {cls!r}")
    return METHODS.register(cls.name, cls)


def list_methods():
    """Names of all registered methods, sorted."""
    return METHODS.names()


def get_method(name):
    """The Method subclass registered as `name`; ValueError listing valid names otherwise."""
    return METHODS.get(name)


__all__ = ["AttackSettings", "Method", "freeze", "register_method", "list_methods", "get_method", "METHODS"]
