"""The reference code's loss pieces: separate eager ops, data-dependent shapes, host-side λ.

Each function mirrors one helper of the public CIARD script (our own code, same behaviour):
``kl_elementwise`` (its ``kl_loss``), ``neg_entropy_elementwise`` (``entropy_value``),
``push_terms`` (``push_loss``: ``nonzero`` of the clean teacher's mistakes and gathering of those
rows, a host sync and a shape that depends on the data) and ``push_weight`` (``scale_to_magnitude``:
λ from Python floats with ``math.log10`` and ``math.floor``).
"""
import math

import torch
import torch.nn.functional as F

LOSS_FLOOR = 1e-7  # docs/method.md, step 6: each loss floored at 1e-7 before log10


def kl_elementwise(log_q, p):
    """-log_q·p + log(p + 1e-5)·p, elementwise (no reduction); p is the (detached) teacher side."""
    return -log_q * p + torch.log(p + 1e-5) * p


def neg_entropy_elementwise(p):
    """log(p + 1e-5)·p, elementwise."""
    return torch.log(p + 1e-5) * p


def push_terms(teacher_logits, student_logits, labels, T=5.0):
    """Elementwise push KL on the rows the teacher gets wrong: [|M|, C] (empty when M = ∅).

    ``nonzero`` makes the host wait for the mask (one sync) and the gather below has |M| rows.
    """
    teacher_predictions = torch.argmax(teacher_logits, dim=1)
    wrong = (teacher_predictions != labels).nonzero(as_tuple=True)[0]
    wrong_teacher = teacher_logits[wrong]
    wrong_student = student_logits[wrong]
    return kl_elementwise(F.log_softmax(wrong_student / T, dim=1), F.softmax(wrong_teacher.detach(), dim=1))


def push_weight(l_adv, l_nat, l_push):
    """λ = 10^(min(⌊log₁₀ L_adv⌋, ⌊log₁₀ L_nat⌋) − ⌊log₁₀ L_push⌋) from Python floats.

    The public code adds 1e-7 to a loss that is ``math.isclose`` to 0; for every loss ≥ 1e-7 that
    equals docs/method.md's floor (step 6), which is what is implemented here.
    """
    def magnitude(value):
        return math.floor(math.log10(max(abs(value), LOSS_FLOOR)))

    return 10.0 ** (min(magnitude(l_adv), magnitude(l_nat)) - magnitude(l_push))
