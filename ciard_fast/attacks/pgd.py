"""L∞ projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv 1706.06083), with the losses of the robust-distillation literature.

The inner maximisation of SAT/ARD/IAD/CIARD (cross-entropy), of TRADES/RSLAD/AdaAD (KL to a target
distribution) and the CW∞ evaluation attack (margin loss) are the same loop with a different
objective, so one function serves all of them.
"""
import torch

from .. import kernels
from . import graphs
from ._common import frozen_parameters, to_device_param
from .objectives import OBJECTIVES, ce_objective, cw_objective, kl_objective
from .validate import (check_choice, check_finite_logits, check_images, check_kappa, check_labels,
                       check_labels_in_range, check_model, check_model_matches, check_radius, check_step_size,
                       check_steps, check_target_logits, describe_value)
from .validate import check_logits as check_logits_contract

__all__ = ["pgd", "RANDOM_STARTS", "TRAINING_RANDOM_STARTS", "LOSSES", "check_loss"]

# The one list of random starts: what `pgd` takes ...
RANDOM_STARTS = ("uniform", "normal", "normal_unclamped", None)
# ... and how the config's `attack_random_start` names them for the training attack: "default"
# (the method's own start, `Method.attack_start`) first, None spelled "none".
TRAINING_RANDOM_STARTS = ("default",) + tuple("none" if start is None else start for start in RANDOM_STARTS)
LOSSES = OBJECTIVES
# σ of the "normal" start: x + 0.001·N(0, I), the TRADES/RSLAD/CIARD reference code's start.
NORMAL_START_SIGMA = 0.001


def pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, random_start="uniform", loss="ce",
        target_logits=None, kappa=50.0, generator=None, validate=True):
    """L∞ PGD: ``steps`` signed-gradient ascent steps on `loss`, projected to the ε-ball and [0, 1].

    x'₀ = start(x);  x'ₖ₊₁ = clamp₀₁( Π_{‖x'−x‖∞ ≤ ε}( x'ₖ + α·sign(∇ₓ' L(model(x'ₖ))) ) )

    Args:
        model: callable mapping images [B, C, H, W] to logits [B, K] (an ``nn.Module`` or function).
            Its train/eval mode is used as found and never changed here: callers decide (CIARD
            attacks the student in eval mode; evaluation expects eval mode). Parameter
            ``requires_grad`` flags are switched off for the attack (only the input gradient is
            needed) and restored on exit; no parameter ``.grad`` is touched.
        x: clean images, floating [B, C, H, W] with values in [0, 1]; not modified.
        y: labels, int64 [B] in [0, K). Unused by loss="kl" apart from validation.
        eps: L∞ radius in [0, 1] — a float, a 0-d tensor or a per-sample tensor [B]. Default 8/255.
        alpha: step size > 0 — float, 0-d or per-sample [B] tensor. Default 2/255.
        steps: number of steps, int >= 1. Default 10 (the training-time attack of SAT/ARD/CIARD).
        random_start: "uniform" — x + U(−ε, ε) (Madry et al.; torchattacks' PGD); "normal" —
            x + 0.001·N(0, I) (TRADES/RSLAD/CIARD); None — start at x (needed for a deterministic
            attack; with loss="kl" and target_logits = model(x) the gradient at x is zero, so use
            "normal" there). The start is clamped to [0, 1] but not projected (σ = 0.001 < ε);
            "normal_unclamped" — x + 0.001·N(0, I) not clamped, as the public CIARD code starts
            (its first forward may see pixels a few σ outside [0, 1]; every step clamps).
        loss: "ce" — ascend Σ CE(model(x'), y); "kl" — ascend Σ KL(softmax(target_logits) ‖
            softmax(model(x'))); "cw" — minimise Σ max(Z_y − max_{j≠y} Z_j, −κ); or an objective
            callable ``objective(logits, x_adv) -> 0-d tensor`` to ascend, where logits =
            model(x_adv) [B, K] and x_adv [B, C, H, W] is the current iterate (with gradient), so
            an objective can evaluate another model at x' and differentiate through it (AdaAD's
            teacher). If the callable is an ``nn.Module`` its parameters are frozen like the
            model's for the attack and its train/eval mode is used as found. Under
            `cuda_graphs()` only an ``nn.Module`` objective is captured (its state is parameters
            and buffers, read in place by a replay; a plain function runs eagerly) and the object
            is part of the graph key: create it once (e.g. in a method's ``__init__``), not per
            step, or every step captures a new graph.
            Every loss is summed over the batch and computed in float32 (float64 for float64
            logits: a float64 model and float64 images give a float64 attack throughout). The
            sign step makes sum and mean identical in exact arithmetic; under autocast the sum keeps small per-example
            gradients representable where a mean (÷B) could round them to zero.
        target_logits: [B, K] logits for loss="kl" (detached; required then, ignored otherwise).
        kappa: CW confidence κ >= 0 for loss="cw". Default 50.
        generator: ``torch.Generator`` on x's device for the random start (default: global RNG).
        validate: check every argument once before the first step (one host sync for the value
            ranges, one for the label range after the first forward). The training engine, which
            builds its own inputs, passes False: the loop then has no host sync at all.

    Returns:
        x_adv: a new tensor, same shape/dtype/device as x, detached, with ‖x_adv − x‖∞ ≤ ε and
        values in [0, 1].

    Raises:
        TypeError (with validate=True): the model's floating parameters and the images have
        different dtypes (e.g. a float64 model and float32 images), naming both.

    Works under ``torch.autocast`` (the model runs in reduced precision, the loss in float32, the
    iterate stays in x's dtype). The step itself is ``ciard_fast.kernels.pgd_step`` and the start
    ``ciard_fast.kernels.pgd_random_start`` so fused kernels replace them without changing callers.

    Example::

        >>> x_adv = pgd(model.eval(), x, y, eps=8/255, alpha=2/255, steps=20)
        >>> x_adv = pgd(student.eval(), x, y, loss="kl", target_logits=teacher(x), random_start="normal")
    """
    if validate:
        check_model(model)
        if isinstance(x, torch.Tensor) and x.is_meta:  # before check_images reads its values
            check_model_matches(model, x)
        check_images(x)
        check_model_matches(model, x)
        check_labels(y, x.shape[0])
        check_radius(eps, x.shape[0], "eps")
        check_step_size(alpha, x.shape[0], "alpha")
        steps = check_steps(steps)
        check_choice(random_start, "random_start", RANDOM_STARTS)
        check_loss(loss)
        kappa = check_kappa(kappa)
        if loss == "kl":
            check_target_logits(target_logits, x.shape[0])
            check_labels_in_range(y, target_logits.shape[1])
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if graphs.applicable(x, eps, alpha, generator, model, loss):
        return graphs.graphed_pgd(run_pgd, model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa)
    return run_pgd(model, x, y, eps, alpha, steps, random_start, loss, target_logits, kappa, generator,
                   check_label_range=validate and loss != "kl", check_logits=validate)


