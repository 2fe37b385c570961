"""RobustBench zoo models by name, offline, built from our own model zoo.

    >>> teacher = ciard_fast.load_robustbench("Zhang2019Theoretically")           # cifar10, Linf
    >>> teacher = ciard_fast.load_robustbench("Gowal2020Uncovering", dataset="cifar100")

Robust-distillation papers load their robust teachers from the RobustBench model zoo
(github RobustBench/robustbench): the TRADES WideResNet-34-10 ``Zhang2019Theoretically`` on
CIFAR-10 (ARD, RSLAD, MTARD, CIARD), DeepMind's WideResNet-70-16 ``Gowal2020Uncovering`` on
CIFAR-100 (RSLAD, MTARD), and the stronger entries of later papers. This module knows, for each
entry of :data:`ZOO`, which of our architectures it is (the TRADES layout ``wide_resnet`` /
``wrn34_10``, or the DeepMind layout ``dm_wide_resnet`` / ``wrn70_16``, at its depth, width,
activation and number of classes), where its input normalisation lives, and the clean and
AutoAttack accuracies the zoo lists for it. The architectures are ours (the same state-dict keys
as the zoo's files); the ``robustbench`` package is not imported (its package import needs
torchvision, and its release pins old dependencies).

Files. An entry is read from ``<model_dir>/<dataset>/<threat_model>/<name>.pt``: the layout in
which ``robustbench.utils.load_model`` stores its downloads, so a ``models/`` folder filled by
RobustBench on a machine with internet access works here as it is. As RobustBench does, the
weights are taken from the file's ``"state_dict"`` entry when it has one, the ``module.``
(DataParallel) and ``model.`` key prefixes are stripped, and the state dict must then fit the
architecture exactly (strict loading). A missing file is a ``FileNotFoundError`` that gives the
path expected and the one command that fetches it (:func:`fetch_command`).

Normalisation. Every model takes images in [0, 1]. The TRADES-layout entries were trained on raw
pixels (no normalisation); the DeepMind-layout entries normalise inside the architecture with
the constants of DeepMind's code (``DATASET_STATS["deepmind_cifar10"]`` on CIFAR-10,
``"cifar100"`` on CIFAR-100), as RobustBench builds them. :attr:`ZooEntry.normalization` gives it.

The listed accuracies (``clean_acc``, ``autoattack_acc``, percent, on the full test set at the
listed ``eps``) are copied from RobustBench's ``model_info/<dataset>/<threat_model>/<name>.json``
and are what the zoo reports, not something this library measured.
"""
import dataclasses
import difflib
import os
from collections.abc import Mapping
from typing import Optional, Tuple

from .normalization import DATASET_STATS
from .registry import create_model
from .weights import load_weights

__all__ = ["ZooEntry", "ZOO", "PREFIX", "load_robustbench", "get_entry", "list_entries", "checkpoint_path",
           "fetch_command", "existing_file", "read_state_dict", "build_entry_model", "is_reference", "parse_reference",
           "load_entry_weights"]

PREFIX = "robustbench:"
THREAT_MODELS = ("Linf",)
# the key prefixes robustbench.utils.load_model strips (DataParallel's, and the wrappers of some entries)
KEY_PREFIXES = ("module.", "model.")
SOURCE_REPOSITORY = "https://github.com/RobustBench/robustbench"


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One RobustBench model, as this library builds it.

    name: the zoo's name (``Zhang2019Theoretically``). dataset: "cifar10" or "cifar100".
    threat_model: "Linf".
    model, model_args: our registered architecture and its keywords (``create_model(model,
        num_classes, **model_args)``).
    architecture: the zoo's description ("WideResNet-34-10"); layout: "TRADES" or "DeepMind".
    normalization: the (mean, std) applied inside the model, or None (raw [0, 1] pixels).
    clean_acc, autoattack_acc: the accuracies (%) the zoo lists; eps: the radius it lists them at.
    paper, venue: where the model comes from. gdrive_id: the zoo's download id.
    """

    name: str
    dataset: str
    threat_model: str
    model: str
    model_args: dict
    architecture: str
    layout: str
    normalization: Optional[Tuple[tuple, tuple]]
    clean_acc: float
    autoattack_acc: float
    eps: str
    paper: str
    venue: str
    gdrive_id: str

    @property
    def num_classes(self):
        return {"cifar10": 10, "cifar100": 100}[self.dataset]

    @property
    def reference(self):
        """``robustbench:<name>``, the spelling of a config's ``robust_teacher`` / ``clean_teacher``."""
        return PREFIX + self.name

    @property
    def normalization_text(self):
        """Where the input normalisation lives, in words."""
        if self.normalization is None:
            return "none: raw [0, 1] pixels, as the checkpoint was trained"
        mean, std = self.normalization
        return f"inside the architecture ({self.layout} layout): mean {tuple(mean)}, std {tuple(std)}"

    def describe(self):
        """A JSON-ready record (teachers.json, results.json, model cards)."""
        return {"name": self.name, "dataset": self.dataset, "threat_model": self.threat_model,
                "architecture": self.architecture, "layout": self.layout, "model": self.model,
                "model_args": dict(self.model_args), "normalization": self.normalization_text,
                "listed_clean_acc": self.clean_acc, "listed_autoattack_acc": self.autoattack_acc,
                "listed_eps": self.eps, "paper": self.paper, "venue": self.venue,
                "source": f"{SOURCE_REPOSITORY} (model_zoo/{self.dataset}.py, model_info/{self.dataset}/"
                          f"{self.threat_model}/{self.name}.json)"}


