"""``load_weights``: put a public or our own checkpoint into a model, or say clearly why not.

Public robust-training checkpoints come in many wrappers: a bare state_dict (TRADES
``model_cifar_wrn.pt``, AutoAttack's example ResNet-18), ``{"state_dict": ...}`` (RobustBench,
many training scripts), ``{"model": ...}`` / ``{"net": ...}`` (kuangliu/pytorch-cifar, ARD,
RSLAD), with ``module.`` prefixes from ``nn.DataParallel`` or ``_orig_mod.`` from
``torch.compile``. All of them load here with ``strict=True``.
"""
import os
import re
import warnings
from collections.abc import Mapping

import torch
from torch import nn

# wrapper keys under which training scripts store the weights, tried in this order
# "student": the student of a ciard-fast training checkpoint (teacher runs save their model there too)
_WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict", "student")
# prefixes that wrappers add to every key (DataParallel/DDP, torch.compile)
_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # keys quoted in an error message, per kind


def load_weights(model, path_or_state_dict, strict=True):
    """Load weights into ``model`` and return it.

    Args:
        model: the ``nn.Module`` to fill (a ``DataParallel``/DDP/``torch.compile`` wrapper is
            looked through).
        path_or_state_dict: a file path (read with ``torch.load(weights_only=True,
            map_location="cpu")``; a ``.safetensors`` file with ``safetensors.torch.load_file``)
            or a state_dict / checkpoint mapping. Wrappers
            ``{"state_dict"|"model"|"net"|"model_state_dict"|"student": ...}`` are unwrapped (nested too)
            and ``module.`` / ``_orig_mod.`` key prefixes are stripped.
        strict: as in ``nn.Module.load_state_dict``; with ``strict=False`` missing and
            unexpected keys are ignored, but a shape mismatch is still an error.

    Returns:
        ``model``, with its weights replaced (in place).

    Raises:
        ValueError: the checkpoint does not fit the model: the message names the missing and
            unexpected keys (first few + counts) and the shape mismatches; or the file is not
            a plain tensor checkpoint.
        TypeError: ``model`` is not an ``nn.Module``, or the checkpoint mapping given is not a
            mapping of tensors (read from a file, that is a ValueError naming the file).
        FileNotFoundError: the path does not exist.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_weights needs an nn.Module as model; got {type(model).__name__}")
    target = _unwrap_model(model)
    state = _read(path_or_state_dict)
    try:
        state = _unwrap_checkpoint(state)
        state = strip_key_prefixes(state)
        state = _adopt_normalization(target, state)
        _check_fits(target, state, strict)
    except (TypeError, ValueError) as exc:
        if isinstance(path_or_state_dict, Mapping):
            raise
        # what a file holds is a value problem of that file: one ValueError naming it
        raise ValueError(f"{os.fspath(path_or_state_dict)!r}: {exc}") from None
    target.load_state_dict(state, strict=strict)
    return model


def _unwrap_model(model):
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def read_weights_file(path):
    """The mapping a weights file holds (torch.save or .safetensors), or one clear error naming
    the file (`read_tensor_file`); `load_weights` then unwraps and checks it."""
    return _read(os.fspath(path))


def _read(source):
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"load_weights takes a file path or a state_dict mapping; got {type(source).__name__}"
        )
    path = os.fspath(source)
    if path.endswith(".safetensors"):
        _check_is_file(path, "weights file")
        return _read_safetensors(path)
    return read_tensor_file(path, what="weights file",
                            fix="give a state dict saved with torch.save (copy or download the file again if it "
                                "was cut short)")


def _check_is_file(path, what, fix="copy or download it again"):
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith((".pt", ".pth", ".ckpt", ".safetensors")))[:3]
        hint = f", e.g. {os.path.join(path, inside[0])}" if inside else ""
        raise ValueError(f"{what} {path!r} is a folder, not a file; give the file inside it{hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {what} at {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path!r} is empty (0 bytes: a corrupt file, or a copy or download that was "
                         f"interrupted); {fix}")


def _kind_of_bytes(head):
    """What the first bytes of a file look like: 'zip' (torch.save), 'pickle' (the legacy
    torch format, or a plain pickle), 'text' or 'binary'."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text" if all(c.isprintable() or c in "\r\n\t" for c in text) else "binary"


