"""Self-checks of the Triton kernels in the dispatch: on a GPU for real, on CPU through the
interpreter, where `kernels._CHECK_ON_CPU` makes "auto" treat CPU tensors under TRITON_INTERPRET=1
as it treats CUDA tensors (Triton path, self-checked on first use). Faults are injected by
replacing a launcher.
"""
import warnings

import pytest
import torch

import ciard_fast.kernels as kernels
from ciard_fast.kernels import reference

pytest.importorskip("ciard_fast.kernels.pgd_step_triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not kernels._triton_ops()["interpreted"]:
    pytest.skip("on CPU the fault-injection tests need triton under TRITON_INTERPRET=1", allow_module_level=True)

EPS, ALPHA = 8 / 255, 2 / 255


@pytest.fixture
def checked(monkeypatch):
    """Auto mode with self-checks on CPU tensors, and a clean check/warning state."""
    monkeypatch.setattr(kernels, "_CHECK_ON_CPU", True)
    monkeypatch.setattr(kernels, "_checks", {})
    monkeypatch.setattr(kernels, "_warned", set())
    monkeypatch.setenv("CIARD_FAST_KERNELS", "auto")
    return kernels._triton_ops()


def step_inputs(dtype=torch.float32, shape=(4, 3, 5, 5)):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(shape, generator=g).to(dtype)
    x = (x0.float() + 0.01 * torch.randn(shape, generator=g)).clamp(0, 1).to(dtype)
    return x.to(DEVICE), x0.to(DEVICE), torch.randn(shape, generator=g).to(dtype).to(DEVICE)


def raising(*args, **kwargs):
    raise RuntimeError("injected launch failure")


def wrong_step(original):
    def launcher(x, x0, grad, eps, alpha, out=None):
        result = original(x, x0, grad, eps, alpha)
        result = (result + 1e-3).clamp(0, 1)  # a plausible-looking but wrong answer
        return out.copy_(result) if out is not None else result
    return launcher


def fallback_warnings(record):
    return [w for w in record if issubclass(w.category, kernels.KernelFallbackWarning)]


def test_healthy_kernels_pass_and_are_used(checked, monkeypatch):
    calls = []
    original = checked["pgd_step"]
    monkeypatch.setitem(checked, "pgd_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, x0, grad = step_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", kernels.KernelFallbackWarning)
        for _ in range(3):
            assert torch.equal(kernels.pgd_step(x, x0, grad, EPS, ALPHA), reference.pgd_step(x, x0, grad, EPS, ALPHA))
    # one launch for the self-check, then one per call: the check ran once
    assert len(calls) == 4
    (result,) = kernels.self_check_results()
    assert result.ok and result.op == "pgd_step" and result.max_error == 0.0
    assert kernels.backend_for(x, "pgd_step") == "triton"


@pytest.mark.parametrize("fault", ["raises", "wrong"])
def test_faulty_step_warns_once_and_uses_the_reference(checked, monkeypatch, fault):
    launcher = raising if fault == "raises" else wrong_step(checked["pgd_step"])
    monkeypatch.setitem(checked, "pgd_step", launcher)
    x, x0, grad = step_inputs(torch.bfloat16)
    expected = reference.pgd_step(x, x0, grad, EPS, ALPHA)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = [kernels.pgd_step(x, x0, grad, EPS, ALPHA) for _ in range(3)]
        out = x.clone()
        kernels.pgd_step(out, x0, grad, EPS, ALPHA, out=out)
    assert all(torch.equal(r, expected) for r in results) and torch.equal(out, expected)
    found = fallback_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    for needed in ("pgd_step", str(x.device), "bfloat16", "injected launch failure" if fault == "raises" else "differs"):
        assert needed in message, message
    assert kernels.backend_for(x, "pgd_step") == "reference"
    # other dtypes are checked on their own and still use the kernel if it passes there
    (result,) = kernels.self_check_results()
    assert not result.ok and result.dtype == "bfloat16"


def test_faulty_loss_falls_back_with_reference_gradients(checked, monkeypatch):
    original = checked["distill_loss"]

    def wrong_loss(*args):
        outs = original(*args)
        return (outs[0] * 1.01,) + tuple(outs[1:])

    monkeypatch.setitem(checked, "distill_loss", wrong_loss)
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 10, generator=g).to(DEVICE) for _ in range(5)]
    labels = torch.randint(0, 10, (6,), generator=g).to(DEVICE)
    s_adv = logits[0].clone().requires_grad_()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        outs = kernels.distill_loss(s_adv, logits[1], *logits[2:], labels, 2.0, 1.5, 4.0)
        outs[0].backward()
    ref_s = logits[0].clone().requires_grad_()
    ref = reference.distill_loss(ref_s, logits[1], *logits[2:], labels, 2.0, 1.5, 4.0)
    ref[0].backward()
    assert all(torch.equal(a, b) for a, b in zip(outs, ref)) and torch.equal(s_adv.grad, ref_s.grad)
    (found,) = fallback_warnings(record)
    assert "distill_loss" in str(found.message) and "L_adv off by" in str(found.message)


