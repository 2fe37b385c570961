"""ctypes loader for libciard_native (the C / CUDA build of the fused PGD step).

What it is for: an example of the project's ops behind a plain C ABI (``ciard_native.h``) and an
entry point for hosts that are not Python (a C/C++ or other FFI caller doing its own PGD loop).
It is **not** a backend of ``ciard_fast.kernels``: nothing in the library calls it; only its
tests and ``benchmarks/bench_pgd.py`` (the ``native`` row) do. It was measured as a candidate
CPU backend and rejected: on the 2-core development CPU, fp32, [B, 3, 32, 32], the step took
178 µs vs torch's 116 µs at B = 32 and 1426 vs 2034 µs at B = 256 with one thread, 823 vs
678 µs at B = 256 with two (noisy, shared machine); and the step is about 0.3 % of a PGD-10
attack there (10 steps ≈ 1.2 ms of a 357 ms attack of the tiny model), so no version of it can
move end-to-end speed on CPU. On a GPU the Triton kernel is the fused step.

The library is optional: build it with CMake from the repository root,

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build

and ``load()`` finds it ($CIARD_NATIVE_LIB, this folder, or <repo>/build). Without it ``load()``
returns None and nothing else changes: the Triton kernels and the torch reference do not need it.
"""
import ctypes
import os

import torch

__all__ = ["load", "find_library", "NativeLibrary"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(_HERE))
_NAMES = ("libciard_native.so", "libciard_native.dylib", "ciard_native.dll")
_loaded = {}


def find_library():
    """Path of the built library, or None: $CIARD_NATIVE_LIB, then this folder, then <repo>/build."""
    env = os.environ.get("CIARD_NATIVE_LIB")
    if env:
        return env if os.path.isfile(env) else None
    for folder in (_HERE, os.path.join(_REPO, "build")):
        for name in _NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def load(path=None):
    """A NativeLibrary for `path` (default: find_library()), or None when none is built."""
    path = path or find_library()
    if path is None:
        return None
    path = os.path.abspath(path)
    if path not in _loaded:
        _loaded[path] = NativeLibrary(ctypes.CDLL(path))
    return _loaded[path]


_F32P = ctypes.POINTER(ctypes.c_float)
_STEP_ARGS = [_F32P, _F32P, _F32P, _F32P, ctypes.c_int64, ctypes.c_int64, _F32P, ctypes.c_int64, _F32P,
              ctypes.c_int64]


def _ptr(tensor):
    return ctypes.cast(tensor.data_ptr(), _F32P)


class NativeLibrary:
    """Typed wrappers around the C ABI of kernels/native/ciard_native.h."""

    def __init__(self, cdll):
        self._lib = cdll
        cdll.ciard_pgd_step_f32.argtypes = _STEP_ARGS
        cdll.ciard_pgd_step_f32.restype = ctypes.c_int
        cdll.ciard_native_has_cuda.restype = ctypes.c_int
        self.has_cuda = bool(cdll.ciard_native_has_cuda())
        if self.has_cuda:
            cdll.ciard_pgd_step_f32_cuda.argtypes = _STEP_ARGS + [ctypes.c_void_p]
            cdll.ciard_pgd_step_f32_cuda.restype = ctypes.c_int

    def pgd_step(self, x, x0, grad, eps, alpha, out=None):
        """The PGD step of reference.pgd_step on contiguous float32 tensors (CPU, or CUDA when built).

        eps, alpha: Python numbers, 0-d or [B] tensors. out: None or a contiguous float32 tensor
        like x (may be x). Returns out or a new tensor.
        """
        for name, t in (("x", x), ("x0", x0), ("grad", grad)) + ((("out", out),) if out is not None else ()):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or not t.is_contiguous():
                raise TypeError(f"{name} must be a contiguous float32 tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
            if t.shape != x.shape or t.device != x.device:
                raise ValueError(f"{name} must match x ({tuple(x.shape)} on {x.device}), got "
                                 f"{tuple(t.shape)} on {t.device}")
        if x.is_cuda and not self.has_cuda:
            raise RuntimeError("this libciard_native was built without CUDA; rebuild with a CUDA toolkit")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"no native PGD step for tensors on {x.device}")
        batch = x.shape[0] if x.dim() > 0 else 1
        inner = x.numel() // batch if batch else 0
        eps_t, eps_stride = self._per_sample(eps, batch, x.device, "eps")
        alpha_t, alpha_stride = self._per_sample(alpha, batch, x.device, "alpha")
        out = torch.empty_like(x) if out is None else out
        args = [_ptr(x), _ptr(x0), _ptr(grad), _ptr(out), batch, inner, _ptr(eps_t), eps_stride, _ptr(alpha_t),
                alpha_stride]
        if x.is_cuda:
            status = self._lib.ciard_pgd_step_f32_cuda(*args, ctypes.c_void_p(torch.cuda.current_stream(x.device).cuda_stream))
        else:
            status = self._lib.ciard_pgd_step_f32(*args)
        if status != 0:
            raise RuntimeError(f"ciard_pgd_step_f32 failed with status {status}")
        return out

    @staticmethod
    def _per_sample(value, batch, device, name):
        """(float32 tensor on device, stride): stride 0 for one value, 1 for [B] values."""
        if isinstance(value, torch.Tensor):
            if value.dim() == 0:
                return value.to(device=device, dtype=torch.float32).reshape(1), 0
            if value.shape == (batch,):
                return value.to(device=device, dtype=torch.float32).contiguous(), 1
            raise ValueError(f"{name} must be a number, a 0-d or a [{batch}] tensor, got shape {tuple(value.shape)}")
        return torch.tensor([float(value)], dtype=torch.float32, device=device), 0
