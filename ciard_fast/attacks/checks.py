"""Sanity checks of an evaluation (docs/evaluation.md, "Rules"; Carlini et al. 2019, "On Evaluating
Adversarial Robustness", arXiv 1902.06705; AutoAttack's ``checks.py``).

Two kinds of finding:
- a broken *attack output* (x_adv outside the ε-ball or [0, 1], or not finite) is a bug that would
  make every number wrong: :func:`assert_valid_adversarial` always raises
  :class:`AdversarialCheckError` (an ``AssertionError``), whatever the strictness;
- a suspicious *model or result* (train mode, probability outputs, zero input gradients, a
  non-deterministic forward, PGD beating FGSM, accuracy rising with steps or ε) is reported as an
  :class:`EvaluationWarning`, or raised as :class:`EvaluationCheckError` when ``strict=True``.
"""
import warnings

import torch
import torch.nn.functional as F

from ._common import frozen_parameters

__all__ = [
    "AdversarialCheckError",
    "EvaluationCheckError",
    "EvaluationWarning",
    "assert_valid_adversarial",
    "check_model_sanity",
    "check_surrogate",
    "check_attack_ordering",
    "check_steps_monotone",
    "check_eps_monotone",
    "raise_or_warn",
]

# Tolerance of the ε-ball and range assertions (docs/evaluation.md: ‖x_adv − x‖∞ ≤ ε + 1e-6).
BALL_ATOL = 1e-6
# A model "returns probabilities" if every output lies in [-PROB_ATOL, 1 + PROB_ATOL] and every row
# sums to 1 within PROB_ATOL (AutoAttack's check_range_output rule).
PROB_ATOL = 1e-5
# Two forwards of the same input whose L2-normalised outputs differ by more than this are
# "non-deterministic" (AutoAttack's check_randomized threshold).
NONDETERMINISM_ATOL = 1e-4


class AdversarialCheckError(AssertionError):
    """An attack returned an x_adv outside the ε-ball, outside [0, 1], or not finite."""


class EvaluationCheckError(RuntimeError):
    """A sanity check of the model or of the results failed in strict mode."""


class EvaluationWarning(UserWarning):
    """A sanity check of the model or of the results failed (non-strict mode)."""


def raise_or_warn(messages, strict, stacklevel=3):
    """Raise EvaluationCheckError with all `messages` if strict, else warn once per message."""
    if not messages:
        return
    if strict:
        raise EvaluationCheckError("evaluation sanity check failed (strict=True):\n- " + "\n- ".join(messages))
    for message in messages:
        warnings.warn(message, EvaluationWarning, stacklevel=stacklevel)


