"""Tests of the attacks: PGD (against a plain-torch reference loop), FGSM, CW∞, AutoAttack wrapper,
argument validation and the step/ε monotonicity helpers."""
import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ciard_fast.attacks import (AdversarialCheckError, assert_valid_adversarial, autoattack, check_eps_monotone,
                                check_steps_monotone, cw_inf, cw_margin, EvaluationCheckError, fgsm, pgd)
from ciard_fast.attacks.objectives import cw_objective

# --------------------------------------------------------------------------------------------
# Data and models, trained once per module in a few seconds.
# Synthetic: 4 classes whose means differ by ±0.02 per pixel (3x16x16) under N(0, 0.08²) noise —
# easy to classify from the whole image, but an L∞ perturbation of 8/255 ≈ 0.031 > 0.02 can
# move any image onto another class's mean: a naturally trained model must fall to ~0%.
# --------------------------------------------------------------------------------------------
K = 4


def _synthetic(n, seed=0, num_classes=K):
    g = torch.Generator().manual_seed(seed)
    means = 0.5 + 0.02 * (torch.randint(0, 2, (num_classes, 3, 16, 16), generator=g).float() * 2 - 1)
    g2 = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, num_classes, (n,), generator=g2)
    x = (means[y] + 0.08 * torch.randn(n, 3, 16, 16, generator=g2)).clamp(0, 1)
    return x, y


def _train(model, x, y, epochs, lr=1e-2, batch=64):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


def _mlp_head(num_classes=K):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 256, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


@pytest.fixture(scope="module")
def synth():
    x, y = _synthetic(1024)
    model = _train(_mlp_head(), x[:768], y[:768], epochs=8)
    return model, x[768:], y[768:]


