"""CFSD (Chung et al. 2024): how far stylization moved the content's patch similarities.

For each image, the relu3_1 features of an ImageNet VGG-19 (inputs normalised by the ImageNet
mean and deviation) give one distribution per position: the softmax over all positions of the
feature dot products divided by the channel count. CFSD is the KL divergence from the content's
distributions to the stylized image's, summed over positions (the reference's
``kl_div(log q, p, reduction="batchmean")`` at batch 1). The positions' similarity matrix is
(H/4 * W/4)^2 (1 GiB at 512 x 512 in float32), so it is computed a block of rows at a time.
"""

from __future__ import annotations

import torch
from torch import nn

from .networks import vgg19_to_relu3_1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RELU3_1 = 11  # its index in torchvision's vgg19().features
ROWS_PER_BLOCK = 1024


class CFSD(nn.Module):
    """``forward(stylized, content)``: (B,) CFSD of (B, 3, H, W) images in 0..1 of one size."""

    def __init__(self):
        super().__init__()
        self.vgg = vgg19_to_relu3_1()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, positions, channels) relu3_1 features divided by the channel count."""
        features = self.vgg.taps((image - self.mean) / self.std, (RELU3_1,))[0]
        return features.flatten(2).transpose(1, 2) / features.shape[1]

    def forward(self, stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        if stylized.shape != content.shape:
            raise ValueError(f"CFSD compares images of one size, got {tuple(stylized.shape)} and "
                             f"{tuple(content.shape)}")
        return patch_similarity_divergence(self.features(stylized), self.features(content))


def patch_similarity_divergence(stylized: torch.Tensor, content: torch.Tensor,
                                rows_per_block: int = ROWS_PER_BLOCK) -> torch.Tensor:
    """sum over positions i of KL(softmax(c_i . c_j)_j || softmax(s_i . s_j)_j), per batch item,
    from (B, positions, channels) features; accumulated in float64."""
    total = torch.zeros(stylized.shape[0], dtype=torch.float64, device=stylized.device)
    for start in range(0, stylized.shape[1], rows_per_block):
        rows = slice(start, start + rows_per_block)
        log_p = torch.log_softmax(content[:, rows] @ content.transpose(1, 2), dim=-1)
        log_q = torch.log_softmax(stylized[:, rows] @ stylized.transpose(1, 2), dim=-1)
        # Both logarithms from log_softmax, so that equal images give exactly 0; the reference's
        # kl_div takes log(softmax) for p, which differs by rounding only.
        total += (log_p.exp() * (log_p - log_q)).sum(dim=(1, 2), dtype=torch.float64)
    return total
