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

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(text):
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


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
    parser.add_argument("--n", type=_positive_int, default=256,
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
