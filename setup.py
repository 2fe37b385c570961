"""Packaging for ciard-fast.

The top-level ``kernels/`` folder (pure-torch references + Triton kernels) is installed as the
subpackage ``ciard_fast.kernels`` so that it can be read and benchmarked on its own while the
library imports it under one name.

torch is *not* pinned to a CUDA or CPU flavour: install the build you want first (on a machine
without a GPU, ``pip install torch --index-url https://download.pytorch.org/whl/cpu``); a torch that
satisfies ``torch>=2.4`` is then left alone, so installing never pulls a second torch.
"""
import os
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "ciard_fast", "version.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def read_readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


class BuildPyWithNative(build_py):
    """With CIARD_FAST_BUILD_NATIVE=1, also build kernels/native (CMakeLists.txt: C always, CUDA
    when a toolkit is found) and ship libciard_native next to its ctypes loader. Off by default:
    the library is optional (the Triton kernels and the pure-torch references cover every op)."""

    def run(self):
        super().run()
        if os.environ.get("CIARD_FAST_BUILD_NATIVE") != "1":
            return
        build_dir = os.path.join(HERE, "build")
        subprocess.check_call(["cmake", "-S", HERE, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"])
        subprocess.check_call(["cmake", "--build", build_dir])
        target = os.path.join(self.build_lib, "ciard_fast", "kernels", "native")
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(build_dir):
            if name.startswith("libciard_native"):
                shutil.copy2(os.path.join(build_dir, name), target)


setup(
    name="ciard-fast",
    version=read_version(),
    description="Fast, exact adversarial robustness distillation (CIARD, ARD, RSLAD, IAD, AdaAD, MTARD, B-MTARD)",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=[
        "ciard_fast",
        "ciard_fast.models",
        "ciard_fast.data",
        "ciard_fast.attacks",
        "ciard_fast.methods",
        "ciard_fast.engine",
        "ciard_fast.deploy",
        "ciard_fast.kernels",
        "ciard_fast.kernels.native",
    ],
    package_dir={"ciard_fast": "ciard_fast", "ciard_fast.kernels": "kernels"},
    package_data={"ciard_fast": ["presets/*.yaml"], "ciard_fast.kernels.native": ["*.h", "*.c", "*.cu"]},
    cmdclass={"build_py": BuildPyWithNative},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pyyaml",
        "scikit-learn",  # ships the embedded 8x8 digits set used by the demo and the tests
        "pillow",        # decodes Tiny-ImageNet JPEGs once into a .npy cache
        "matplotlib",    # curves.png of every run, comparison.png / per_attack.png of compare
        "tqdm",          # progress bars on a terminal
        'triton; platform_system == "Linux"',
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130"],
        "autoattack": ["pyautoattack==0.2.0"],
        "export": ["onnx", "onnxruntime", "safetensors"],
        "tensorboard": ["tensorboard"],  # --tensorboard true
        "cluster": ["submitit>=1.5"],    # compare --launcher local | slurm
        "wandb": ["wandb"],              # --wandb true
        "dev": ["pytest", "pyautoattack==0.2.0", "onnx", "onnxruntime", "safetensors", "tensorboard", "submitit>=1.5",
                "wandb"],
    },
    entry_points={"console_scripts": ["ciard-fast=ciard_fast.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
