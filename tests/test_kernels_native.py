"""libciard_native (kernels/native, built with CMake into a temporary folder) vs the reference."""
import os
import shutil
import subprocess

import pytest
import torch

from ciard_fast.kernels import native, reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TOOLS = shutil.which("cmake") is not None and any(shutil.which(c) for c in ("cc", "gcc", "clang"))
pytestmark = pytest.mark.skipif(not HAVE_TOOLS, reason="cmake or a C compiler is missing")


def build(folder, cuda):
    configure = ["cmake", "-S", REPO, "-B", str(folder), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCIARD_NATIVE_CUDA={'ON' if cuda else 'OFF'}"]
    for cmd in (configure, ["cmake", "--build", str(folder)]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    path = os.path.join(str(folder), "libciard_native.so")
    assert os.path.isfile(path), os.listdir(str(folder))
    return path


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return native.load(build(tmp_path_factory.mktemp("native_cpu"), cuda=False))


def batch(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen)
    x0.view(-1)[::7] = 0.0
    x0.view(-1)[3::7] = 1.0
    x = (x0 + (torch.rand(shape, generator=gen) * 2 - 1) * 0.05).clamp(0, 1)
    x.view(-1)[1::11] = (x0.view(-1)[1::11] + 8 / 255).clamp(0, 1)  # on the ε boundary
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[::5] = 0.0
    return x, x0, grad


@pytest.mark.parametrize("shape", [(1,), (7, 13), (4, 3, 9, 5)], ids=str)
@pytest.mark.parametrize("form", ["float", "0d", "per_sample"])
def test_bit_identical_to_reference(lib, shape, form):
    x, x0, grad = batch(shape)
    if form == "float":
        eps, alpha = 8 / 255, 2 / 255
    elif form == "0d":
        eps, alpha = torch.tensor(8 / 255), torch.tensor(2 / 255)
    else:
        eps, alpha = torch.linspace(0, 0.1, shape[0]), torch.linspace(0.01, 0.02, shape[0])
    expected = reference.pgd_step(x, x0, grad, eps, alpha)
    assert torch.equal(lib.pgd_step(x, x0, grad, eps, alpha), expected)
    assert lib.pgd_step(x, x0, grad, eps, alpha, out=x) is x and torch.equal(x, expected)


def test_nan_semantics_match_torch(lib):
    x, x0, grad = batch((3, 8))
    grad[0, 1] = float("nan")
    x[2, 2] = float("nan")
    expected = reference.pgd_step(x, x0, grad, 0.1, 0.05)
    assert torch.equal(lib.pgd_step(x, x0, grad, 0.1, 0.05).nan_to_num(-1.0), expected.nan_to_num(-1.0))


def test_rejects_what_the_abi_cannot_take(lib):
    x, x0, grad = batch((3, 4))
    with pytest.raises(TypeError):
        lib.pgd_step(x.double(), x0, grad, 0.1, 0.05)
    with pytest.raises(TypeError):
        lib.pgd_step(x.t(), x0.t(), grad.t(), 0.1, 0.05)  # non-contiguous
    with pytest.raises(ValueError):
        lib.pgd_step(x, x0, grad, torch.ones(4), 0.05)


def test_loader_returns_none_when_not_built(monkeypatch, tmp_path):
    monkeypatch.setenv("CIARD_NATIVE_LIB", str(tmp_path / "missing.so"))
    assert native.find_library() is None and native.load() is None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA toolkit")
def test_cuda_build(tmp_path):
    lib = native.load(build(tmp_path, cuda=True))
    assert lib.has_cuda
    x, x0, grad = batch((4, 3, 5, 5))
    expected = reference.pgd_step(x, x0, grad, 8 / 255, torch.linspace(0.01, 0.02, 4))
    assert torch.equal(lib.pgd_step(x, x0, grad, 8 / 255, torch.linspace(0.01, 0.02, 4)), expected)
    if torch.cuda.is_available():
        on_gpu = lib.pgd_step(x.cuda(), x0.cuda(), grad.cuda(), 8 / 255, torch.linspace(0.01, 0.02, 4))
        assert torch.equal(on_gpu.cpu(), expected)