def assert_valid_adversarial(x_adv, x, eps, name="attack", atol=BALL_ATOL):
    """Raise AdversarialCheckError unless x_adv is finite, in [0, 1] and within ε of x (+ atol).

    x_adv, x: [B, ...] of equal shape; eps: float or per-sample tensor [B] (or 0-d). Reads three
    numbers on the host; evaluation-time only.
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise AdversarialCheckError(f"{name}: x_adv must have the shape of x {tuple(x.shape)}, got {got}")
    if x.numel() == 0:
        return
    xa = x_adv.detach().float()
    if not bool(torch.isfinite(xa).all()):
        bad = int((~torch.isfinite(xa)).sum())
        raise AdversarialCheckError(f"{name}: x_adv has {bad} non-finite values")
    lo, hi = (v.item() for v in torch.aminmax(xa))
    if lo < -atol or hi > 1.0 + atol:
        raise AdversarialCheckError(f"{name}: x_adv outside [0, 1]: min {lo:.8g}, max {hi:.8g}")
    dist = (xa - x.detach().float()).abs().flatten(1).amax(dim=1)
    if isinstance(eps, torch.Tensor):
        limit = eps.detach().float().to(dist.device).expand_as(dist)
    else:
        limit = torch.full_like(dist, float(eps))
    excess = dist - limit
    worst = int(excess.argmax())
    if excess[worst].item() > atol:
        raise AdversarialCheckError(f"{name}: x_adv outside the ε-ball: example {worst} has ‖x_adv − x‖∞ = "
                                    f"{dist[worst].item():.8g} > ε = {limit[worst].item():.8g} (+{atol:g})")


def _modules_in_train_mode(model):
    """The first five names of the modules of `model` in train mode, "" when none is."""
    if not isinstance(model, torch.nn.Module):
        return ""
    in_train = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    return ", ".join(in_train[:5]) + (f" and {len(in_train) - 5} more" if len(in_train) > 5 else "")


def check_model_sanity(model, x, y, strict=False, check_determinism=True):
    """Check a model before evaluating it on the batch (x, y); returns the list of findings.

    - any submodule in train mode (BatchNorm would use batch statistics and update its running
      statistics during the attack; Dropout would randomise the forward) — call ``model.eval()``;
    - outputs that look like probabilities (non-negative rows summing to 1): attacks need logits;
    - examples whose input gradient of the cross-entropy is exactly zero (gradient masking, or a
      saturated softmax): gradient attacks cannot move them;
    - two forwards of the same input that differ (a randomised defence needs EOT attacks).

    Each finding is warned as EvaluationWarning, or raised together as EvaluationCheckError when
    `strict`. The model's mode is not changed; parameter gradients are not touched.
    """
    messages = []
    shown = _modules_in_train_mode(model)
    if shown:
        messages.append(f"model is in train mode ({shown}); evaluate with model.eval() — BatchNorm would use "
                        f"batch statistics and update its running statistics during the attacks")
    if x.shape[0] == 0:
        raise_or_warn(messages, strict)
        return messages
    with frozen_parameters(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg)
        (grad,) = torch.autograd.grad(F.cross_entropy(out.float(), y, reduction="sum"), xg)
    out = out.detach().float()
    if (out.min().item() > -PROB_ATOL and out.max().item() < 1 + PROB_ATOL
            and bool(((out.sum(dim=1) - 1).abs() < PROB_ATOL).all())):
        messages.append("model outputs look like probabilities (non-negative rows summing to 1); attacks and "
                        "cross-entropy need logits — remove the final softmax")
    zero = int((grad.flatten(1).abs().sum(dim=1) == 0).sum())
    if zero:
        messages.append(f"{zero} of {x.shape[0]} examples have an exactly zero input gradient; gradient attacks "
                        f"cannot move them (gradient masking or a saturated softmax) — the robust accuracy may be "
                        f"overestimated")
    if check_determinism:
        with torch.no_grad():
            a = model(x).float()
            b = model(x).float()
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        diff = (a - b).norm(dim=1).max().item()
        if diff > NONDETERMINISM_ATOL:
            messages.append(f"two forwards of the same input differ (normalised difference {diff:.3g}); a "
                            f"randomised model needs attacks with expectation over transformation (EOT)")
    raise_or_warn(messages, strict)
    return messages


def check_surrogate(surrogate, x, num_classes, strict=False):
    """Check the surrogate of the transfer columns on the first batch x; returns the findings.

    Its classes must be the evaluated model's (`num_classes`) and its parameters on x's device
    type: ValueError otherwise, whatever `strict` (the columns could not mean anything). A
    surrogate in train mode is a finding (warned, or raised when `strict`): BatchNorm would craft
    on batch statistics and move its running statistics.
    """
    params = list(surrogate.parameters()) if isinstance(surrogate, torch.nn.Module) else []
    if params and params[0].device.type != x.device.type:
        raise ValueError(f"the surrogate's parameters are on {params[0].device} but the evaluation runs on "
                         f"{x.device}; move it with surrogate.to({str(x.device)!r})")
    with torch.no_grad():
        classes = surrogate(x[:2]).shape[1]
    if classes != num_classes:
        raise ValueError(f"the surrogate returns {classes} logits but the evaluated model {num_classes}: transfer "
                         f"attacks need a surrogate trained on the same classes (the same dataset)")
    messages = []
    shown = _modules_in_train_mode(surrogate)
    if shown:
        messages.append(f"the surrogate is in train mode ({shown}); call surrogate.eval() — BatchNorm would craft "
                        f"the transfer attacks on batch statistics and update its running statistics")
    raise_or_warn(messages, strict)
    return messages


def check_attack_ordering(accuracy, strict=False, weaker="fgsm", stronger=("pgd_sat", "pgd_trades")):
    """Each multi-step PGD column must not exceed the FGSM column (a broken attack or gradient masking).

    accuracy: dict name -> fraction. Missing columns are skipped. Returns the list of findings.
    """
    messages = []
    if weaker in accuracy:
        for name in stronger:
            if name in accuracy and accuracy[name] > accuracy[weaker]:
                messages.append(f"{name} accuracy {accuracy[name]:.4f} is higher than {weaker} accuracy "
                                f"{accuracy[weaker]:.4f}: the multi-step attack is weaker than one step, a sign "
                                f"of gradient masking or a broken attack")
    raise_or_warn(messages, strict)
    return messages


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def check_steps_monotone(model, x, y, steps=(10, 20, 40), eps=8 / 255, alpha=2 / 255, random_start="uniform",
                         seed=0, tolerance=0.0, attack=None, strict=True):
    """More PGD steps must not give higher accuracy. Returns {steps: accuracy}.

    Runs `attack` (default :func:`ciard_fast.attacks.pgd`) with each step count, the random start
    drawn from the same seed each time, and compares consecutive counts: accuracy(steps[i+1]) may
    exceed accuracy(steps[i]) by at most `tolerance` (a fraction; PGD returns its last iterate,
    which is not monotone per example, so a small tolerance is reasonable on small batches).

    attack: callable(model, x, y, eps=, alpha=, steps=, random_start=, generator=) -> x_adv.
    Raises EvaluationCheckError when strict (default), else warns.
    """
    if attack is None:
        from .pgd import pgd as attack
    steps = list(steps)
    if len(steps) < 2 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"steps must be >= 2 increasing step counts, got {steps}")
    results = {}
    for count in steps:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        x_adv = attack(model, x, y, eps=eps, alpha=alpha, steps=count, random_start=random_start,
                       generator=generator)
        assert_valid_adversarial(x_adv, x, eps, name=f"pgd-{count}")
        results[count] = _accuracy(model, x_adv, y)
    messages = [f"accuracy rose from {results[a]:.4f} with {a} steps to {results[b]:.4f} with {b} steps "
                f"(tolerance {tolerance}): the attack is not converging"
                for a, b in zip(steps, steps[1:]) if results[b] > results[a] + tolerance]
    raise_or_warn(messages, strict)
    return results


def check_eps_monotone(model, x, y, eps_values=(0.0, 2 / 255, 8 / 255, 1.0), steps=20, rel_alpha=0.25,
                       random_start="uniform", seed=0, tolerance=0.0, large_eps=1.0, large_eps_max_accuracy=0.01,
                       attack=None, strict=True):
    """Accuracy must not rise with ε, and a large ε must drive accuracy to ~0. Returns {eps: accuracy}.

    Each radius uses step size α = rel_alpha·ε (so a large ε can actually be reached in `steps`
    steps; ε = 0 uses α = 1e-3, any positive step does nothing there) and the same random seed.
    If `large_eps` is among `eps_values`, its accuracy must be <= `large_eps_max_accuracy`.
    Raises EvaluationCheckError when strict (default), else warns.
    """
    if attack is None:
        from .pgd import pgd as attack
    eps_values = list(eps_values)
    if len(eps_values) < 2 or any(b <= a for a, b in zip(eps_values, eps_values[1:])):
        raise ValueError(f"eps_values must be >= 2 increasing radii, got {eps_values}")
    results = {}
    for eps in eps_values:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        alpha = rel_alpha * eps if eps > 0 else 1e-3
        x_adv = attack(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                       generator=generator)
        assert_valid_adversarial(x_adv, x, eps, name=f"pgd(eps={eps:.4g})")
        results[eps] = _accuracy(model, x_adv, y)
    messages = [f"accuracy rose from {results[a]:.4f} at ε = {a:.4g} to {results[b]:.4f} at ε = {b:.4g}"
                for a, b in zip(eps_values, eps_values[1:]) if results[b] > results[a] + tolerance]
    if large_eps in results and results[large_eps] > large_eps_max_accuracy:
        messages.append(f"accuracy {results[large_eps]:.4f} at ε = {large_eps:g} (> {large_eps_max_accuracy}): a "
                        f"large radius must drive any model to ~0%; the attack or the model's gradients are broken")
    raise_or_warn(messages, strict)
    return results
