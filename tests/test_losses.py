"""The functional losses and update rules of docs/method.md, each against its formula written out here."""
import math

import pytest
import torch

from ciard_fast import losses


def direct_kl_mean(p, log_q):
    """Σ_ic p·(log(p+1e-5) − log q) / (B·C), by explicit loops over rows (independent of the library)."""
    B, C = p.shape
    total = 0.0
    for i in range(B):
        for c in range(C):
            total += float(p[i, c]) * (math.log(float(p[i, c]) + 1e-5) - float(log_q[i, c]))
    return total / (B * C)


def softmax_rows(z):
    z = z.double()
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("teacher_T,student_T", [(1.0, 1.0), (4.0, 1.0), (1.0, 5.0), (2.5, 3.0)])
def test_kd_kl_matches_formula(teacher_T, student_T):
    s, t = torch.randn(5, 7), torch.randn(5, 7) * 3
    p = softmax_rows(t / teacher_T)
    log_q = torch.log(softmax_rows(s / student_T))
    expected = direct_kl_mean(p, log_q)
    got = losses.kd_kl(s, t, teacher_T=teacher_T, student_T=student_T)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_kd_kl_teacher_is_detached():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    losses.kd_kl(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_push_loss_masked_mean_over_wrong_samples():
    torch.manual_seed(1)
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    labels = t.argmax(1).clone()
    wrong = [1, 4]  # the teacher is made wrong on these rows only
    labels[wrong] = (labels[wrong] + 1) % 4
    p = softmax_rows(t)
    log_q = torch.log(softmax_rows(s / 5.0))
    expected = direct_kl_mean(p[wrong], log_q[wrong])  # mean over |M|·C
    assert losses.push_loss(s, t, labels, T=5.0).item() == pytest.approx(expected, rel=1e-5)


def test_push_loss_empty_mask_is_exactly_zero_with_zero_gradient():
    s = torch.randn(5, 3, requires_grad=True)
    t = torch.randn(5, 3)
    value = losses.push_loss(s, t, t.argmax(1))  # the teacher is right everywhere: M = ∅
    assert value.item() == 0.0 and not torch.isnan(value)
    value.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_push_loss_full_mask_is_the_plain_mean():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    labels = (t.argmax(1) + 1) % 5  # wrong everywhere
    expected = direct_kl_mean(softmax_rows(t), torch.log(softmax_rows(s / 2.0)))
    assert losses.push_loss(s, t, labels, T=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_ciard_loss_terms_match_the_separate_losses():
    torch.manual_seed(2)
    B, C = 9, 10
    s_adv, s_nat, r_adv, n_nat, n_adv = (torch.randn(B, C) for _ in range(5))
    y = torch.randint(0, C, (B,))
    tau_adv, tau_nat = torch.tensor(1.7), torch.tensor(2.3)
    terms = losses.ciard_loss(s_adv, s_nat, r_adv, n_nat, n_adv, y, tau_adv, tau_nat, T_push=5.0, kd_scale=3.0)
    assert terms.L_adv.item() == pytest.approx(3 * losses.kd_kl(s_adv, r_adv, teacher_T=1.7).item(), rel=1e-5)
    assert terms.L_nat.item() == pytest.approx(3 * losses.kd_kl(s_nat, n_nat, teacher_T=2.3).item(), rel=1e-5)
    assert terms.L_push.item() == pytest.approx(3 * losses.push_loss(s_adv, n_adv, y, T=5.0).item(), rel=1e-5)
    p_a = softmax_rows(r_adv / 1.7)
    assert terms.H_adv.item() == pytest.approx(float((p_a * torch.log(p_a + 1e-5)).mean()), rel=1e-5)
    assert terms.mask_count.item() == float((n_adv.argmax(1) != y).sum())


@pytest.mark.parametrize("values,expected", [
    ((0.05, 0.02, 0.2), 0.1),      # the first example
    ((0.12, 0.03, 0.003), 10.0),   # the second example
    ((0.5, 0.5, 0.5), 1.0),
    ((1e-3, 0.2, 1e-3), 1.0),      # exact powers of ten: ⌊log10 0.001⌋ = −3 on both sides
    ((0.3, 0.4, 0.0), 1e6),        # L_push floored at 1e-7: 10^(−1 − (−7))
])
def test_push_weight_examples(values, expected):
    lam = losses.push_weight(*(torch.tensor(v) for v in values))
    assert lam.item() == pytest.approx(expected, rel=1e-6)


def test_temperature_update_rule():
    tau_adv, tau_nat = torch.tensor(1.0), torch.tensor(1.0)
    # H_a/H_n > 1 (the robust teacher is "sharper" by this measure): τ_adv down (clipped at 1), τ_nat up
    losses.update_temperatures(tau_adv, tau_nat, torch.tensor(-0.2), torch.tensor(-0.1), lr=0.001)
    assert tau_adv.item() == 1.0 and tau_nat.item() == pytest.approx(1.001)
    tau_adv.fill_(5.0)
    tau_nat.fill_(9.9995)
    losses.update_temperatures(tau_adv, tau_nat, torch.tensor(-0.1), torch.tensor(-0.2), lr=0.001)
    assert tau_adv.item() == pytest.approx(5.001) and tau_nat.item() == pytest.approx(9.9985)
    tau_adv.fill_(10.0)
    losses.update_temperatures(tau_adv, tau_nat, torch.tensor(-0.1), torch.tensor(-0.3), lr=0.5)
    assert tau_adv.item() == 10.0  # clipped at 10


def test_loss_weight_update_rule():
    w = torch.tensor([0.5, 0.5])
    L = torch.tensor([0.2, 0.05])
    L0 = torch.tensor([0.4, 0.1])
    losses.update_loss_weights(w, L, L0, lr=0.025)
    r = [0.2 / 0.4, 0.05 / 0.1]
    expected = [0.5 - 0.025 * (0.5 - r[0] / sum(r)), 0.5 - 0.025 * (0.5 - r[1] / sum(r))]
    total = sum(expected)
    assert w.tolist() == pytest.approx([e / total for e in expected])
    # unequal progress: the loss that fell less gets more weight
    w = torch.tensor([0.5, 0.5])
    losses.update_loss_weights(w, torch.tensor([0.3, 0.05]), torch.tensor([0.4, 0.1]), lr=0.025)
    r = [0.75, 0.5]
    expected = [0.5 - 0.025 * (0.5 - r[0] / 1.25), 0.5 - 0.025 * (0.5 - r[1] / 1.25)]
    assert w.tolist() == pytest.approx([e / sum(expected) for e in expected])
    assert w[0] > w[1] and w.sum().item() == pytest.approx(1.0)