# our registered names of the sizes the zoo uses most (the same classes as the generic factories)
_TRADES_NAMED = {(34, 10): "wrn34_10", (28, 10): "wrn28_10"}


def _trades(depth, width, sub_block1):
    if (depth, width) in _TRADES_NAMED:
        model, args = _TRADES_NAMED[(depth, width)], {"sub_block1": sub_block1}
    else:
        model, args = "wide_resnet", {"depth": depth, "widen_factor": width, "sub_block1": sub_block1}
    return model, args, f"WideResNet-{depth}-{width}", "TRADES"


def _deepmind(depth, width, activation="silu"):
    if (depth, width, activation) == (70, 16, "silu"):
        model, args = "wrn70_16", {}
    else:
        model, args = "dm_wide_resnet", {"depth": depth, "width": width, "activation": activation}
    return model, args, f"WideResNet-{depth}-{width}", "DeepMind"


def _entry(dataset, name, arch, clean, aa, eps, paper, venue, gdrive_id):
    model, args, architecture, layout = arch
    if layout == "DeepMind":
        normalization = DATASET_STATS["cifar100" if dataset == "cifar100" else "deepmind_cifar10"]
    else:
        normalization = None
    return ZooEntry(name=name, dataset=dataset, threat_model="Linf", model=model, model_args=args,
                    architecture=architecture, layout=layout, normalization=normalization, clean_acc=clean,
                    autoattack_acc=aa, eps=eps, paper=paper, venue=venue, gdrive_id=gdrive_id)


_TRADES = "arXiv:1901.08573 (Zhang et al., TRADES)"
_GOWAL20 = "arXiv:2010.03593 (Gowal et al., Uncovering the Limits of Adversarial Training)"
_REBUFFI = "arXiv:2103.01946 (Rebuffi et al., Fixing Data Augmentation)"
_GOWAL21 = "arXiv:2110.09468 (Gowal et al., Improving Robustness using Generated Data)"
_LTD = "arXiv:2111.02331 (Chen & Lee, LTD: Low Temperature Distillation)"
_WANG23 = "arXiv:2302.04638 (Wang et al., Better Diffusion Models Further Improve Adversarial Training)"
_CUI23 = "arXiv:2305.13948 (Cui et al., Decoupled Kullback-Leibler Divergence Loss)"
_LBGAT = "arXiv:2011.11164 (Cui et al., Learnable Boundary Guided Adversarial Training)"

