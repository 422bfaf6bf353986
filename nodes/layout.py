"""ComfyUI tensor layouts <-> the model's: IMAGE (B, H, W, C) in 0..1 and MASK (B, H, W)."""

from __future__ import annotations

import torch


def split_image(image: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IMAGE (B, H, W, C) -> RGB (B, 3, H, W) float32 and alpha (B, H, W) or None.

    C may be 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); grey is repeated to RGB.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 2, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE (batch, height, width, 1-4 channels); got {shape}.")
    if image.shape[0] == 0:
        raise ValueError(f"{name}: the image batch is empty.")
    image = image.float()
    channels = image.shape[-1]
    colour_channels = 3 if channels >= 3 else 1
    colour = image[..., :colour_channels].movedim(-1, 1)
    if colour_channels == 1:
        colour = colour.expand(-1, 3, -1, -1)
    alpha = image[..., colour_channels] if channels in (2, 4) else None
    return colour.contiguous(), alpha


def join_image(rgb: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """RGB (B, 3, H, W), clamped to 0..1, plus optional alpha (B, H, W) -> IMAGE (B, H, W, 3 or 4)."""
    image = rgb.clamp(0.0, 1.0).movedim(1, -1)
    if alpha is not None:
        image = torch.cat([image, alpha.to(image).unsqueeze(-1)], dim=-1)
    return image


def pick(batch: torch.Tensor | None, index: int) -> torch.Tensor | None:
    """Item ``index`` of a batch, keeping the batch dimension; a batch of one serves every index."""
    if batch is None:
        return None
    return batch[index if batch.shape[0] > 1 else 0].unsqueeze(0)