@pytest.fixture(scope="module")
def digits():
    """A small CNN on scikit-learn's 8x8 digits (as 1x8x8 in [0, 1]), about 95% test accuracy."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10))
    model = _train(model, x[:1400], y[:1400], epochs=10, lr=3e-3, batch=100)
    return model, x[1400:1656], y[1400:1656]


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _in_ball(x_adv, x, eps, atol=1e-6):
    eps = eps.to(x.device) if isinstance(eps, torch.Tensor) else torch.full((x.shape[0],), float(eps), device=x.device)
    dist = (x_adv - x).abs().flatten(1).amax(1)
    return bool((dist <= eps + atol).all()) and x_adv.min() >= 0 and x_adv.max() <= 1 and bool(x_adv.isfinite().all())


# --------------------------------------------------------------------------------------------
# PGD strength
# --------------------------------------------------------------------------------------------
def test_pgd_drives_naturally_trained_model_to_zero(synth):
    model, x, y = synth
    assert _acc(model, x, y) >= 0.95
    for start in ("uniform", "normal", None):
        x_adv = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, random_start=start)
        assert _in_ball(x_adv, x, 8 / 255)
        assert _acc(model, x_adv, y) <= 0.02, start


def test_pgd_eps_zero_keeps_clean_accuracy(synth):
    model, x, y = synth
    for start in ("uniform", None):
        x_adv = pgd(model, x, y, eps=0.0, steps=5, random_start=start)
        assert torch.equal(x_adv, x)
    assert _acc(model, pgd(model, x, y, eps=0.0, steps=3, random_start="uniform"), y) == _acc(model, x, y)


def test_large_eps_drives_digits_model_to_zero_and_accuracy_falls_with_eps(digits):
    model, x, y = digits
    clean = _acc(model, x, y)
    assert clean >= 0.9
    result = check_eps_monotone(model, x, y, eps_values=(0.0, 8 / 255, 32 / 255, 1.0), steps=10)
    assert result[0.0] == clean
    assert result[8 / 255] < clean  # 8/255 is not enough for ~0% on 8x8 digits, but it must hurt
    assert result[1.0] == 0.0


def test_more_steps_do_not_raise_accuracy(digits):
    model, x, y = digits
    result = check_steps_monotone(model, x, y, steps=(5, 10, 20), eps=32 / 255, alpha=4 / 255, tolerance=0.01)
    assert list(result) == [5, 10, 20]
    assert result[20] < _acc(model, x, y)


def test_steps_monotone_check_catches_an_attack_that_weakens_with_steps(synth):
    model, x, y = synth

    def weakening(model, x, y, eps, alpha, steps, random_start, generator):
        # Perturbs fewer examples the more steps it is given: accuracy rises with steps.
        x_adv = pgd(model, x, y, eps=eps, alpha=alpha, steps=2, random_start=None)
        keep = x.shape[0] * steps // 40
        x_adv[:keep] = x[:keep]
        return x_adv

    with pytest.raises(EvaluationCheckError, match="accuracy rose"):
        check_steps_monotone(model, x, y, steps=(10, 20, 40), attack=weakening)
    with pytest.raises(ValueError, match="increasing"):
        check_steps_monotone(model, x, y, steps=(20, 10))


# --------------------------------------------------------------------------------------------
# Bit-identical to a plain-torch loop
# --------------------------------------------------------------------------------------------
def _reference_pgd(model, x, y, eps, alpha, steps, start, loss, target_logits, kappa, seed):
    """PGD written out with plain torch ops, independently of the library."""
    g = torch.Generator().manual_seed(seed)
    eps_b = eps.view(-1, 1, 1, 1) if isinstance(eps, torch.Tensor) else eps
    alpha_b = alpha.view(-1, 1, 1, 1) if isinstance(alpha, torch.Tensor) else alpha
    if start == "uniform":
        x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps_b).clamp(0, 1)
    elif start == "normal":
        x_adv = (x + torch.randn(x.shape, generator=g) * 0.001).clamp(0, 1)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        if loss == "ce":
            obj = F.cross_entropy(logits, y, reduction="sum")
        elif loss == "kl":
            obj = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(target_logits, dim=1), reduction="sum")
        else:
            top2 = logits.topk(2, dim=1)
            other = torch.where(top2.indices[:, 0] == y, top2.values[:, 1], top2.values[:, 0])
            margin = logits[torch.arange(len(y)), y] - other
            obj = -torch.clamp(margin, min=-kappa).sum()
        grad = torch.autograd.grad(obj, x_adv)[0]
        x_adv = x_adv.detach() + alpha_b * torch.sign(grad)
        x_adv = torch.min(torch.max(x_adv, x - eps_b), x + eps_b).clamp(0, 1)
    return x_adv.detach()


@pytest.mark.parametrize("loss", ["ce", "kl", "cw"])
@pytest.mark.parametrize("start", ["uniform", "normal"])
def test_pgd_bit_identical_to_plain_torch(synth, loss, start):
    model, x, y = synth
    x, y = x[:64], y[:64]
    with torch.no_grad():
        target = model(x) if loss == "kl" else None
    kappa = 2.0  # small enough that the clamp is active for some examples
    ours = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=7, random_start=start, loss=loss, target_logits=target,
               kappa=kappa, generator=torch.Generator().manual_seed(123))
    ref = _reference_pgd(model, x, y, 8 / 255, 2 / 255, 7, start, loss, target, kappa, seed=123)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, x)


def test_pgd_per_sample_eps_and_alpha(synth):
    model, x, y = synth
    x, y = x[:32], y[:32]
    eps = torch.linspace(0, 8 / 255, 32)
    alpha = eps / 4 + 1e-4
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=5, random_start="uniform",
               generator=torch.Generator().manual_seed(5))
    ref = _reference_pgd(model, x, y, eps, alpha, 5, "uniform", "ce", None, 50.0, seed=5)
    assert torch.equal(ours, ref)
    assert _in_ball(ours, x, eps)
    assert torch.equal(ours[0], x[0])  # ε = 0 for the first example
    assert (ours[-1] - x[-1]).abs().max() > 7 / 255


# --------------------------------------------------------------------------------------------
# Side effects: parameters, gradients, modes, RNG, host syncs
# --------------------------------------------------------------------------------------------
class _Spy(nn.Module):
    """Records, at each forward, whether any parameter required grad."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, K)
        self.seen = []

    def forward(self, x):
        self.seen.append(any(p.requires_grad for p in self.parameters()))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


@pytest.mark.parametrize("train_mode", [False, True])
def test_pgd_leaves_grads_flags_and_mode_as_found(synth, train_mode):
    _, x, y = synth
    x, y = x[:16], y[:16]
    model = _Spy().train(train_mode)
    model.fc.bias.requires_grad_(False)  # a frozen parameter must stay frozen
    old_grad = torch.full_like(model.fc.weight, 3.0)
    model.fc.weight.grad = old_grad.clone()  # an existing .grad must stay untouched
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    pgd(model, x, y, steps=3)
    assert model.seen == [False, False, False]  # parameters frozen during the attack
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert torch.equal(model.fc.weight.grad, old_grad)
    assert model.training is train_mode and model.bn.training is train_mode