# (dataset, name, architecture, listed clean %, listed AutoAttack %, listed eps, paper, venue, gdrive id)
# as RobustBench's model_zoo/<dataset>.py builds each entry and model_info/<dataset>/Linf/<name>.json lists it.
_ENTRIES = [
    _entry("cifar10", "Zhang2019Theoretically", _trades(34, 10, True), 84.92, 53.08, "0.031", _TRADES, "ICML 2019",
           "1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_"),
    _entry("cifar10", "Cui2020Learnable_34_10", _trades(34, 10, True), 88.22, 52.86, "0.031", _LBGAT, "ICCV 2021",
           "16s9pi_1QgMbFLISVvaVUiNfCzah6g2YV"),
    _entry("cifar10", "Chen2021LTD_WRN34_10", _trades(34, 10, False), 85.21, 56.94, "8/255", _LTD, "arXiv, Nov 2021",
           "1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D"),
    _entry("cifar10", "Cui2023Decoupled_WRN-34-10", _trades(34, 10, False), 85.31, 57.09, "8/255", _CUI23,
           "NeurIPS 2024", "1-ArD-TugRXUbH3VtM9qnzvby6NvdXNUN"),
    _entry("cifar10", "Gowal2020Uncovering_70_16", _deepmind(70, 16), 85.29, 57.20, "8/255", _GOWAL20,
           "arXiv, Oct 2020", "1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl"),
    _entry("cifar10", "Gowal2020Uncovering_70_16_extra", _deepmind(70, 16), 91.10, 65.88, "8/255", _GOWAL20,
           "arXiv, Oct 2020", "1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ"),
    _entry("cifar10", "Gowal2020Uncovering_34_20", _deepmind(34, 20), 85.64, 56.86, "8/255", _GOWAL20,
           "arXiv, Oct 2020", "1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O"),
    _entry("cifar10", "Gowal2020Uncovering_28_10_extra", _deepmind(28, 10), 89.48, 62.80, "8/255", _GOWAL20,
           "arXiv, Oct 2020", "1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2"),
    _entry("cifar10", "Rebuffi2021Fixing_28_10_cutmix_ddpm", _deepmind(28, 10), 87.33, 60.75, "8/255", _REBUFFI,
           "arXiv, Mar 2021", "1-0EChXbc6pOvx26O17av263bCeqIAz6s"),
    _entry("cifar10", "Rebuffi2021Fixing_70_16_cutmix_ddpm", _deepmind(70, 16), 88.54, 64.25, "8/255", _REBUFFI,
           "arXiv, Mar 2021", "1-8CWRT-OFWyrz4T4s0I2mbFjPg8K_MUi"),
    _entry("cifar10", "Rebuffi2021Fixing_70_16_cutmix_extra", _deepmind(70, 16), 92.23, 66.58, "8/255", _REBUFFI,
           "arXiv, Mar 2021", "1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg"),
    _entry("cifar10", "Gowal2021Improving_28_10_ddpm_100m", _deepmind(28, 10), 87.50, 63.44, "8/255", _GOWAL21,
           "NeurIPS 2021", "12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx"),
    _entry("cifar10", "Gowal2021Improving_70_16_ddpm_100m", _deepmind(70, 16), 88.74, 66.11, "8/255", _GOWAL21,
           "NeurIPS 2021", "10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4"),
    _entry("cifar10", "Wang2023Better_WRN-28-10", _deepmind(28, 10), 92.44, 67.31, "8/255", _WANG23, "ICML 2023",
           "1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI"),
    _entry("cifar10", "Wang2023Better_WRN-70-16", _deepmind(70, 16), 93.25, 70.69, "8/255", _WANG23, "ICML 2023",
           "1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap"),
    _entry("cifar10", "Cui2023Decoupled_WRN-28-10", _deepmind(28, 10), 92.16, 67.73, "8/255", _CUI23, "NeurIPS 2024",
           "1-AaTrYt23WJFR22hXgBd-i6kjpsz6Hf2"),
    _entry("cifar100", "Gowal2020Uncovering", _deepmind(70, 16), 60.86, 30.03, "8/255", _GOWAL20, "arXiv, Oct 2020",
           "16I86x2Vv_HCRKROC86G4dQKgO3Po5mT3"),
    _entry("cifar100", "Gowal2020Uncovering_extra", _deepmind(70, 16), 69.15, 36.88, "8/255", _GOWAL20,
           "arXiv, Oct 2020", "1LQBdwO2b391mg7VKcP6I0HIOpC6O83gn"),
    _entry("cifar100", "Rebuffi2021Fixing_70_16_cutmix_ddpm", _deepmind(70, 16), 63.56, 34.64, "8/255", _REBUFFI,
           "arXiv, Mar 2021", "1-GkVLo9QaRjCJl-by67xda1ySVhYxsLV"),
    _entry("cifar100", "Rebuffi2021Fixing_28_10_cutmix_ddpm", _deepmind(28, 10), 62.41, 32.06, "8/255", _REBUFFI,
           "arXiv, Mar 2021", "1-P7cs82Tj6UVx7Coin3tVurVKYwXWA9p"),
    _entry("cifar100", "Cui2020Learnable_34_10_LBGAT0", _trades(34, 10, True), 70.25, 27.16, "8/255", _LBGAT,
           "ICCV 2021", "1RnWbGxN-A-ltsfOvulr68U6i2L8ohAJi"),
    _entry("cifar100", "Cui2020Learnable_34_10_LBGAT6", _trades(34, 10, True), 60.64, 29.33, "8/255", _LBGAT,
           "ICCV 2021", "1TfIgvW3BAkL8jL9J7AAWFSLW3SSzJ2AE"),
    _entry("cifar100", "Chen2021LTD_WRN34_10", _trades(34, 10, True), 64.07, 30.59, "8/255", _LTD, "arXiv, Nov 2021",
           "1-I4NZyULdEWH46b4EaCTxuuRo4eFXsg_"),
    _entry("cifar100", "Wang2023Better_WRN-28-10", _deepmind(28, 10), 72.58, 38.83, "8/255", _WANG23, "ICML 2023",
           "1-jOu3wKWyw0XnBCXDGR32xn8Bw9GTJgh"),
    _entry("cifar100", "Wang2023Better_WRN-70-16", _deepmind(70, 16), 75.22, 42.67, "8/255", _WANG23, "ICML 2023",
           "1-yYcT73GP13c0y9HrgtpyB3NAfkGKgjY"),
    _entry("cifar100", "Cui2023Decoupled_WRN-28-10", _deepmind(28, 10), 73.85, 39.18, "8/255", _CUI23, "NeurIPS 2024",
           "15BwWdWbNfoarTEWWugicOVkTjh3nXH36"),
]

