"""The command line's one convention, shared by every `ciard-fast` subcommand.

- Option names are documented with underscores (``--batch_size``); the dashed spelling
  (``--batch-size``) is accepted as an alias everywhere (:func:`add_option`, :func:`option_key`).
- Booleans are ``--flag true|false`` (also yes/no, on/off, 1/0); a bare ``--flag`` means true.
- Abbreviations are off (``allow_abbrev=False``): ``--method`` is never taken for ``--methods``.
- A value of the wrong type names the option and the expected type; floats must be finite.
- An error is one line, ``ciard-fast <command>: error: ...``, exit status 2.
- Under torchrun only rank 0 prints (:func:`quiet_unless_rank_zero`); warnings are one line each
  (:func:`one_line_warnings`).

The subcommands that take config fields (`train`, `teacher`, `compare`) parse them with
:func:`parse_config_options`, whose types come from `TrainConfig` itself (`ciard_fast.config`).
"""
import argparse
import contextlib
import io
import math
import os
import sys
import typing
import warnings
from fractions import Fraction

__all__ = ["Parser", "HelpFormatter", "add_option", "option_key", "parse_bool", "positive_int", "nonnegative_int", "finite_float",
           "fraction_in_unit_interval", "parse_config_options", "process_rank", "quiet_unless_rank_zero",
           "one_line_warnings"]


class Parser(argparse.ArgumentParser):
    """argparse with the convention above: no abbreviations, a one-line error (no usage block)."""

    def __init__(self, *args, allow_abbrev=False, **kwargs):
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            message += _closest_options(self, message.split(":", 1)[1].split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _closest_options(parser, given):
    """' (did you mean --weights?)' for an unrecognised option close to a known one of `parser` or
    of its subcommands (the error of a subcommand's stray option is raised by the main parser)."""
    import difflib

    known = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                known.update(sub._option_string_actions)
    hints = []
    for token in given:
        if token.startswith("--"):
            close = difflib.get_close_matches(token.split("=", 1)[0], sorted(known), n=1, cutoff=0.75)
            if close:
                hints.append(f"{token.split('=', 1)[0]} -> {close[0]}")
    return f" (did you mean: {', '.join(hints)}?)" if hints else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`--help` shows each option once, under its documented (underscore) name; the aliases are
    accepted but not listed. Epilogs are kept as written (the config fields, one per line)."""

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        name = action.option_strings[0]
        if action.nargs == 0:
            return name
        return f"{name} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


def option_key(token):
    """'--batch-size' / '--batch_size' -> 'batch_size' (the one spelling of a config key)."""
    return token.lstrip("-").replace("-", "_")


# ---- argparse types: each raises ArgumentTypeError, which argparse prefixes with the option ------
def parse_bool(text):
    """'true'/'false' (yes/no, on/off, 1/0; any case) -> bool."""
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    return parse


positive_int = _int_at_least(1)
positive_int.__doc__ = "'3' -> 3; an integer >= 1."
nonnegative_int = _int_at_least(0)
nonnegative_int.__doc__ = "'0' -> 0; an integer >= 0 (seeds)."


def finite_float(text):
    """'0.1', '1e-4', '8/255' -> a finite float."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.1 or 8/255, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def fraction_in_unit_interval(text):
    """An L-inf radius on [0, 1] pixels: '8/255' -> 0.0313..., '0.03' -> 0.03."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a radius in [0, 1] (pixels in [0, 1]: 8/255, not 8), "
                                         f"got {text!r}")
    return value


def add_option(parser, name, *aliases, flag=False, help=None, **kwargs):
    """Add ``--name`` (underscores, as documented) and its dashed alias ``--na-me``.

    aliases: other accepted spellings (e.g. an earlier name). flag=True: a boolean,
    ``--name true|false`` or a bare ``--name`` (true); its default is ``kwargs.get("default",
    False)``. Other keyword arguments go to ``add_argument`` as usual.
    """
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else []) + list(aliases)
    if flag:
        kwargs = {"nargs": "?", "const": True, "type": parse_bool, "metavar": "true|false",
                  "default": False, **kwargs}
    return parser.add_argument(*names, help=help, **kwargs)


# ---- `--key value` config options of train / teacher / compare ----------------------------------
def parse_config_options(extra, method):
    """['--epochs', '3', '--itt=false', '--plot'] -> {'epochs': 3, 'itt': False, 'plot': True}.

    Types come from TrainConfig's fields and `method`'s options (`ciard_fast.config.field_types`);
    an option of no known type (a method option of another method, for compare) is guessed.
    `--name.key value` sets one key of a mapping field (`--student_args.width 16`). A bare
    `--name` is true and only allowed for booleans. Raises ValueError naming the option and the
    type it expects.
    """
    from .config import field_types, parse_value

    overrides, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"unexpected argument {token!r}: give config keys as --key value")
        key, has_value, value = token[2:].partition("=")
        field, dot, sub = key.partition(".")
        key = option_key(field) + (dot + sub)
        if not has_value:
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value, i = extra[i + 1], i + 1
            else:
                value = None  # a bare flag: --progress means --progress true (booleans only)
        overrides[key] = value  # given twice: the last wins, as for every argparse option
        i += 1
    method = overrides.get("method", method)
    try:
        types = field_types(method)
    except ValueError as exc:
        raise ValueError(f"--method {method!r}: {exc}") from None

    typed = {}
    for key, value in overrides.items():
        field, dot, sub = key.partition(".")
        kind = types.get(field, typing.Any)
        if value is None:
            if kind not in (bool, typing.Optional[bool], typing.Any):
                raise ValueError(f"--{key} needs a value (e.g. --{key} VALUE)")
            value = "true"
        try:
            if dot:  # --student_args.width 16, --method_args.T_push 3
                if kind is not dict:
                    raise ValueError(f"only mapping fields take a '.': {field!r} is not one")
                typed.setdefault(field, {})[sub] = parse_value(value, typing.Any)
            else:
                typed[key] = parse_value(value, kind)
        except ValueError as exc:
            raise ValueError(f"--{key}: {exc}") from None
    return typed


# ---- output under torchrun, warnings -------------------------------------------------------------
def process_rank():
    """This process's rank under torchrun (RANK with WORLD_SIZE > 1), else 0."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return int(os.environ.get("RANK", "0"))
    except ValueError:
        pass
    return 0


@contextlib.contextmanager
def quiet_unless_rank_zero(rank=None):
    """Within the block, ranks other than 0 print nothing (stdout and stderr go to /dev/null):
    under torchrun rank 0 reports the run, the others would print the same lines again."""
    rank = process_rank() if rank is None else rank
    if rank == 0:
        yield
        return
    sink = _Discard()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


class _Discard(io.TextIOBase):
    """A text stream that drops what it is given (and keeps nothing in memory)."""

    def writable(self):
        return True

    def write(self, text):
        return len(text)


@contextlib.contextmanager
def one_line_warnings(prog):
    """Python warnings as one line each on stderr, `<prog>: warning: <message>` (no file:line)."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"{prog}: warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
