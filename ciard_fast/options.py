"""Typed values that check themselves: the one type, range and choice check of the library.

Used by `TrainConfig` (every config field) and by every method's `Options` (the method's own
hyperparameters, config key `method_args`). A method's options are a dataclass derived from
:class:`MethodOptions`; each field may carry its rule as data::

    @dataclasses.dataclass
    class Options(MethodOptions):
        eta_w: float = option(0.025, "loss-weight learning rate", at_least=0, at_most=1)
        weighting: str = option("adaptive", "how the KD terms are weighted", choices=("adaptive", "fixed"))

Building the dataclass checks every field's type (by its annotation: no coercion, so '0.1' is
not a number and 'false' is not a boolean), its range and its choices, then the class's own
`check()` for rules between fields. So a bad option is refused where the options are built,
which the config does when it is built: before any data is loaded or teacher trained.
Options inherit like any dataclass: a method extends its parent's options (B-MTARD adds η_τ to
MTARD's, CIARD adds the push loss and ITT to B-MTARD's), and a loss term shared by several
methods declares its options once as a mixin.

This module imports nothing from the package (a leaf every layer may use).
"""
import dataclasses
import difflib
import math
import numbers
import typing
import warnings
from typing import Any, ClassVar, Mapping, Optional, Sequence, Tuple

__all__ = ["MethodOptions", "option", "check_option_fields", "check_type", "check_range", "check_choice",
           "type_name", "matches", "option_help", "option_rule", "with_current_names"]

# metadata keys of an option field
_HELP, _BOUNDS, _CHOICES = "help", "bounds", "choices"


def type_name(annotation) -> str:
    """How an annotation is named in messages: 'a number', 'true/false', 'a list of an integer'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return " or ".join(type_name(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {type_name(args[0])}" if args else "a list"
    return {type(None): "None", bool: "true/false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def matches(value, annotation) -> bool:
    """Does `value` have the type `annotation` names? No coercion: '0.1' is not a float and
    'false' is not a bool (the CLI parses its strings before they get here)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return any(matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict:
        return isinstance(value, dict)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args))
    return True  # an annotation we do not know: no claim


def check_type(name: str, value, annotation, where: str = "config") -> None:
    """TypeError naming `where`, the field, the expected type and the value when they disagree."""
    if not matches(value, annotation):
        hint = ""
        if isinstance(value, str):
            hint = " (a string: from Python pass the value itself, e.g. 0.1 or False, not '0.1' or 'false')"
        raise TypeError(f"{where} field {name!r} must be {type_name(annotation)}, got {value!r} "
                        f"({type(value).__name__}){hint}")


def _rule(bounds) -> str:
    low, low_inc, high, high_inc = bounds
    if low is not None and high is not None:
        return f"in {'[' if low_inc else '('}{low}, {high}{']' if high_inc else ')'}"
    if low is not None:
        return f"{'>=' if low_inc else '>'} {low}"
    return f"{'<=' if high_inc else '<'} {high}"


def check_range(name: str, value, bounds, hint: str = "") -> None:
    """ValueError unless `value` (a number; None passes) is finite and within `bounds`
    = (low, low_inclusive, high, high_inclusive), None for an open end."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return
    low, low_inc, high, high_inc = bounds
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    bad = (low is not None and (value < low or (value == low and not low_inc))) or \
          (high is not None and (value > high or (value == high and not high_inc)))
    if bad:
        raise ValueError(f"{name} must be {_rule(bounds)}{hint}, got {value!r}")


def check_choice(name: str, value, choices: Sequence) -> None:
    """ValueError listing the choices (and the closest one) unless `value` is one of them."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}.{hint}")


def option(default: Any = dataclasses.MISSING, help: str = "", *, at_least=None, greater_than=None,
           at_most=None, less_than=None, choices: Optional[Sequence] = None, default_factory=dataclasses.MISSING):
    """A dataclass field of a method's options with its one-line meaning and its rule.

    at_least / greater_than: the lower bound, inclusive / exclusive; at_most / less_than: the
    upper bound; choices: the allowed values. A number field that is None passes the range rule
    (Optional fields use None for "the method's default"). Every element of a tuple field is
    checked against the range (e.g. epochs >= 0).
    """
    if at_least is not None and greater_than is not None or at_most is not None and less_than is not None:
        raise TypeError("option(): give at most one lower bound (at_least or greater_than) and one upper bound")
    low = at_least if at_least is not None else greater_than
    high = at_most if at_most is not None else less_than
    metadata = {_HELP: help}
    if low is not None or high is not None:
        metadata[_BOUNDS] = (low, greater_than is None, high, less_than is None)
    if choices is not None:
        metadata[_CHOICES] = tuple(choices)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def option_help(field: dataclasses.Field) -> str:
    """The one-line meaning an option field was declared with ('' if none)."""
    return field.metadata.get(_HELP, "")