def test_faulty_random_start_falls_back(checked, monkeypatch):
    monkeypatch.setitem(checked, "pgd_random_start", lambda x0, eps, **kw: x0.clone())  # no noise at all
    x0 = torch.full((4, 3, 4, 4), 0.5, device=DEVICE)
    with pytest.warns(kernels.KernelFallbackWarning, match="pgd_random_start.*uniform: mean"):
        start = kernels.pgd_random_start(x0, EPS, seed=1)
    expected = reference.pgd_random_start(x0, EPS, generator=torch.Generator(device=DEVICE).manual_seed(1))
    assert torch.equal(start, expected)


@pytest.mark.parametrize("fault", ["raises", "wrong"])
def test_forced_triton_turns_the_fallback_into_an_error(checked, monkeypatch, fault):
    launcher = raising if fault == "raises" else wrong_step(checked["pgd_step"])
    monkeypatch.setitem(checked, "pgd_step", launcher)
    monkeypatch.setenv("CIARD_FAST_KERNELS", "triton")
    x, x0, grad = step_inputs()
    for _ in range(2):  # the failed check is remembered: every call raises, none warns
        with warnings.catch_warnings():
            warnings.simplefilter("error", kernels.KernelFallbackWarning)
            with pytest.raises(RuntimeError, match=f"CIARD_FAST_KERNELS=triton.*pgd_step on {x.device} \\(float32"):
                kernels.pgd_step(x, x0, grad, EPS, ALPHA)


def test_each_dtype_layout_and_form_is_checked_once(checked):
    x, x0, grad = step_inputs()
    per_sample = torch.full((4,), EPS, device=DEVICE)
    kernels.pgd_step(x, x0, grad, EPS, ALPHA)
    kernels.pgd_step(x, x0, grad, per_sample, ALPHA)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, x0, grad)]
    kernels.pgd_step(*cl, EPS, ALPHA)
    kernels.pgd_step(*cl, EPS, ALPHA)
    keys = [(r.layout, r.form) for r in kernels.self_check_results()]
    assert keys == [("contiguous", "number"), ("contiguous", "per_sample"), ("channels_last", "number")]
    assert all(r.ok for r in kernels.self_check_results())


def test_check_does_not_move_the_callers_random_stream(checked):
    x, x0, grad = step_inputs()
    torch.manual_seed(11)
    kernels.pgd_step(x, x0, grad, EPS, ALPHA)  # runs the check
    after_check = torch.rand(3, device=DEVICE)
    torch.manual_seed(11)
    assert torch.equal(after_check, torch.rand(3, device=DEVICE))


def test_unimportable_triton_warns_once_on_cuda_tensors(monkeypatch):
    """A Triton import failure is named once, not swallowed (a fake CUDA tensor stands in)."""
    monkeypatch.setattr(kernels, "_triton_state", {"error": "ImportError: libcuda.so.1 missing"})
    monkeypatch.setattr(kernels, "_warned", set())
    monkeypatch.setenv("CIARD_FAST_KERNELS", "auto")

    class FakeCuda:
        is_cuda = True
        device = torch.device("cuda", 0)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert kernels.backend_for(FakeCuda()) == "reference"
        assert kernels.backend_for(FakeCuda()) == "reference"
        assert kernels.backend_for(torch.zeros(1)) == "reference"
    (found,) = fallback_warnings(record)
    assert "libcuda.so.1 missing" in str(found.message) and "cuda:0" in str(found.message)
    monkeypatch.setenv("CIARD_FAST_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="libcuda.so.1 missing"):
        kernels.backend_for(FakeCuda())


def test_check_kernel_reports_every_healthy_op():
    for op in kernels._selfcheck.OPS:
        result = kernels.check_kernel(op, DEVICE, torch.float32)
        assert result.ok, result.describe()
        assert result.max_error is not None and result.max_error <= result.tolerance
    with pytest.raises(ValueError, match="op must be one of"):
        kernels.check_kernel("pgd", DEVICE)


def test_first_use_under_inference_mode_and_autocast_checks_cleanly(checked):
    """The first call may come from anywhere (an eval loop, an autocast block): the check of the
    loss kernel still needs autograd and must not mistake the caller's context for a fault."""
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(4, 10, generator=g).to(DEVICE) for _ in range(5)]
    labels = torch.randint(0, 10, (4,), generator=g).to(DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", kernels.KernelFallbackWarning)
        with torch.inference_mode(), torch.autocast(DEVICE, dtype=torch.bfloat16):
            outs = kernels.distill_loss(*logits, labels, 2.0, 1.5, 4.0)
    ref = reference.distill_loss(*logits, labels, 2.0, 1.5, 4.0)
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-7)
    assert all(r.ok for r in kernels.self_check_results())
