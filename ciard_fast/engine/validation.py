"""Periodic model selection metric: clean and PGD-20 accuracy on the held-out validation split.

Never the test set (docs/method.md §6, "Model selection"). The attack's random start uses its own generator
seeded from (seed, epoch), so evaluating does not shift the training RNG and a resumed run sees
the same numbers.
"""
import torch

from ..attacks.pgd import pgd


def correct_clean_and_pgd(model, loader, eps, alpha, steps, precision_ctx, seed=0):
    """Counts over all batches of `loader` (float [0,1] NCHW, int64 labels), as a float tensor
    [correct clean, correct under PGD, examples] on the model's device — to be summed over ranks
    when the loader is one shard of the split.

    The model is evaluated in eval mode and left in the mode it was in.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    correct_clean = torch.zeros((), dtype=torch.long, device=device)
    correct_adv = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    try:
        for x, y in loader:
            with precision_ctx():
                with torch.no_grad():
                    correct_clean += (model(x).argmax(1) == y).sum()
                x_adv = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start="uniform",
                            loss="ce", generator=generator, validate=False)
                with torch.no_grad():
                    correct_adv += (model(x_adv).argmax(1) == y).sum()
            total += y.shape[0]
    finally:
        model.train(was_training)
    return torch.stack([correct_clean.float(), correct_adv.float(), torch.tensor(float(total), device=device)])
