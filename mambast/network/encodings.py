"""What the model's stages hand each other: encoded contents, styles and mixes of styles.

A content is encoded once on its token grid. A style is only useful on a content's grid (the
MSTD pairs style token t with content token t), so a style keeps its picture and is encoded on
each grid it meets, cached by grid; a mix of two styles resolves both on that grid. How a style
is laid out at a scale and how a mix draws its tokens is in :mod:`mambast.controls.styles`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Union

import torch

from ..controls.styles import check_scale
from ..utils.imaging import check_image

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


@dataclasses.dataclass
class ContentEncoding:
    """Encoded content tokens.

    tokens: (B, L, d_model) on the token grid ``grid`` = (h, w), raster order; ``image_size`` is
    the content's (H, W) before padding to whole patches, the size its stylization is cropped to.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    image_size: tuple[int, int]
    patch_size: int = 8

    @property
    def padded_size(self) -> tuple[int, int]:
        """The padded image size (H, W) whose patches form ``grid``."""
        return self.grid[0] * self.patch_size, self.grid[1] * self.patch_size


@dataclasses.dataclass
class StyleEncoding:
    """A style: its picture(s) and their tokens (B, L, d_model) on the token grid ``grid``.

    The MSTD pairs style token t with content token t, so a style must be encoded on the
    content's grid. ``image`` keeps the style picture (B, 3, H, W) so that :meth:`MambaST.fuse`
    can encode it for a content of any size, at the same relative ``scale`` (see
    :func:`mambast.controls.styles.fit_style_image`); those encodings are cached in ``by_grid`` (a few
    grids, least recently used dropped). :meth:`from_images` makes a style not encoded yet
    (``tokens`` None): it is encoded once, on the first content grid it meets.
    """

    tokens: torch.Tensor | None
    grid: tuple[int, int] | None
    image: torch.Tensor | None = None
    by_grid: GridCache = dataclasses.field(default_factory=GridCache, repr=False)
    scale: float = 1.0

    def __post_init__(self):
        if self.tokens is None and self.image is None:
            raise ValueError("a style needs its tokens or its image.")
        if not isinstance(self.by_grid, GridCache):
            self.by_grid = GridCache(self.by_grid)

    @classmethod
    def from_images(cls, image: torch.Tensor, scale: float = 1.0) -> "StyleEncoding":
        """A style (B, 3, H, W) in 0..1 to be encoded on the grid of each content it is fused with."""
        check_image(image, "style", minimum=1)
        check_scale(scale)
        return cls(None, None, image, GridCache(), scale)

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0] if self.tokens is not None else self.image.shape[0]


def pair_batches(content_batch: int, style_batch: int) -> None:
    """Raise unless the batches pair up: one style for all contents, or one style per content."""
    if style_batch != 1 and style_batch != content_batch:
        raise ValueError(f"Cannot pair {content_batch} content image(s) with {style_batch} style image(s): "
                         "give one style (used for every content image) or exactly one style per content image.")


def batch_item(batch: torch.Tensor | None, index: int) -> torch.Tensor | None:
    """Item ``index`` of a batch, keeping the batch dimension; a batch of one serves every index."""
    if batch is None:
        return None
    return batch[index if batch.shape[0] > 1 else 0].unsqueeze(0)


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


StyleSource = Union[StyleEncoding, StyleMix]
