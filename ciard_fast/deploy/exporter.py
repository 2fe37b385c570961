"""``ciard_fast.export``: a training checkpoint's student as ONNX, TorchScript or safetensors, verified.

    >>> result = ciard_fast.export("runs/demo/best.pt", format="onnx", out="student.onnx")
    >>> result.verification["max_abs_logit_diff"], result.verification["adv_agreement"]

The exported model takes float32 NCHW images in [0, 1] with any batch size and returns logits;
the input normalisation is inside it, and (ONNX, TorchScript) eval-mode BatchNorm is folded into
the convolutions. The safetensors file holds the plain weights, with the model name, its kwargs
and the normalisation in its metadata; :func:`load_safetensors_student` (or ``create_model`` +
``load_weights``) rebuilds the student from it.

Every export is verified before anything is written: the serialised bytes are loaded back
(onnxruntime, ``torch.jit.load``, ``create_model`` + ``load_weights``) and run on a batch of the
run's validation split (the test split when the run kept no validation set):

- max |Δlogit| against the PyTorch model, on the clean and on the adversarial batch, must be
  ≤ ``tolerance`` (1e-4, fp32);
- adversarial examples crafted on the PyTorch model (PGD-20, step 2/255, uniform start, the run's
  ε, via ``ciard_fast.attacks.pgd``) must get the same predictions from the exported model on at
  least ``min_agreement`` % (99 %) of the batch.

A failure raises :class:`ExportVerificationError` and leaves no file at ``out`` (the file is
written atomically, after the checks). The model card ``<out>.model_card.json`` / ``.md`` is the
run's card (when it describes the same weights) plus an ``export`` section with these figures.
"""
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import os
import warnings
from typing import Optional

import torch

from ..atomic import write_bytes_atomic
from ..version import __version__

FORMATS = ("onnx", "torchscript", "safetensors")
STUDENT_FORMAT = "ciard-fast-student"
DEFAULT_TOLERANCE = 1e-4
DEFAULT_MIN_AGREEMENT = 99.0
PGD_STEPS = 20
PGD_ALPHA = 2 / 255
ONNX_OPSET = 17
_INSTALL = "pip install 'ciard-fast[export]'"

__all__ = ["export", "ExportResult", "ExportVerificationError", "FORMATS", "load_safetensors_student",
           "safetensors_metadata"]


class ExportVerificationError(RuntimeError):
    """The exported model does not reproduce the PyTorch model; nothing was written."""


@dataclasses.dataclass
class ExportResult:
    """What :func:`export` wrote: the file, its format, the verification figures and the card."""

    path: str
    format: str
    verification: dict
    card_json: Optional[str] = None
    card_md: Optional[str] = None
    bn_folded: int = 0
    bn_kept: int = 0


def _require(*modules):
    missing = []
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"this export needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: {_INSTALL}")


def _check_args(format, out, fold_bn, n, tolerance, min_agreement):
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise TypeError(f"out must be a file path; got {out!r}")
    if os.path.isdir(os.fspath(out)):
        raise ValueError(f"out={os.fspath(out)!r} is a folder; give the file to write, e.g. {os.path.join(out, 'student.' + _EXT[format])}")
    if fold_bn not in (None, True, False):
        raise TypeError(f"fold_bn must be True, False or None (the format's default); got {fold_bn!r}")
    if format == "safetensors" and fold_bn:
        raise ValueError("fold_bn=True does not apply to safetensors, which holds the plain training weights "
                         "(BatchNorm included); export to onnx or torchscript for a folded graph")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (verification images) must be an int >= 1; got {n!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"tolerance must be a number > 0; got {tolerance!r}")
    if not (isinstance(min_agreement, (int, float)) and 0 <= min_agreement <= 100):
        raise ValueError(f"min_agreement must be a percentage in [0, 100]; got {min_agreement!r}")


_EXT = {"onnx": "onnx", "torchscript": "pt", "safetensors": "safetensors"}