def test_pgd_restores_flags_when_the_model_raises(synth):
    _, x, y = synth

    class Boom(_Spy):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, x[:4], y[:4], steps=2)
    assert all(p.requires_grad for p in model.parameters())


def test_pgd_works_inside_no_grad_and_ignores_input_requires_grad(synth):
    model, x, y = synth
    x, y = x[:16], y[:16]
    expected = pgd(model, x, y, steps=3, random_start=None)
    with torch.no_grad():
        inside = pgd(model, x, y, steps=3, random_start=None)
    xr = x.clone().requires_grad_(True)
    leaf = pgd(model, xr, y, steps=3, random_start=None)
    assert torch.equal(inside, expected) and torch.equal(leaf, expected)
    assert xr.grad is None and not leaf.requires_grad


def test_pgd_without_validation_makes_no_host_sync(synth, monkeypatch):
    model, x, y = synth
    x, y = x[:16], y[:16]
    expected = pgd(model, x, y, steps=3, random_start="normal", generator=torch.Generator().manual_seed(1))

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the attack")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    got = pgd(model, x, y, steps=3, random_start="normal", generator=torch.Generator().manual_seed(1),
              validate=False)
    with pytest.raises(AssertionError, match="host sync"):
        pgd(model, x, y, steps=3)  # validation reads values: proves the spy is live
    monkeypatch.undo()
    assert torch.equal(got, expected)


def test_pgd_under_autocast(synth):
    model, x, y = synth
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, eps=8 / 255, steps=10)
    assert x_adv.dtype == x.dtype
    assert _in_ball(x_adv, x, 8 / 255)
    assert _acc(model, x_adv, y) <= 0.05


# --------------------------------------------------------------------------------------------
# FGSM and CW
# --------------------------------------------------------------------------------------------
def test_fgsm_is_one_signed_step_of_size_eps(synth):
    model, x, y = synth
    x, y = x[:32], y[:32]
    xr = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)[0]
    expected = (x + 8 / 255 * grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, eps=8 / 255), expected)
    assert torch.equal(fgsm(model, x, y, eps=0.0), x)
    assert all(p.grad is None for p in model.parameters())


def test_cw_margin_matches_hand_computation():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, -1.0], [1.0, 1.5, 1.5], [-2.0, -7.0, -3.0]])
    y = torch.tensor([0, 0, 2, 1])
    # 3 − 2; 0.5 − 4; 1.5 − 1.5; −7 − (−2)
    assert torch.equal(cw_margin(logits, y), torch.tensor([1.0, -3.5, 0.0, -5.0]))
    # κ = 2 clamps the last two margins below −2 at −2: −(1 − 2 + 0 − 2) = 3
    assert cw_objective(logits, y, kappa=2.0).item() == 3.0
    lg = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cw_objective(lg, y, kappa=2.0), lg)
    assert torch.equal(g[0], torch.tensor([-1.0, 0.0, 1.0]))  # push Z_y down, the runner-up up
    assert torch.equal(g[1], torch.zeros(3)) and torch.equal(g[3], torch.zeros(3))  # clamped: no gradient
    two = torch.tensor([[2.0, -1.0], [0.0, 0.25]])
    assert torch.equal(cw_margin(two, torch.tensor([1, 1])), torch.tensor([-3.0, 0.25]))


@pytest.fixture(scope="module")
def binary():
    x, y = _synthetic(512, seed=3, num_classes=2)
    return _train(_mlp_head(2), x[:384], y[:384], epochs=6), x[384:], y[384:]


def test_cw_inf_works_for_two_classes(binary):
    model, xt, yt = binary
    assert _acc(model, xt, yt) >= 0.9
    x_adv = cw_inf(model, xt, yt, eps=8 / 255, steps=10)
    assert _in_ball(x_adv, xt, 8 / 255)
    assert _acc(model, x_adv, yt) <= 0.05
    with pytest.raises(ValueError, match=">= 2 classes"):
        cw_inf(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1)), xt[:4], torch.zeros(4, dtype=torch.long))


def test_cw_inf_stops_at_kappa(synth):
    model, x, y = synth
    x, y = x[:64], y[:64]
    x_adv = cw_inf(model, x, y, eps=8 / 255, steps=30, kappa=0.0)
    with torch.no_grad():
        margins = cw_margin(model(x_adv), y)
    # With κ = 0 an example stops once misclassified, so it ends just past the boundary, not far beyond
    # (the larger-κ attack pushes further).
    x_far = cw_inf(model, x, y, eps=8 / 255, steps=30, kappa=50.0)
    with torch.no_grad():
        far = cw_margin(model(x_far), y)
    assert (margins <= 0).float().mean() >= 0.95
    assert far.mean() < margins.mean()


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _tiny_linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))


