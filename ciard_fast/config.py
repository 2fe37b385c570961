"""Training configuration: one dataclass, presets shipped as YAML package data or generated.

Precedence (lowest to highest): dataclass defaults < preset < YAML file < keyword/CLI overrides.

Presets hold only what differs from their base. A YAML preset (or config file) may start with
``base: <preset>`` and list only its differences (``method_args`` merge key by key). Every
``<dataset>-<student>`` YAML preset also generates ``<dataset>-<student>-<method>`` for every
registered method other than its own: the base, minus the settings of teachers the method does
not use, with ``method``, ``epochs = Method.paper_epochs`` and the method's
``preset_overrides`` (and ``preset_overrides_by_dataset[dataset]``). A YAML file of that name, if
shipped, wins. So a method with the base schedule needs no YAML at all. The ``demo`` preset
likewise generates ``demo-<method>``: the demo's data, models and schedule with the method's recipe
(the ``method_args`` and ``swa_start`` of its ``preset_overrides``, an epoch of the paper's schedule
becoming the same fraction of the demo's) and its ``preset_overrides_by_dataset["digits"]`` (e.g.
the step size of a method whose losses are per-example sums rather than elementwise means);
``ciard-fast compare --preset demo --per_method_presets`` runs every method with its own.
Keys that are not TrainConfig fields but are options of the chosen method (e.g. `T_push`,
`weighting`, `itt` for CIARD) go to `method_args`. Unknown keys raise a ValueError naming the key,
the closest valid ones, and where the valid ones are listed.
"""
import dataclasses
import difflib
import math
import os
import re
import typing
from typing import Optional, Tuple, Union

