"""The Square Attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020, arXiv 1912.00049) and its column.

A score-based black-box attack: it never reads a gradient, only the model's logits. Starting from
vertical stripes of ±ε, each query changes one random square window (the same random sign per
channel) and keeps the change when the margin loss Z_y − max_{j≠y} Z_j decreases; the window
shrinks on a fixed schedule of the query index (``p_init`` is the fraction of pixels of the first
windows). Because it needs no gradient, it is the usual check that a model's robustness is not
gradient masking; robust-distillation papers since RSLAD report it as the "Square" column, and
the CIARD authors' evaluation script runs it with 100 queries.

The algorithm is not written again here: it is pyautoattack's ``SquareAttack`` (the maintained
port of AutoAttack's implementation, our ``[autoattack]`` extra), which AutoAttack's standard
version also runs with 5000 queries.
"""
import torch

from ._common import frozen_parameters, import_pyautoattack, preserved_rng
from .columns import register_attack
from .validate import check_choice, check_images, check_labels, check_labels_in_range, check_model, check_radius

__all__ = ["square", "import_square", "SQUARE_LOSSES"]

SQUARE_LOSSES = ("margin", "ce")


def import_square():
    """Return pyautoattack's ``SquareAttack`` class, or raise ImportError saying how to install it."""
    return import_pyautoattack("pyautoattack.square", "SquareAttack", "the Square Attack")


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def square(model, x, y, eps=8 / 255, n_queries=5000, p_init=0.8, seed=0, n_restarts=1, loss="margin",
           validate=True):
    """Run the L∞ Square Attack on (x, y) and return x_adv.

    Args:
        model: ``nn.Module`` (or callable) [B, C, H, W] -> logits [B, K]. Evaluated in the mode
            it is in (put it in eval mode: ``SquareAttack`` does not switch modes). Parameter
            ``requires_grad`` flags are switched off during the attack and restored.
        x: floating [B, C, H, W] in [0, 1] (square images: the windows are square). y: int64 [B].
        eps: L∞ radius, a float in [0, 1]. Default 8/255.
        n_queries: queries per example and restart (int >= 1). Default 5000 (AutoAttack's); the
            CIARD authors' script uses 100.
        p_init: fraction of the image the first windows cover, in (0, 1]. Default 0.8.
        seed: seeds the attack's random windows and signs. ``SquareAttack`` reseeds torch's global
            RNG; the caller's global RNG state is restored afterwards.
        n_restarts: restarts (int >= 1); each restart attacks the examples still classified
            correctly. Default 1.
        loss: "margin" (default; Z_y − max_{j≠y} Z_j) or "ce" (the negative cross-entropy).
        validate: check the arguments, and y < K with one extra forward of two images. The
            evaluation, which has checked its batches, passes False.

    Returns:
        x_adv: same shape/dtype/device as x, ‖x_adv − x‖∞ ≤ ε, in [0, 1]. Examples misclassified
        to begin with, or not broken, are returned unchanged.

    Forwards: at most 1 + n_restarts·(n_queries + 2) per example (one to find the correctly
    classified ones; per restart the starting stripes, one per query and a final check), fewer
    for examples broken early. Raises ImportError (with the install command) without pyautoattack.
    """
    if isinstance(eps, torch.Tensor):
        raise TypeError("square takes a single float eps, got a tensor; run per-radius groups separately")
    _check_int(n_queries, "n_queries", 1)
    _check_int(n_restarts, "n_restarts", 1)
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
        raise ValueError(f"p_init must be a number in (0, 1] (the fraction of the image the first squares cover), "
                         f"got {p_init!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    check_choice(loss, "loss", SQUARE_LOSSES)
    check_radius(eps, 1, "eps")
    if validate:
        check_model(model)
        check_images(x)
        check_labels(y, x.shape[0])
    SquareAttack = import_square()
    if x.shape[0] == 0:
        return x.detach().clone()
    x0 = x.detach()
    if validate:
        with torch.no_grad():
            num_classes = model(x0[:2]).shape[1]
        check_labels_in_range(y, num_classes)
    attack = SquareAttack(model, norm="Linf", n_queries=n_queries, eps=float(eps), p_init=float(p_init),
                          n_restarts=n_restarts, seed=seed, verbose=False, loss=loss, resc_schedule=True,
                          device=x0.device)
    with frozen_parameters(model), preserved_rng(x0.device), torch.no_grad():
        x_adv = attack.perturb(x0, y)
    return x_adv.detach()


def _square(model, x, y, params, ctx):
    return square(model, x, y, eps=params["eps"], n_queries=params["n_queries"], p_init=params["p_init"],
                  seed=params["seed"], n_restarts=params["n_restarts"], loss=params["loss"], validate=False)


# After the white-box columns and BB PGD-TRADES, before BB CW∞: the CIARD paper's order.
register_attack("square", "Square", overridable=("eps", "n_queries", "p_init", "n_restarts", "seed"), order=60,
                run=_square, available=import_square,
                defaults=lambda eps, seed: {"eps": eps, "n_queries": 5000, "p_init": 0.8, "n_restarts": 1,
                                            "loss": "margin", "seed": seed})
