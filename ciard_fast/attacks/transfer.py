"""Transfer (black-box) columns: PGD-TRADES and CW∞ crafted on a surrogate model, scored on the
evaluated one.

The robust-distillation literature since RSLAD reports these as "BB PGD-TRADES" / "BB CW∞" (MTARD's
author: its black-box attacks follow IAD's code); the CIARD authors' ``attack_eval.py`` crafts
them on the robust teacher's original file (the TRADES WideResNet-34-10, in eval mode) and scores
them on the student. They measure whether examples that fool the surrogate transfer to the
student: a student much more robust to them than to its own white-box attacks is expected (the
attacker does not see its gradients), and a student *less* robust to them than to white-box PGD
points to gradient masking.

The images come from the very attacks of the white-box columns (``attacks/pgd.py``), on the
surrogate: BB PGD-TRADES is PGD-20, step 0.003, uniform start, cross-entropy (the random start
drawn from PGD-TRADES' own stream, so that with ``surrogate = model`` the two columns are
identical example by example); BB CW∞ is CW∞, κ = 50, 30 steps of 2/255 from x. The surrogate
must take the same images (in [0, 1]) and have the same classes as the evaluated model.
"""
from .columns import register_attack
from .cw import cw_inf
from .pgd import pgd

__all__ = []


def _transfer_pgd(model, x, y, params, ctx):
    # `model` (the evaluated one) is not queried: the evaluator scores the returned images on it.
    return pgd(ctx.surrogate, x, y, eps=params["eps"], alpha=params["alpha"], steps=params["steps"],
               random_start=params["random_start"], loss=params["loss"], generator=ctx.generator)


def _transfer_cw(model, x, y, params, ctx):
    return cw_inf(ctx.surrogate, x, y, eps=params["eps"], alpha=params["alpha"], steps=params["steps"],
                  kappa=params["kappa"])


register_attack("transfer_pgd", "BB PGD-TRADES", overridable=("eps", "alpha", "steps", "random_start"), order=50,
                run=_transfer_pgd, surrogate=True, seed_of="pgd_trades",
                defaults=lambda eps, seed: {"eps": eps, "alpha": 0.003, "steps": 20, "random_start": "uniform",
                                            "loss": "ce"})
register_attack("transfer_cw", "BB CW∞", overridable=("eps", "alpha", "steps", "kappa"), order=70, run=_transfer_cw,
                surrogate=True,
                defaults=lambda eps, seed: {"eps": eps, "alpha": 2 / 255, "steps": 30, "random_start": None,
                                            "loss": "cw", "kappa": 50.0})