from .options import check_choice as _check_choice, check_range, check_type as _check_type, type_name

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
DEFAULT_PRESET = "demo"


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the paper's CIFAR-10 ResNet-18 CIARD settings;
    the `demo` preset (what `ciard-fast train` runs) shrinks them to minutes on a CPU."""

    method: str = dataclasses.field(
        default="ciard",
        metadata={"group": "method",
                  "help": "the training method: any name of ciard_fast.methods.list_methods() (ciard, ard, "
                          "rslad, ..., natural, sat, trades)"})
    method_args: dict = dataclasses.field(
        default_factory=dict,
        metadata={"group": "method",
                  "help": "the method's own options (its Options dataclass), e.g. {T_push: 3}; on the command "
                          "line give them as --T_push 3"})
    dataset: str = dataclasses.field(
        default="cifar10",
        metadata={"group": "data",
                  "help": "cifar10 | cifar100 | tinyimagenet | digits | synthetic (or a dataset registered with "
                          "register_dataset)"})
    dataset_args: dict = dataclasses.field(
        default_factory=dict,
        metadata={"group": "data",
                  "help": "the dataset loader's keyword arguments, e.g. synthetic: {num_samples: 512, image_size: 32}"})
    data_root: Optional[str] = dataclasses.field(
        default=None,
        metadata={"group": "data",
                  "help": "folder holding the datasets (None: $CIARD_FAST_DATA, else ~/.cache/ciard_fast/data)"})
    val_size: Optional[int] = dataclasses.field(
        default=None,
        metadata={"group": "data",
                  "help": "validation images carved from the training set (None: the dataset's default; 0: no "
                          "validation)"})
    loader: str = dataclasses.field(
        default="device",
        metadata={"group": "data",
                  "help": "device (the whole uint8 set on the device, augmented there) | dali"})
    crop_padding: int = dataclasses.field(
        default=4, metadata={"group": "data", "help": "random crop with this zero padding (0: no crop)"})
    flip: bool = dataclasses.field(
        default=True,
        metadata={"group": "data",
                  "help": "random horizontal flip (off for digits: a mirrored 2 is no 2)"})
    student: str = dataclasses.field(
        default="resnet18",
        metadata={"group": "models",
                  "help": "the student's architecture: any name of ciard_fast.models.list_models()"})
    student_args: dict = dataclasses.field(
        default_factory=dict,
        metadata={"group": "models",
                  "help": "the student model's keyword arguments, e.g. {width: 16}"})
    student_normalize: Union[bool, str] = dataclasses.field(
        default=True,
        metadata={"group": "models",
                  "help": "true: the dataset's mean/std inside the model; false: raw [0, 1] pixels; or a "
                          "DATASET_STATS name"})
    robust_teacher: Optional[str] = dataclasses.field(
        default=None,
        metadata={"group": "teachers",
                  "help": "the robust teacher's weights file or robustbench:<name> (None: trained first with "
                           "robust_teacher_method)"})
    robust_teacher_model: str = dataclasses.field(
        default="wrn34_10", metadata={"group": "teachers", "help": "the robust teacher's architecture"})
    robust_teacher_args: dict = dataclasses.field(
        default_factory=dict, metadata={"group": "teachers", "help": "the robust teacher model's keyword arguments"})
    robust_teacher_normalize: Union[bool, str] = dataclasses.field(
        default="auto",
        metadata={"group": "teachers",
                  "help": "the robust teacher's input normalisation; auto: a file's best on the validation "
                          "split, raw pixels when trained here"})
    robust_teacher_method: str = dataclasses.field(
        default="trades",
        metadata={"group": "teachers",
                  "help": "how a missing robust teacher is trained: trades | sat | natural"})
    clean_teacher: Optional[str] = dataclasses.field(
        default=None,
        metadata={"group": "teachers",
                  "help": "the clean teacher's weights file or robustbench:<name> (None: trained first, naturally)"})
    clean_teacher_model: str = dataclasses.field(
        default="resnet56", metadata={"group": "teachers", "help": "the clean teacher's architecture"})
    clean_teacher_args: dict = dataclasses.field(
        default_factory=dict, metadata={"group": "teachers", "help": "the clean teacher model's keyword arguments"})
    clean_teacher_normalize: Union[bool, str] = dataclasses.field(
        default="auto",
        metadata={"group": "teachers",
                  "help": "the clean teacher's input normalisation; auto as above (trained here: the dataset's "
                          "statistics); cifar10_legacy: the public hub ResNet-56's"})
    allow_weak_teacher: bool = dataclasses.field(
        default=False,
        metadata={"group": "teachers",
                  "help": "distil from a teacher file under 1.5x chance accuracy on validation (else the run stops)"})
    model_dir: str = dataclasses.field(default="models", metadata={
        "group": "teachers",
        "help": "folder of RobustBench checkpoints: a teacher robustbench:<name> is read from "
                "<model_dir>/<dataset>/Linf/<name>.pt (the layout robustbench.utils.load_model downloads into)"})
    teacher_epochs: int = dataclasses.field(
        default=100, metadata={"group": "teachers", "help": "epochs of a teacher that has to be trained first"})
    teacher_lr: float = dataclasses.field(
        default=0.1,
        metadata={"group": "teachers",
                  "help": "learning rate of a teacher trained first (and of natural/SAT/TRADES rows in compare)"})
    epochs: int = dataclasses.field(
        default=300, metadata={"group": "method", "help": "training epochs (the schedules span them)"})
    batch_size: int = dataclasses.field(
        default=128, metadata={"group": "method", "help": "the global batch (split over the ranks under torchrun)"})
    lr: float = dataclasses.field(
        default=0.1, metadata={"group": "method", "help": "the student's peak learning rate (SGD)"})
    momentum: float = dataclasses.field(default=0.9, metadata={"group": "method", "help": "SGD momentum, in [0, 1)"})
    weight_decay: float = dataclasses.field(default=2e-4, metadata={"group": "method", "help": "SGD weight decay"})
    swa_start: Optional[Union[int, float]] = dataclasses.field(default=None, metadata={
        "group": "method", "help": "stochastic weight averaging of the student from this epoch (an integer) or this "
        "fraction of epochs (in (0, 1)); the averaged model is what is validated, reported and exported. None: off"})
    eps: float = dataclasses.field(
        default=8 / 255,
        metadata={"group": "attack",
                  "help": "L-inf radius of the training attack and of every evaluation, on [0, 1] pixels (8/255 "
                          "on the command line)"})
    alpha: float = dataclasses.field(
        default=2 / 255, metadata={"group": "attack", "help": "step size of the training attack, on [0, 1] pixels"})
    attack_steps: int = dataclasses.field(
        default=10, metadata={"group": "attack", "help": "PGD steps of the training attack"})
    attack_random_start: str = dataclasses.field(
        default="default",
        metadata={"group": "attack",
                  "help": "start of the training attack: default (the method's own) | uniform | normal | none"})
    eval_every: int = dataclasses.field(
        default=1,
        metadata={"group": "evaluation",
                  "help": "epochs between validation evaluations (clean + PGD); they choose best.pt"})
    eval_pgd_steps: int = dataclasses.field(
        default=20, metadata={"group": "evaluation", "help": "PGD steps of the validation attack"})
    eval_n: Optional[int] = dataclasses.field(
        default=None, metadata={"group": "evaluation", "help": "validation images per evaluation (None: all)"})
    test_attacks: Tuple[str, ...] = dataclasses.field(
        default=("clean", "fgsm", "pgd_sat", "pgd_trades", "cw"),
        metadata={"group": "evaluation",
                  "help": "columns of the final test table (comma-separated; none: no table)"})
    test_n: Optional[int] = dataclasses.field(
        default=None, metadata={"group": "evaluation", "help": "test images of the final table (None: all)"})
    compare_natural_student: bool = dataclasses.field(
        default=False,
        metadata={"group": "evaluation",
                  "help": "also train a natural student of the same architecture and put it in the table"})
    out_dir: Optional[str] = dataclasses.field(
        default=None,
        metadata={"group": "run",
                  "help": "the run folder (None: runs/<method>-<dataset>-<student>, numbered when used)"})
    seed: int = dataclasses.field(
        default=0,
        metadata={"group": "run",
                  "help": "seed of the student's init, the data order, the attack noise and the validation split"})
    split_seed: Optional[int] = dataclasses.field(
        default=None,
        metadata={"group": "run",
                  "help": "seed of the validation split alone (None: seed); compare --seeds holds it fixed"})
    device: str = dataclasses.field(default="auto", metadata={"group": "run", "help": "auto | cpu | cuda | cuda:N"})
    resume: Optional[str] = dataclasses.field(
        default=None,
        metadata={"group": "run",
                  "help": "a checkpoint (last.pt) to continue from, exactly, in its own folder"})
    stop_after: Optional[int] = dataclasses.field(
        default=None,
        metadata={"group": "run",
                  "help": "stop after this epoch (the schedules still span epochs); resume later"})
    progress: bool = dataclasses.field(
        default=True, metadata={"group": "run", "help": "progress bar / lines on stderr"})
    log_every: int = dataclasses.field(
        default=10, metadata={"group": "run", "help": "steps between progress and log updates (each is one host sync)"})
    plot: bool = dataclasses.field(
        default=True, metadata={"group": "run", "help": "write curves.png in the run folder at the end"})
    tensorboard: bool = dataclasses.field(
        default=False,
        metadata={"group": "run",
                  "help": "also write every logged scalar to <out_dir>/tensorboard (extra [tensorboard])"})
    wandb: bool = dataclasses.field(default=False, metadata={
        "group": "run", "help": "also log every scalar of metrics.jsonl, the config and the final table to Weights & "
                                "Biases (extra [wandb]; WANDB_MODE=offline writes <out_dir>/wandb/ only)"})
    wandb_project: str = dataclasses.field(default="ciard-fast", metadata={
        "group": "run", "help": "the Weights & Biases project of --wandb true"})
    wandb_group: Optional[str] = dataclasses.field(default=None, metadata={
        "group": "run", "help": "the Weights & Biases group of the run (compare: default the comparison folder's name)"})
    overwrite: bool = dataclasses.field(
        default=False,
        metadata={"group": "run",
                  "help": "replace the run an out_dir you named already holds (its run files are deleted first)"})
    checkpoint_every_steps: Optional[int] = dataclasses.field(
        default=None,
        metadata={"group": "run",
                  "help": "also write a resumable mid-epoch last.pt every N steps (None: at epoch ends only)"})
    precision: str = dataclasses.field(
        default="auto", metadata={"group": "performance", "help": "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16"})
    channels_last: Optional[bool] = dataclasses.field(
        default=None, metadata={"group": "performance", "help": "channels_last memory format (None: on for CUDA)"})
    cuda_graphs: Optional[bool] = dataclasses.field(
        default=None,
        metadata={"group": "performance",
                  "help": "replay the attack and the step through CUDA graphs (None: on for CUDA)"})
    compile: bool = dataclasses.field(
        default=False,
        metadata={"group": "performance",
                  "help": "torch.compile the models (in place: checkpoint keys unchanged)"})
    optimizer: str = dataclasses.field(
        default="auto",
        metadata={"group": "performance",
                  "help": "auto (fused SGD on CUDA) | sgd | fused | apex (if importable)"})
    sync_batchnorm: bool = dataclasses.field(
        default=False,
        metadata={"group": "performance",
                  "help": "under torchrun: synchronise BatchNorm statistics across ranks"})

    def __post_init__(self):
        # Every field is checked when the config is built (Python, YAML, CLI, dataclasses.replace),
        # before any data is loaded or teacher trained: a bad value is one clear error up front.
        validate_config(self)

    # ---------------------------------------------------------------------------------------------
    def resolved_out_dir(self):
        return self.out_dir or os.path.join("runs", f"{self.method}-{self.dataset}-{self.student}")

    @property
    def out_dir_given(self):
        """True when the user chose `out_dir` (keyword, CLI, their YAML file, a TrainConfig they
        built); False for the default and a preset's folder, which a new run may move to the next
        free numbered folder (`runs/demo-2`) instead of refusing (`engine/rundir.py`)."""
        return getattr(self, "_out_dir_given", self.out_dir is not None)

    def with_default_out_dir(self, path):
        """This config writing to `path` as a default folder (not the user's choice): a run there
        that finds an earlier run moves to `path-2`, ... instead of refusing (see out_dir_given)."""
        config = self.replace(out_dir=path)
        object.__setattr__(config, "_out_dir_given", False)
        return config

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["test_attacks"] = list(self.test_attacks)
        return data

    def replace(self, **overrides):
        return build_config(base=self, overrides=overrides)

    @classmethod
    def from_preset(cls, name=DEFAULT_PRESET, **overrides):
        return build_config(preset=name, overrides=overrides)

    @classmethod
    def from_yaml(cls, path, **overrides):
        return build_config(config_file=path, overrides=overrides)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _yaml_presets():
    return sorted(n[:-5] for n in os.listdir(PRESET_DIR) if n.endswith(".yaml"))


def _generated_presets():
    """name -> (base preset, method) of every generated preset (see the module docstring)."""
    from .methods import list_methods

    yaml_names = set(_yaml_presets())
    generated = {}
    for base in sorted(yaml_names):
        if base.count("-") != 1 and base != DEFAULT_PRESET:  # a <dataset>-<student> base, or the demo
            continue
        base_method = load_preset(base).get("method", TrainConfig.method)
        for method in list_methods():
            name = f"{base}-{method}"
            if method != base_method and name not in yaml_names:
                generated[name] = (base, method)
    return generated


def list_presets():
    """Names of the presets shipped with the package (YAML files) and generated from them."""
    return sorted(set(_yaml_presets()) | set(_generated_presets()))


class _DuplicateKey(Exception):
    def __init__(self, key, first, second):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _yaml_load(stream):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (safe_load silently keeps
    the last one, so a YAML file's first `epochs:` would be ignored)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may override keys on purpose
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key: yaml's own error below names it
                        continue
                    if first != key_node.start_mark.line + 1:
                        raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
            return super().construct_mapping(node, deep=deep)

    return yaml.load(stream, Loader=UniqueKeyLoader)


def _read_yaml(path):
    import yaml

    if os.path.isdir(path):
        raise ValueError(f"config file {path!r} is a folder; give the path of a YAML file")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = _yaml_load(f)
    except _DuplicateKey as dup:
        raise ValueError(f"config file {path!r} sets {dup.key!r} twice (lines {dup.first} and {dup.second}); "
                         "keep one of them") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"config file {path!r} is not valid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path!r} could not be read ({type(exc).__name__}: {exc}); give a UTF-8 "
                         "YAML text file") from None
    if data is None:
        raise ValueError(f"config file {path!r} is empty (no keys); give at least one key, e.g. 'epochs: 30', "
                         "or leave the file out")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of keys to values, got {type(data).__name__}")
    _check_method_args_mapping(data.get("method_args", {}), f"config file {path!r}")
    return data


def _check_method_args_mapping(value, where):
    """method_args must be a mapping of option names to values (None: none given)."""
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{where}: method_args must be a mapping of the method's option names to values, e.g. "
                        f"{{T_push: 3}} (or give the options as top-level keys); got {value!r} "
                        f"({type(value).__name__})")


def _merge_layers(parent, child):
    """`child` over `parent` (raw config mappings); their method_args merge key by key."""
    merged = dict(parent)
    merged.update(child)
    if "method_args" in parent or "method_args" in child:
        merged["method_args"] = {**(parent.get("method_args") or {}), **(child.get("method_args") or {})}
    return merged


def _resolve_base(data, where, chain):
    """`data` with its ``base:`` preset (recursively) underneath it."""
    if "base" not in data:
        return data
    data = dict(data)
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{where}: base must be the name of a preset, got {base!r}")
    if base in chain:
        raise ValueError(f"{where}: presets inherit in a cycle: {' -> '.join(chain + (base,))}; remove one base:")
    return _merge_layers(load_preset(base, _chain=chain + (base,)), data)


def _teacher_unused(key, method_cls):
    """Config keys of a teacher `method_cls` does not need (dropped from its generated presets)."""
    return ((key.startswith("robust_teacher") and not method_cls.needs_robust_teacher)
            or (key.startswith("clean_teacher") and not method_cls.needs_clean_teacher))


# What a method's `demo-<method>` preset takes from its `preset_overrides`: its recipe (options, weight
# averaging), not its paper schedule (epochs, lr, batch, weight decay), which the demo shrinks for all.
DEMO_RECIPE_KEYS = ("method_args", "swa_start")


def _generate_preset(base, method, chain):
    from .methods import get_method

    cls = get_method(method)
    data = {k: v for k, v in load_preset(base, _chain=chain + (base,)).items()
            if k != "method_args" and not _teacher_unused(k, cls)}
    data["method"] = method
    if base == DEFAULT_PRESET:
        # demo-<method>: the demo's schedule with the method's recipe; an swa_start given as an epoch
        # of the paper's schedule becomes the same fraction of the demo's
        recipe = {k: v for k, v in cls.preset_overrides.items() if k in DEMO_RECIPE_KEYS}
        if isinstance(recipe.get("swa_start"), int) and not isinstance(recipe["swa_start"], bool):
            recipe["swa_start"] = recipe["swa_start"] / cls.paper_epochs
        data = _merge_layers(data, recipe)
    else:
        data["epochs"] = cls.paper_epochs
        data = _merge_layers(data, dict(cls.preset_overrides))
    return _merge_layers(data, dict(cls.preset_overrides_by_dataset.get(data.get("dataset"), {})))


def load_preset(name, _chain=None):
    """The raw mapping of preset `name` (its base presets resolved): config keys -> values."""
    chain = _chain if _chain is not None else (name,)
    path = os.path.join(PRESET_DIR, f"{name}.yaml")
    if os.path.isfile(path):
        return _resolve_base(_read_yaml(path), f"preset {name!r}", chain)
    generated = _generated_presets().get(name) if isinstance(name, str) else None
    if generated is None:
        import difflib

        close = difflib.get_close_matches(str(name), list_presets(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} Valid presets: {', '.join(list_presets())}")
    return _generate_preset(*generated, chain)


def _method_option_names(method):
    """(current option names, former ones): a config may give either; the former ones
    (`MethodOptions.renamed`) are translated when the config is validated."""
    from .methods import get_method

    options = get_method(method).Options
    return tuple(f.name for f in dataclasses.fields(options)), tuple(getattr(options, "renamed", {}))


def _current_option_names(method, method_args):
    """method_args under the method's current option names (`MethodOptions.renamed`)."""
    from .methods import get_method
    from .options import with_current_names

    return with_current_names(get_method(method).Options, method_args, method)


def _unknown_key_error(key, method, option_names):
    valid = FIELD_NAMES + option_names
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown config key {key!r}.{hint} Valid keys are the TrainConfig fields "
        f"({', '.join(FIELD_NAMES)}) and the options of method {method!r} ({', '.join(option_names) or 'none'})."
    )


