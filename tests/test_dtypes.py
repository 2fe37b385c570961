"""float64 in → float64 out through the losses, the kernels' reference path and PGD; reduced
precision still computed in float32; a model and images of different dtypes fail clearly."""
import pytest
import torch
import torch.nn.functional as F

from ciard_fast import kernels, losses
from ciard_fast.attacks import objectives
from ciard_fast.attacks.pgd import pgd

from _tiny import tiny_convnet

TOL = 1e-10


def val(t):
    return float(t.detach())


def logits(seed, B=6, C=5, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, C, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


def test_kd_kl_float64_value_and_gradient_match_the_formula():
    s, t = logits(0), logits(1).detach()
    T_t, T_s = 2.0, 3.0
    value = losses.kd_kl(s, t, teacher_T=T_t, student_T=T_s)
    assert value.dtype == torch.float64
    p = torch.softmax(t / T_t, 1)
    q = torch.softmax(s.detach() / T_s, 1)
    B, C = s.shape
    expected = (p * (torch.log(p + 1e-5) - torch.log(q))).sum() / (B * C)
    assert abs(val(value) - val(expected)) < TOL
    (grad,) = torch.autograd.grad(value, s)
    # d/ds mean p·(log(p+1e-5) − log softmax(s/T)) = (q − p) / (T·B·C), since Σ_c p = 1
    assert grad.dtype == torch.float64
    assert torch.allclose(grad, (q - p) / (T_s * B * C), rtol=0, atol=TOL)
    assert torch.autograd.gradcheck(lambda z: losses.kd_kl(z, t, 2.0, 3.0), (s,))


def test_push_loss_float64_value_and_gradient_match_the_formula():
    s, t = logits(2), logits(3).detach()
    y = t.argmax(1).clone()
    wrong = torch.tensor([0, 3, 4])
    y[wrong] = (y[wrong] + 1) % t.shape[1]
    value = losses.push_loss(s, t, y, T=5.0)
    assert value.dtype == torch.float64
    p = torch.softmax(t[wrong], 1)
    q = torch.softmax(s.detach()[wrong] / 5.0, 1)
    C = s.shape[1]
    expected = (p * (torch.log(p + 1e-5) - torch.log(q))).sum() / (len(wrong) * C)
    assert abs(val(value) - val(expected)) < TOL
    (grad,) = torch.autograd.grad(value, s)
    want = torch.zeros_like(grad)
    want[wrong] = (q - p) / (5.0 * len(wrong) * C)
    assert torch.allclose(grad, want, rtol=0, atol=TOL)
    assert torch.autograd.gradcheck(lambda z: losses.push_loss(z, t, y, 5.0), (s,))


def test_ciard_loss_float64_terms_and_gradients():
    s_adv, s_nat = logits(4), logits(5)
    r_adv, n_nat, n_adv = (logits(k).detach() for k in (6, 7, 8))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    tau_adv, tau_nat = torch.tensor(1.5, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64)
    terms = losses.ciard_loss(s_adv, s_nat, r_adv, n_nat, n_adv, y, tau_adv, tau_nat, T_push=5.0, kd_scale=2.0)
    for name in ("L_adv", "L_nat", "L_push", "H_adv", "H_nat", "mask_count"):
        assert getattr(terms, name).dtype == torch.float64, name
    assert abs(val(terms.L_adv) - 2 * val(losses.kd_kl(s_adv, r_adv, teacher_T=1.5))) < TOL
    assert abs(val(terms.L_nat) - 2 * val(losses.kd_kl(s_nat, n_nat, teacher_T=2.5))) < TOL
    assert abs(val(terms.L_push) - 2 * val(losses.push_loss(s_adv, n_adv, y, 5.0))) < TOL
    p = torch.softmax(r_adv / 1.5, 1)
    assert abs(val(terms.H_adv) - float((p * torch.log(p + 1e-5)).mean())) < TOL
    B, C = s_adv.shape
    (g_nat,) = torch.autograd.grad(terms.L_nat, s_nat, retain_graph=True)
    q = torch.softmax(s_nat.detach(), 1)
    assert torch.allclose(g_nat, 2 * (q - torch.softmax(n_nat / 2.5, 1)) / (B * C), rtol=0, atol=TOL)
    assert torch.autograd.gradcheck(
        lambda a, b: sum(losses.ciard_loss(a, b, r_adv, n_nat, n_adv, y, tau_adv, tau_nat)[:3]), (s_adv, s_nat))


def test_neg_entropy_and_push_weight_keep_float64():
    z = logits(9).detach()
    assert losses.neg_entropy(z, 2.0).dtype == torch.float64
    one = torch.tensor(0.05, dtype=torch.float64)
    assert losses.push_weight(one, one, one).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_logits_are_computed_in_float32(dtype):
    s, t = torch.randn(4, 10).to(dtype), torch.randn(4, 10).to(dtype)
    y = torch.randint(0, 10, (4,))
    assert losses.kd_kl(s, t).dtype == torch.float32
    assert losses.push_loss(s, t, y).dtype == torch.float32
    tau = torch.tensor(1.0)
    assert all(v.dtype == torch.float32 for v in losses.ciard_loss(s, s, t, t, t, y, tau, tau))
    assert objectives.ce_objective(s, y).dtype == torch.float32
    # and the float32 value is the float32 value of the upcast logits (no bf16 arithmetic)
    assert torch.equal(losses.kd_kl(s, t), losses.kd_kl(s.float(), t.float()))


def test_objectives_float64_values_and_input_gradients():
    z = logits(10)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    ce = objectives.ce_objective(z, y)
    assert ce.dtype == torch.float64
    (g,) = torch.autograd.grad(ce, z)
    assert torch.allclose(g, torch.softmax(z.detach(), 1) - F.one_hot(y, 5).double(), rtol=0, atol=TOL)
    t = logits(11).detach()
    kl = objectives.kl_objective(z, t)
    p, q = torch.softmax(t, 1), torch.softmax(z.detach(), 1)
    assert kl.dtype == torch.float64
    assert abs(val(kl) - float((p * (torch.log(p) - torch.log(q))).sum())) < TOL
    assert objectives.cw_objective(z, y).dtype == torch.float64


def test_pgd_float64_matches_a_float64_transcription():
    model = tiny_convnet(num_classes=5, width=4, seed=3).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    eps, alpha = 8 / 255, 2 / 255
    out = pgd(model, x, y, eps=eps, alpha=alpha, steps=4, random_start=None)
    assert out.dtype == torch.float64
    ref = x.clone()
    for _ in range(4):
        ref.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(ref), y, reduction="sum"), ref)
        ref = torch.clamp(torch.min(torch.max(ref.detach() + alpha * grad.sign(), x - eps), x + eps), 0, 1)
    assert torch.allclose(out, ref, rtol=0, atol=TOL)
    # the normal start is drawn in float64 for a float64 batch; "normal_unclamped" leaves [0, 1]
    torch.manual_seed(5)
    start = kernels.pgd_random_start(x, eps, kind="normal", clamp=False)
    torch.manual_seed(5)
    assert start.dtype == torch.float64
    assert torch.allclose(start, x + 0.001 * torch.randn(x.shape, dtype=torch.float64), rtol=0, atol=TOL)
    edge = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    assert kernels.pgd_random_start(edge, eps, kind="normal", clamp=False).min() < 0
    assert kernels.pgd_random_start(edge, eps, kind="normal").min() == 0


def test_pgd_names_both_dtypes_when_model_and_images_differ():
    model = tiny_convnet(num_classes=5, width=4).double()
    x = torch.rand(2, 3, 8, 8)  # float32
    with pytest.raises(TypeError, match=r"torch\.float64.*torch\.float32"):
        pgd(model, x, torch.tensor([0, 1]), steps=1)
    with pytest.raises(TypeError, match=r"torch\.float32.*torch\.float64"):
        pgd(tiny_convnet(num_classes=5, width=4), x.double(), torch.tensor([0, 1]), steps=1)
