"""``ciard-fast export``: a training checkpoint's student as a verified ONNX / TorchScript / safetensors file.

    ciard-fast export --checkpoint runs/demo/best.pt --format onnx --out student.onnx
    ciard-fast export --checkpoint runs/demo/best.pt --format torchscript --out student.pt --fold_bn false
    ciard-fast export --checkpoint runs/demo/best.pt --format safetensors --out student.safetensors

Exit status: 0 written and verified; 1 the verification failed (nothing written); 2 bad input
(unknown format, unusable checkpoint, a teacher run without --allow_teacher, missing onnx /
onnxruntime / safetensors) — one line on stderr each.
"""
import argparse
import sys

from ..attacks.cli_eval import positive_int
from ..config import parse_value


def _bool(text):
    # the CLI's one spelling of booleans (1/0, true/false, yes/no, on/off), as for train's options
    try:
        return parse_value(text, bool)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint of ciard-fast train, e.g. runs/demo/best.pt")
    # not argparse choices: an unknown format is reported like every other bad input, in one line
    parser.add_argument("--format", required=True, metavar="FORMAT", help="onnx | torchscript | safetensors")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="file to write; the model card goes to PATH.model_card.json and .md")
    parser.add_argument("--fold_bn", "--fold-bn", type=_bool, default=None, metavar="true|false",
                        help="fold eval-mode BatchNorm into the convolutions (default true for onnx/torchscript; "
                             "safetensors keeps the plain weights)")
    parser.add_argument("--n", type=positive_int, default=256,
                        help="validation images of the verification batch (default 256)")
    parser.add_argument("--allow_teacher", "--allow-teacher", action="store_true",
                        help="also export a teacher run's checkpoint (method natural/sat/trades)")
    parser.add_argument("--data_root", "--data-root", default=None, metavar="DIR",
                        help="the run's dataset folder, if it moved (default: the run's data_root)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the verification attack's random start")
    return parser


def run(args):
    from .exporter import ExportVerificationError, export

    try:
        export(args.checkpoint, format=args.format, out=args.out, fold_bn=args.fold_bn, n=args.n,
               allow_teacher=args.allow_teacher, data_root=args.data_root, seed=args.seed)
    except ExportVerificationError as err:
        print(f"ciard-fast export: verification failed: {err}", file=sys.stderr)
        return 1
    return 0