# ---- the run's student, rebuilt from its checkpoint --------------------------------------------
def _load_run(checkpoint, data_root, allow_teacher):
    """(state, TrainConfig, splits, eval-mode student on the CPU) of a training checkpoint."""
    from ..config import build_config
    from ..engine import checkpoint as ckpt
    from ..engine.builders import build_model, load_splits
    from ..engine.teachers import TEACHER_METHODS
    from ..models import load_weights

    path = os.fspath(checkpoint)
    state = ckpt.load_checkpoint(path)  # a clear ValueError for a missing, corrupt or foreign file
    saved = state.get("config")
    if not isinstance(saved, dict) or not isinstance(state.get("student"), dict):  # (eval_weights needs it too)
        raise ValueError(f"{path!r} holds no training config and student weights; export needs a checkpoint "
                         "written by ciard-fast train (e.g. runs/<run>/best.pt)")
    saved = {k: v for k, v in saved.items() if k not in ("resume", "stop_after")}
    if data_root is not None:
        saved["data_root"] = os.fspath(data_root)
    # exported on the CPU in fp32: the figures of the verification are fp32 figures
    config = build_config(overrides={**saved, "device": "cpu", "channels_last": False, "compile": False,
                                     "cuda_graphs": False})
    if config.method in TEACHER_METHODS and not allow_teacher:
        raise ValueError(f"{path!r} is a checkpoint of a teacher run (method {config.method!r}), not a distilled "
                         "student; export a student run's best.pt, or pass --allow_teacher (allow_teacher=True) to "
                         "export this teacher anyway")
    splits = load_splits(config)
    # The one rebuild of a run's student (the same helper the training engine uses, so the
    # normalisation a config names is resolved in one place).
    model = build_model(config.student, splits["train"], config.student_normalize, torch.device("cpu"), config,
                        config.student_args)
    load_weights(model, ckpt.eval_weights(state))
    return state, config, splits, model.float().eval()


def _eval_weights(state):
    """The weights the checkpoint's readers evaluate (engine/checkpoint.py: the student's, or the
    averaged ones a run recorded)."""
    from ..engine import checkpoint as ckpt

    return ckpt.eval_weights(state)


def _verification_batch(splits, n):
    split = "val" if splits.get("val") is not None and len(splits["val"].labels) else "test"
    data = splits[split]
    count = min(n, int(data.labels.shape[0]))
    x = data.images[:count].permute(0, 3, 1, 2).float().div(255).contiguous()
    return split, x, data.labels[:count].long()


# ---- serialisation -----------------------------------------------------------------------------
def _metadata(config, model, state, split_image_size):
    normalization = getattr(model, "normalization", None)
    from ..engine.model_card import config_sha256, weights_digest

    return {
        "format": STUDENT_FORMAT,
        "model": config.student,
        "num_classes": str(int(model.num_classes)),
        "model_kwargs": json.dumps(dict(config.student_args or {}), sort_keys=True),
        "normalize": json.dumps(None if normalization is None else [list(normalization[0]), list(normalization[1])]),
        "input": json.dumps({"layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0],
                             "shape": [None, int(getattr(model, "in_channels", 3)), *split_image_size]}),
        "dataset": config.dataset,
        "method": config.method,
        "eps": repr(float(config.eps)),
        "ciard_fast_version": __version__,
        "config_sha256": config_sha256(config.to_dict()),
        "weights_sha256": weights_digest(_eval_weights(state)),
    }


@contextlib.contextmanager
def _quiet():
    # TorchScript and the TorchScript-based ONNX exporter are deprecated in recent torch; their
    # warnings say nothing about this file, which is verified below either way.
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


def _onnx_bytes(graph, example, metadata, keep_bn):
    import onnx

    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        # TrainingMode.EVAL lets the exporter fuse Conv+BN on its own; PRESERVE (the graph is in
        # eval mode either way) keeps the BatchNormalization nodes that fold_bn=False asks for
        mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET, training=mode,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    proto.doc_string = (f"ciard-fast {__version__} student {metadata['model']}: float32 NCHW images in [0, 1] -> "
                        "logits; normalisation inside")
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _onnx_runner(data):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(session.run(["logits"], {"images": x.detach().cpu().numpy()})[0])
    return run, f"onnxruntime {ort.__version__}"


