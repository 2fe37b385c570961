"""Training configuration: one dataclass, presets shipped as YAML package data or generated.

Precedence (lowest to highest): dataclass defaults < preset < YAML file < keyword/CLI overrides.

Presets hold only what differs from their base. A YAML preset (or config file) may start with
``base: <preset>`` and list only its differences (``method_args`` merge key by key). Every
``<dataset>-<student>`` YAML preset also generates ``<dataset>-<student>-<method>`` for every
registered method other than its own: the base, minus the settings of teachers the method does
not use, with ``method``, ``epochs = Method.paper_epochs`` and the method's
``preset_overrides`` (and ``preset_overrides_by_dataset[dataset]``). A YAML file of that name, if
shipped, wins. So a method with the base schedule needs no YAML at all.
Keys that are not TrainConfig fields but are options of the chosen method (e.g. `T_push`,
`weighting`, `itt` for CIARD) go to `method_args`. Unknown keys raise a ValueError naming the key,
the closest valid ones, and where the valid ones are listed.
"""
import dataclasses
import difflib
import os
import re
import typing
from typing import Optional, Tuple, Union

from .options import check_choice as _check_choice, check_range, check_type as _check_type

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
DEFAULT_PRESET = "demo"


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the paper's CIFAR-10 ResNet-18 CIARD settings;
    the `demo` preset (what `ciard-fast train` runs) shrinks them to minutes on a CPU."""

    # -- method ---------------------------------------------------------------------------------
    method: str = "ciard"                  # any name in ciard_fast.methods.list_methods()
    method_args: dict = dataclasses.field(default_factory=dict)  # the method's own Options
    # -- data -----------------------------------------------------------------------------------
    dataset: str = "cifar10"               # cifar10 | cifar100 | tinyimagenet | digits | synthetic
    dataset_args: dict = dataclasses.field(default_factory=dict)  # e.g. synthetic: num_samples, image_size
    data_root: Optional[str] = None        # default $CIARD_FAST_DATA or ~/.cache/ciard_fast/data
    val_size: Optional[int] = None         # held-out validation images carved from train (None: dataset default)
    loader: str = "device"                 # device (whole uint8 set on the device) | dali
    crop_padding: int = 4                  # random crop with this zero padding (0: no crop)
    flip: bool = True                      # random horizontal flip (off for digits: a flipped 2 is no 2)
    # -- models ---------------------------------------------------------------------------------
    student: str = "resnet18"
    student_args: dict = dataclasses.field(default_factory=dict)  # model kwargs, e.g. {width: 16}
    student_normalize: Union[bool, str] = True  # dataset mean/std inside the model; or a DATASET_STATS name
    robust_teacher: Optional[str] = None   # checkpoint path; None: trained first (robust_teacher_method)
    robust_teacher_model: str = "wrn34_10"
    robust_teacher_args: dict = dataclasses.field(default_factory=dict)
    robust_teacher_normalize: Union[bool, str] = "auto"  # auto: a file's best on the validation split
    #                                      (raw, dataset, published stats); trained here: raw [0,1] pixels
    robust_teacher_method: str = "trades"
    clean_teacher: Optional[str] = None    # checkpoint path; None: trained first (natural)
    clean_teacher_model: str = "resnet56"
    clean_teacher_args: dict = dataclasses.field(default_factory=dict)
    clean_teacher_normalize: Union[bool, str] = "auto"  # auto as above (trained here: dataset stats);
    #                                      False: the reference code's raw-pixel ResNet-56;
    #                                      "cifar10_legacy": the statistics the public hub ResNet-56 was trained with
    allow_weak_teacher: bool = False       # True: distil from a teacher under 1.5x chance on validation
    teacher_epochs: int = 100              # when a teacher has to be trained first
    teacher_lr: float = 0.1
    # -- optimisation ---------------------------------------------------------------------------
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    swa_start: Optional[Union[int, float]] = dataclasses.field(default=None, metadata={
        "group": "method", "help": "stochastic weight averaging of the student from this epoch (an integer) or this "
        "fraction of epochs (in (0, 1)); the averaged model is what is validated, reported and exported. None: off"})
    # -- the training attack (PGD on the student) -----------------------------------------------
    eps: float = 8 / 255
    alpha: float = 2 / 255
    attack_steps: int = 10
    attack_random_start: str = "default"   # default (the method's own) | uniform | normal | none
    # -- evaluation -----------------------------------------------------------------------------
    eval_every: int = 1                    # epochs between validation evaluations (clean + PGD-20)
    eval_pgd_steps: int = 20
    eval_n: Optional[int] = None           # validation images used per evaluation (None: all)
    test_attacks: Tuple[str, ...] = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw")  # final test table
    test_n: Optional[int] = None           # test images for the final table (None: all)
    compare_natural_student: bool = False  # also train a natural student and put it in the table
    # -- run ------------------------------------------------------------------------------------
    out_dir: Optional[str] = None          # default runs/<method>-<dataset>-<student>
    seed: int = 0                          # student init, data order, attack noise, the validation split
    split_seed: Optional[int] = None       # seed of the validation split only (None: `seed`); `compare --seeds`
    #                                      holds it fixed so every seed trains on the same images
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    resume: Optional[str] = None           # checkpoint to continue from (exactly)
    stop_after: Optional[int] = None       # stop after this epoch (schedules still span `epochs`); resume later
    progress: bool = True
    log_every: int = 10                    # steps between progress/log updates (each is one host sync)
    plot: bool = True                      # curves.png in the run folder at the end
    tensorboard: bool = False              # also write every logged scalar to <out_dir>/tensorboard (extra [tensorboard])
    # -- performance (all harmless on CPU) ------------------------------------------------------
    precision: str = "auto"                # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: Optional[bool] = None   # None: on for CUDA
    cuda_graphs: Optional[bool] = None     # None: on for CUDA
    compile: bool = False                  # torch.compile the models (in place: checkpoint keys unchanged)
    optimizer: str = "auto"                # auto (fused SGD on CUDA) | sgd | fused | apex (if importable)
    sync_batchnorm: bool = False           # DDP: synchronise BN statistics across ranks
    # -- reliability ----------------------------------------------------------------------------
    overwrite: bool = False                # reuse a non-empty out_dir the user named (its run files are replaced)
    checkpoint_every_steps: Optional[int] = None  # also write a resumable mid-epoch last.pt every N steps

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
        if base.count("-") != 1:  # a <dataset>-<student> base, not demo or a method's own YAML
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


def _read_yaml(path):
    import yaml

    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"config file {path!r} is not valid YAML{at}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {path!r} could not be read: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


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


def _generate_preset(base, method, chain):
    from .methods import get_method

    cls = get_method(method)
    data = {k: v for k, v in load_preset(base, _chain=chain + (base,)).items()
            if k != "method_args" and not _teacher_unused(k, cls)}
    data.update(method=method, epochs=cls.paper_epochs)
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
    from .methods import get_method

    return tuple(f.name for f in dataclasses.fields(get_method(method).Options))


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
        method_args.update(layer.pop("method_args", None) or {})
        merged.update(layer)
    method = merged.get("method", TrainConfig.method)
    option_names = _method_option_names(method)
    fields = {}
    for key, value in merged.items():
        if key in FIELD_NAMES:
            fields[key] = value
        elif key in option_names:
            method_args[key] = value
        else:
            raise _unknown_key_error(key, method, option_names)
    for key in method_args:
        if key not in option_names:
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
    for name in ("student_normalize", "robust_teacher_normalize", "clean_teacher_normalize"):
        if getattr(config, name) == "":
            raise ValueError(f"{name} is an empty string; give true, false or a dataset-statistics name")


# ---- parsing "--key value" strings from the command line ---------------------------------------
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_number(text):
    """'0.1', '3', '8/255' -> float/int."""
    if "/" in text:
        num, den = text.split("/", 1)
        if float(den) == 0:
            raise ValueError(f"{text!r} divides by zero")
        return float(num) / float(den)
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_value(text, annotation):
    """Convert a command-line string to the type of a TrainConfig field (or a guess for options)."""
    if not isinstance(text, str):
        return text
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if text.lower() in ("none", "null", ""):
            return None
        rest = tuple(a for a in args if a is not type(None))  # Optional[Union[int, float]]: both stay possible
        return parse_value(text, rest[0] if len(rest) == 1 else typing.Union[rest])
    if annotation is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected true/false, got {text!r}")
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(_parse_number(text))
    if annotation is str:
        return text
    if annotation is dict:
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping such as '{{width: 16}}', got {text!r}")
        return data
    if origin in (tuple, list) or annotation in (tuple, list):
        # Tuple[int, ...] -> each element as int ("215,260,285" -> (215, 260, 285))
        element = args[0] if args and args[0] is not Ellipsis else str
        return tuple(parse_value(p.strip(), element) for p in text.split(",") if p.strip())
    # Unknown annotation (method options given on the CLI): best guess.
    lowered = text.lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    if lowered in ("none", "null"):
        return None
    try:
        return _parse_number(text)
    except ValueError:
        return text


def field_types(method=None):
    """name -> annotation for TrainConfig fields and (if given) the method's options."""
    hints = typing.get_type_hints(TrainConfig)
    types = {name: hints[name] for name in FIELD_NAMES}
    if method is not None:
        from .methods import get_method

        options = get_method(method).Options
        types.update({k: v for k, v in typing.get_type_hints(options).items() if k not in types})
    return types
