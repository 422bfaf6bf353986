"""Style sources on a content's token grid: scale, mixing of two styles.

The MSTD pairs style token t with content token t, so a style is always encoded on the
content's grid; these helpers decide which picture fills that grid.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Union

import torch

from .imaging import reflect_to_size, resize

MIN_SCALE, MAX_SCALE = 0.125, 8.0
# Token grids kept per style: a batch of frames uses one, an artist trying sizes a few more. Each
# entry is a whole encoded style (L x 512 floats, 128 MiB at 4096 px), so the cache stays small.
MAX_CACHED_GRIDS = 4


class GridCache(collections.OrderedDict):
    """Style tokens by token grid, least recently used dropped beyond ``MAX_CACHED_GRIDS``."""

    def __init__(self, *args, limit: int = MAX_CACHED_GRIDS, **kwargs):
        self.limit = limit
        super().__init__(*args, **kwargs)

    def get(self, grid, default=None):
        if grid in self:
            self.move_to_end(grid)
            return self[grid]
        return default

    def __setitem__(self, grid, tokens) -> None:
        super().__setitem__(grid, tokens)
        self.move_to_end(grid)
        while len(self) > self.limit:
            self.popitem(last=False)


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
    by_grid: GridCache = dataclasses.field(default_factory=GridCache, repr=False)

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


def pending_style_images(style: "StyleSource", grid: tuple[int, int]) -> int:
    """How many style images :meth:`MambaST.style_on_grid` still has to encode for ``grid``."""
    if style.by_grid.get(grid) is not None:
        return 0
    if isinstance(style, StyleMix):
        return pending_style_images(style.first, grid) + pending_style_images(style.second, grid)
    if style.tokens is not None and style.grid == grid:
        return 0
    return style.batch_size


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