def _torchscript_bytes(graph, metadata):
    buffer = io.BytesIO()
    with _quiet():
        scripted = torch.jit.script(graph)
        torch.jit.save(scripted, buffer, _extra_files={"ciard_fast.json": json.dumps(metadata, indent=2)})
    return buffer.getvalue()


def _torchscript_runner(data):
    with _quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(x):
        with torch.no_grad():
            return module(x)
    return run, f"torch.jit {torch.__version__}"


def _safetensors_bytes(state_dict, metadata):
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return save(tensors, metadata=metadata)


def safetensors_metadata(source):
    """The metadata dict of a safetensors file (path) or of its bytes."""
    from safetensors import safe_open

    if isinstance(source, (bytes, bytearray)):
        # safe_open reads files only; in memory, the header is parsed directly (the format: an
        # 8-byte little-endian length, then that many bytes of JSON with a "__metadata__" entry)
        header_len = int.from_bytes(bytes(source[:8]), "little")
        header = json.loads(bytes(source[8:8 + header_len]))
        return dict(header.get("__metadata__") or {})
    with safe_open(os.fspath(source), framework="pt") as f:
        return dict(f.metadata() or {})


def load_safetensors_student(source, device="cpu"):
    """Rebuild an exported student: ``create_model`` from the file's metadata + ``load_weights``.

    Args:
        source: path of a ``.safetensors`` file written by :func:`export` (or its bytes).
        device: where to put the model (default CPU).

    Returns:
        The model in eval mode, taking [0, 1] images (its normalisation restored from the metadata).

    Raises:
        ValueError: the file was not written by ciard-fast's export (no model metadata).
        ImportError: safetensors is not installed.
    """
    _require("safetensors")
    from safetensors.torch import load, load_file

    from ..models import create_model, load_weights

    meta = safetensors_metadata(source)
    if meta.get("format") != STUDENT_FORMAT:
        where = "the given bytes" if isinstance(source, (bytes, bytearray)) else repr(os.fspath(source))
        raise ValueError(f"{where} has no ciard-fast student metadata (format {STUDENT_FORMAT!r}); load plain "
                         "weights with ciard_fast.create_model(...) + load_weights(model, path)")
    normalize = json.loads(meta["normalize"])
    model = create_model(meta["model"], num_classes=int(meta["num_classes"]),
                         normalize=None if normalize is None else tuple(tuple(v) for v in normalize),
                         **json.loads(meta["model_kwargs"]))
    state = load(bytes(source)) if isinstance(source, (bytes, bytearray)) else load_file(os.fspath(source))
    load_weights(model, state)
    return model.to(device).eval()


def _safetensors_runner(data):
    model = load_safetensors_student(data)

    def run(x):
        with torch.no_grad():
            return model(x)
    return run, "create_model + load_weights"


# ---- verification ------------------------------------------------------------------------------
def verify(reference, runner, x, y, eps, tolerance=DEFAULT_TOLERANCE, min_agreement=DEFAULT_MIN_AGREEMENT,
           seed=0):
    """Compare an exported model (`runner`: images -> logits) with the PyTorch `reference`.

    Returns a dict of figures: ``max_abs_logit_diff`` (clean batch), ``max_abs_logit_diff_adv`` and
    ``adv_agreement`` (% of PGD-20 examples crafted on `reference` given the same class), the
    batch-of-one difference, and ``passed``. Nothing is raised here; :func:`export` decides.
    """
    from ..attacks.pgd import pgd

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ref_clean = reference(x)
    x_adv = pgd(reference, x, y, eps=eps, alpha=PGD_ALPHA, steps=PGD_STEPS, random_start="uniform",
                generator=generator)
    with torch.no_grad():
        ref_adv = reference(x_adv)
    out_clean = runner(x).float()
    out_adv = runner(x_adv).float()
    out_one = runner(x[:1]).float()  # the batch axis really is dynamic
    if out_clean.shape != ref_clean.shape or out_one.shape != ref_clean[:1].shape:
        raise ExportVerificationError(f"the exported model returns logits of shape {tuple(out_clean.shape)} "
                                      f"(batch of one: {tuple(out_one.shape)}); the PyTorch model returns "
                                      f"{tuple(ref_clean.shape)}")
    diff = float((out_clean - ref_clean).abs().max())
    diff_adv = float((out_adv - ref_adv).abs().max())
    diff_one = float((out_one - ref_clean[:1]).abs().max())
    agreement = 100.0 * float((out_adv.argmax(1) == ref_adv.argmax(1)).double().mean())
    worst = max(diff, diff_adv, diff_one)
    return {
        "n": int(x.shape[0]),
        "max_abs_logit_diff": diff,
        "max_abs_logit_diff_adv": diff_adv,
        "max_abs_logit_diff_batch1": diff_one,
        "tolerance": float(tolerance),
        "adv_agreement": agreement,
        "min_agreement": float(min_agreement),
        "pgd_steps": PGD_STEPS, "pgd_alpha": PGD_ALPHA, "pgd_eps": float(eps), "pgd_random_start": "uniform",
        "clean_acc_pytorch": 100.0 * float((ref_clean.argmax(1) == y).double().mean()),
        "clean_acc_exported": 100.0 * float((out_clean.argmax(1) == y).double().mean()),
        "adv_acc_pytorch": 100.0 * float((ref_adv.argmax(1) == y).double().mean()),
        "adv_acc_exported": 100.0 * float((out_adv.argmax(1) == y).double().mean()),
        "passed": bool(worst <= tolerance and agreement >= min_agreement),
    }


