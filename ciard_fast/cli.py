"""The ``ciard-fast`` command: a thin dispatcher.

Each subcommand lives in the module that owns its work and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up (imported lazily so ``--help`` is instant).
"""
import argparse
import os
import sys
from importlib import import_module

from .version import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "train": ("ciard_fast.engine.cli_train", "distil a robust student (no arguments: the embedded digits demo)"),
    "teacher": ("ciard_fast.engine.cli_teacher", "train a teacher: --method natural | sat | trades"),
    "eval": ("ciard_fast.attacks.cli_eval", "evaluate a checkpoint under FGSM / PGD / CW / AutoAttack"),
    "compare": ("ciard_fast.engine.cli_compare", "train several methods on the same data and teachers, one table"),
    "export": ("ciard_fast.deploy.cli", "export a student to ONNX / TorchScript / safetensors, verified, with a model card"),
    "doctor": ("ciard_fast.diagnostics", "check this machine first: versions, kernels, bf16, CUDA graphs, speed"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): 'ciard-fast train: error: ...', exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv_command=None):
    parser = _Parser(prog="ciard-fast", description="Fast adversarial robustness distillation.",
                     epilog="Exit status: 0 done; 1 the run failed (divergence, a file could not be written); "
                            "2 bad input (one line; --debug shows the traceback); 143 / 130 stopped by "
                            "SIGTERM / SIGINT after writing a resumable checkpoint (the resume command is printed).")
    parser.add_argument("--version", action="version", version=f"ciard-fast {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (and so only its dependencies).
        if argv_command == name:
            import_module(module).add_arguments(p)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere (train/teacher pass unknown options on as config keys).
    debug = "--debug" in argv or bool(os.environ.get("CIARD_FAST_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    if command in SUBCOMMANDS and getattr(import_module(SUBCOMMANDS[command][0]), "ACCEPTS_EXTRA", False):
        # train/teacher take any config key as "--key value": collected here, checked by the config.
        args, args.extra = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .engine.divergence import DivergenceError
    from .engine.signals import RunInterrupted

    try:
        return int(import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)
    except RunInterrupted as stop:
        # SIGTERM / SIGINT: a resumable checkpoint was written; 128 + signal, as a killed process.
        print(f"ciard-fast {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        if debug:
            raise
        print(f"ciard-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except DivergenceError as exc:
        if debug:
            raise
        print(f"ciard-fast {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        # Bad input: one clear line, not a traceback (--debug or CIARD_FAST_DEBUG=1 shows it).
        if debug:
            raise
        print(f"ciard-fast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions (AtomicWriteError names the file and the space)
        if debug:
            raise
        print(f"ciard-fast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