def build_config(preset=None, config_file=None, overrides=None, base=None):
    """Merge defaults/base < preset < YAML file < overrides into a validated TrainConfig."""
    merged = base.to_dict() if base is not None else {}
    method_args = dict(merged.pop("method_args", {}) or {})
    layers = []
    if preset is not None:
        layers.append(load_preset(preset))
    if config_file is not None:
        layers.append(_resolve_base(_read_yaml(config_file), f"config file {config_file!r}", ()))
    layers.append(dict(overrides or {}))
    # Who chose out_dir: the user's own layers (YAML file, overrides) or a base config they gave.
    out_dir_given = base.out_dir_given if base is not None else False
    user_layers = layers[1:] if preset is not None else layers
    if any("out_dir" in layer and layer["out_dir"] is not None for layer in user_layers):
        out_dir_given = True
    for layer in layers:
        layer = dict(layer)
        _check_method_args_mapping(layer.get("method_args"), "config")
        method_args.update(layer.pop("method_args", None) or {})
        merged.update(layer)
    method = merged.get("method", TrainConfig.method)
    option_names, former_names = _method_option_names(method)
    fields = {}
    for key, value in merged.items():
        if key in FIELD_NAMES:
            fields[key] = value
        elif key in option_names or key in former_names:
            method_args[key] = value
        else:
            raise _unknown_key_error(key, method, option_names)
    for key in method_args:
        if key not in option_names and key not in former_names:
            raise _unknown_key_error(key, method, option_names)
    config = TrainConfig(**fields, method_args=method_args)  # checks every field and the method's options
    object.__setattr__(config, "_out_dir_given", out_dir_given and config.out_dir is not None)
    return config


