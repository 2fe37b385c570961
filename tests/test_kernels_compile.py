"""The Triton kernels compile for a real GPU target (sm_90), even on a machine without a GPU.

The CPU tests run the kernels through Triton's interpreter, which is more permissive than the
compiler; this catches what only the compiler rejects. Needs ptxas (Triton's bundled one, a CUDA
toolkit's, or $TRITON_PTXAS_PATH); skipped without it.
"""
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))


def find_ptxas():
    if os.environ.get("TRITON_PTXAS_PATH"):
        return os.environ["TRITON_PTXAS_PATH"]
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    for candidate in (bundled, shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


@pytest.mark.slow
def test_all_kernel_variants_compile_for_sm90():
    ptxas = find_ptxas()
    if ptxas is None:
        pytest.skip("no ptxas: neither bundled with triton nor from a CUDA toolkit")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_PTXAS_PATH"] = ptxas
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence the 3.9 default-change warning
    result = subprocess.run([sys.executable, os.path.join(HERE, "_triton_compile_check.py"), "90"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "compiled" in result.stdout