# ---- the entry point ---------------------------------------------------------------------------
def export(checkpoint, format="onnx", out=None, fold_bn=None, n=256, allow_teacher=False, data_root=None,
           tolerance=DEFAULT_TOLERANCE, min_agreement=DEFAULT_MIN_AGREEMENT, seed=0, card=True, log=print):
    """Export the student of a training checkpoint, verify it, write it and its model card.

    Args:
        checkpoint: a checkpoint of ``ciard_fast.train`` (``runs/<run>/best.pt`` or ``last.pt``).
        format: ``"onnx"`` (opset 17, dynamic batch), ``"torchscript"`` (``torch.jit.script``) or
            ``"safetensors"`` (plain weights + model metadata).
        out: the file to write (its folder is created). Default ``<checkpoint folder>/student.<ext>``.
        fold_bn: fold eval-mode BatchNorm into the convolutions (default True for onnx/torchscript;
            safetensors always holds the plain weights).
        n: images of the verification batch (default 256; fewer if the split is smaller).
        allow_teacher: export a teacher run's checkpoint (method natural/sat/trades) too.
        data_root: where the run's dataset lives, if not where the run found it.
        tolerance: largest max |Δlogit| accepted (default 1e-4). min_agreement: least PGD-20
            prediction agreement accepted, in % (default 99).
        seed: seed of the PGD random start. card: also write ``<out>.model_card.json`` / ``.md``.
        log: called with each progress line (``print``; ``None`` for silence).

    Returns:
        :class:`ExportResult`.

    Raises:
        ValueError / TypeError: bad arguments, an unusable checkpoint or a teacher checkpoint.
        ImportError: onnx/onnxruntime (onnx) or safetensors (safetensors) is not installed.
        ExportVerificationError: the exported model failed the checks; no file was written.
    """
    log = log or (lambda *_: None)
    checkpoint = os.fspath(checkpoint) if isinstance(checkpoint, os.PathLike) else checkpoint
    if not isinstance(checkpoint, str):
        raise TypeError(f"checkpoint must be a path; got {type(checkpoint).__name__}")
    if out is None and isinstance(format, str) and format in FORMATS:
        out = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"student.{_EXT[format]}")
    _check_args(format, out, fold_bn, n, tolerance, min_agreement)
    out = os.fspath(out)
    _require(*{"onnx": ("onnx", "onnxruntime"), "torchscript": (), "safetensors": ("safetensors",)}[format])
    fold = (format != "safetensors") if fold_bn is None else bool(fold_bn)

    state, config, splits, model = _load_run(checkpoint, data_root, allow_teacher)
    split, x, y = _verification_batch(splits, n)
    metadata = _metadata(config, model, state, list(x.shape[2:]))
    folded = kept = 0
    if format == "safetensors":
        data = _safetensors_bytes(model.state_dict(), metadata)
        runner, runtime = _safetensors_runner(data)
    else:
        from .fold import deployable, fold_batchnorm

        if fold:
            graph, folded, kept = fold_batchnorm(model)
        else:
            graph = deployable(model)
            kept = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in graph.modules())
        if format == "onnx":
            data = _onnx_bytes(graph, x[:2], metadata, keep_bn=not fold)
            runner, runtime = _onnx_runner(data)
        else:
            data = _torchscript_bytes(graph, metadata)
            runner, runtime = _torchscript_runner(data)
    figures = verify(model, runner, x, y, config.eps, tolerance, min_agreement, seed)
    figures.update(runtime=runtime, split=split)
    log(f"export {format}: {config.student} from {checkpoint}"
        + (f", BatchNorm folded ({folded} folded, {kept} kept)" if format != "safetensors" else ", plain weights"))
    log(f"verified with {runtime} on {figures['n']} {config.dataset}/{split} images: max |Δlogit| "
        f"{figures['max_abs_logit_diff']:.3g} clean, {figures['max_abs_logit_diff_adv']:.3g} adversarial, "
        f"{figures['max_abs_logit_diff_batch1']:.3g} batch of one (required ≤ {tolerance:g}); "
        f"PGD-{PGD_STEPS} prediction agreement {figures['adv_agreement']:.2f}% (required ≥ {min_agreement:g}%)")
    if not figures["passed"]:
        raise ExportVerificationError(
            f"the exported {format} model does not reproduce the PyTorch model: max |Δlogit| "
            f"{max(figures['max_abs_logit_diff'], figures['max_abs_logit_diff_adv'], figures['max_abs_logit_diff_batch1']):.3g}"
            f" (required ≤ {tolerance:g}), PGD-{PGD_STEPS} agreement {figures['adv_agreement']:.2f}% "
            f"(required ≥ {min_agreement:g}%); nothing was written to {out}")
    write_bytes_atomic(out, data)
    result = ExportResult(path=out, format=format, verification=figures, bn_folded=folded, bn_kept=kept)
    log(f"wrote {out} ({len(data):,} bytes)")
    if card:
        result.card_json, result.card_md = _write_export_card(checkpoint, state, config, splits, model, result, data,
                                                              fold)
        log(f"wrote {result.card_json} and {result.card_md}")
    return result