def derive_config(parent, declared, **changes):
    """A config derived from `parent` with `dataclasses.replace`: every field not in `changes` is
    inherited, so a field added to TrainConfig later reaches derived runs (teachers, compare's
    methods, the natural student) by default. `declared`: the caller's named list of the fields
    it may change; a change outside it is a programming error (the lists are what tests audit).
    `method_args` is replaced as given, not merged. The result is validated (by TrainConfig's
    own __post_init__, which `dataclasses.replace` runs)."""
    stray = sorted(set(changes) - set(declared))
    if stray:
        raise ValueError(f"derive_config: {stray} are not in the declared list of changed fields {tuple(declared)}")
    return dataclasses.replace(parent, **changes)


_CHOICES = {
    "loader": ("device", "dali"),
    "precision": ("auto", "fp32", "bf16"),
    "optimizer": ("auto", "sgd", "fused", "apex"),
    "robust_teacher_method": ("trades", "sat", "natural"),
}
# (low, low_inclusive, high, high_inclusive) of numeric fields; None: unbounded.
_RANGES = {
    "val_size": (0, True, None, False), "crop_padding": (0, True, None, False),
    "teacher_epochs": (1, True, None, False), "teacher_lr": (0, False, None, False),
    "epochs": (1, True, None, False), "batch_size": (1, True, None, False), "lr": (0, False, None, False),
    "momentum": (0, True, 1, False), "weight_decay": (0, True, None, False),
    "eps": (0, True, 1, True), "alpha": (0, False, 1, True), "attack_steps": (1, True, None, False),
    "eval_every": (1, True, None, False), "eval_pgd_steps": (1, True, None, False), "eval_n": (1, True, None, False),
    "test_n": (1, True, None, False), "seed": (0, True, None, False), "stop_after": (1, True, None, False),
    "log_every": (1, True, None, False), "checkpoint_every_steps": (1, True, None, False),
    "split_seed": (0, True, None, False),
}
_HINTS = {
    "eps": " (images are in [0,1]; 8/255 is usual)", "alpha": " (measured on [0,1] pixels, e.g. 2/255)",
    "batch_size": " (the global batch)", "eval_every": " (epochs)", "log_every": " (steps)",
    "momentum": " (SGD momentum, e.g. 0.9)", "checkpoint_every_steps": " (steps; None: off)",
    "split_seed": " (None: use seed)",
}
_DEVICE_FORMS = "auto, cpu, cuda or cuda:N"


