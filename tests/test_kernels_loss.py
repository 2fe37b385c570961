"""Fused multi-teacher loss (Triton forward + backward, through the interpreter on CPU) vs
autograd on ``reference.distill_loss``, and its dispatch."""
import pytest
import torch

import ciard_fast.kernels as kernels
from ciard_fast.kernels import reference

triton_loss = pytest.importorskip("ciard_fast.kernels.distill_loss_triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("L_adv", "L_nat", "L_push", "H_a", "H_n", "mask_count")
# Gradients are stored in the logits' dtype: compare within a few units of its last place,
# relative to the largest gradient entry. fp16 gradients of a mean over B×C are tiny and partly
# subnormal, hence the absolute floor at fp16's smallest subnormal steps.
GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -9}
GRAD_ATOL = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2 ** -23}


def make_inputs(batch, classes, dtype=torch.float32, mask="random", scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = [(torch.randn(batch, classes, generator=gen) * scale).to(dtype).to(DEVICE) for _ in range(5)]
    n_adv = logits[4]
    pred = n_adv.float().argmax(dim=1)
    if mask == "empty":    # the clean teacher is right on every sample
        labels = pred.clone()
    elif mask == "full":   # ... wrong on every sample
        labels = (pred + 1) % classes
    else:
        labels = torch.randint(0, classes, (batch,), generator=gen).to(DEVICE)
    return logits, labels


def run_both(logits, labels, tau_adv, tau_nat, t_push, upstream, block_c=None):
    """(outputs, grads) of the Triton path and of autograd on the reference, same upstream grads."""
    results = []
    for fn in (lambda *a: triton_loss.distill_loss(*a, block_c=block_c), reference.distill_loss):
        s_adv = logits[0].detach().clone().requires_grad_()
        s_nat = logits[1].detach().clone().requires_grad_()
        outs = fn(s_adv, s_nat, *logits[2:], labels, tau_adv, tau_nat, t_push)
        torch.autograd.backward(outs[:3], list(upstream))
        results.append(([o.detach() for o in outs], (s_adv.grad, s_nat.grad)))
    return results


def term_scale(ours, upstream, t_push):
    """Size of one summand of the gradient, |g|·(q − p) with q, p ≤ 1: the scale of its rounding."""
    outs, grads = ours
    batch, classes = grads[0].shape
    g_adv, g_nat, g_push = (float(g.abs()) for g in upstream)
    return (g_adv + g_nat) / (batch * classes) + g_push / (max(float(outs[5]), 1.0) * classes * float(t_push))


def assert_close(ours, ref, dtype, scale=0.0):
    """Outputs within fp32 tolerance; gradients within GRAD_RTOL of the largest entry, plus fp32
    rounding of the summands (`scale`, see term_scale) where the gradient is a cancellation."""
    (outs, grads), (ref_outs, ref_grads) = ours, ref
    for name, a, b in zip(NAMES, outs, ref_outs):
        assert a.dtype == torch.float32 and a.shape == ()
        # The loss itself is fp32 arithmetic on exactly up-cast inputs in both implementations.
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
    for name, g, r in zip(("d s_adv", "d s_nat"), grads, ref_grads):
        assert g.dtype == dtype and g.shape == r.shape
        assert torch.isfinite(g).all()
        tol = GRAD_RTOL[dtype] * r.float().abs().max().item() + GRAD_ATOL[dtype] + 1e-6 * scale
        err = (g.float() - r.float()).abs().max().item()
        assert err <= tol, f"{name}: max error {err:.3e} > {tol:.3e}"


def upstream_grads(seed=1):
    # A random upstream gradient (as w·L_adv + w·L_nat − λ·L_push would give), not .sum().
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(3, generator=gen) * torch.tensor([0.7, 0.3, -20.0])).to(DEVICE).unbind(0)


CASES = [(1, 2), (7, 10), (33, 10), (7, 100), (33, 100), (1, 200), (7, 200), (1, 1000), (7, 1000)]


