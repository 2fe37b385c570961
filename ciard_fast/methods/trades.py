"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x')), β = 6 (docs/baselines.md).

Follows the public TRADES code: the KL is summed over classes and averaged over the batch
(`KLDivLoss(size_average=False) / B`); x' maximises the summed KL from x + 0.001·N(0, I), with
the model in eval mode while attacking. Used to make the robust teacher R.
"""
import dataclasses

import torch
import torch.nn.functional as F

from ..options import MethodOptions, option
from . import register_method
from .base import Method, module_mode
from .terms import LossSum


@register_method
class TRADES(Method):
    name = "trades"
    paper_epochs = 100
    milestones = (75, 90)  # the TRADES CIFAR-10 recipe: ×0.1 at 75 and 90 of 100

    @dataclasses.dataclass
    class Options(MethodOptions):
        beta: float = option(6.0, "weight β of the KL between f(x) and f(x')", at_least=0)

    def training_step(self, x, y):
        model = self.student
        with torch.no_grad(), module_mode(model, False):
            clean_logits = model(x)
        x_adv = self.attack_student(x, y, loss="kl", target_logits=clean_logits, default_start="normal")
        logits = model(x).float()
        logits_adv = model(x_adv).float()
        natural = F.cross_entropy(logits, y)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return LossSum().add("ce", natural).add("kl", robust, weight=self.options.beta).output()
