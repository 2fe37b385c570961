"""Divergence detection without a host sync inside a training step.

Each step ANDs "every logged value and the loss are finite" into one device flag
(`FiniteMonitor.update`, no sync). The flag is read only where the trainer already reads the
device: every `log_every` steps, at the end of an epoch and before any checkpoint
(`FiniteMonitor.check`). A non-finite value stops the run with :class:`DivergenceError` naming the
epoch, step, lr and the loss terms, before anything is saved, so the last good checkpoint stays
as it was and NaN weights are never written.
"""
import torch


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights; nothing was saved after it."""


class FiniteMonitor:
    def __init__(self):
        self.ok = None  # device bool, created on the first update

    def reset(self):
        self.ok = None

    def update(self, out):
        """AND the finiteness of out['loss'] and every logged value into the flag (no sync)."""
        values = [v.detach().float().reshape(-1) for v in out.values() if isinstance(v, torch.Tensor)]
        finite = torch.isfinite(torch.cat(values)).all()
        self.ok = finite if self.ok is None else self.ok & finite

    def check(self, epoch, step, lr, sums, steps, last_good):
        """Host read: raise DivergenceError if any value since the last reset was non-finite.

        sums: the epoch's on-device running sums (shown as means in the message); steps: the
        steps they cover; last_good: a description of the newest checkpoint on disk.
        """
        if self.ok is None or bool(self.ok.item()):
            return
        terms = ", ".join(f"{k}={(v / max(steps, 1)).item():.4g}" for k, v in sorted(sums.items())
                          if not k.startswith("mask"))
        raise DivergenceError(
            f"training diverged at epoch {epoch}, step {step} (lr {lr:g}): a loss became non-finite "
            f"(epoch means so far: {terms or 'none logged'}). Nothing was saved after it; {last_good}. "
            "Lower lr (or check the inputs and teachers) and start again or resume from that checkpoint.")


def check_finite_weights(modules, epoch, step, lr, last_good):
    """One host read: raise DivergenceError if a parameter or buffer of `modules` is non-finite."""
    tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()]
    if not tensors:
        return
    flags = torch.stack([torch.isfinite(t).all() for t in tensors])
    if bool(flags.all().item()):
        return
    raise DivergenceError(
        f"training diverged at epoch {epoch}, step {step} (lr {lr:g}): the model weights became non-finite "
        f"while the logged losses were finite. They were not saved; {last_good}. Lower lr and start again.")
