"""Seam smoothing: stylize on token grids offset by fractions of a patch, then blend.

Mamba-ST works on 8 x 8 pixel tokens, and neighbouring tokens are fused with different
(shuffled) style tokens, so its outputs show steps along the token borders, the patch-level
discontinuities the paper names as its visible weakness. Stylizing the content again with the
grid moved (the content reflect-padded at the top and left by a fraction of a patch, the result
cropped back) puts those borders elsewhere; each result is then weighted, pixel by pixel, by how
far the pixel is from its own grid's borders (a sin^2 window over each token, zero weight
nowhere), so that near one grid's border the others, whose tokens are whole there, carry it.

``seam_smoothing`` counts the grids: 0 or 1 is off (today's output, exactly), 2 adds the grid
moved half a patch diagonally, 4 the 2 x 2 grids moved by half a patch in each direction, 16 the
4 x 4 moved by quarters. The time grows with the count; ``bench/seams.py`` measures what each buys.
Every grid uses the same seed, so every run draws the same style permutations.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

SEAM_SMOOTHING_CHOICES = (0, 1, 2, 4, 16)


def check_seam_smoothing(count: int) -> None:
    if count not in SEAM_SMOOTHING_CHOICES:
        raise ValueError(f"seam smoothing must be one of {', '.join(map(str, SEAM_SMOOTHING_CHOICES))} (the number "
                         f"of token grids, 0 or 1 = off); got {count}.")


def grid_offsets(count: int, patch: int = 8) -> list[tuple[int, int]]:
    """The (dy, dx) pixel offsets of the ``count`` grids; [(0, 0)] when off."""
    check_seam_smoothing(count)
    if count <= 1:
        return [(0, 0)]
    if count == 2:
        return [(0, 0), (patch // 2, patch // 2)]
    per_side = math.isqrt(count)
    steps = [round(i * patch / per_side) for i in range(per_side)]
    return [(dy, dx) for dy in steps for dx in steps]


def shift_onto_grid(image: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    """``image`` (B, C, H, W) moved down and right by ``offset`` (reflect-padded at the top and
    left, cut at the bottom and right): the same size, so the same token grid, the same style
    encoding and the same work as the image itself, with the tokens' borders falling ``offset``
    pixels up and left of where they fall on the image."""
    dy, dx = offset
    if not dy and not dx:
        return image
    height, width = image.shape[-2:]
    mode = "reflect" if dy < height and dx < width else "replicate"  # reflection needs more pixels than that
    return F.pad(image, (dx, 0, dy, 0), mode=mode)[..., :height, :width]


def shift_back(image: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`shift_onto_grid` on its stylization, the same size: the last
    ``offset`` rows and columns, which the shifted image did not hold, repeat the edge (and get
    no weight in :func:`grid_weights`)."""
    dy, dx = offset
    if (not dy and not dx) or dy >= image.shape[-2] or dx >= image.shape[-1]:
        return image  # nothing to move, or nothing of the image in it (no weight anywhere)
    return F.pad(image[..., dy:, dx:], (0, dx, 0, dy), mode="replicate")


def grid_weights(offsets: list[tuple[int, int]], size: tuple[int, int], patch: int = 8,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 1, H, W) blending weights of the grids' results, summing to 1 at every pixel.

    For 2 and 4 grids the weight of grid (dy, dx) at a pixel is w(y + dy) * w(x + dx), with
    w(t) = sin^2(pi (t mod patch + 1/2) / patch): largest at its tokens' centres, small (0.04 for
    8 px) on their borders. 16 grids, 2 px apart, are averaged: a quarter of them have a border
    near any pixel, and windows that steep would print their own slopes into the picture
    (``bench/seams.py`` measured both). A grid has no weight in the last ``dy`` rows and ``dx``
    columns, which its shifted image did not hold; grid (0, 0) covers every pixel.
    """
    height, width = size

    def window(length: int, shift: int) -> torch.Tensor:
        if len(offsets) > 4:
            values = torch.ones(length, device=device)
        else:
            position = (torch.arange(length, device=device, dtype=torch.float32) + shift) % patch
            values = torch.sin(math.pi * (position + 0.5) / patch) ** 2
        values[max(0, length - shift):] = 0  # not covered by this grid's shifted image
        return values

    weights = torch.stack([window(height, dy)[:, None] * window(width, dx)[None, :] for dy, dx in offsets])
    return (weights / weights.sum(dim=0, keepdim=True)).unsqueeze(1)


def blend_grids(images: list[torch.Tensor], offsets: list[tuple[int, int]], patch: int = 8) -> torch.Tensor:
    """The grids' results (each (B, C, H, W), shifted back) blended by :func:`grid_weights`; a
    single result is returned as it is."""
    if len(images) == 1:
        return images[0]
    weights = grid_weights(offsets, tuple(images[0].shape[-2:]), patch, images[0].device)
    blended = images[0] * weights[0]
    for image, weight in zip(images[1:], weights[1:]):
        blended = blended + image * weight
    return blended


def on_grids(work: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor], image: torch.Tensor, count: int,
             patch: int = 8) -> torch.Tensor:
    """``work(shifted_image, offset)`` (returning the stylization of the shifted image, its size)
    on each of the ``count`` grids, shifted back and blended; with smoothing off, ``work(image,
    (0, 0))`` itself."""
    offsets = grid_offsets(count, patch)
    return blend_grids([shift_back(work(shift_onto_grid(image, offset), offset), offset) for offset in offsets],
                       offsets, patch)


def grid_contrast(image: torch.Tensor, patch: int = 8) -> tuple[float, float]:
    """How visible the token grid is in (B, C, H, W) images, (across columns, across rows); 1.0
    is no grid.

    The mean absolute difference between neighbouring pixels across the token borders (pixel
    ``patch k - 1`` to ``patch k``), over the same between neighbours inside the tokens that
    straddle a 2 px cell border as the token border does (``patch k + 1, + 3, ...``): the CNN
    decoder upsamples by 2 three times and leaves a 2 px pattern of its own (odd neighbours
    differ more than even ones everywhere), which a ratio against all inside pairs would count
    as grid.
    """
    ratios = []
    for dim in (-1, -2):
        steps = (image.narrow(dim, 1, image.shape[dim] - 1) - image.narrow(dim, 0, image.shape[dim] - 1)).abs()
        steps = steps.float().mean(dim=(0, 1, -2 if dim == -1 else -1))
        phase = torch.arange(steps.shape[0], device=steps.device) % patch
        border = steps[phase == patch - 1].mean()
        inside = steps[(phase % 2 == 1) & (phase != patch - 1)].mean()
        ratios.append(float(border / inside))
    return ratios[0], ratios[1]
