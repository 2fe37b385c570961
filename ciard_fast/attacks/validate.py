"""Input validation shared by every public attack.

Each public attack validates its arguments once per call, before any forward pass, so that a bad
input fails with a message naming the offending value and the fix instead of a silent wrong answer
(images in [0, 255], an off-by-one label) or an opaque error deep inside the model.

The range checks read tensor values on the host (one ``aminmax`` sync per tensor per call). That
is fine for evaluation; the training engine, which builds its own inputs, passes ``validate=False``
to :func:`ciard_fast.attacks.pgd` to keep a training step free of host syncs.
"""
import math
import numbers
import operator

import torch

__all__ = [
    "check_images",
    "check_labels",
    "check_labels_in_range",
    "check_radius",
    "check_step_size",
    "check_steps",
    "check_choice",
    "check_model",
    "check_model_dtype",
    "check_target_logits",
    "check_kappa",
    "check_model_matches",
    "check_finite_logits",
]


def describe_value(value):
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    return repr(value)


def check_model(model):
    """The model must be callable (an ``nn.Module`` or any function images -> logits)."""
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module mapping [B, C, H, W] images to [B, K] logits), "
                        f"got {type(model).__name__}")


def _autocast_on(device_type):
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def check_model_dtype(model, x, name="x"):
    """An ``nn.Module``'s floating parameters and the images must share one dtype.

    A float64 model fed float32 images (or the reverse) fails deep inside the first layer with a
    message about "bias type"; this names both dtypes and the fix instead. Skipped under autocast
    (which casts both sides itself) and for plain functions (no parameters to compare).
    """
    if not isinstance(model, torch.nn.Module) or not isinstance(x, torch.Tensor):
        return
    if _autocast_on(x.device.type):
        return
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and dtype != x.dtype:
        raise TypeError(f"the model's parameters are {dtype} but the images {name} are {x.dtype}; convert one "
                        f"to the other ({name}.to({dtype}) or model.to({x.dtype}))")


def check_model_matches(model, x, name="x"):
    """An nn.Module's parameters must be real (not meta) and on x's device with x's dtype
    (`check_model_dtype`: under autocast the dtypes may differ, the autocast context casts the inputs)."""
    if isinstance(x, torch.Tensor) and x.is_meta:
        raise ValueError(f"{name} is a meta tensor (shape only, no data); pass real images")
    if not isinstance(model, torch.nn.Module) or not isinstance(x, torch.Tensor):
        return
    param = next(iter(model.parameters()), None)
    if param is None:
        return
    if param.is_meta:
        raise ValueError("the model's parameters are meta tensors (no data): load its weights "
                         "(e.g. model.to_empty(device=...) then load_state_dict, or load_weights)")
    if param.device != x.device:
        raise ValueError(f"the model is on {param.device} but {name} is on {x.device}; move one of them, "
                         f"e.g. {name} = {name}.to({str(param.device)!r})")
    check_model_dtype(model, x, name)


def check_logits(logits, batch_size, name="model"):
    """The forward's contract: one logits tensor [B, K] (K >= 1) for a batch of B images. A model
    returning a tuple, a dict or features would otherwise fail deep inside an attack, or be scored
    on the wrong tensor. A type and a shape, not a value: no host sync."""
    if not isinstance(logits, torch.Tensor):
        what = (f"a {type(logits).__name__} of {len(logits)}" if isinstance(logits, (tuple, list, dict))
                else f"a {type(logits).__name__}")
        raise TypeError(f"the {name}'s forward returned {what}, but every attack and evaluate need it to return "
                        "one tensor of logits [batch, classes] for images [batch, C, H, W] in [0, 1]; wrap the "
                        "model so that it returns the logits alone (e.g. a module whose forward returns "
                        "model(x)[0])")
    if logits.dim() != 2 or logits.shape[0] != batch_size or logits.shape[1] < 1:
        raise ValueError(f"the {name}'s forward returned a tensor of shape {tuple(logits.shape)} for a batch of "
                         f"{batch_size} images; it must return logits [batch, classes], e.g. [{batch_size}, 10]")


def check_finite_logits(logits, name="model"):
    """The first forward's logits must be finite (one host sync): NaN weights would make every
    step's gradient NaN and the attack a silent no-op."""
    if not bool(torch.isfinite(logits.detach()).all().item()):
        raise ValueError(f"the {name} returned non-finite logits (NaN or inf) for the clean start; its weights "
                         "or inputs hold NaN/inf (a diverged run?), so no attack result would mean anything")


