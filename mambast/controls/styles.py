"""The style controls' arithmetic: a style's relative scale, and two styles mixed by their tokens.

The MSTD pairs style token t with content token t, so a style is always laid out on the
content's grid (:func:`fit_style_image`); a mix draws a share of the token positions from a
second style (:func:`mix_tokens`). The style objects that carry these settings between the
stages are in :mod:`mambast.network.encodings`.
"""

from __future__ import annotations

import torch

from ..utils.imaging import reflect_to_size, resize

MIN_SCALE, MAX_SCALE = 0.125, 8.0


def check_scale(scale: float) -> None:
    """Raise a ValueError unless ``scale`` is a relative style size the controls offer."""
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"style scale must be between {MIN_SCALE} and {MAX_SCALE}; got {scale}.")


def fit_style_image(image: torch.Tensor, size: tuple[int, int], scale: float = 1.0) -> torch.Tensor:
    """The style picture (B, 3, H', W') laid out to exactly ``size`` (H, W) at a relative ``scale``.

    1 stretches it to the content's size (the default, as the reference resizes both to one
    size). Above 1 the style is enlarged ``scale`` times and its centre cropped: bigger strokes.
    Below 1 it is shrunk and repeated with mirrored copies: smaller strokes, more of them.
    """
    check_scale(scale)
    height, width = size
    if scale == 1.0:
        return resize(image, size)
    scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
    enlarged = resize(image, scaled)
    if scale > 1.0:
        top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
        return enlarged[..., top:top + height, left:left + width]
    return reflect_to_size(enlarged, size)


def mix_tokens(first: torch.Tensor, second: torch.Tensor, weight: float, seed: int) -> torch.Tensor:
    """(B, L, C) tokens: ``round(weight * L)`` positions, drawn with ``seed``, taken from ``second``."""
    batch = max(first.shape[0], second.shape[0])
    first, second = first.expand(batch, -1, -1), second.expand(batch, -1, -1)
    length = first.shape[1]
    chosen = torch.randperm(length, generator=torch.Generator("cpu").manual_seed(int(seed)))
    take_second = torch.zeros(length, dtype=torch.bool)
    take_second[chosen[: round(weight * length)]] = True
    return torch.where(take_second.to(first.device)[None, :, None], second.to(first), first)
