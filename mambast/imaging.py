"""Image pre/post-processing around the network: padding, resizing, cropping."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_image(image: torch.Tensor, name: str, minimum: int = 8) -> None:
    """Raise a ValueError, naming the input, unless ``image`` is a (B, 3, H, W) float tensor."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} image must be a (B, 3, H, W) tensor; got {shape}.")
    if not image.is_floating_point():
        raise ValueError(f"{name} image must be float in 0..1; got {image.dtype} (divide uint8 by 255).")
    if image.shape[2] < minimum or image.shape[3] < minimum:
        raise ValueError(f"{name} image is {image.shape[3]}x{image.shape[2]} pixels; both sides must be at "
                         f"least {minimum}.")


def padded_size(height: int, width: int, multiple: int, minimum_multiples: int = 2) -> tuple[int, int]:
    """The size rounded up to multiples of ``multiple``, at least ``minimum_multiples`` of them.

    Two patches per side is the least the CNN decoder can take (its reflection padding needs
    a token grid of at least 2 x 2).
    """
    def round_up(side: int) -> int:
        return max(-(-side // multiple), minimum_multiples) * multiple

    return round_up(height), round_up(width)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) at the bottom and right to :func:`padded_size`."""
    return reflect_to_size(image, padded_size(*image.shape[-2:], multiple))


def reflect_to_size(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Extend (B, C, H, W) at the bottom and right by mirroring until it is ``size`` (H, W).

    A reflection must be shorter than the side it mirrors, so a long extension is done in
    steps (which tiles the image with mirrored copies).
    """
    target_h, target_w = size
    while image.shape[-2:] != (target_h, target_w):
        height, width = image.shape[-2:]
        image = F.pad(image, (0, min(target_w - width, width - 1), 0, min(target_h - height, height - 1)),
                      mode="reflect")
    return image


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to ``size`` (H, W), antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    dtype = image.dtype
    resized = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False,
                            antialias=shrinking)
    return resized.to(dtype)


def resize_shorter_side(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """Resize so the shorter side is ``shorter`` pixels, keeping the aspect ratio (0 = as is)."""
    if shorter <= 0:
        return image
    height, width = image.shape[-2:]
    scale = shorter / min(height, width)
    return resize(image, (max(1, round(height * scale)), max(1, round(width * scale))))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def read_image(path) -> torch.Tensor:
    """An image file as (1, 3, H, W) float in 0..1 (alpha dropped, grey expanded to RGB)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as picture:
        array = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def write_image(image: torch.Tensor, path) -> None:
    """Save (3, H, W) or (1, 3, H, W) float (clamped to 0..1 here) as an 8-bit image file."""
    from PIL import Image

    if image.dim() == 4:
        image = image[0]
    array = (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
