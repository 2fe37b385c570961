"""The surrogate of a run's transfer columns: its robust teacher as loaded before distillation.

A training run whose `test_attacks` name transfer columns (``transfer_pgd`` "BB PGD-TRADES",
``transfer_cw`` "BB CW∞") crafts them on the robust teacher, but not on the teacher the run ends
with: CIARD's inverse teacher training (ITT) fine-tunes the robust teacher during distillation,
and the CIARD authors' evaluation script attacks through the original teacher file. So, before
the first step, :func:`record_surrogate` writes ``<out_dir>/surrogate.json``: the teacher's
weights file (or ``robustbench:<name>``), its architecture, the normalisation it was used with
(after the teacher check resolved ``auto``) and a digest of its weights. At the end (also of a
resumed run) :func:`load_surrogate` builds that model again from the file and refuses to go on
if the file no longer holds the weights the run started with.
"""
import json
import os

from ..atomic import write_text_atomic
from ..models import create_model, load_weights, robustbench
from .teachers import teacher_spec, zoo_entry

__all__ = ["SURROGATE_JSON", "transfer_columns", "record_surrogate", "check_surrogate_record", "load_surrogate"]

SURROGATE_JSON = "surrogate.json"
SOURCE = "the robust teacher as loaded before distillation"


def transfer_columns(attacks):
    """The columns of `attacks` that craft on a surrogate (registered with ``surrogate=True``)."""
    from ..attacks.columns import get_attack

    return [name for name in attacks if get_attack(name).needs_surrogate]


def record_surrogate(config, robust_teacher, teacher_path, out_dir):
    """Write ``<out_dir>/surrogate.json`` for `robust_teacher` (the built, checked model, before any
    distillation step) loaded from `teacher_path`; nothing when `config.test_attacks` has no
    transfer column. Returns the record (or None)."""
    from .distributed import unwrap
    from .model_card import weights_digest

    if not transfer_columns(config.test_attacks):
        return None
    spec = teacher_spec(config, "robust")
    model = unwrap(robust_teacher)
    normalization = getattr(model, "normalization", None)
    record = {"source": SOURCE, "weights": teacher_path, "model": spec.model, "model_args": dict(spec.model_args),
              "normalization": None if normalization is None else [list(normalization[0]), list(normalization[1])],
              "weights_sha256": weights_digest(model.state_dict())}
    if robustbench.is_reference(teacher_path):
        entry = zoo_entry(teacher_path, config)
        record["robustbench"] = dict(entry.describe(), file=robustbench.checkpoint_path(entry, config.model_dir))
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, SURROGATE_JSON), json.dumps(record, indent=2) + "\n")
    return record


def _read(out_dir):
    path = os.path.join(out_dir, SURROGATE_JSON)
    if not os.path.isfile(path):
        raise ValueError(f"test_attacks has transfer columns, but {path} (the record of the robust teacher as loaded "
                         f"before distillation, written when the run started) is missing; drop the transfer columns "
                         f"and evaluate the checkpoint with ciard-fast eval --surrogate PATH|robustbench:NAME")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_surrogate_record(config, out_dir):
    """On resume: the record written at the start must be there (checked before training on)."""
    if transfer_columns(config.test_attacks):
        _read(out_dir)


def describe(record):
    """One line naming the surrogate of a record (tables, model cards)."""
    return f"{record['weights']} ({record['model']}), {record['source']}"


def load_surrogate(config, num_classes, device, out_dir):
    """(model in eval mode on `device`, record) of the surrogate recorded in `out_dir`, or
    (None, None) when `config.test_attacks` has no transfer column.

    Raises ValueError when the record is missing or the teacher's file no longer holds the weights
    it held when the run started (the digest differs)."""
    from .model_card import weights_digest

    if not transfer_columns(config.test_attacks):
        return None, None
    record = _read(out_dir)
    model = create_model(record["model"], num_classes=num_classes, **record["model_args"])
    weights = record["weights"]
    if robustbench.is_reference(weights):
        robustbench.load_entry_weights(model, zoo_entry(weights, config), config.model_dir)
    else:
        load_weights(model, weights)
    stats = record["normalization"]
    model.set_normalization(None if stats is None else (tuple(stats[0]), tuple(stats[1])))
    if weights_digest(model.state_dict()) != record["weights_sha256"]:
        raise ValueError(f"the robust teacher file {weights!r} no longer holds the weights this run started with "
                         f"(sha256 of the weights differs from {os.path.join(out_dir, SURROGATE_JSON)}); the transfer "
                         f"columns must be crafted on the teacher as loaded before distillation: restore the file, or "
                         f"evaluate with ciard-fast eval --surrogate")
    return model.to(device).eval(), record