X = torch.rand(2, 3, 4, 4)
Y = torch.tensor([1, 2])


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(x=X * 255), ValueError, r"max 2\d\d"),
    (dict(x=X - 0.5), ValueError, r"min -0\.\d+"),
    (dict(x=X[0]), ValueError, r"4-D NCHW.*\(3, 4, 4\)"),
    (dict(x=(X * 255).byte()), ValueError, "torch.uint8"),
    (dict(x=torch.full((2, 3, 4, 4), float("nan"))), ValueError, "non-finite"),
    (dict(x=X.numpy()), TypeError, "ndarray"),
    (dict(y=torch.tensor([1, 10])), ValueError, "class index 10.*10 classes"),
    (dict(y=torch.tensor([1, -1])), ValueError, "min -1"),
    (dict(y=Y.float()), ValueError, "torch.float32"),
    (dict(y=torch.tensor([1, 2, 3])), ValueError, r"\[2\].*\(3,\)"),
    (dict(eps=8), ValueError, "eps must be in .*got 8"),
    (dict(eps=-0.1), ValueError, "got -0.1"),
    (dict(eps=torch.tensor([0.1, 2.0])), ValueError, "eps must be in .*2"),
    (dict(eps=torch.zeros(3)), ValueError, r"shape \(3,\)"),
    (dict(alpha=0.0), ValueError, r"alpha must be in \(0, inf\).*got 0"),
    (dict(steps=0), ValueError, "steps must be an integer >= 1, got 0"),
    (dict(steps=2.5), TypeError, "2.5"),
    (dict(steps=True), TypeError, "True"),
    (dict(loss="mse"), ValueError, "unknown loss 'mse'.*'ce'"),
    (dict(random_start="gaussian"), ValueError, "unknown random_start 'gaussian'"),
    (dict(loss="kl"), ValueError, "target_logits"),
    (dict(loss="kl", target_logits=torch.zeros(3, 10)), ValueError, r"\(3, 10\)"),
    (dict(kappa=-1.0), ValueError, "kappa.*-1.0"),
    (dict(generator=0), TypeError, "generator"),
])
def test_pgd_validation_names_the_value(kwargs, error, pattern):
    args = dict(x=X, y=Y)
    args.update(kwargs)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(error, match=pattern):
        pgd(_tiny_linear(), x, y, **args)


def test_fgsm_and_cw_validate_too():
    with pytest.raises(ValueError, match="max 2"):
        fgsm(_tiny_linear(), X * 255, Y)
    with pytest.raises(ValueError, match="class index 12"):
        cw_inf(_tiny_linear(), X, torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="steps"):
        cw_inf(_tiny_linear(), X, Y, steps=0)
    with pytest.raises(TypeError, match="callable"):
        fgsm("model", X, Y)


def test_validate_false_skips_checks():
    # Out-of-range images pass through without a check (the caller vouches for its inputs) and are
    # still clamped into [0, 1] by the step.
    x_adv = pgd(_tiny_linear(), X * 2, Y, steps=1, random_start=None, validate=False)
    assert x_adv.max() <= 1.0


def test_assert_valid_adversarial():
    x = torch.rand(4, 3, 4, 4) * 0.5 + 0.25
    assert_valid_adversarial((x + 8 / 255).clamp(0, 1), x, 8 / 255)
    with pytest.raises(AdversarialCheckError, match="ε-ball: example 2"):
        bad = x.clone()
        bad[2, 0, 0, 0] += 9 / 255
        assert_valid_adversarial(bad, x, 8 / 255)
    with pytest.raises(AdversarialCheckError, match=r"outside \[0, 1\]"):
        assert_valid_adversarial(x + 1.0, x, 1.0)
    with pytest.raises(AdversarialCheckError, match="non-finite"):
        assert_valid_adversarial(x * float("nan"), x, 1.0)
    with pytest.raises(AdversarialCheckError, match="shape"):
        assert_valid_adversarial(x[:2], x, 1.0)
    per_sample = torch.tensor([0.0, 0.1, 0.1, 0.1])
    with pytest.raises(AdversarialCheckError, match="example 0"):
        assert_valid_adversarial((x + 0.05).clamp(0, 1), x, per_sample)