def _write_export_card(checkpoint, state, config, splits, model, result, data, fold):
    """The run's card when it describes these weights (else one without an evaluation), + ``export``."""
    from ..engine.model_card import (CARD_JSON, build_model_card, read_model_card, weights_digest,
                                     write_model_card)
    from ..engine import checkpoint as ckpt
    from ..engine.teachers import teacher_specs

    run_card = read_model_card(os.path.join(os.path.dirname(os.path.abspath(checkpoint)), CARD_JSON))
    digest = weights_digest(_eval_weights(state))
    if run_card is not None and run_card["model"]["weights_sha256"] == digest:
        card = run_card
    else:
        sizes = {k: (None if splits.get(k) is None else int(splits[k].labels.shape[0])) for k in ("train", "val", "test")}
        sizes["image_size"] = tuple(splits["train"].image_size)
        teachers = {kind: spec.weights or "(trained by the run)" for kind, spec in teacher_specs(config).items()}
        card = build_model_card(config, model, sizes, None, checkpoint, _eval_weights(state), teacher_paths=teachers,
                                out_dir=os.path.dirname(os.path.abspath(checkpoint)),
                                weights_source=ckpt.eval_weights_source(state))
        card["evaluation_note"] = ("no evaluation of these weights: the run folder has no model card for them "
                                   "(run `ciard-fast eval --weights " + checkpoint + "` for the attack table)")
    card["export"] = {
        "format": result.format, "file": result.path, "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "fold_bn": fold,
        "bn_folded": result.bn_folded, "bn_kept": result.bn_kept,
        "opset": ONNX_OPSET if result.format == "onnx" else None,
        "verification": result.verification,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"ciard_fast": __version__, "torch": torch.__version__},
    }
    return write_model_card(card, result.path + ".model_card.json", result.path + ".model_card.md")
