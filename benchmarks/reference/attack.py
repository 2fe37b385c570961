"""The reference code's training-time attack: PGD-CE on the student, TRADES-style loop.

x'₀ = x + 0.001·n with n drawn on the host (``torch.randn(x.shape).cuda()`` in the public code),
then K steps of: forward, mean cross-entropy, ``torch.autograd.grad`` w.r.t. the input, and the
update as separate eager ops (sign, scale, add, max, min, clamp). The student is put in eval
mode for the attack and back in train mode after it. No fused ops, no frozen parameters, fp32.

Same mathematics as ``ciard_fast.attacks.pgd(..., random_start="normal", loss="ce")``: the sign
of the gradient of the mean and of the sum of the per-example losses agree (exactly so when the
batch size is a power of two), and the start is unclamped here but within [0, 1] for any pixel
more than ~50σ = 0.05 away from the bounds.
"""
import torch
import torch.nn.functional as F


def pgd_ce(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10):
    """x: float [B, C, H, W] in [0, 1] on the device; y: int64 [B]. Returns x' (detached)."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape).to(x.device).detach()
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()