def read_tensor_file(path, what="weights file", fix="give a file saved with torch.save", map_location="cpu"):
    """``torch.load(path, map_location=map_location, weights_only=True)``, or one clear error.

    The one reader of the torch files the library is given (weights, teacher files, training
    checkpoints): a folder, an empty file, a truncated archive, a text file or a pickle of Python
    objects each become one line naming `what`, the file, what is wrong with it and `fix`.

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a folder, an empty / truncated / corrupt file, or not a torch file at all.
    """
    path = os.fspath(path)
    _check_is_file(path, what, fix)
    with open(path, "rb") as f:
        kind = _kind_of_bytes(f.read(64))
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols say nothing about the file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (every failure of torch.load becomes one line below)
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(e).splitlines() or [""])[0])[:160]  # no terminal colours
        detail = f"{type(e).__name__}" + (f": {first}" if first else "")
        if kind in ("zip", "pickle") and "Weights only load failed" in str(e):
            problem = ("holds Python objects besides tensors, which are not loaded without trusting the file "
                       "(torch.load weights_only=True); if you trust it, load it with torch.load(path, "
                       "weights_only=False) and save its state_dict")
        elif kind == "zip":
            problem = f"is truncated or corrupt (a damaged zip archive; {detail})"
        elif kind == "pickle":
            problem = f"is truncated or corrupt ({detail})"
        elif kind == "text":
            problem = "is a text file, not a file saved with torch.save"
        else:
            problem = f"is not a file saved with torch.save ({detail})"
        raise ValueError(f"{what} {path!r} {problem}; {fix}") from None


def _read_safetensors(path):
    # e.g. a student written by `ciard-fast export --format safetensors` (its metadata names the
    # model to build: ciard_fast.deploy.load_safetensors_student does both steps)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError(f"reading {path!r} needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # a truncated header, not a safetensors file at all
        raise ValueError(f"could not read {path!r} as a safetensors file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from e


def _unwrap_checkpoint(state):
    seen = 0
    while not _is_tensor_mapping(state):
        if not isinstance(state, Mapping):
            raise TypeError(f"checkpoint must be a mapping of tensors; got {type(state).__name__}")
        inner = next((state[k] for k in _WRAPPER_KEYS
                      if k in state and isinstance(state[k], Mapping)), None)
        if inner is None or seen > 4:
            odd = {k: type(v).__name__ for k, v in state.items() if not torch.is_tensor(v)}
            shown = dict(list(odd.items())[:_SHOW])
            raise TypeError(
                f"checkpoint is not a state_dict: {len(odd)} entries are not tensors {shown}, "
                f"and none of the wrapper keys {list(_WRAPPER_KEYS)} holds one"
            )
        state, seen = inner, seen + 1
    return state


def _is_tensor_mapping(state):
    return isinstance(state, Mapping) and all(torch.is_tensor(v) for v in state.values())


def strip_key_prefixes(state, prefixes=_PREFIXES):
    """`state` with every leading prefix of `prefixes` removed from its keys, repeatedly
    ('module._orig_mod.conv.weight' -> 'conv.weight'): DataParallel/DDP and torch.compile wrappers
    (and RobustBench's 'model.') leave them on saved keys."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for p in prefixes:
                if key.startswith(p):
                    key, stripped = key[len(p):], True
        out[key] = value
    return out


def _adopt_normalization(model, state):
    # e.g. a RobustBench DMWideResNet saved with persistent mean/std buffers: those keys are
    # the layout's input statistics, which our models hold as non-persistent buffers
    keys = getattr(model, "normalization_state_keys", None)
    if not keys or not all(k in state for k in keys) or any(k in model.state_dict() for k in keys):
        return state
    mean, std = (state[k].detach().float().flatten().tolist() for k in keys)
    model.set_normalization((mean, std))
    return {k: v for k, v in state.items() if k not in keys}


def _check_fits(model, state, strict):
    expected = model.state_dict()
    # checkpoints from before PyTorch 0.4.1 lack BatchNorm's counter; BatchNorm fills it in
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(state[k].shape), tuple(expected[k].shape))
                  for k in state if k in expected and state[k].shape != expected[k].shape]
    if not mismatched and (not strict or not (missing or unexpected)):
        return
    parts = []
    if strict and missing:
        parts.append(f"{len(missing)} missing key(s) {missing[:_SHOW]}")
    if strict and unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {unexpected[:_SHOW]}")
    if mismatched:
        shown = ", ".join(f"{k}: checkpoint {c} vs model {m}" for k, c, m in mismatched[:_SHOW])
        parts.append(f"{len(mismatched)} shape mismatch(es) [{shown}]")
    only_head = not missing and not unexpected and len(mismatched) <= 2 and all(
        len(c) <= 2 for _, c, _ in mismatched)
    hint = ("Only the classifier differs: the checkpoint was probably trained with another "
            "num_classes" if only_head else
            "It is probably a checkpoint of another architecture; build the matching model "
            "(see ciard_fast.models.list_models()) or pass strict=False to load the keys that fit")
    raise ValueError(
        f"checkpoint ({len(state)} tensors) does not fit {type(model).__name__} "
        f"({len(expected)} tensors): " + "; ".join(parts) + f". {hint}."
    )