# --------------------------------------------------------------------------------------------
# AutoAttack
# --------------------------------------------------------------------------------------------
def test_autoattack_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes `import pyautoattack` fail
    with pytest.raises(ImportError, match=r'pip install "ciard-fast\[autoattack\]"'):
        autoattack(_tiny_linear(), X, Y)


def test_autoattack_apgd_ce_comparable_to_our_pgd(synth):
    pytest.importorskip("pyautoattack", reason="pyautoattack (extra [autoattack]) is not installed")
    model, x, y = synth
    x, y = x[:96], y[:96]
    eps = 2 / 255  # a radius where neither attack reaches 0%, so the comparison means something
    cpu_rng = torch.get_rng_state()
    x_aa = autoattack(model, x, y, eps=eps, attacks_to_run=["apgd-ce"], seed=0)
    assert torch.equal(torch.get_rng_state(), cpu_rng)  # AutoAttack's reseeding is undone
    assert _in_ball(x_aa, x, eps)
    x_pgd = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=50, random_start="uniform")
    clean, acc_aa, acc_pgd = _acc(model, x, y), _acc(model, x_aa, y), _acc(model, x_pgd, y)
    assert acc_aa < clean - 0.1 and acc_pgd < clean - 0.1
    assert abs(acc_aa - acc_pgd) <= 0.08
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_autoattack_drops_dlr_attacks_on_two_classes(binary):
    pytest.importorskip("pyautoattack", reason="pyautoattack (extra [autoattack]) is not installed")
    model, x, y = binary
    with pytest.warns(RuntimeWarning, match="apgd-t dropped.*the model has 2"):
        x_aa = autoattack(model, x[:32], y[:32], eps=2 / 255, attacks_to_run=["apgd-ce", "apgd-t"])
    assert _in_ball(x_aa, x[:32], 2 / 255) and _acc(model, x_aa, y[:32]) < _acc(model, x[:32], y[:32])
    with pytest.raises(ValueError, match="no AutoAttack sub-attack can run"), pytest.warns(RuntimeWarning):
        autoattack(model, x[:8], y[:8], attacks_to_run=["apgd-dlr"])


def test_autoattack_full_standard_on_a_few_examples(synth):
    pytest.importorskip("pyautoattack", reason="pyautoattack (extra [autoattack]) is not installed")
    model, x, y = synth
    x, y = x[:8], y[:8]
    x_aa = autoattack(model, x, y, eps=2 / 255, version="standard")
    assert _in_ball(x_aa, x, 2 / 255)
    assert _acc(model, x_aa, y) <= _acc(model, pgd(model, x, y, eps=2 / 255, alpha=0.5 / 255, steps=20), y)
    with pytest.raises(ValueError, match="unknown AutoAttack sub-attack 'apgd'"):
        autoattack(model, x, y, attacks_to_run=["apgd"])
    with pytest.raises(ValueError, match="custom"):
        autoattack(model, x, y, version="custom")
    with pytest.raises(TypeError, match="single float eps"):
        autoattack(model, x, y, eps=torch.full((8,), 0.01))


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU): the fused Triton step must not change any result
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_pgd_on_cuda_fused_step_matches_reference_and_evaluates(synth, monkeypatch):
    from ciard_fast.attacks import evaluate
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model, x, y = synth
    model = copy.deepcopy(model).cuda()
    x, y = x[:64].cuda(), y[:64].cuda()
    monkeypatch.setenv("CIARD_FAST_KERNELS", "auto")
    fused = pgd(model, x, y, steps=5, random_start=None)
    monkeypatch.setenv("CIARD_FAST_KERNELS", "reference")
    reference = pgd(model, x, y, steps=5, random_start=None)
    assert torch.equal(fused, reference)
    monkeypatch.setenv("CIARD_FAST_KERNELS", "auto")
    for start in ("uniform", "normal"):
        g = torch.Generator(device="cuda").manual_seed(0)
        x_adv = pgd(model, x, y, steps=10, random_start=start, generator=g)
        assert x_adv.is_cuda and _in_ball(x_adv, x, 8 / 255) and _acc(model, x_adv, y) <= 0.05
    report = evaluate(model, (x, y), attacks=("clean", "fgsm", "pgd_sat", "cw"), eps=2 / 255, progress=False)
    assert report.device.startswith("cuda") and report.accuracy["worst"] <= report.accuracy["pgd_sat"]
