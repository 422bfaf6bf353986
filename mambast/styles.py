"""Style sources on a content's token grid: scale, mixing of two styles.

The MSTD pairs style token t with content token t, so a style is always encoded on the
content's grid; these helpers decide which picture fills that grid.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Union

import torch

from .imaging import reflect_to_size, resize

MIN_SCALE, MAX_SCALE = 0.125, 8.0


def fit_style_image(image: torch.Tensor, size: tuple[int, int], scale: float = 1.0) -> torch.Tensor:
    """The style picture (B, 3, H', W') laid out to exactly ``size`` (H, W) at a relative ``scale``.

    1 stretches it to the content's size (the default, as the reference resizes both to one
    size). Above 1 the style is enlarged ``scale`` times and its centre cropped: bigger strokes.
    Below 1 it is shrunk and repeated with mirrored copies: smaller strokes, more of them.
    """
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"style scale must be between {MIN_SCALE} and {MAX_SCALE}; got {scale}.")
    height, width = size
    if scale == 1.0:
        return resize(image, size)
    scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
    enlarged = resize(image, scaled)
    if scale > 1.0:
        top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
        return enlarged[..., top:top + height, left:left + width]
    return reflect_to_size(enlarged, size)


@dataclasses.dataclass
class StyleMix:
    """Two styles mixed by their tokens: on any grid, a fraction ``weight`` of the token
    positions (drawn with ``seed``) come from ``second``, the rest from ``first``.

    The MSTD shuffles style tokens anyway, so a style acts as a bag of tokens and drawing from
    two bags in proportion is a natural mix. Mixes nest, for more than two styles.
    """

    first: "StyleSource"
    second: "StyleSource"
    weight: float
    seed: int = 0
    by_grid: dict[tuple[int, int], torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"style blend weight must be between 0 and 1; got {self.weight}.")
        if 1 not in (self.first.batch_size, self.second.batch_size) and \
                self.first.batch_size != self.second.batch_size:
            raise ValueError(f"Cannot blend {self.first.batch_size} style images with {self.second.batch_size}: "
                             "give one image on either side, or the same number on both.")

    @property
    def batch_size(self) -> int:
        return max(self.first.batch_size, self.second.batch_size)


def mix_tokens(first: torch.Tensor, second: torch.Tensor, weight: float, seed: int) -> torch.Tensor:
    """(B, L, C) tokens: ``round(weight * L)`` positions, drawn with ``seed``, taken from ``second``."""
    batch = max(first.shape[0], second.shape[0])
    first, second = first.expand(batch, -1, -1), second.expand(batch, -1, -1)
    length = first.shape[1]
    chosen = torch.randperm(length, generator=torch.Generator("cpu").manual_seed(int(seed)))
    take_second = torch.zeros(length, dtype=torch.bool)
    take_second[chosen[: round(weight * length)]] = True
    return torch.where(take_second.to(first.device)[None, :, None], second.to(first), first)


if TYPE_CHECKING:
    from .model import StyleEncoding

StyleSource = Union["StyleEncoding", StyleMix]
