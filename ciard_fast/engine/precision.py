"""Numerics of a run: device choice, autocast, memory format. All harmless on CPU."""
import contextlib
import warnings

import torch


def resolve_device(name="auto"):
    """'auto' -> cuda when available, else cpu; anything else is checked and returned."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"device {name!r} was asked for but CUDA is not available (torch {torch.__version__}, "
                         f"{build}, sees no CUDA device); use device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for but only {torch.cuda.device_count()} CUDA device(s) are "
                         f"visible (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    return device


def resolve_precision(precision, device):
    """'auto' -> bf16 on CUDA, fp32 elsewhere (bf16 matmuls on a 2-core CPU are slower, not faster)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(precision, device):
    """Context for the forward passes. Losses compute their softmax/KL in fp32 themselves.

    The weight-cast cache is off: a CUDA graph captured inside the block (the PGD loop) would
    otherwise read cached bf16 copies of the weights that go stale after the optimiser step.
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def use_channels_last(flag, device):
    return (device.type == "cuda") if flag is None else bool(flag)


class PrecisionFallbackWarning(RuntimeWarning):
    """bf16 autocast produced non-finite logits where fp32 did not; the run continues in fp32."""


class RunPrecision:
    """The run's autocast as a context factory (``with run_precision(): ...``), with a one-time
    check that bf16 works for these models.

    ``check_first_batch(models, x)`` (the trainer calls it on its first batch; a no-op after the
    first call): under bf16, each model's logits on `x` under autocast must be finite; where they
    are not and fp32 logits are, a :class:`PrecisionFallbackWarning` names the model and the run
    switches to fp32 for good (training and validation). Costs one no-grad forward per model,
    once per process, with the models' buffers (BN statistics) restored afterwards; fp32 runs
    skip it.
    """

    def __init__(self, precision, device):
        self.precision = precision
        self.device = torch.device(device)
        self.checked = precision != "bf16"
        self.fallback_reason = None

    def __call__(self):
        return autocast(self.precision, self.device)

    def check_first_batch(self, models, x):
        if self.checked:
            return self.precision
        self.checked = True
        for index, model in enumerate(models):
            bad = _non_finite_logits(model, x, self)
            if bad and not _non_finite_logits(model, x, contextlib.nullcontext):
                name = type(getattr(model, "module", model)).__name__
                self.fallback_reason = (f"bf16 autocast gave non-finite logits for model {index} ({name}) on the "
                                        f"first batch while fp32 did not")
                warnings.warn(f"{self.fallback_reason}; continuing this run in fp32 (precision='fp32')",
                              PrecisionFallbackWarning, stacklevel=2)
                self.precision = "fp32"
                break
        return self.precision


def _non_finite_logits(model, x, context):
    """True if `model(x)` under `context()` has a non-finite value; buffers restored after."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad(), context():
            logits = model(x)
        return not bool(torch.isfinite(logits.float()).all())  # one host sync, once per run
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