def option_rule(field: dataclasses.Field) -> str:
    """Its rule in words ('>= 0', 'in [0, 1]', 'one of adaptive, fixed'; '' if none)."""
    parts = []
    if _BOUNDS in field.metadata:
        parts.append(_rule(field.metadata[_BOUNDS]))
    if _CHOICES in field.metadata:
        parts.append("one of " + ", ".join(map(str, field.metadata[_CHOICES])))
    return "; ".join(parts)


def _is_sequence(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return any(_is_sequence(a) for a in typing.get_args(annotation))
    return origin in (tuple, list)


def _number_elements(annotation):
    """(int or float) when `annotation` is a tuple of numbers (Tuple[int, ...], Tuple[float, float]), else None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        found = [_number_elements(a) for a in args if a is not type(None)]
        return found[0] if len(found) == 1 else None
    if origin not in (tuple, list):
        return None
    kinds = {a for a in args if a is not Ellipsis}
    return kinds.pop() if len(kinds) == 1 and kinds <= {int, float} else None


def _numbers_from_strings(name, value, kind):
    """A tuple of numbers written as strings (a list typed by hand, "215,260" split by a shell
    script) as numbers; ValueError naming the option when an element is no number."""
    if not isinstance(value, (tuple, list)) or not any(isinstance(v, str) for v in value):
        return value
    try:
        return tuple(kind(float(v)) if kind is int and isinstance(v, str) and float(v).is_integer()
                     else (float(v) if isinstance(v, str) else v) for v in value)
    except ValueError:
        raise ValueError(f"{name} must be a sequence of numbers, got {value!r}") from None


def check_option_fields(options) -> None:
    """Check every field of an options dataclass instance by its annotation and its `option()`
    rule (numbers written as strings inside a tuple become numbers; lists become tuples)."""
    hints = typing.get_type_hints(type(options))
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        annotation = hints[field.name]
        kind = _number_elements(annotation)
        if kind is not None:
            value = _numbers_from_strings(field.name, value, kind)
        check_type(field.name, value, annotation, where="option")
        if isinstance(value, list) and _is_sequence(annotation):
            value = tuple(value)  # YAML and JSON give lists: one spelling in the options
        object.__setattr__(options, field.name, value)
        bounds = field.metadata.get(_BOUNDS)
        if bounds is not None:
            for item in (value if isinstance(value, tuple) else (value,)):
                check_range(field.name, item, bounds)
        if _CHOICES in field.metadata:
            check_choice(field.name, value, field.metadata[_CHOICES])


@dataclasses.dataclass
class MethodOptions:
    """Base of every method's options: building one checks each field (type, range, choices; see
    `check_option_fields`) and then `check()`. Raises TypeError/ValueError naming the option, the
    value and the rule; a config that names the method prefixes its name (`methods.make_options`)."""

    #: former option names that configs and checkpoints may still hold: old name -> current name
    renamed: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        check_option_fields(self)
        self.check()

    def check(self) -> None:
        """Rules between fields (override; raise ValueError naming the options and the fix)."""

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def with_current_names(options_cls, method_args, method: str) -> dict:
    """`method_args` with every former option name of `options_cls` (its `renamed`, old -> new)
    replaced by the current one, a FutureWarning for each (so an old config or checkpoint keeps
    working and says how to write it now); both spellings of one option at once is a ValueError.
    Options that are a plain dataclass (no `renamed`) are returned as given."""
    renamed = getattr(options_cls, "renamed", {})
    current = {}
    for key, value in method_args.items():
        new = renamed.get(key)
        if new is None:
            current[key] = value
            continue
        if new in method_args:
            raise ValueError(f"method {method!r}: {key!r} is the former name of {new!r}; give only {new!r}")
        warnings.warn(f"method {method!r}: the option {key!r} is now called {new!r}; read as {new}={value!r}",
                      FutureWarning, stacklevel=3)
        current[new] = value
    return current
