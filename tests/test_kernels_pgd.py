"""Fused PGD step and random start (Triton, through the interpreter on CPU) vs the reference,
and the dispatch of both ops."""
import subprocess
import sys

import pytest
import torch

import ciard_fast.kernels as kernels
from ciard_fast.kernels import reference

triton_pgd = pytest.importorskip("ciard_fast.kernels.pgd_step_triton")
triton_rs = pytest.importorskip("ciard_fast.kernels.random_start_triton")
from ciard_fast.kernels import _triton_common  # noqa: E402  (needs triton, after the skips)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS, ALPHA = 8 / 255, 2 / 255
HALF_DTYPES = (torch.bfloat16, torch.float16)


def make_batch(shape, dtype=torch.float32, seed=0):
    """x0, x, grad with the corner cases in them: x0 at 0 and 1, x on the ε boundary, g = 0."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen)
    flat = x0.view(-1)
    n = flat.numel()
    flat[: n // 8] = 0.0
    flat[n // 8: n // 4] = 1.0
    x0 = x0.to(dtype)
    delta = (torch.rand(shape, generator=gen) * 2 - 1) * EPS
    x = (x0.float() + delta).clamp(0, 1)
    xf = x.view(-1)
    # Exactly on the boundary (computed in fp32 as both implementations do), then stepped further out.
    xf[n // 4: n // 2: 3] = (x0.float().view(-1)[n // 4: n // 2: 3] + EPS).clamp(0, 1)
    xf[n // 4 + 1: n // 2: 3] = (x0.float().view(-1)[n // 4 + 1: n // 2: 3] - EPS).clamp(0, 1)
    x = x.to(dtype)
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[::5] = 0.0
    return x0.to(DEVICE), x.to(DEVICE), grad.to(dtype).to(DEVICE)


def hyper(kind, value, batch):
    if kind == "float":
        return value
    if kind == "0d":
        return torch.tensor(value, device=DEVICE)
    # per-sample: distinct values, one sample with ε = 0 (projection onto x0 itself)
    per = torch.linspace(0.5, 1.5, batch) * value
    per[0] = 0.0 if batch > 1 else per[0]
    return per.to(DEVICE)


SHAPES = [(7,), (5, 13), (3, 3, 7, 5), (2, 1031)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("form", ["float", "0d", "per_sample"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
def test_step_fp32_bit_identical(shape, form, inplace):
    x0, x, grad = make_batch(shape)
    eps, alpha = hyper(form, EPS, shape[0]), hyper(form, ALPHA, shape[0])
    expected = reference.pgd_step(x, x0, grad, eps, alpha)
    if inplace:
        result = triton_pgd.pgd_step(x, x0, grad, eps, alpha, out=x)
        assert result is x
    else:
        before = x.clone()
        result = triton_pgd.pgd_step(x, x0, grad, eps, alpha)
        assert torch.equal(x, before), "out-of-place step modified x"
    assert result.dtype == torch.float32 and result.shape == x0.shape
    assert torch.equal(result, expected)


def test_step_corner_values_exact():
    # Each row is one case: (x, x0, g) -> expected, with ε = 0.25 and α = 0.125 exact in binary.
    x = torch.tensor([0.5, 0.5, 0.5, 0.75, 0.25, 0.0, 1.0, 0.9, 0.1])
    x0 = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0.0, 2.0, -3.0, 1.0, -1.0, -1.0, 1.0, 5.0, -5.0])
    expected = torch.tensor([0.5, 0.625, 0.375, 0.75, 0.25, 0.0, 1.0, 1.0, 0.0])
    result = triton_pgd.pgd_step(x.to(DEVICE), x0.to(DEVICE), g.to(DEVICE), 0.25, 0.125)
    assert torch.equal(result.cpu(), expected)


def ulp_at(scale, dtype):
    """Spacing of `dtype` at |scale| (float64), floored at the smallest normal spacing."""
    finfo = torch.finfo(dtype)
    mag = scale.abs().clamp_min(finfo.tiny)
    return torch.exp2(torch.floor(torch.log2(mag))) * finfo.eps


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("form", ["float", "0d", "per_sample"])
def test_step_half_within_one_ulp(dtype, form):
    shape = (16, 3, 6, 5)
    x0, x, grad = make_batch(shape, dtype)
    eps, alpha = hyper(form, EPS, shape[0]), hyper(form, ALPHA, shape[0])
    expected = reference.pgd_step(x, x0, grad, eps, alpha).double()
    result = triton_pgd.pgd_step(x, x0, grad, eps, alpha)
    assert result.dtype == dtype
    result = result.double()
    # The reference rounds α·sign(g) and x₀ ± ε to the dtype before adding; we round once. The
    # two can differ by one unit in the last place at the scale of the operands of that sum.
    e = eps if isinstance(eps, float) else eps.double().view(-1, *([1] * (x.dim() - 1)))
    a = alpha if isinstance(alpha, float) else alpha.double().view(-1, *([1] * (x.dim() - 1)))
    scale = torch.maximum(x.double() + a, x0.double() + e)
    diff = (result - expected).abs()
    assert bool((diff <= ulp_at(scale, dtype)).all()), f"max diff {diff.max().item()}"
    assert (diff > 0).double().mean().item() < 0.15, "too many elements differ for a rounding effect"
    assert float(result.min()) >= 0.0 and float(result.max()) <= 1.0


def test_step_fp32_matches_reference_for_other_grad_dtypes():
    x0, x, grad = make_batch((4, 9))
    # A gradient of 1e-50 is positive in fp64 but would be 0 after a cast to fp32: its sign counts.
    grad64 = grad.double()
    grad64[0, :3] = torch.tensor([1e-50, -1e-50, 0.0], dtype=torch.float64)
    expected = reference.pgd_step(x, x0, grad64, EPS, ALPHA).float()
    assert torch.equal(triton_pgd.pgd_step(x, x0, grad64, EPS, ALPHA), expected)
    grad_bf16 = grad.to(torch.bfloat16)
    assert torch.equal(triton_pgd.pgd_step(x, x0, grad_bf16, EPS, ALPHA),
                       reference.pgd_step(x, x0, grad_bf16.float(), EPS, ALPHA))


def test_step_nan_handling_matches_torch():
    x0, x, grad = make_batch((3, 8))
    grad[1, 2] = float("nan")  # torch.sign(NaN) = 0: no step there
    x[2, 5] = float("nan")     # a NaN pixel stays NaN (torch.max / clamp propagate it)
    expected = reference.pgd_step(x, x0, grad, EPS, ALPHA)
    result = triton_pgd.pgd_step(x, x0, grad, EPS, ALPHA)
    assert bool(torch.isnan(result[2, 5])) and not bool(torch.isnan(result[1, 2]))
    assert torch.equal(result.nan_to_num(-1.0), expected.nan_to_num(-1.0))


def test_step_non_contiguous_inputs_and_out():
    x0, x, grad = make_batch((6, 10))
    # Transposed views: same values, column-major memory.
    x0_t, x_t, g_t = x0.t().contiguous().t(), x.t().contiguous().t(), grad.t().contiguous().t()
    assert not x_t.is_contiguous()
    expected = reference.pgd_step(x, x0, grad, EPS, ALPHA)
    assert torch.equal(triton_pgd.pgd_step(x_t, x0_t, g_t, EPS, ALPHA), expected)
    # In place on a non-contiguous x: the result is written back through the view.
    result = triton_pgd.pgd_step(x_t, x0_t, g_t, EPS, ALPHA, out=x_t)
    assert result is x_t and torch.equal(x_t, expected)
    # A strided slice as out.
    buf = torch.zeros(6, 20, device=DEVICE)
    triton_pgd.pgd_step(x, x0, grad, EPS, ALPHA, out=buf[:, ::2])
    assert torch.equal(buf[:, ::2], expected) and not bool(buf[:, 1::2].any())


def test_step_channels_last_in_place_keeps_layout():
    x0, x, grad = make_batch((4, 3, 5, 6))
    per_eps = hyper("per_sample", EPS, 4)
    expected = reference.pgd_step(x, x0, grad, per_eps, ALPHA)
    x_cl, x0_cl, g_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, x0, grad))
    ptr = x_cl.data_ptr()
    triton_pgd.pgd_step(x_cl, x0_cl, g_cl, per_eps, ALPHA, out=x_cl)
    assert x_cl.data_ptr() == ptr and x_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x_cl, expected)
    # Mixed layouts fall back to contiguous copies and still agree.
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(triton_pgd.pgd_step(x_cl, x0, grad, per_eps, ALPHA), expected)


def test_step_empty_batch():
    x = torch.empty(0, 3, device=DEVICE)
    assert triton_pgd.pgd_step(x, x.clone(), x.clone(), EPS, ALPHA).shape == (0, 3)


@pytest.mark.parametrize("bad, error", [
    (dict(x0=torch.zeros(3, 5)), ValueError),                  # shape mismatch
    (dict(x=torch.zeros(3, 4, dtype=torch.float64)), TypeError),  # unsupported dtype
    (dict(x0=torch.zeros(3, 4, dtype=torch.float16)), TypeError),  # x0 dtype differs from x
    (dict(grad=torch.zeros(3, 4, dtype=torch.int64)), TypeError),
    (dict(eps=torch.zeros(4)), ValueError),                    # [4] is not [B] = [3]
    (dict(eps=-0.1), ValueError),
    (dict(alpha="0.1"), TypeError),
    (dict(out=torch.zeros(3, 4, dtype=torch.float16)), ValueError),
])
def test_step_rejects_bad_arguments(bad, error):
    args = dict(x=torch.rand(3, 4), x0=torch.rand(3, 4), grad=torch.randn(3, 4), eps=EPS, alpha=ALPHA, out=None)
    args.update(bad)
    args = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(error):
        triton_pgd.pgd_step(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter message")
def test_cpu_without_interpreter_says_how_to_enable_it(monkeypatch):
    monkeypatch.setattr(_triton_common, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_pgd.pgd_step(torch.rand(2, 3), torch.rand(2, 3), torch.randn(2, 3), EPS, ALPHA)


def test_no_host_sync_with_tensor_hyperparameters(monkeypatch):
    x0, x, grad = make_batch((4, 7))
    eps, alpha = hyper("per_sample", EPS, 4), hyper("0d", ALPHA, 4)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("host sync: a tensor was read on the host")

    for name in ("item", "__float__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = triton_pgd.pgd_step(x, x0, grad, eps, alpha)
    start = triton_rs.pgd_random_start(x0, eps)
    monkeypatch.undo()
    assert torch.equal(out, reference.pgd_step(x, x0, grad, eps, alpha))
    assert start.shape == x0.shape


# ---------------------------------------------------------------- random start

@pytest.mark.parametrize("dtype", (torch.float32,) + HALF_DTYPES, ids=str)
@pytest.mark.parametrize("form", ["float", "per_sample"])
def test_uniform_start_stays_in_ball_and_box(dtype, form):
    x0 = make_batch((8, 3, 9, 9), dtype)[0]
    eps = hyper(form, EPS, 8)
    start = triton_rs.pgd_random_start(x0, eps, kind="uniform")
    assert start.dtype == dtype and start.shape == x0.shape
    e = eps if isinstance(eps, float) else eps.double().view(-1, 1, 1, 1)
    # Rounding x₀ + noise to the dtype may overshoot the ball by half a unit in the last place.
    slack = torch.finfo(dtype).eps / 2 if dtype != torch.float32 else 1e-7
    assert bool(((start.double() - x0.double()).abs() <= e + slack).all())
    assert float(start.min()) >= 0.0 and float(start.max()) <= 1.0


def test_uniform_start_statistics():
    x0 = torch.full((64, 3, 16, 16), 0.5, device=DEVICE)  # far from 0 and 1: the clamp is inactive
    noise = (triton_rs.pgd_random_start(x0, EPS) - x0).double() / EPS
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.std().item() - 3 ** -0.5) < 0.01
    assert noise.min().item() >= -1.0 and noise.max().item() <= 1.0
    assert noise.min().item() < -0.99 and noise.max().item() > 0.99  # the whole ball is reached


def test_normal_start_statistics():
    x0 = torch.full((64, 3, 16, 16), 0.5, device=DEVICE)
    noise = (triton_rs.pgd_random_start(x0, EPS, kind="normal", sigma=0.001) - x0).double() / 0.001
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.std().item() - 1.0) < 0.02
    # and it is clamped to [0, 1] at the ends of the range
    edge = torch.tensor([[0.0, 1.0] * 64], device=DEVICE)
    start = triton_rs.pgd_random_start(edge, EPS, kind="normal", sigma=0.5)
    assert float(start.min()) >= 0.0 and float(start.max()) <= 1.0


def test_random_start_reproducible():
    x0 = make_batch((4, 50))[0]
    a = triton_rs.pgd_random_start(x0, EPS, seed=123)
    assert torch.equal(a, triton_rs.pgd_random_start(x0, EPS, seed=123))
    assert torch.equal(a, triton_rs.pgd_random_start(x0, EPS, seed=torch.tensor([123], device=DEVICE)))
    assert not torch.equal(a, triton_rs.pgd_random_start(x0, EPS, seed=124))
    gen = torch.Generator(device=DEVICE)
    b = triton_rs.pgd_random_start(x0, EPS, generator=gen.manual_seed(7))
    assert torch.equal(b, triton_rs.pgd_random_start(x0, EPS, generator=gen.manual_seed(7)))
    torch.manual_seed(5)
    c = triton_rs.pgd_random_start(x0, EPS, kind="normal")
    torch.manual_seed(5)
    assert torch.equal(c, triton_rs.pgd_random_start(x0, EPS, kind="normal"))
    assert not torch.equal(c, triton_rs.pgd_random_start(x0, EPS, kind="normal"))


@pytest.mark.parametrize("bad, error", [
    (dict(kind="gaussian"), ValueError),
    (dict(sigma=-1.0), ValueError),
    (dict(eps=-0.5), ValueError),
    (dict(seed=1.5), TypeError),
    (dict(seed=3, generator=torch.Generator()), ValueError),
])
def test_random_start_rejects_bad_arguments(bad, error):
    args = dict(eps=EPS)
    args.update(bad)
    if "generator" in args and DEVICE != "cpu":
        args["generator"] = torch.Generator(device=DEVICE)
    with pytest.raises(error):
        triton_rs.pgd_random_start(torch.rand(2, 3, device=DEVICE), **args)


# ---------------------------------------------------------------- dispatch

def install_spies(monkeypatch, names):
    """Record ('reference' | 'triton', op) for every call that reaches an implementation."""
    calls = []
    ops = kernels._triton_ops()

    def wrap(path, name, original):
        def spy(*args, **kwargs):
            calls.append((path, name))
            return original(*args, **kwargs)
        return spy

    for name in names:
        monkeypatch.setattr(reference, name, wrap("reference", name, getattr(reference, name)))
        monkeypatch.setitem(ops, name, wrap("triton", name, ops[name]))
    return calls


AUTO = "triton" if DEVICE == "cuda" else "reference"


@pytest.mark.parametrize("mode, expected", [("reference", "reference"), ("triton", "triton"),
                                            ("auto", AUTO), ("", AUTO), (" Triton ", "triton")])
def test_env_switch_forces_each_path(monkeypatch, mode, expected):
    x0, x, grad = make_batch((2, 5))
    want_step = reference.pgd_step(x, x0, grad, EPS, ALPHA)
    monkeypatch.setenv("CIARD_FAST_KERNELS", mode)
    # On a GPU the first use runs the dispatch's self-check, which calls both implementations.
    kernels.pgd_step(x, x0, grad, EPS, ALPHA)
    kernels.pgd_random_start(x0, EPS, seed=3)
    calls = install_spies(monkeypatch, ("pgd_step", "pgd_random_start"))
    assert kernels.backend_for(x) == expected
    assert torch.equal(kernels.pgd_step(x, x0, grad, EPS, ALPHA), want_step)
    first = kernels.pgd_random_start(x0, EPS, seed=3)
    assert torch.equal(first, kernels.pgd_random_start(x0, EPS, seed=3))
    assert calls == [(expected, "pgd_step")] + [(expected, "pgd_random_start")] * 2


def test_env_switch_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv("CIARD_FAST_KERNELS", "cuda")
    with pytest.raises(ValueError, match="CIARD_FAST_KERNELS"):
        kernels.pgd_step(torch.rand(2), torch.rand(2), torch.rand(2), EPS, ALPHA)


def test_missing_triton_falls_back_or_explains(monkeypatch):
    monkeypatch.setattr(kernels, "_triton_state", {"error": "ImportError: no triton here"})
    x0, x, grad = make_batch((2, 5))
    monkeypatch.setenv("CIARD_FAST_KERNELS", "auto")
    assert kernels.backend_for(x) == "reference"
    assert torch.equal(kernels.pgd_step(x, x0, grad, EPS, ALPHA), reference.pgd_step(x, x0, grad, EPS, ALPHA))
    monkeypatch.setenv("CIARD_FAST_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="no triton here"):
        kernels.pgd_step(x, x0, grad, EPS, ALPHA)


def test_package_imports_and_runs_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, ciard_fast.kernels as k\n"
        "assert not k.triton_available()\n"
        "x, g = torch.rand(2, 3), torch.randn(2, 3)\n"
        "assert k.backend_for(x) == 'reference'\n"
        "assert torch.equal(k.pgd_step(x, x, g, 0.1, 0.05), k.reference.pgd_step(x, x, g, 0.1, 0.05))\n"
        "assert k.pgd_random_start(x, 0.1, seed=1).shape == (2, 3)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
