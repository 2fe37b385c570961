"""Model cards: what a trained student is, how it was trained and how robust it measured.

Every finished run writes ``<out_dir>/model_card.json`` and ``model_card.md`` (the hook
:func:`write_run_card` at the end of ``ciard_fast.train``); ``ciard_fast.export`` writes one next
to each exported file, with the export's verification figures added.

The JSON holds (keys of :func:`build_model_card`):

- ``model``: architecture (registry name), its kwargs, number of classes, parameter count, input
  contract (float32 NCHW in [0, 1], normalisation inside the model), the checkpoint it describes
  and ``weights_sha256`` (a digest of the student's state dict, see :func:`weights_digest`);
  ``weights``: what those weights are — "the student's weights", or what an engine callback
  evaluates instead (e.g. "SWA of the student: mean of the weights at the ends of epochs ...");
- ``dataset``: name, kwargs and the size of every split;
- ``threat_model``: ``{"norm": "Linf", "eps": float, "eps_text": "8/255"}``;
- ``evaluation``: the final test table of the run — each attack's accuracy (%) exactly as in
  ``results.json``, its settings (steps, step size, start, loss; AutoAttack's version and
  sub-attacks when it ran), the split and number of images; ``None`` when the run had no test
  attacks;
- ``training``: method and all its options (defaults filled in), epochs, batch, lr, seed, the
  training attack; ``teachers``: path, architecture and normalisation of each teacher, with their
  measured validation accuracies when ``<out_dir>/teachers.json`` exists;
- ``config_sha256``, ``software`` (ciard-fast, torch, python versions), ``created`` (UTC);
- ``robustbench``: the same figures under the field names of RobustBench's ``model_info`` JSON
  files (``dataset``, ``architecture``, ``eps``, ``clean_acc``, ``autoattack_acc``,
  ``additional_data``, ``number_forward_passes``; accuracies as strings with two decimals);
- ``export`` (export cards only): format, file, BN folding, and the verification figures.
"""
import dataclasses
import datetime
import hashlib
import json
import os
import platform

import torch

from ..atomic import write_text_atomic
from ..version import __version__
from .teachers import TEACHER_METHODS, teacher_spec

CARD_FORMAT = "ciard-fast-model-card"
CARD_VERSION = 1
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
TEACHERS_JSON = "teachers.json"
STUDENT_WEIGHTS = "the student's weights"  # card["model"]["weights"] when no callback evaluates others
# Config keys that say where/how verbosely a run ran, not what it computed: left out of the hash
# so that the same experiment resumed, moved or run quietly keeps its hash.
_NOT_HASHED = ("out_dir", "resume", "stop_after", "progress", "log_every", "plot", "device")
_PREFIXES = ("module.", "_orig_mod.")

__all__ = ["build_model_card", "write_model_card", "write_run_card", "read_model_card", "render_markdown",
           "weights_digest", "config_sha256", "eps_text", "CARD_JSON", "CARD_MD"]


def eps_text(eps):
    """0.031372... -> '8/255' (RobustBench's spelling); other radii as decimals."""
    k = float(eps) * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{float(eps):.6g}"