# (dataset, threat_model) -> {name: ZooEntry}
ZOO = {}
for _e in _ENTRIES:
    ZOO.setdefault((_e.dataset, _e.threat_model), {})[_e.name] = _e
del _e


def is_reference(value):
    """True for a string ``robustbench:<name>`` (a config's teacher, ``ciard-fast eval --model``)."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_reference(value):
    """``"robustbench:Zhang2019Theoretically"`` -> ``"Zhang2019Theoretically"``; ValueError when empty."""
    if not is_reference(value):
        raise ValueError(f"{value!r} is not a RobustBench reference; write {PREFIX}<name>, e.g. "
                         f"{PREFIX}Zhang2019Theoretically")
    name = value[len(PREFIX):].strip()
    if not name:
        raise ValueError(f"{value!r} names no model; write {PREFIX}<name>, e.g. {PREFIX}Zhang2019Theoretically")
    return name


def list_entries(dataset=None, threat_model="Linf"):
    """Names of the entries known here (of one dataset, or all as ``dataset/name``)."""
    if dataset is None:
        return sorted(f"{d}/{n}" for (d, t), names in ZOO.items() if t == threat_model for n in names)
    return sorted(ZOO.get((dataset, threat_model), {}))


def _check_table(dataset, threat_model):
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r}: the RobustBench entries known here are "
                         f"{', '.join(THREAT_MODELS)}")
    datasets = sorted({d for d, t in ZOO if t == threat_model})
    if dataset not in datasets:
        raise ValueError(f"dataset={dataset!r} has no RobustBench entries here; they exist for "
                         f"{', '.join(datasets)} (the robustbench:<name> teachers need that dataset)")


def get_entry(name, dataset="cifar10", threat_model="Linf"):
    """The :class:`ZooEntry` `name` of `dataset`; ValueError listing the closest known names (and
    the dataset where `name` exists, when it is another one)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a RobustBench model name must be a non-empty string, got {name!r}")
    _check_table(dataset, threat_model)
    table = ZOO[(dataset, threat_model)]
    if name in table:
        return table[name]
    elsewhere = sorted(d for (d, t), names in ZOO.items() if t == threat_model and name in names)
    if elsewhere:
        raise ValueError(f"RobustBench model {name!r} is a {' and '.join(elsewhere)} entry, not a {dataset} one; use "
                         f"dataset={elsewhere[0]!r} (in a run: the run's dataset)")
    close = difflib.get_close_matches(name, list(table), n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ValueError(f"unknown RobustBench model {name!r} for {dataset}/{threat_model}.{hint} Known here: "
                     f"{', '.join(sorted(table))} (see ciard_fast.models.robustbench.ZOO)")


def checkpoint_path(entry, model_dir="models"):
    """``<model_dir>/<dataset>/<threat_model>/<name>.pt``: where RobustBench stores the entry."""
    return os.path.join(os.fspath(model_dir), entry.dataset, entry.threat_model, f"{entry.name}.pt")


def fetch_command(entry, model_dir="models"):
    """The one shell command that fetches `entry`'s file into `model_dir` on a machine with internet
    access (RobustBench's own downloader, which writes the layout this module reads)."""
    return (f"python -c \"from robustbench.utils import load_model; load_model('{entry.name}', "
            f"model_dir='{os.fspath(model_dir)}', dataset='{entry.dataset}', threat_model='{entry.threat_model}')\"")


def existing_file(entry, model_dir="models"):
    """The path of `entry`'s file in `model_dir`; FileNotFoundError (with the expected path and the
    fetch command) when it is missing, ValueError when it is empty."""
    path = checkpoint_path(entry, model_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint of RobustBench model {entry.name} ({entry.dataset}, {entry.threat_model}) at {path!r}. "
            f"Fetch it on a machine with internet access with: {fetch_command(entry, model_dir)} "
            f"(or download https://drive.google.com/uc?id={entry.gdrive_id} to that path), then copy the "
            f"'{os.fspath(model_dir)}' folder here")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path!r} is an empty file (0 bytes; an interrupted download?); fetch it again with: "
                         f"{fetch_command(entry, model_dir)}")
    return path


