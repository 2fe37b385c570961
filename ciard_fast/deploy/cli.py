"""``ciard-fast export``: a training checkpoint's student as a verified ONNX / TorchScript / safetensors file.

    ciard-fast export --checkpoint runs/demo/best.pt --format onnx --out student.onnx
    ciard-fast export --checkpoint runs/demo/best.pt --format torchscript --out student.pt --fold_bn false
    ciard-fast export --checkpoint runs/demo/best.pt --format safetensors --out student.safetensors

Any trained model exports: a distilled student, or a natural / SAT / TRADES run (its model card
says what it is). Exit status: 0 written and verified; 1 the verification failed (nothing
written); 2 bad input (unknown format, a file that is not a finished training checkpoint, an
--out that would replace a run's own file, missing onnx / onnxruntime / safetensors) — one line on
stderr each.
"""
import argparse
import sys

from ..cli_options import add_option, nonnegative_int, positive_int


def add_arguments(parser):
    add_option(parser, "checkpoint", required=True, metavar="PATH",
               help="a checkpoint of ciard-fast train or ciard-fast teacher, e.g. runs/demo/best.pt")
    # not argparse choices: an unknown format is reported like every other bad input, in one line
    add_option(parser, "format", required=True, metavar="FORMAT", help="onnx | torchscript | safetensors")
    add_option(parser, "out", required=True, metavar="PATH",
               help="file to write (never a file of a run folder); the model card goes to PATH.model_card.json "
                    "and .md")
    add_option(parser, "fold_bn", flag=True, default=None,
               help="fold eval-mode BatchNorm into the convolutions (default true for onnx/torchscript; "
                    "safetensors keeps the plain weights)")
    add_option(parser, "n", type=positive_int, default=256,
               help="validation images of the verification batch (default 256)")
    # natural / SAT / TRADES runs export like any other trained model now: the earlier opt-in is
    # accepted and changes nothing
    add_option(parser, "allow_teacher", flag=True, help=argparse.SUPPRESS)
    add_option(parser, "data_root", default=None, metavar="DIR",
               help="the run's dataset folder, if it moved (default: the run's data_root)")
    add_option(parser, "seed", type=nonnegative_int, default=0, help="seed of the verification attack's random start")
    return parser


def run(args):
    from .exporter import ExportVerificationError, export

    try:
        export(args.checkpoint, format=args.format, out=args.out, fold_bn=args.fold_bn, n=args.n,
               data_root=args.data_root, seed=args.seed)
    except ExportVerificationError as err:
        print(f"ciard-fast export: verification failed: {err}", file=sys.stderr)
        return 1
    return 0
