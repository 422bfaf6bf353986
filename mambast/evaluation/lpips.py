"""LPIPS (Zhang et al. 2018, version 0.1, AlexNet trunk): the content distance of ArtFID.

The same arithmetic as the ``lpips`` package's ``LPIPS(net="alex")``: inputs scaled to -1..1 and
shifted by its scaling layer, the five AlexNet ReLU outputs normalised over channels, their
squared differences weighted by the learned 1x1 layers (``alex.pth``, shipped inside the
``lpips`` package) and averaged over the image. Written here so that it runs without
torchvision; ``tests/test_evaluation.py`` checks it against the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .networks import ALEXNET_TAPS, alexnet_features

CHANNELS = (64, 192, 384, 256, 256)
# The lpips package's ScalingLayer, for inputs in -1..1.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """``forward(a, b)``: (B,) distances of (B, C, H, W) images in 0..1 (C = 3, or 1 for grayscale,
    which the scaling layer spreads over three channels as the package does)."""

    def __init__(self):
        super().__init__()
        self.trunk = alexnet_features()
        # lin{k}.model.1.weight in alex.pth (model.0 is a dropout, idle in evaluation).
        self.linear = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def load_linear_layers(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the weights of ``alex.pth`` (keys ``lin0.model.1.weight`` ... ``lin4...``)."""
        with torch.no_grad():
            for index, parameter in enumerate(self.linear):
                parameter.copy_(tensors[f"lin{index}.model.1.weight"])

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The five normalised AlexNet maps of one batch (reusable for many comparisons)."""
        scaled = ((image * 2 - 1) - self.shift) / self.scale
        return [_unit_channels(x) for x in self.trunk.taps(scaled, ALEXNET_TAPS)]

    def distance(self, features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor:
        total = 0
        for weight, a, b in zip(self.linear, features_a, features_b):
            total = total + F.conv2d((a - b) ** 2, weight).mean(dim=(1, 2, 3))
        return total

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(a), self.features(b))


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
