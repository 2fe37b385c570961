"""The deployable graph of a student: input normalisation inside, eval-mode BatchNorm folded.

:func:`deployable` turns a zoo model (an :class:`~ciard_fast.models.ImageClassifier`, which holds
its normalisation as buffers) into a ``torch.fx.GraphModule`` computing exactly its eval-mode
forward on [0, 1] images: ``(x - mean) / std`` followed by the layers, with none of the Python
input checks that an exporter cannot trace. :func:`fold_batchnorm` then rewrites every
``Conv2d -> BatchNorm2d`` pair into one convolution.

Folding (Ioffe & Szegedy 2015, "Batch Normalization", arXiv 1502.03167: at inference BN is the
per-channel affine map y = γ (z - μ) / sqrt(σ² + ε) + β). With s = γ / sqrt(σ² + ε), a conv
z = W * x + b followed by BN equals the conv with

    W' = W · s  (per output channel)        b' = (b - μ) · s + β.

The arithmetic is done in float64 and rounded once to the conv's dtype, so the folded model
differs from the unfolded one only by float32 rounding (about 1e-6 relative).
"""
import copy
from collections import Counter

import torch
import torch.fx
from torch import nn

__all__ = ["deployable", "fold_batchnorm", "fold_conv_bn"]


class _Deployed(nn.Module):
    """[0, 1] images -> logits: the model's normalisation, then its layers (traced by FX)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        model = self.model
        if not hasattr(model, "forward_normalized"):  # a plain nn.Module: its forward is the graph
            return model(x)
        if getattr(model, "mean", None) is not None:  # resolved while tracing: a Python attribute
            x = (x - model.mean) / model.std
        return model.forward_normalized(x)


def deployable(model):
    """A ``torch.fx.GraphModule`` computing ``model``'s forward on [0, 1] images (a deep copy;
    `model` is untouched). The model must be in eval mode (its BatchNorm uses running statistics).

    Raises:
        TypeError: not an ``nn.Module``.
        ValueError: the model is in train mode, or its forward cannot be traced by ``torch.fx``
            (the message names the FX error).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"deployable needs an nn.Module; got {type(model).__name__}")
    if model.training:
        raise ValueError("the model is in train mode; call model.eval() first (an export uses BatchNorm's "
                         "running statistics)")
    copied = copy.deepcopy(model).eval()
    try:
        gm = torch.fx.symbolic_trace(_Deployed(copied))
    except Exception as err:  # data-dependent Python control flow in a custom layout
        raise ValueError(f"{type(model).__name__} cannot be traced by torch.fx for export "
                         f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    return gm.eval()


def fold_conv_bn(conv, bn):
    """A new ``nn.Conv2d`` equal to ``bn(conv(x))`` for an eval-mode ``bn`` (float64 arithmetic).

    Raises ValueError when `bn` has no running statistics or its channels do not match."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels but the conv {conv.out_channels} outputs")
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64,
                                                                              device=w.device)
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter((w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype))
    fused.bias = nn.Parameter(((b - mean) * scale + beta).to(conv.weight.dtype))
    return fused


def fold_batchnorm(model):
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` into it.

    Args:
        model: an eval-mode ``nn.Module`` (e.g. from :func:`deployable`); a non-FX module is traced
            first. It is not modified: folding works on a copy.

    Returns:
        ``(graph_module, folded, kept)``: the folded ``GraphModule`` and the number of BatchNorms
        folded and kept. A BatchNorm is kept (and still runs, in eval mode) when its input is not a
        convolution whose only consumer it is — e.g. the pre-activation BNs of PreAct-ResNet, which
        follow an addition — or when the conv or the BN is called more than once.

    Raises:
        ValueError: the model (or one of its BatchNorms) is in train mode.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model; call model.eval() first")
    gm = copy.deepcopy(model) if isinstance(model, torch.fx.GraphModule) else deployable(model)
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = kept = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        bn = modules[node.target]
        if bn.training:
            raise ValueError(f"BatchNorm {node.target!r} is in train mode; call model.eval() first")
        prev = node.args[0] if node.args else None
        foldable = (
            isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
            and isinstance(prev, torch.fx.Node) and prev.op == "call_module"
            and type(modules[prev.target]) is nn.Conv2d  # not a subclass with its own forward
            and len(prev.users) == 1 and calls[prev.target] == 1 and calls[node.target] == 1
            and len(node.args) == 1 and not node.kwargs
        )
        if not foldable:
            kept += 1
            continue
        gm.add_submodule(prev.target, fold_conv_bn(modules[prev.target], bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), folded, kept