def weights_digest(state_dict):
    """sha256 hex digest of a state dict: every key (``module.``/``_orig_mod.`` prefixes stripped),
    dtype, shape and the raw bytes of its tensor, in sorted key order. Two checkpoints holding the
    same student weights give the same digest whatever device or memory layout they were saved in."""
    entries = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        entries[key] = value
    h = hashlib.sha256()
    for key in sorted(entries):
        t = entries[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1) first: a 0-d tensor (num_batches_tracked) cannot be viewed as bytes
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def config_sha256(config_dict):
    """sha256 of the config's canonical JSON (sorted keys), without the keys in ``_NOT_HASHED``."""
    data = {k: v for k, v in config_dict.items() if k not in _NOT_HASHED}
    text = json.dumps(data, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _unwrap(model):
    while isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP / DataParallel
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def _method_options(config):
    from ..methods import get_method

    options = get_method(config.method).Options(**config.method_args)
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(config.method_args)


def _teachers(config, out_dir, teacher_paths):
    """Each teacher the method used: path, architecture and, from teachers.json, measured accuracies."""
    measured = {}
    path = os.path.join(out_dir, TEACHERS_JSON)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            measured = json.load(f)
        if not isinstance(measured, dict):
            raise ValueError(f"{path} must hold a JSON object keyed by 'robust'/'clean'; got {type(measured).__name__}")
    teachers = {}
    for kind, tpath in (teacher_paths or {}).items():
        spec = teacher_spec(config, kind)  # the one reader of the <kind>_teacher* fields
        entry = {"path": tpath, "architecture": spec.model, "kwargs": dict(spec.model_args),
                 "normalize": spec.normalize}
        if kind == "robust":
            entry["method"] = spec.method if spec.weights is None else "(given checkpoint)"
        info = measured.get(kind)
        if isinstance(info, dict):
            for key in ("val_clean", "val_pgd"):
                if key in info:
                    entry[key] = info[key]
            entry["measured_by"] = TEACHERS_JSON
        teachers[kind] = entry
    return teachers


def build_model_card(config, model, split_sizes, metrics, checkpoint, state_dict, teacher_paths=None,
                     out_dir=None, test_n=None, weights_source=None):
    """The card of a trained student, as a JSON-ready dict (keys listed in the module docstring).

    Args:
        config: the run's ``TrainConfig``.
        model: the student ``nn.Module`` (any DDP/compile wrapper is looked through); only read.
        split_sizes: ``{"train": int, "val": int or None, "test": int}`` images per split, and
            optionally ``"image_size": (H, W)`` (the input shape the card states).
        metrics: the final test accuracies (%) by attack column, exactly as written to
            ``results.json`` (``TrainResult.metrics``), or ``None``/``{}`` when not evaluated.
        checkpoint: path of the checkpoint whose weights ``metrics`` were measured on.
        state_dict: that checkpoint's student state dict (for ``weights_sha256``).
        teacher_paths: ``{"robust"|"clean": path}`` of the teachers used (``TrainResult.teachers``).
        out_dir: the run folder (for ``teachers.json``; default ``config.resolved_out_dir()``).
        test_n: images the test table was computed on (default ``min(config.test_n, test size)``).
        weights_source: what `state_dict` is when not the student's own weights (the checkpoint's
            `engine.checkpoint.eval_weights_source`, e.g. an SWA average), else None.
    """
    from ..attacks.evaluate import default_hyperparameters

    model = _unwrap(model)
    out_dir = out_dir or config.resolved_out_dir()
    config_dict = config.to_dict()
    normalization = getattr(model, "normalization", None)
    image_size = split_sizes.get("image_size")
    card = {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "model": {
            "architecture": config.student,
            "kwargs": dict(config.student_args or {}),
            "num_classes": int(getattr(model, "num_classes", 0) or 0) or None,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "input": {"layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0],
                      "shape": [None, int(getattr(model, "in_channels", 3))] + (list(image_size) if image_size else [])},
            "normalization": (None if normalization is None else
                              {"mean": list(normalization[0]), "std": list(normalization[1]), "inside_model": True}),
            "checkpoint": checkpoint,
            "weights_sha256": weights_digest(state_dict),
            "weights": weights_source or STUDENT_WEIGHTS,
        },
        "dataset": {"name": config.dataset, "kwargs": dict(config.dataset_args or {}),
                    "splits": {k: split_sizes.get(k) for k in ("train", "val", "test")}},
        "threat_model": {"norm": "Linf", "eps": float(config.eps), "eps_text": eps_text(config.eps)},
        "evaluation": None,
        "training": {
            "method": config.method,
            "options": _method_options(config),
            "teacher_run": _is_teacher_method(config.method),
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "momentum": config.momentum,
            "weight_decay": config.weight_decay,
            "seed": config.seed,
            "attack": {"eps": config.eps, "alpha": config.alpha, "steps": config.attack_steps,
                       "random_start": config.attack_random_start},
        },
        "teachers": _teachers(config, out_dir, teacher_paths),
        "config_sha256": config_sha256(config_dict),
        "config": config_dict,
        "software": {"ciard_fast": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if metrics:
        settings = default_hyperparameters(config.eps, config.seed)  # what the run's evaluate() used
        if test_n is None:
            test_n = split_sizes.get("test")
            if config.test_n is not None and test_n is not None:
                test_n = min(config.test_n, test_n)
        card["evaluation"] = {
            "split": "test",
            "n": test_n,
            "accuracy": dict(metrics),  # percent, the very numbers of results.json
            "settings": {name: settings[name] for name in metrics if name in settings},
            "autoattack": "aa" in metrics,
            "source": "results.json",
        }
    card["robustbench"] = _robustbench(card)
    return card


def _is_teacher_method(method):
    return method in TEACHER_METHODS


def _robustbench(card):
    """RobustBench model_info field names (model_info/<dataset>/Linf/<name>.json) for the same numbers."""
    acc = (card["evaluation"] or {}).get("accuracy", {})
    fmt = lambda v: None if v is None else f"{v:.2f}"  # noqa: E731  (RobustBench writes "56.66")
    return {
        "name": f"{card['training']['method']} {card['model']['architecture']} ({card['dataset']['name']})",
        "dataset": card["dataset"]["name"],
        "threat_model": "Linf",
        "architecture": card["model"]["architecture"],
        "eps": card["threat_model"]["eps_text"],
        "clean_acc": fmt(acc.get("clean")),
        "autoattack_acc": fmt(acc.get("aa")),
        "additional_data": False,
        "number_forward_passes": 1,
    }


def render_markdown(card):
    """The card as a Markdown page (model_card.md)."""
    from ..tables import column_label, format_accuracy, render_table

    m, d, t, ev = card["model"], card["dataset"], card["training"], card["evaluation"]
    lines = [f"# Model card: {m['architecture']} trained with {t['method']} on {d['name']}", ""]
    lines += ["## Model", "",
              f"- architecture: `{m['architecture']}` {json.dumps(m['kwargs'])}, {m['num_classes']} classes, "
              f"{m['parameters']:,} parameters",
              f"- input: float32 NCHW images in [0, 1], shape {m['input']['shape']} (None: any batch size)",
              "- normalisation: " + ("none (raw [0, 1] pixels)" if m["normalization"] is None else
                                     f"inside the model, mean {m['normalization']['mean']}, "
                                     f"std {m['normalization']['std']}"),
              f"- checkpoint: `{m['checkpoint']}` (weights sha256 `{m['weights_sha256'][:16]}…`)",
              f"- weights: {m.get('weights', STUDENT_WEIGHTS)}", ""]
    splits = ", ".join(f"{k} {v}" for k, v in d["splits"].items() if v is not None)
    lines += ["## Data and threat model", "", f"- dataset: {d['name']} ({splits} images)",
              f"- threat model: L∞, ε = {card['threat_model']['eps_text']} (pixels in [0, 1])", ""]
    lines += ["## Robustness", ""]
    if ev is None:
        lines += ["Not evaluated: the run had no test attacks (run `ciard-fast eval --weights <checkpoint>`).", ""]
    else:
        cols = list(ev["accuracy"])
        lines += [f"Test accuracy (%) on {ev['n']} {d['name']} {ev['split']} images:", "",
                  *render_table([column_label(c) for c in cols],
                                [[format_accuracy(ev["accuracy"][c]) for c in cols]], align=["right"] * len(cols)),
                  "", "Settings:", ""]
        for name, params in ev["settings"].items():
            shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items()) or "no attack"
            lines.append(f"- {column_label(name)}: {shown}")
        if not ev["autoattack"]:
            lines.append("- AutoAttack: not run for this card")
        lines.append("")
    lines += ["## Training", "", f"- method: {t['method']}" + (" (a teacher run)" if t["teacher_run"] else ""),
              f"- options: {json.dumps(t['options'], default=str)}",
              f"- epochs {t['epochs']}, batch {t['batch_size']}, lr {t['lr']}, momentum {t['momentum']}, "
              f"weight decay {t['weight_decay']}, seed {t['seed']}",
              f"- training attack: PGD-{t['attack']['steps']}, ε = {eps_text(t['attack']['eps'])}, "
              f"step {eps_text(t['attack']['alpha'])}, start {t['attack']['random_start']}"]
    for kind, info in card["teachers"].items():
        measured = ", ".join(f"{k} {info[k]:.2f}%" for k in ("val_clean", "val_pgd") if k in info)
        lines.append(f"- {kind} teacher: `{info['architecture']}` {json.dumps(info['kwargs'])} from `{info['path']}`"
                     + (f" (measured: {measured})" if measured else ""))
    lines += ["", "## Provenance", "", f"- config sha256: `{card['config_sha256']}`",
              f"- ciard-fast {card['software']['ciard_fast']}, torch {card['software']['torch']}, "
              f"python {card['software']['python']}", f"- created: {card['created']}", ""]
    ex = card.get("export")
    if ex:
        v = ex["verification"]
        lines += ["## Export", "", f"- format: {ex['format']}, file `{ex['file']}` ({ex['bytes']:,} bytes, sha256 "
                  f"`{ex['sha256'][:16]}…`), exported {ex.get('created', '?')}",
                  f"- BatchNorm folded into convolutions: {ex['fold_bn']} ({ex['bn_folded']} folded, "
                  f"{ex['bn_kept']} kept)",
                  f"- verified with {v['runtime']} on {v['n']} {v['split']} images: max |Δlogit| clean "
                  f"{v['max_abs_logit_diff']:.3g}, adversarial {v['max_abs_logit_diff_adv']:.3g} "
                  f"(required ≤ {v['tolerance']:g}); PGD-{v['pgd_steps']} prediction agreement "
                  f"{v['adv_agreement']:.2f}% (required ≥ {v['min_agreement']:g}%)", ""]
    return "\n".join(lines)


def _short(value):
    if isinstance(value, float):
        text = eps_text(value)
        return text if "/" in text else f"{value:.4g}"
    return str(value)


def write_model_card(card, json_path, md_path):
    """Write the card as JSON and Markdown, each atomically. Returns ``(json_path, md_path)``."""
    write_text_atomic(json_path, json.dumps(card, indent=2, default=_jsonable) + "\n")
    write_text_atomic(md_path, render_markdown(card))
    return json_path, md_path


def read_model_card(path):
    """A card written by :func:`write_model_card`, or ``None`` if there is none at `path`."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        card = json.load(f)
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path} is not a ciard-fast model card (no format {CARD_FORMAT!r})")
    return card


def write_run_card(result, student, splits):
    """The end-of-run hook of ``ciard_fast.train``: ``<out_dir>/model_card.{json,md}`` for the
    checkpoint the final table was measured on (best.pt, else last.pt). Returns the JSON path."""
    from . import checkpoint as ckpt

    path = result.best_checkpoint or result.last_checkpoint
    state = ckpt.load_checkpoint(path)
    sizes = {k: (None if splits.get(k) is None else int(splits[k].labels.shape[0])) for k in ("train", "val", "test")}
    sizes["image_size"] = tuple(splits["train"].image_size)
    card = build_model_card(result.config, student, sizes, result.metrics, path, ckpt.eval_weights(state),
                            teacher_paths=result.teachers, out_dir=result.out_dir,
                            weights_source=ckpt.eval_weights_source(state))
    json_path, _ = write_model_card(card, os.path.join(result.out_dir, CARD_JSON),
                                    os.path.join(result.out_dir, CARD_MD))
    return json_path
