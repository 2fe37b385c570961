"""SAT / PGD-AT (Madry et al., ICLR 2018): CE(f(x'), y), x' = PGD-10 on CE (BASELINES.md)."""
import torch.nn.functional as F

from ..attacks.pgd import pgd
from . import register_method
from .natural import Natural


@register_method
class SAT(Natural):
    """L = CE(f(x'), y); x' from PGD-CE with a uniform start in the ε-ball, model in eval mode
    while attacking (so BN statistics see only the training forward). Same schedule as natural."""

    name = "sat"

    def training_step(self, x, y):
        model = self.student
        model.eval()
        x_adv = pgd(model, x, y, eps=self.attack.eps, alpha=self.attack.alpha, steps=self.attack.steps,
                    random_start=self.attack.start("uniform"), loss="ce", validate=False)
        model.train()
        loss = F.cross_entropy(model(x_adv).float(), y)
        return {"loss": loss, "ce_adv": loss.detach()}
