"""Fast gradient sign method (Goodfellow et al. 2015, "Explaining and Harnessing Adversarial
Examples", arXiv 1412.6572): one signed-gradient step of size ε on the cross-entropy."""
from .pgd import run_pgd
from .validate import check_images, check_labels, check_model, check_radius

__all__ = ["fgsm"]


def fgsm(model, x, y, eps=8 / 255):
    """x_adv = clamp₀₁(x + ε·sign(∇ₓ CE(model(x), y))), no random start.

    Args:
        model: callable [B, C, H, W] -> logits [B, K]; its mode is used as found (see :func:`pgd`).
        x: floating [B, C, H, W] in [0, 1]. y: int64 [B] in [0, K).
        eps: L∞ radius in [0, 1] (float, 0-d or per-sample [B] tensor). Default 8/255.
            ε = 0 returns a copy of x.

    Returns:
        x_adv: same shape/dtype/device as x, ‖x_adv − x‖∞ ≤ ε, in [0, 1].

    The FGSM column of docs/evaluation.md; PGD with random start must never do better than this.
    """
    check_model(model)
    check_images(x)
    check_labels(y, x.shape[0])
    check_radius(eps, x.shape[0], "eps")
    # One step of size exactly ε from x: the projection is then a no-op except for clamping, and
    # ε = 0 (a legal radius, but not a legal PGD step size) simply returns x.
    return run_pgd(model, x, y, eps, eps, 1, None, "ce", check_label_range=True)