def _check_range(name, value, bounds):
    check_range(name, value, bounds, _HINTS.get(name, ""))


def validate_config(config):
    """Check every field of `config`: its type (no strings for numbers or booleans from Python),
    its range and, for names, that they are known. Raises TypeError/ValueError naming the field,
    the value and the fix. Called by TrainConfig itself when it is built."""
    hints = typing.get_type_hints(TrainConfig)
    if isinstance(config.test_attacks, list):  # YAML and to_dict() give lists
        object.__setattr__(config, "test_attacks", tuple(config.test_attacks))
    for name in FIELD_NAMES:
        _check_type(name, getattr(config, name), hints[name])
        value = getattr(config, name)
        if isinstance(value, float) and not math.isfinite(value):  # no float field means anything by inf/nan
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    for name, bounds in _RANGES.items():
        _check_range(name, getattr(config, name), bounds)
    for name, choices in _CHOICES.items():
        _check_choice(name, getattr(config, name), choices)

    from .attacks.columns import get_attack
    from .attacks.pgd import TRAINING_RANDOM_STARTS
    from .data.registry import list_datasets
    from .methods import list_methods, make_options
    from .models import list_models

    _check_choice("attack_random_start", config.attack_random_start, TRAINING_RANDOM_STARTS)
    _check_choice("method", config.method, list_methods())
    # an old config or checkpoint may name an option by its former name: the current one is kept
    object.__setattr__(config, "method_args", _current_option_names(config.method, config.method_args))
    # the method's own Options check every option (type, range, choices, rules between them) now,
    # before any data is loaded or teacher trained
    make_options(config.method, config.method_args)
    _check_choice("dataset", config.dataset, list_datasets())
    models = list_models()
    for name in ("student", "robust_teacher_model", "clean_teacher_model"):
        _check_choice(name, getattr(config, name), models)
    from .models.registry import check_model_kwargs

    for model_field, args_field in (("student", "student_args"), ("robust_teacher_model", "robust_teacher_args"),
                                    ("clean_teacher_model", "clean_teacher_args")):
        try:  # the model registry's own keyword check, up front and under the config's field names
            check_model_kwargs(getattr(config, model_field), getattr(config, args_field))
        except TypeError as exc:
            raise TypeError(f"{args_field}={getattr(config, args_field)!r} for {model_field}="
                            f"{getattr(config, model_field)!r}: {exc}") from None
    for attack in config.test_attacks:  # the registry of evaluation columns (attacks/columns.py)
        try:
            get_attack(attack)
        except ValueError as exc:
            raise ValueError(f"test_attacks: {exc}") from None
    if len(set(config.test_attacks)) != len(config.test_attacks):
        raise ValueError(f"test_attacks lists an attack twice: {list(config.test_attacks)}")
    from .engine.swa import check_swa_start

    check_swa_start(config.swa_start, config.epochs)
    device = config.device
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be {_DEVICE_FORMS}, got {device!r}")
    for name in ("robust_teacher", "clean_teacher", "resume", "out_dir", "data_root"):
        if getattr(config, name) == "":
            raise ValueError(f"{name} is an empty string; give a path or leave it unset (None)")
    if config.model_dir == "":
        raise ValueError("model_dir is an empty string; give the folder of RobustBench checkpoints (default: models)")
    _check_robustbench_teachers(config)
    _check_transfer_columns(config)
    from .models.normalization import AUTO, DATASET_STATS

    for name in ("student_normalize", "robust_teacher_normalize", "clean_teacher_normalize"):
        value = getattr(config, name)
        if value == "":
            raise ValueError(f"{name} is an empty string; give true, false or a dataset-statistics name")
        if isinstance(value, str):  # checked now, not when the model is built after the teachers trained
            allowed = ((AUTO,) if name != "student_normalize" else ()) + tuple(sorted(DATASET_STATS))
            if value not in allowed:
                close = difflib.get_close_matches(value, allowed, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{name} must be true, false or one of {', '.join(allowed)}; got {value!r}.{hint}")
    for name in ("wandb_project", "wandb_group"):  # names W&B accepts (it refuses these characters)
        value = getattr(config, name)
        if value is not None and (not value.strip() or any(c in value for c in "/\\#?%:")):
            raise ValueError(f"{name}={value!r}: give a non-empty name without any of / \\ # ? % :")


def _check_robustbench_teachers(config):
    """A teacher `robustbench:<name>` must name an entry of the run's dataset (the file itself is
    looked for when the teacher is resolved, so that a config can be built on another machine)."""
    from .models import robustbench

    for name in ("robust_teacher", "clean_teacher"):
        value = getattr(config, name)
        if robustbench.is_reference(value):
            try:
                robustbench.get_entry(robustbench.parse_reference(value), config.dataset)
            except ValueError as exc:
                raise ValueError(f"{name}={value!r}: {exc}") from None


def _check_transfer_columns(config):
    """Transfer columns in `test_attacks` are crafted on the run's robust teacher as loaded before
    distillation: the method must have one."""
    from .attacks.columns import get_attack
    from .methods import get_method

    transfer = [a for a in config.test_attacks if get_attack(a).needs_surrogate]
    if transfer and not get_method(config.method).needs_robust_teacher:
        raise ValueError(f"test_attacks: the transfer column(s) {', '.join(transfer)} are crafted on the run's robust "
                         f"teacher, but method {config.method!r} has none; drop them from test_attacks and evaluate "
                         f"the checkpoint with: ciard-fast eval --weights <checkpoint> --surrogate PATH|robustbench:NAME")


# ---- parsing "--key value" strings from the command line ---------------------------------------
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null"}


def _parse_float(text):
    """'0.1', '3', '1e-4', '8/255' -> a finite float; ValueError naming what was expected."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            if float(den) == 0:
                raise ValueError(f"{text!r} divides by zero")
            value = float(num) / float(den)
        else:
            value = float(text)
    except ValueError as exc:
        if "divides by zero" in str(exc):
            raise
        raise ValueError(f"expected a number (e.g. 0.1, 1e-4 or 8/255), got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _parse_int(text):
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _guess(text):
    """A method option given on the command line without a known type: bool, None, int, float, else str."""
    lowered = text.lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    if lowered in _NONE:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return _parse_float(text)
    except ValueError:
        return text


def parse_value(text, annotation):
    """Convert a command-line string to the type of a TrainConfig field (or a guess for options).

    Booleans: true/false, yes/no, on/off, 1/0. Optional fields: none/null. Floats: finite numbers
    or fractions (8/255). Lists: comma-separated ('none': an empty list). Mappings: YAML flow style
    ('{width: 16}'). Raises ValueError saying which type was expected (the caller adds the option).
    """
    if not isinstance(text, str):
        return text
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if text.lower() in _NONE or text == "":
            return None
        rest = tuple(a for a in args if a is not type(None))  # Optional[Union[int, float]]: both stay possible
        return parse_value(text, rest[0] if len(rest) == 1 else typing.Union[rest])
    if origin is typing.Union:  # e.g. Union[bool, str]: a boolean word is a bool, else the text
        if bool in args and text.lower() in _TRUE | _FALSE | _NONE:
            return text.lower() in _TRUE  # none: off (as `ciard-fast eval --normalize none`)
        if str in args:
            return text
        for arg in args:  # e.g. Union[int, float]: '95' is an int, '215/300' a float
            try:
                return parse_value(text, arg)
            except ValueError:
                pass
        raise ValueError(f"expected {type_name(annotation)}, got {text!r}")
    if annotation is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected true or false, got {text!r}")
    if annotation is int:
        return _parse_int(text)
    if annotation is float:
        return _parse_float(text)
    if annotation is str:
        return text
    if annotation is dict:
        data = _yaml_mapping(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping such as '{{width: 16}}', got {text!r}")
        return data
    if origin in (tuple, list) or annotation in (tuple, list):
        # Tuple[int, ...] -> each element as int ("215,260,285" -> (215, 260, 285))
        element = args[0] if args and args[0] is not Ellipsis else str
        if text.strip().lower() in _NONE:
            return ()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"expected a comma-separated list, got {text!r} (which lists nothing); "
                             "write none for an empty list")
        return tuple(parse_value(p, element) for p in parts)
    return _guess(text)  # unknown annotation (method options given on the CLI)


def _yaml_mapping(text):
    import yaml

    try:
        return _yaml_load(text)
    except _DuplicateKey as dup:
        raise ValueError(f"{text!r} sets {dup.key!r} twice") from None
    except yaml.YAMLError:
        raise ValueError(f"expected a mapping such as '{{width: 16}}', got {text!r}") from None


def field_types(method=None):
    """name -> annotation for TrainConfig fields and (if given) the method's options."""
    hints = typing.get_type_hints(TrainConfig)
    types = {name: hints[name] for name in FIELD_NAMES}
    if method is not None:
        from .methods import get_method

        options = get_method(method).Options
        types.update({k: v for k, v in typing.get_type_hints(options).items() if k not in types})
    return types


# ---- the fields described: `train/teacher/compare --help` and docs/config.md -----------------------
# Every TrainConfig field declares {"group": one of these, "help": one line} in its metadata.
FIELD_GROUPS = ("data", "models", "teachers", "method", "attack", "evaluation", "run", "performance")
GROUP_TITLES = {
    "data": "data: what is trained on", "models": "models: the student",
    "teachers": "teachers: the robust and clean teachers, given or trained first",
    "method": "method: the training method and its optimiser", "attack": "attack: the training attack",
    "evaluation": "evaluation: validation during training and the final test table",
    "run": "run: folders, seeds, devices, resuming, logging",
    "performance": "performance: speed switches (harmless on a CPU)",
}


def _type_text(annotation):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return " | ".join(_type_text(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_type_text(args[0])}" if args else "list"
    return {type(None): "none", bool: "true|false", int: "int", float: "float", str: "str",
            dict: "mapping"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(value):
    """A default as it is written on the command line: none, true/false, 8/255, a,b,c, {}."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        k = value * 255
        if value < 1 and abs(k - round(k)) < 1e-9 and round(k) > 0:
            return f"{round(k)}/255"
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return "{}" if not value else "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def field_docs():
    """[(group, name, type, default, meaning)] of every TrainConfig field, grouped in
    FIELD_GROUPS order (declaration order within a group); the text of `--help` and docs/config.md.
    A field without a description or with an unknown group shows "(no description)" / "other"
    here, and tests/test_config_docs.py fails on it."""
    hints = typing.get_type_hints(TrainConfig)
    rows = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        group = f.metadata.get("group") if f.metadata.get("group") in FIELD_GROUPS else "other"
        rows.append((group, f.name, _type_text(hints[f.name]), _default_text(default),
                     f.metadata.get("help") or "(no description)"))
    order = {g: i for i, g in enumerate(FIELD_GROUPS + ("other",))}
    return sorted(rows, key=lambda r: order[r[0]])  # stable: declaration order within a group


def config_help(width=100):
    """Every config field as `--help` text: one block per group, each field with its type,
    default and meaning (the command line's spelling: underscores; dashes are accepted too)."""
    import textwrap

    lines = ["config fields (any of them as --name value; dashes or underscores; booleans as --name true|false or "
             "a bare --name; lists comma-separated; none for an unset value):"]
    current = None
    for group, name, kind, default, meaning in field_docs():
        if group != current:
            lines += ["", f"  {GROUP_TITLES.get(group, group)}"]
            current = group
        lines.append(f"    --{name} {kind} (default {default})")
        lines += textwrap.wrap(meaning, width=width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    lines += ["", "A method's own options (e.g. --T_push 3 for ciard) are given the same way; "
              "docs/config.md lists every field."]
    return "\n".join(lines)


def config_markdown():
    """docs/config.md: every TrainConfig field, grouped, with type, default and meaning. Generated
    (`python -m ciard_fast.config --markdown > docs/config.md`); a test checks it is up to date."""
    lines = [
        "# Configuration",
        "",
        "<!-- generated by `python -m ciard_fast.config --markdown > docs/config.md`; do not edit by hand -->",
        "",
        "Every run is described by one `ciard_fast.TrainConfig`. Its fields are set, from lowest to",
        "highest precedence, by the dataclass defaults, a preset (`--preset`, `ciard_fast/presets/`),",
        "a YAML file (`--config file.yaml`) and keyword arguments or command-line options.",
        "Every value is checked when the config is built, before any data is read or any model trained.",
        "",
        "On the command line (`ciard-fast train`, `teacher`, `compare`) any field is `--name value`:",
        "",
        "- names are written with underscores (`--batch_size 64`); the dashed spelling (`--batch-size`) is",
        "  accepted as well;",
        "- booleans are `--name true|false` (also yes/no, on/off, 1/0); a bare `--name` means true;",
        "- numbers may be fractions (`--eps 8/255`); every float must be finite;",
        "- lists are comma-separated (`--test_attacks clean,pgd_sat`), `none` is the empty list;",
        "- optional values take `none` (`--val_size none`); mappings are YAML (`--student_args '{width: 16}'`",
        "  or `--student_args.width 16`);",
        "- a method's own options are given the same way (`--T_push 3`) or as `method_args` in YAML.",
        "",
        "In a YAML file the same names are keys (`batch_size: 64`); a key given twice is an error.",
        "",
    ]
    current = None
    for group, name, kind, default, meaning in field_docs():
        if group != current:
            if current is not None:
                lines.append("")
            lines += [f"## {GROUP_TITLES.get(group, group)}", "", "| field | type | default | meaning |",
                      "| --- | --- | --- | --- |"]
            current = group
        cells = [f"`{name}`", kind.replace("|", "\\|"), f"`{default}`",
                 meaning.replace("|", "\\|").replace("<", "\\<")]  # <out_dir> is not an HTML tag
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m ciard_fast.config --markdown  (or --help-text)
    import sys

    from ciard_fast import config as _config  # the package's module, not this __main__ copy

    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(_config.config_markdown())
    elif sys.argv[1:] == ["--help-text"]:
        print(_config.config_help())
    else:
        sys.exit("usage: python -m ciard_fast.config --markdown | --help-text")
