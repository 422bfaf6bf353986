"""Masks: where the stylization shows, with soft edges, over the untouched content."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def prepare_mask(mask: torch.Tensor, size: tuple[int, int], feather: float = 0.0,
                 invert: bool = False) -> torch.Tensor:
    """A (B, H, W) mask in 0..1 as (B, 1, H, W) at ``size``, inverted and feathered on request.

    Feathering softens the mask's edge inwards by a Gaussian of sigma ``feather`` / 2 pixels:
    the result never exceeds the (resized) mask, so masked-out pixels stay exactly the content.
    """
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W); got {tuple(mask.shape)}.")
    weights = mask.float().clamp(0.0, 1.0).unsqueeze(1)
    if tuple(weights.shape[-2:]) != tuple(size):
        weights = F.interpolate(weights, size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    if invert:
        weights = 1.0 - weights
    if feather > 0:
        weights = torch.minimum(weights, _gaussian_blur(weights, feather / 2.0))
    return weights


def shows_nothing(mask: torch.Tensor, invert: bool = False) -> bool:
    """Whether a mask (any shape) leaves every pixel as the content: nothing to stylize.

    Known before any work, so a run can skip the model (e.g. ComfyUI's LoadImage gives an
    all-zero mask for a picture without a painted mask).
    """
    weights = mask.float().clamp(0.0, 1.0)
    return bool(((1.0 - weights) if invert else weights).max() <= 0.0)


def composite(content: torch.Tensor, stylized: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``stylized`` where ``weights`` is 1, ``content`` where 0: (B, C, H, W) each, weights (B|1, 1, H, W)."""
    return torch.lerp(content.to(stylized), stylized, weights.to(stylized))


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))
