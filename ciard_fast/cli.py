"""The ``ciard-fast`` command: a thin dispatcher.

Each subcommand lives in the module that owns its work and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up (imported lazily so ``--help`` is instant).
"""
import os
import sys
from importlib import import_module

from .cli_options import HelpFormatter, Parser, one_line_warnings, process_rank, quiet_unless_rank_zero
from .version import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "train": ("ciard_fast.engine.cli_train", "distil a robust student (no arguments: the embedded digits demo)"),
    "teacher": ("ciard_fast.engine.cli_teacher", "train a teacher: --method natural | sat | trades"),
    "eval": ("ciard_fast.cli_eval", "evaluate a checkpoint under FGSM / PGD / CW / AutoAttack"),
    "compare": ("ciard_fast.engine.cli_compare", "train several methods on the same data and teachers, one table"),
    "export": ("ciard_fast.deploy.cli", "export a student to ONNX / TorchScript / safetensors, verified, with a model card"),
    "doctor": ("ciard_fast.diagnostics", "check this machine first: versions, kernels, bf16, CUDA graphs, speed"),
}


def build_parser(argv_command=None):
    parser = Parser(prog="ciard-fast", description="Fast adversarial robustness distillation.",
                    epilog="Options are written with underscores (--batch_size); the dashed spelling is accepted "
                           "too. Booleans: --flag true|false, or a bare --flag for true. "
                           "Exit status: 0 done; 1 the run failed (divergence, a file could not be written); "
                           "2 bad input (one line; --debug shows the traceback); 143 / 130 stopped by "
                           "SIGTERM / SIGINT after writing a resumable checkpoint (the resume command is printed).")
    parser.add_argument("--version", action="version", version=f"ciard-fast {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module, help_text) in SUBCOMMANDS.items():
        # raw epilogs: train/teacher/compare list every config field there, one per line
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
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
    rank = process_rank()
    with quiet_unless_rank_zero(rank):  # under torchrun, rank 0 alone prints
        parser = build_parser(command if command in SUBCOMMANDS else None)
        if command in SUBCOMMANDS and getattr(import_module(SUBCOMMANDS[command][0]), "ACCEPTS_EXTRA", False):
            # train/teacher/compare take any config key as "--key value": collected here, checked by the config.
            args, args.extra = parser.parse_known_args(argv)
        else:
            args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
    prog = f"ciard-fast {args.command}"
    code, message = _run(args, prog, debug, rank)
    if message and (rank == 0 or code not in (0, 2)):
        # a failure of this rank alone (not bad input, which every rank sees) is said by that rank
        print(message if rank == 0 else f"[rank {rank}] {message}", file=sys.stderr)
    return code


def _run(args, prog, debug, rank):
    """(exit status, the one line to print on stderr or None) of the subcommand."""
    from .engine.divergence import DivergenceError
    from .engine.signals import RunInterrupted

    try:
        with quiet_unless_rank_zero(rank), one_line_warnings(prog):
            return int(import_module(SUBCOMMANDS[args.command][0]).run(args) or 0), None
    except RunInterrupted as stop:
        # SIGTERM / SIGINT: a resumable checkpoint was written; 128 + signal, as a killed process.
        return stop.exit_code, f"{prog}: {stop}"
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        if debug:
            raise
        return 130, f"{prog}: interrupted" + getattr(sys.modules.get(SUBCOMMANDS[args.command][0]),
                                                     "INTERRUPT_HINT", "")
    except DivergenceError as exc:
        if debug:
            raise
        return 1, f"{prog}: error: {exc}"
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        # Bad input: one clear line, not a traceback (--debug or CIARD_FAST_DEBUG=1 shows it).
        if debug:
            raise
        return 2, f"{prog}: error: {_one_line(exc)}"
    except OSError as exc:  # disk full, permissions (AtomicWriteError names the file and the space)
        if debug:
            raise
        return 1, f"{prog}: error: {_one_line(exc)}"


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
