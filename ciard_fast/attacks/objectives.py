"""The quantities an attack ascends, as functions of the model's logits.

All objectives are computed in float32 (float16/bfloat16 logits are upcast; float64 logits stay
float64, so a float64 attack is float64 throughout) so that they behave the same under autocast,
and are *summed* over the batch: each example's input gradient is then independent of the batch
size, and under reduced precision the per-example gradients are not divided by B (a mean
would shrink them by 1/B and push small ones below the fp16/bf16 resolution, where sign() turns
them into 0). With sign steps sum and mean give identical steps otherwise.
"""
import torch.nn.functional as F

from ..kernels.reference import upcast

__all__ = ["ce_objective", "kl_objective", "cw_margin", "cw_objective", "OBJECTIVES"]

OBJECTIVES = ("ce", "kl", "cw")


def ce_objective(logits, y):
    """Σ_i CE(logits_i, y_i). logits: [B, K]; y: [B] int64. Returns a 0-d float32 (float64) tensor."""
    return F.cross_entropy(upcast(logits), y, reduction="sum")


def kl_objective(logits, target_logits):
    """Σ_i KL(softmax(target_i) ‖ softmax(logits_i)), the TRADES/RSLAD inner maximisation.

    logits, target_logits: [B, K] (the target is detached). Returns a 0-d float32 (float64) tensor.
    """
    logits = upcast(logits)
    return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(target_logits.detach().to(logits.dtype), dim=1),
                    reduction="sum")


def cw_margin(logits, y):
    """The Carlini-Wagner margin Z_y − max_{j≠y} Z_j per example (float32, or float64, [B]).

    Positive when the example is classified correctly. Works for any K >= 2 (for K = 2 it is the
    difference of the two logits).
    """
    logits = upcast(logits)
    correct = logits.gather(1, y[:, None]).squeeze(1)
    # -inf (not a large constant) keeps the max exact for logits of any magnitude.
    others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return correct - others


def cw_objective(logits, y, kappa=50.0):
    """−Σ_i max(Z_y − max_{j≠y} Z_j, −κ): ascending it minimises the clamped margin.

    Once an example's margin is below −κ its gradient is zero, so a misclassified example stops
    moving (the "confidence" κ of Carlini & Wagner 2017; κ = 50 in the robust-distillation
    literature's CW∞ column).
    """
    return -cw_margin(logits, y).clamp(min=-kappa).sum()
