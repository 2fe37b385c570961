"""Shipping a trained student: ONNX / TorchScript / safetensors export, verified, with a model card.

    >>> import ciard_fast
    >>> ciard_fast.export("runs/demo/best.pt", format="onnx", out="student.onnx")

See :mod:`ciard_fast.deploy.exporter` (the export and its verification) and
:mod:`ciard_fast.deploy.fold` (the traced graph and BatchNorm folding). The model card itself is
written by :mod:`ciard_fast.engine.model_card`. ``ciard-fast export`` is the command line.
"""
from .exporter import (FORMATS, ExportResult, ExportVerificationError, export, load_safetensors_student,
                       safetensors_metadata)
from .fold import deployable, fold_batchnorm, fold_conv_bn

__all__ = ["FORMATS", "ExportResult", "ExportVerificationError", "deployable", "export", "fold_batchnorm",
           "fold_conv_bn", "load_safetensors_student", "safetensors_metadata"]
