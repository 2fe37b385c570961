"""Training configuration: one dataclass, presets shipped as YAML package data.

Precedence (lowest to highest): dataclass defaults < preset < YAML file < keyword/CLI overrides.
Keys that are not TrainConfig fields but are options of the chosen method (e.g. `T_push`,
`weighting`, `itt` for CIARD) go to `method_args`. Unknown keys raise a ValueError naming the key,
the closest valid ones, and where the valid ones are listed.
"""
import dataclasses
import difflib
import os
import typing
from typing import Optional, Tuple, Union

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
    robust_teacher_normalize: Union[bool, str] = False  # the public TRADES WRN-34-10 takes raw [0,1] pixels
    robust_teacher_method: str = "trades"
    clean_teacher: Optional[str] = None    # checkpoint path; None: trained first (natural)
    clean_teacher_model: str = "resnet56"
    clean_teacher_args: dict = dataclasses.field(default_factory=dict)
    clean_teacher_normalize: Union[bool, str] = True  # False: the reference code's raw-pixel ResNet-56;
    #                                      "cifar10_legacy": the statistics the public hub ResNet-56 was trained with
    teacher_epochs: int = 100              # when a teacher has to be trained first
    teacher_lr: float = 0.1
    # -- optimisation ---------------------------------------------------------------------------
    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
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

    # ---------------------------------------------------------------------------------------------
    def resolved_out_dir(self):
        return self.out_dir or os.path.join("runs", f"{self.method}-{self.dataset}-{self.student}")

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


def list_presets():
    """Names of the presets shipped with the package."""
    return sorted(n[:-5] for n in os.listdir(PRESET_DIR) if n.endswith(".yaml"))


def _read_yaml(path):
    import yaml

    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def load_preset(name):
    path = os.path.join(PRESET_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(list_presets())}")
    return _read_yaml(path)


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
        layers.append(_read_yaml(config_file))
    layers.append(dict(overrides or {}))
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
    config = TrainConfig(**fields, method_args=method_args)
    validate_config(config)
    return config


def validate_config(config):
    """Range checks with the offending value and the fix."""
    def need(condition, message):
        if not condition:
            raise ValueError(message)

    need(isinstance(config.epochs, int) and config.epochs >= 1, f"epochs must be an integer >= 1, got {config.epochs!r}")
    need(isinstance(config.batch_size, int) and config.batch_size >= 1,
         f"batch_size must be an integer >= 1, got {config.batch_size!r}")
    need(config.lr > 0, f"lr must be > 0, got {config.lr!r}")
    need(0 <= config.eps <= 1, f"eps must be in [0, 1] (images are in [0,1]; 8/255 is usual), got {config.eps!r}")
    need(config.alpha > 0, f"alpha must be > 0, got {config.alpha!r}")
    need(isinstance(config.attack_steps, int) and config.attack_steps >= 1,
         f"attack_steps must be an integer >= 1, got {config.attack_steps!r}")
    need(config.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, got {config.precision!r}")
    need(config.loader in ("device", "dali"), f"loader must be 'device' or 'dali', got {config.loader!r}")
    need(config.optimizer in ("auto", "sgd", "fused", "apex"),
         f"optimizer must be auto, sgd, fused or apex, got {config.optimizer!r}")
    need(config.attack_random_start in ("default", "uniform", "normal", "none"),
         f"attack_random_start must be default, uniform, normal or none, got {config.attack_random_start!r}")
    need(isinstance(config.crop_padding, int) and config.crop_padding >= 0,
         f"crop_padding must be an integer >= 0, got {config.crop_padding!r}")
    need(isinstance(config.eval_every, int) and config.eval_every >= 1,
         f"eval_every must be an integer >= 1 (epochs), got {config.eval_every!r}")
    need(isinstance(config.log_every, int) and config.log_every >= 1,
         f"log_every must be an integer >= 1 (steps), got {config.log_every!r}")
    need(config.split_seed is None or (isinstance(config.split_seed, int) and not isinstance(config.split_seed, bool)
                                       and config.split_seed >= 0),
         f"split_seed must be None (use seed) or an integer >= 0, got {config.split_seed!r}")


# ---- parsing "--key value" strings from the command line ---------------------------------------
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_number(text):
    """'0.1', '3', '8/255' -> float/int."""
    if "/" in text:
        num, den = text.split("/", 1)
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
        return parse_value(text, next(a for a in args if a is not type(None)))
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