def check_images(x, name="x"):
    """Images: a floating tensor of shape [B, C, H, W] with finite values in [0, 1].

    Raises TypeError for a non-tensor, ValueError for a wrong rank, a non-floating dtype, values
    outside [0, 1] (reporting min and max) or non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images [B, C, H, W] in [0, 1], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D NCHW [B, C, H, W], got shape {tuple(x.shape)}; "
                         f"add a batch dimension with {name}.unsqueeze(0) or a channel dimension with "
                         f"{name}.unsqueeze(1)")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype}; "
                         f"for uint8 images use {name}.float() / 255")
    if x.numel() == 0:
        return
    lo, hi = (v.item() for v in torch.aminmax(x.detach()))
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        raise ValueError(f"{name} contains non-finite values (min {lo}, max {hi})")
    if lo < 0.0 or hi > 1.0:
        hint = " (looks like [0, 255]: divide by 255)" if hi > 1.0 and hi <= 255.0 and lo >= 0.0 else \
            " (looks normalised: pass raw [0, 1] images; normalisation belongs inside the model)" if lo < 0.0 else ""
        raise ValueError(f"{name} must have values in [0, 1], got min {lo:.6g} and max {hi:.6g}{hint}")


def check_labels(y, batch_size, name="y"):
    """Labels: an int64 tensor of shape [B], non-negative, B equal to the image batch size.

    The upper bound needs the number of classes; see :func:`check_labels_in_range`.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 class indices [B], got {type(y).__name__}")
    if y.dtype != torch.long:
        raise ValueError(f"{name} must have dtype torch.int64 (class indices), got {y.dtype}; use {name}.long()"
                         + ("" if not y.is_floating_point() else " (one-hot or soft labels are not accepted: "
                            "use argmax)"))
    if y.dim() != 1 or y.shape[0] != batch_size:
        raise ValueError(f"{name} must have shape [B] = [{batch_size}] to match the images, got shape "
                         f"{tuple(y.shape)}")
    if y.numel() and y.min().item() < 0:
        raise ValueError(f"{name} must hold class indices >= 0, got min {y.min().item()}")


def check_labels_in_range(y, num_classes, name="y"):
    """Every label must be < num_classes (the model's output width)."""
    if y.numel() == 0:
        return
    top = y.max().item()
    if top >= num_classes:
        raise ValueError(f"{name} holds class index {top} but the model outputs {num_classes} classes "
                         f"(labels must be in [0, {num_classes - 1}]); check num_classes of the model")


def check_radius(eps, batch_size, name="eps"):
    """A perturbation radius: a number in [0, 1] or a tensor of shape [] or [B] with values in [0, 1].

    Returns the value unchanged (tensors are validated, not converted).
    """
    _check_number_or_tensor(eps, batch_size, name, low=0.0, low_inclusive=True, high=1.0,
                            fix="ε is measured on [0, 1] pixels: 8/255 ≈ 0.0314, not 8")
    return eps


def check_step_size(alpha, batch_size, name="alpha"):
    """A step size: a number > 0 or a tensor of shape [] or [B] with values > 0."""
    _check_number_or_tensor(alpha, batch_size, name, low=0.0, low_inclusive=False, high=None,
                            fix="the step is measured on [0, 1] pixels, e.g. 2/255")
    return alpha


def _check_number_or_tensor(value, batch_size, name, low, low_inclusive, high, fix):
    bound = f"{'[' if low_inclusive else '('}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise ValueError(f"{name} as a tensor must be floating, got dtype {value.dtype}")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch_size):
            raise ValueError(f"{name} as a tensor must be a scalar or per-sample of shape [B] = [{batch_size}], "
                             f"got shape {tuple(value.shape)}")
        if value.numel() == 0:
            return
        lo, hi = (v.item() for v in torch.aminmax(value.detach()))
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        raise TypeError(f"{name} must be a number or a floating tensor, got {describe_value(value)}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value if lo == hi else (lo, hi)}")
    if lo < low or (lo == low and not low_inclusive) or (high is not None and hi > high):
        shown = f"{lo:g}" if lo == hi else f"values in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be in {bound}, got {shown}; {fix}")


def check_steps(steps, name="steps"):
    """A step count: an integer >= 1 (bools rejected). Returns it as a Python int."""
    if isinstance(steps, bool):
        raise TypeError(f"{name} must be an integer >= 1, got {steps!r}")
    try:
        value = operator.index(steps)
    except TypeError:
        raise TypeError(f"{name} must be an integer >= 1, got {steps!r} ({type(steps).__name__})") from None
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return value


def check_kappa(kappa, name="kappa"):
    """The CW confidence κ: a finite number >= 0."""
    if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {kappa!r}")
    if not math.isfinite(kappa) or kappa < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {kappa!r}")
    return float(kappa)


def check_choice(value, name, choices):
    """`value` must be one of `choices` (which may include None); the message lists them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {name} {value!r}; choose one of {listed}")
    return value


def check_target_logits(target_logits, batch_size, name="target_logits"):
    """Target logits for the KL loss: a floating tensor [B, K] with K >= 2."""
    if target_logits is None:
        raise ValueError(f"loss='kl' needs {name}: the [B, K] logits whose softmax the attack moves away from "
                         f"(e.g. the clean logits model(x).detach() for TRADES, or a teacher's for RSLAD)")
    if not isinstance(target_logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, K], got {type(target_logits).__name__}")
    if not target_logits.is_floating_point():
        raise ValueError(f"{name} must be floating, got dtype {target_logits.dtype}")
    if target_logits.dim() != 2 or target_logits.shape[0] != batch_size:
        raise ValueError(f"{name} must have shape [B, K] with B = {batch_size}, got {tuple(target_logits.shape)}")