def read_state_dict(path):
    """The state dict of a RobustBench file: its ``"state_dict"`` entry when it has one (as
    ``robustbench.utils.load_model`` reads it), with the ``module.`` / ``model.`` key prefixes
    stripped. Read through the one reader of torch files (`models.weights.read_tensor_file`)."""
    from .weights import read_tensor_file, strip_key_prefixes

    checkpoint = read_tensor_file(path, what="RobustBench checkpoint",
                                  fix="download it again (it may have been cut short)")
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"{path!r} holds a {type(checkpoint).__name__}, not a state dict")
    return strip_key_prefixes(checkpoint, KEY_PREFIXES)


def build_entry_model(entry):
    """`entry`'s architecture (random weights), with its normalisation, in train mode."""
    return create_model(entry.model, num_classes=entry.num_classes, normalize=entry.normalization, **entry.model_args)


def load_entry_weights(model, entry, model_dir="models"):
    """Load `entry`'s file (from `model_dir`) into `model` strictly; returns the file's path."""
    path = existing_file(entry, model_dir)
    try:
        load_weights(model, read_state_dict(path), strict=True)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{path!r} (RobustBench {entry.name}, built as {entry.model} {entry.model_args}): "
                        f"{err}") from None
    # a DM checkpoint that persisted mean/std would have replaced the statistics: keep the zoo's
    if entry.normalization is not None:
        model.set_normalization(entry.normalization)
    return path


def load_robustbench(name, dataset="cifar10", threat_model="Linf", model_dir="models"):
    """The RobustBench model `name`, in eval mode, on the CPU, taking images in [0, 1].

    Args:
        name: the zoo's name, e.g. "Zhang2019Theoretically" (a "robustbench:" prefix is accepted).
        dataset: "cifar10" or "cifar100". threat_model: "Linf".
        model_dir: the folder RobustBench downloads into (default "models"); the file read is
            ``<model_dir>/<dataset>/<threat_model>/<name>.pt``.

    Returns:
        an ``ImageClassifier`` of our zoo (``model.robustbench``: its :class:`ZooEntry`), with the
        entry's normalisation inside.

    Raises:
        ValueError: an unknown name (the closest known names are listed), an unreadable file or
            weights that do not fit the architecture. FileNotFoundError: no file at the expected
            path (the message gives the path and the command that fetches it).
    """
    if is_reference(name):
        name = parse_reference(name)
    entry = get_entry(name, dataset, threat_model)
    existing_file(entry, model_dir)  # before building: a WRN-70-16 takes seconds to build
    model = build_entry_model(entry)
    load_entry_weights(model, entry, model_dir)
    model.robustbench = entry
    return model.eval()