def check_loss(loss):
    """`loss` must be one of LOSSES or a callable objective(logits, x_adv) -> 0-d tensor."""
    if callable(loss):
        return loss
    if isinstance(loss, str):
        return check_choice(loss, "loss", LOSSES)
    raise TypeError(f"loss must be one of {', '.join(map(repr, LOSSES))} or a callable objective(logits, x_adv) "
                    f"-> 0-d tensor, got {type(loss).__name__}")


def run_pgd(model, x, y, eps, alpha, steps, random_start, loss, target_logits=None, kappa=50.0, generator=None,
            check_label_range=False, check_logits=False):
    """The PGD loop without argument validation (see :func:`pgd` for the arguments).

    For library callers that have validated their inputs (FGSM, CW∞, the training engine).
    `check_label_range` checks y < K once, after the first forward (a host sync);
    `check_logits` checks that forward's logits are finite (another).
    """
    x0 = x.detach()
    eps = to_device_param(eps, x0)
    alpha = to_device_param(alpha, x0)
    if random_start is None:
        x_adv = x0.clone()
    elif random_start == "normal_unclamped":
        x_adv = kernels.pgd_random_start(x0, eps, kind="normal", sigma=NORMAL_START_SIGMA, generator=generator,
                                         clamp=False)
    else:
        x_adv = kernels.pgd_random_start(x0, eps, kind=random_start, sigma=NORMAL_START_SIGMA, generator=generator)
    if loss == "kl":
        target_logits = target_logits.detach()

    custom = callable(loss)
    with frozen_parameters(model), frozen_parameters(loss if custom else None), torch.enable_grad():
        for step in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if step == 0:
                if check_logits:
                    check_logits_contract(logits, x_adv.shape[0])
                if loss == "cw" and logits.shape[1] < 2:
                    # A shape, not a value: no host sync.
                    raise ValueError(f"loss='cw' needs a model with >= 2 classes, got logits of shape "
                                     f"{tuple(logits.shape)}")
                if check_label_range:
                    check_labels_in_range(y, logits.shape[1])
                if check_logits:
                    check_finite_logits(logits)
            if custom:
                objective = loss(logits, x_adv)
                if step == 0 and not (isinstance(objective, torch.Tensor) and objective.dim() == 0):
                    # A type and a shape, not a value: no host sync.
                    raise ValueError(f"the objective callable {loss!r} must return a 0-d tensor to ascend (e.g. a sum "
                                     f"over the batch), got {describe_value(objective)}")
            elif loss == "ce":
                objective = ce_objective(logits, y)
            elif loss == "kl":
                objective = kl_objective(logits, target_logits)
            else:
                objective = cw_objective(logits, y, kappa)
            (grad,) = torch.autograd.grad(objective, x_adv)
            # The iterate is updated in place (no allocation per step); the graph that saved it
            # was freed by autograd.grad, so the in-place write cannot corrupt a backward.
            x_adv = x_adv.detach()
            kernels.pgd_step(x_adv, x0, grad, eps, alpha, out=x_adv)
    return x_adv