@pytest.mark.parametrize("batch, classes", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_forward_backward_match_reference(batch, classes, dtype):
    logits, labels = make_inputs(batch, classes, dtype)
    tau_adv = torch.tensor(1.7, device=DEVICE)
    tau_nat = torch.tensor(2.3, device=DEVICE)
    ours, ref = run_both(logits, labels, tau_adv, tau_nat, 5.0, upstream_grads())
    assert_close(ours, ref, dtype)


@pytest.mark.parametrize("mask", ["empty", "full", "random"])
@pytest.mark.parametrize("batch, classes", [(7, 10), (33, 100)], ids=str)
def test_masks(mask, batch, classes):
    logits, labels = make_inputs(batch, classes, mask=mask)
    ours, ref = run_both(logits, labels, 1.0, 1.0, 5.0, upstream_grads(2))
    assert_close(ours, ref, torch.float32)
    count, push = ours[0][5].item(), ours[0][2].item()
    if mask == "empty":
        assert count == 0 and push == 0.0  # exactly zero, not 0/0
        # and the push term contributes no gradient: g_push has no effect
        other, _ = run_both(logits, labels, 1.0, 1.0, 5.0, (upstream_grads(2)[0], upstream_grads(2)[1],
                                                             torch.tensor(123.0, device=DEVICE)))
        assert torch.equal(other[1][0], ours[1][0])
    elif mask == "full":
        assert count == batch


@pytest.mark.parametrize("classes, block_c", [(200, 32), (1000, 256), (37, 8)])
def test_column_loop(classes, block_c):
    # Several column blocks per row (the path C > 1024 takes) with a ragged last block.
    logits, labels = make_inputs(5, classes)
    ours, ref = run_both(logits, labels, torch.tensor(3.0, device=DEVICE), 1.5, torch.tensor(4.0, device=DEVICE),
                         upstream_grads(3), block_c=block_c)
    assert_close(ours, ref, torch.float32)


def test_argmax_ties_across_blocks_follow_torch():
    # torch.argmax returns the first maximal index; ties inside and across column blocks.
    logits, _ = make_inputs(4, 24)
    n_adv = logits[4]
    n_adv[0] = 0.0                   # all tied: argmax 0
    n_adv[1, 3] = n_adv[1, 17] = 50.0  # tie across blocks of 8: argmax 3
    n_adv[2, 9] = n_adv[2, 12] = 50.0  # tie inside a block: argmax 9
    n_adv[3] = 0.0
    n_adv[3, 5] = n_adv[3, 20] = 50.0  # argmax 5 = label: not in the mask
    labels = torch.tensor([0, 17, 12, 5], device=DEVICE)
    ours, ref = run_both(logits, labels, 1.0, 1.0, 5.0, upstream_grads(), block_c=8)
    assert_close(ours, ref, torch.float32)
    assert ours[0][5].item() == 2.0  # rows 1 and 2


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "opposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_extreme_logits_stay_finite(dtype, aligned):
    logits, labels = make_inputs(6, 10, dtype, scale=1.0)
    for i, t in enumerate(logits):
        # students are logits[0:2]; "opposed" gives them the teachers' pattern negated, so the
        # teachers' mass sits where the student's log-probability is about -2e4.
        sign = -1.0 if (not aligned and i < 2) else 1.0
        t[:, ::2] = sign * 1e4
        t[:, 1::3] = -sign * 1e4
    upstream = upstream_grads()
    ours, ref = run_both(logits, labels, 1.0, 2.0, 5.0, upstream)
    for value in ours[0]:
        assert torch.isfinite(value)
    # Teacher and student put equal mass on tied ±1e4 logits: the exact gradient is ~0 and both
    # implementations return fp32 rounding noise of the summands.
    assert_close(ours, ref, dtype, scale=term_scale(ours, upstream, 5.0))


def test_python_float_and_tensor_temperatures_agree():
    logits, labels = make_inputs(7, 10)
    as_floats = run_both(logits, labels, 1.7, 2.3, 5.0, upstream_grads())[0]
    as_tensors = run_both(logits, labels, torch.tensor(1.7, device=DEVICE), torch.tensor(2.3, device=DEVICE),
                          torch.tensor(5.0, device=DEVICE), upstream_grads())[0]
    for a, b in zip(as_floats[0] + list(as_floats[1]), as_tensors[0] + list(as_tensors[1])):
        assert torch.equal(a, b)


def test_backward_uses_the_temperatures_of_the_forward():
    # The adaptive-temperature rule updates τ in place after the forward; the gradient must not move.
    logits, labels = make_inputs(7, 10)
    tau_adv, tau_nat = torch.tensor(1.7, device=DEVICE), torch.tensor(2.3, device=DEVICE)
    s_adv = logits[0].clone().requires_grad_()
    s_nat = logits[1].clone().requires_grad_()
    outs = triton_loss.distill_loss(s_adv, s_nat, *logits[2:], labels, tau_adv, tau_nat, 5.0)
    tau_adv.add_(1.0)
    tau_nat.mul_(3.0)
    torch.autograd.backward(outs[:3], list(upstream_grads()))
    _, (ref_sa, ref_sn) = run_both(logits, labels, 1.7, 2.3, 5.0, upstream_grads())[1]
    torch.testing.assert_close(s_adv.grad, ref_sa, rtol=2e-5, atol=1e-9)
    torch.testing.assert_close(s_nat.grad, ref_sn, rtol=2e-5, atol=1e-9)


def test_outputs_are_independent_tensors():
    # Like the reference's: each may be modified in place without touching the gradient.
    logits, labels = make_inputs(7, 10, mask="full")
    s_adv = logits[0].clone().requires_grad_()
    outs = triton_loss.distill_loss(s_adv, logits[1], *logits[2:], labels, 1.0, 1.0, 5.0)
    assert len({o.data_ptr() for o in outs}) == 6
    weighted = [o * 1.0 for o in outs[:3]]
    outs[5].zero_()  # the count the backward needs is its own copy
    outs[3].add_(1.0)
    torch.autograd.backward(weighted, list(upstream_grads()))
    _, (ref_sa, _) = run_both(logits, labels, 1.0, 1.0, 5.0, upstream_grads())[1]
    torch.testing.assert_close(s_adv.grad, ref_sa, rtol=2e-5, atol=1e-9)


def test_deterministic_and_teachers_get_no_gradient():
    logits, labels = make_inputs(33, 100)
    teachers = [t.clone().requires_grad_() for t in logits[2:]]
    runs = []
    for _ in range(2):
        s_adv = logits[0].clone().requires_grad_()
        s_nat = logits[1].clone().requires_grad_()
        outs = triton_loss.distill_loss(s_adv, s_nat, *teachers, labels, 1.3, 1.1, 5.0)
        torch.autograd.backward(outs[:3], list(upstream_grads()))
        runs.append([o.detach() for o in outs] + [s_adv.grad, s_nat.grad])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert all(t.grad is None for t in teachers)
    assert not any(o.requires_grad for o in outs[3:])


def test_non_contiguous_logits():
    logits, labels = make_inputs(9, 12)
    strided = [t.t().contiguous().t() for t in logits]
    assert not strided[0].is_contiguous()
    ours = run_both(strided, labels, 1.2, 1.4, 5.0, upstream_grads())[0]
    ref = run_both(logits, labels, 1.2, 1.4, 5.0, upstream_grads())[1]
    assert_close(ours, ref, torch.float32)


def test_only_one_loss_used_upstream():
    # Outputs that do not reach the loss get zero upstream gradient (materialised by autograd).
    logits, labels = make_inputs(7, 10)
    grads = []
    for fn in (triton_loss.distill_loss, reference.distill_loss):
        s_adv = logits[0].clone().requires_grad_()
        s_nat = logits[1].clone().requires_grad_()
        fn(s_adv, s_nat, *logits[2:], labels, 1.0, 1.0, 5.0)[2].backward()
        grads.append((s_adv.grad, s_nat.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=2e-5, atol=1e-9)
    assert grads[0][1] is None or not bool(grads[0][1].any())


def test_no_host_sync(monkeypatch):
    logits, labels = make_inputs(7, 10)
    s_adv = logits[0].clone().requires_grad_()
    tau = torch.tensor(1.5, device=DEVICE)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("host sync: a tensor was read on the host")

    for name in ("item", "__float__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    outs = triton_loss.distill_loss(s_adv, logits[1], *logits[2:], labels, tau, tau, 5.0)
    torch.autograd.backward(outs[:3], list(upstream_grads()))
    monkeypatch.undo()
    assert torch.isfinite(s_adv.grad).all()


@pytest.mark.parametrize("change, error", [
    (lambda a: a.update(r_adv=a["r_adv"][:, :5]), ValueError),
    (lambda a: a.update(s_adv=a["s_adv"][0]), ValueError),
    (lambda a: a.update(n_nat=a["n_nat"].double()), TypeError),
    (lambda a: a.update(labels=a["labels"].float()), TypeError),
    (lambda a: a.update(labels=a["labels"][:3]), ValueError),
    (lambda a: a.update(tau_adv=0.0), ValueError),
    (lambda a: a.update(T_push=torch.ones(2)), ValueError),
    (lambda a: a.update(tau_nat="1"), TypeError),
])
def test_rejects_bad_arguments(change, error):
    logits, labels = make_inputs(4, 6)
    args = dict(zip(("s_adv", "s_nat", "r_adv", "n_nat", "n_adv"), logits), labels=labels,
                tau_adv=1.0, tau_nat=1.0, T_push=5.0)
    change(args)
    with pytest.raises(error):
        triton_loss.distill_loss(**args)


# ---------------------------------------------------------------- dispatch

AUTO = "triton" if DEVICE == "cuda" else "reference"


@pytest.mark.parametrize("mode, expected", [("reference", "reference"), ("triton", "triton"), ("auto", AUTO)])
def test_env_switch_forces_each_path(monkeypatch, mode, expected):
    logits, labels = make_inputs(7, 10)
    want = reference.distill_loss(*logits, labels, 1.5, 1.5, 5.0)
    calls = []
    ops = kernels._triton_ops()
    monkeypatch.setenv("CIARD_FAST_KERNELS", mode)
    # On a GPU the first use runs the dispatch's self-check, which calls both implementations.
    kernels.distill_loss(*logits, labels, 1.5, 1.5, 5.0)

    def spy(path, original):
        def wrapped(*args, **kwargs):
            calls.append(path)
            return original(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(reference, "distill_loss", spy("reference", reference.distill_loss))
    monkeypatch.setitem(ops, "distill_loss", spy("triton", ops["distill_loss"]))
    got = kernels.distill_loss(*logits, labels, 1.5, 1.5, 5.0)
    assert calls == [expected]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)


# ---- per-class temperatures ([C], ABSLD's form): row i uses τ[y_i], always on the reference ---------
def test_per_class_temperature_divides_each_row_by_its_class_temperature(monkeypatch):
    logits, labels = make_inputs(7, 5, seed=3)
    logits = [t.double() for t in logits]
    tau_adv = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0], dtype=torch.float64, device=DEVICE)
    tau_nat = torch.tensor([4.0, 0.7, 1.0, 2.5, 1.5], dtype=torch.float64, device=DEVICE)
    s_adv, s_nat, r_adv, n_nat, n_adv = logits
    # the formula written out, one row at a time
    kl_a, kl_n, h_a, h_n = [], [], [], []
    for i in range(7):
        p_a = torch.softmax(r_adv[i] / tau_adv[labels[i]], dim=0)
        p_n = torch.softmax(n_nat[i] / tau_nat[labels[i]], dim=0)
        kl_a.append(p_a * (torch.log(p_a + 1e-5) - torch.log_softmax(s_adv[i], dim=0)))
        kl_n.append(p_n * (torch.log(p_n + 1e-5) - torch.log_softmax(s_nat[i], dim=0)))
        h_a.append(p_a * torch.log(p_a + 1e-5))
        h_n.append(p_n * torch.log(p_n + 1e-5))
    expected = [torch.stack(v).mean() for v in (kl_a, kl_n)] + [None] + [torch.stack(v).mean() for v in (h_a, h_n)]
    # under CIARD_FAST_KERNELS=triton too: the per-class form never reaches the fused kernel
    monkeypatch.setenv("CIARD_FAST_KERNELS", "triton")
    got = kernels.distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, tau_adv, tau_nat, 5.0)
    for index in (0, 1, 3, 4):
        assert float(got[index]) == pytest.approx(float(expected[index]), rel=1e-12)
    # a column-wise division (what broadcasting a [C] tensor would do) gives something else
    wrong = reference.distill_loss(s_adv, s_nat, r_adv / tau_adv, n_nat / tau_nat, n_adv, labels, 1.0, 1.0, 5.0)
    assert abs(float(wrong[0]) - float(expected[0])) > 1e-3
    # the same τ for every class is the scalar form
    same = kernels.distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, torch.full((5,), 2.0, dtype=torch.float64),
                                torch.full((5,), 3.0, dtype=torch.float64), 5.0)
    scalar = reference.distill_loss(s_adv, s_nat, r_adv, n_nat, n_adv, labels, 2.0, 3.0, 5.0)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(same, scalar))


def test_temperature_forms_are_named_for_what_they_are():
    assert kernels._form(torch.ones(3), vector="per_class") == "per_class"
    assert kernels._form(torch.ones(3)) == "per_sample"  # the PGD ops' per-sample ε, α
    assert kernels._form(torch.ones(()), 2.0, vector="per_class") == "0d"
    logits, labels = make_inputs(6, 4)
    with pytest.raises(ValueError, match=r"tau_adv must be .* per-class \[4\] tensor, got shape \(6,\)"):
        reference.distill_loss(*logits, labels, torch.ones(6), 1.0, 5.0)
