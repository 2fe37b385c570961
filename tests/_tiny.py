"""Tiny models for tests that need a network but not the zoo (fast on CPU, BN so modes matter)."""
import torch
from torch import nn


def tiny_convnet(num_classes=10, width=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def tiny_convnet_nobn(num_classes=10, width=8, seed=0):
    """No BatchNorm: per-rank batch statistics would make a 2-rank run differ from one process
    (SyncBatchNorm needs a GPU), so the distributed equivalence tests use this."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
