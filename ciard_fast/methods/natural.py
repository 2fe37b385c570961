"""Natural (standard) training: CE(f(x), y). Makes the clean teacher N (docs/baselines.md)."""
import torch.nn.functional as F

from . import register_method
from .base import Method
from .terms import LossSum


@register_method
class Natural(Method):
    """L = CE(f(x), y). lr: base ×0.1 at 50 % and 75 % of the run (100/150 of 200)."""

    name = "natural"
    paper_epochs = 200
    milestones = (100, 150)

    def training_step(self, x, y):
        return LossSum().add("ce", F.cross_entropy(self.student(x).float(), y)).output()
