"""CW∞: L∞ PGD on the Carlini-Wagner margin loss (Carlini & Wagner 2017, "Towards Evaluating the
Robustness of Neural Networks", arXiv 1608.04644), the "CW∞" column of the robust-distillation
literature (ARD, RSLAD, IAD, MTARD, CIARD: 30 steps of 2/255, κ = 50, zero init)."""
from .pgd import run_pgd
from .validate import check_images, check_kappa, check_labels, check_model, check_radius, check_step_size, check_steps

__all__ = ["cw_inf"]


def cw_inf(model, x, y, eps=8 / 255, alpha=2 / 255, steps=30, kappa=50.0):
    """Minimise max(Z_y − max_{j≠y} Z_j, −κ) by L∞ PGD from x (no random start).

    Args:
        model: callable [B, C, H, W] -> logits [B, K] with K >= 2 (K = 2 works: the margin is
            then the difference of the two logits); mode used as found.
        x: floating [B, C, H, W] in [0, 1]. y: int64 [B] in [0, K).
        eps: L∞ radius in [0, 1] (float or per-sample tensor). Default 8/255.
        alpha: step size > 0. Default 2/255.
        steps: int >= 1. Default 30.
        kappa: confidence κ >= 0; an example stops moving once its margin is below −κ. Default 50.

    Returns:
        x_adv: same shape/dtype/device as x, ‖x_adv − x‖∞ ≤ ε, in [0, 1].
    """
    check_model(model)
    check_images(x)
    check_labels(y, x.shape[0])
    check_radius(eps, x.shape[0], "eps")
    check_step_size(alpha, x.shape[0], "alpha")
    steps = check_steps(steps)
    kappa = check_kappa(kappa)
    return run_pgd(model, x, y, eps, alpha, steps, None, "cw", kappa=kappa, check_label_range=True)
