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

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "ciard_fast", "version.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def read_readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


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
        "ciard_fast.kernels",
    ],
    package_dir={"ciard_fast": "ciard_fast", "ciard_fast.kernels": "kernels"},
    package_data={"ciard_fast": ["presets/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pyyaml",
        "scikit-learn",  # ships the embedded 8x8 digits set used by the demo and the tests
        "pillow",        # decodes Tiny-ImageNet JPEGs once into a .npy cache
        'triton; platform_system == "Linux"',
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130"],
        "autoattack": ["pyautoattack==0.2.0"],
        "plot": ["matplotlib"],
        "dev": ["pytest", "matplotlib", "pyautoattack==0.2.0"],
    },
    entry_points={"console_scripts": ["ciard-fast=ciard_fast.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
