"""The steps every stylization runs, an image at a time and a token grid at a time.

The all-in-one pipeline (:mod:`mambast.run.pipeline`) and the staged nodes' stages
(:mod:`mambast.run.staged`) both walk a batch with :func:`each_image` and call these steps, so
that for the same inputs and controls they give the same images: the staged path only keeps what
the pipeline passes from one step to the next between nodes.

A token grid is named by its pixel ``offset`` (dy, dx): (0, 0) is the image's own grid; seam
smoothing adds grids moved by part of a patch (:mod:`mambast.controls.seams`).
"""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

import torch

from ..controls.seams import shift_back, shift_onto_grid
from ..controls.strength import fuse_with_strength
from ..controls.temporal import smooth_over_time
from ..network.encodings import ContentEncoding, StyleEncoding, batch_item
from ..network.model import MambaST

Offset = tuple[int, int]
Result = TypeVar("Result")


def each_image(count: int, work: Callable[[int], Result],
               image_done: Callable[[int], None] | None = None) -> list[Result]:
    """``work(index)`` for each image of a batch in turn, ``image_done(index)`` after each.

    One image at a time bounds the memory whatever the batch, gives a host a progress step per
    image and lets it cancel between images; every image of a batch shares the seed, so the frames
    of a video get the same style permutations and do not flicker from reshuffling.
    """
    results = []
    for index in range(count):
        results.append(work(index))
        if image_done is not None:
            image_done(index)
    return results


def encode_on_grid(model: MambaST, image: torch.Tensor, offset: Offset) -> tuple[ContentEncoding, torch.Tensor]:
    """One content image (1, 3, H, W) encoded on the token grid at ``offset``: its encoding and the
    shifted image the encoding was made from (the identity path of the style strength reads it)."""
    shifted = shift_onto_grid(image, offset)
    return model.encode_content(shifted), shifted


def fuse_on_grid(model: MambaST, content: ContentEncoding, shifted_image: torch.Tensor,
                 style_tokens: torch.Tensor | None, index: int, strength: float, seed: int | None, shuffle: bool,
                 temporal_smoothing: float, previous: dict[Hashable, torch.Tensor], key: Hashable) -> torch.Tensor:
    """Image ``index``'s fused features (1, d_model, h, w) on one token grid.

    ``content`` is that image's encoding on the grid, ``shifted_image`` the image it was encoded
    from, ``style_tokens`` the batch's style tokens on the grid (None at strength 0). With temporal
    smoothing the features are blended with the last frame's at ``key`` in ``previous``, which
    then holds these: a tile or grid is smoothed against the same tile or grid of the frame before.
    """
    style = StyleEncoding(batch_item(style_tokens, index), content.grid) if style_tokens is not None else None
    features = fuse_with_strength(model, content, shifted_image, style, strength, seed, shuffle)
    if temporal_smoothing:
        features = smooth_over_time(features, temporal_smoothing, previous.get(key))
        previous[key] = features
    return features


def decode_on_grid(model: MambaST, features: torch.Tensor, size: tuple[int, int], offset: Offset) -> torch.Tensor:
    """Fused features of one grid decoded to pixels (1, 3, H, W) and moved back onto the image's
    own grid, ready for :func:`mambast.controls.seams.blend_grids`."""
    return shift_back(model.decode(features, size), offset)
