"""ComfyUI tensor layouts <-> the model's: IMAGE (B, H, W, C) in 0..1 and MASK (B, H, W).

Every IMAGE and MASK a node receives is normalised here, once, so the model code never
guesses shapes; bad values are refused here, naming the input.
"""

from __future__ import annotations

from typing import Callable

import torch


def split_image(image: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IMAGE (B, H, W, C) -> RGB (B, 3, H, W) float32 and alpha (B, H, W) or None.

    C may be 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); grey is repeated to RGB.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 2, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE (batch, height, width, 1-4 channels); got {shape}.")
    if image.shape[0] == 0:
        raise ValueError(f"{name}: the image batch is empty; connect a node that outputs at least one image.")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{name}: the image is {image.shape[2]}x{image.shape[1]} pixels; it has no pixels.")
    image = image.float()
    _check_finite(image, name, "pixels")
    channels = image.shape[-1]
    colour_channels = 3 if channels >= 3 else 1
    colour = image[..., :colour_channels].movedim(-1, 1)
    if colour_channels == 1:
        colour = colour.expand(-1, 3, -1, -1)
    alpha = image[..., colour_channels] if channels in (2, 4) else None
    return colour.contiguous(), alpha


def normalise_mask(mask: torch.Tensor, batch: int, name: str,
                   repeat_to_batch_size: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Any MASK -> (batch, H, W) float32, as ComfyUI's own mask nodes read one.

    (H, W), (1, H, W), (B, H, W) and (B, 1, H, W) all work: the last two dimensions are the
    mask, the rest is its batch, cycled or cut to ``batch`` by ComfyUI's ``repeat_to_batch_size``.
    The mask keeps its own size; it is resized to the image where it is applied.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected a MASK (batch, height, width) or (height, width); got {shape}.")
    if mask.numel() == 0:
        raise ValueError(f"{name}: the mask is empty ({tuple(mask.shape)}); connect a mask with pixels.")
    mask = mask.float().reshape(-1, mask.shape[-2], mask.shape[-1])
    _check_finite(mask, name, "values")
    return repeat_to_batch_size(mask, batch)


def _check_finite(tensor: torch.Tensor, name: str, what: str) -> None:
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name}: {bad} {what} are NaN or infinite. The node that made it produced invalid "
                         "numbers; fix or replace that node's output before stylizing.")


def join_image(rgb: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """RGB (B, 3, H, W), clamped to 0..1, plus optional alpha (B, H, W) -> IMAGE (B, H, W, 3 or 4)."""
    image = rgb.clamp(0.0, 1.0).movedim(1, -1)
    if alpha is not None:
        image = torch.cat([image, alpha.to(image).unsqueeze(-1)], dim=-1)
    return image
