"""Training methods: one file per method, each registered by name.

Every module in this package is imported on first use, so adding a method is adding a file
with a `@register_method` class — nothing else (not the engine, not this file) changes.
"""
import importlib
import pkgutil

from .base import AttackSettings, Method, freeze

_REGISTRY = {}
_discovered = False


def register_method(cls):
    """Class decorator: make `cls` available as `get_method(cls.name)`."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method expects a Method subclass, got {cls!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a method named {cls.name!r} is already registered ({_REGISTRY[cls.name].__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def _discover():
    global _discovered
    if not _discovered:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _discovered = True


def list_methods():
    """Names of all registered methods, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_method(name):
    """The Method subclass registered as `name`; ValueError listing valid names otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


__all__ = ["AttackSettings", "Method", "freeze", "register_method", "list_methods", "get_method"]
