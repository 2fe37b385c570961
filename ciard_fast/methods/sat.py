"""SAT / PGD-AT (Madry et al., ICLR 2018): CE(f(x'), y), x' = PGD-10 on CE (docs/baselines.md)."""
import torch.nn.functional as F

from . import register_method
from .natural import Natural
from .terms import LossSum


@register_method
class SAT(Natural):
    """L = CE(f(x'), y); x' from PGD-CE with a uniform start in the ε-ball, model in eval mode
    while attacking (so BN statistics see only the training forward). Same schedule as natural."""

    name = "sat"
    attack_start = "uniform"

    def training_step(self, x, y):
        model = self.student
        x_adv = self.attack_student(x, y, loss="ce")
        return LossSum().add("ce_adv", F.cross_entropy(model(x_adv).float(), y)).output()
