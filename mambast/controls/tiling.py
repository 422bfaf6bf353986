"""Stylize large images in overlapping tiles, blended without seams, and retry smaller on out-of-memory.

The selective scan is linear in the number of tokens, but a 4096 x 4096 image still holds 262,144
tokens of 1024 channels per VSS block and a CNN decoder whose activations reach 64 channels at full
resolution: gigabytes. Tiles bound the memory by the tile size whatever the image size.

Tiling is not exact: every scan direction runs over the whole token grid, so a token's output
depends on every token before it in the image, and a tile only sees its own. The tiles overlap
and are cross-faded in the middle of each overlap with a cosine ramp; the blending weights form a
partition of unity, so where the tiles agree the output is theirs, unchanged.

How the style is shared (the choice made here, and why): the MSTD pairs style token t with content
token t, so the style must be encoded on the tile's token grid. It is resized to the *tile* size and
encoded once for all tiles, and every tile uses the same seed, hence the same style permutations.
Each tile thus sees the whole style at the scale the network was trained on (a 512 px style for a
512 px content) and every tile draws on the same style statistics, which keeps neighbouring tiles
consistent. The alternative, resizing the style to the whole image and giving each tile its own
crop, would pair positions as the untiled run does, but with the shuffle (the default) those
positions are scrambled anyway; each tile would then see a different part of the style and the
tiles would differ in colour and texture, and the style would have to be encoded at the full size,
which is what tiling avoids.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, TypeVar

import torch

from ..utils.imaging import check_image
from .seams import on_grids
from .shuffle import new_seed

if TYPE_CHECKING:
    from ..network.model import MambaST

TileCallback = Callable[[int, int], None]
MINIMUM_TILE = 64


def default_overlap(tile: int) -> int:
    """The overlap used when none is given: an eighth of the tile, at least 8 pixels (at most a quarter)."""
    return min(max(8, tile // 8), tile // 4)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length``, consecutive ones overlapping
    by at least ``overlap`` pixels; evenly spread, the first at 0 and the last at ``length - tile``."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    while True:
        starts = [round(index * (length - tile) / (count - 1)) for index in range(count)]
        if all(b - a <= tile - overlap for a, b in zip(starts, starts[1:])):
            return starts
        count += 1


def _ramp(width: int, dtype=torch.float32) -> torch.Tensor:
    """A cosine ramp rising from near 0 to near 1 over ``width`` samples (its mirror sums to 1 with it)."""
    positions = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    return (torch.sin(positions * (math.pi / 2)) ** 2).to(dtype)


def blend_weights(length: int, tile: int, overlap: int) -> list[torch.Tensor]:
    """One weight vector of ``min(tile, length)`` samples per tile of :func:`tile_starts`.

    Between consecutive tiles the weight cross-fades over a band of ``overlap`` samples in the
    middle of their overlap (away from the tile borders, where a tile has the least context); the
    falling ramp of one tile is one minus the rising ramp of the next, so the weights of all tiles
    sum to one at every position (a partition of unity).
    """
    size = min(tile, length)
    starts = tile_starts(length, size, overlap)
    # Band i sits between tile i and tile i + 1, in global coordinates.
    bands = [b + (a + size - b - overlap) // 2 for a, b in zip(starts, starts[1:])]
    # An overlap of at most a quarter of the tile keeps the bands apart (see tile_starts' spacing).
    assert all(b - a >= overlap for a, b in zip(bands, bands[1:])), (length, tile, overlap)
    ramp = _ramp(overlap)
    weights = []
    for index, start in enumerate(starts):
        weight = torch.ones(size)
        if index > 0:
            band = bands[index - 1] - start
            weight[:band] = 0
            weight[band: band + overlap] = ramp
        if index < len(starts) - 1:
            band = bands[index] - start
            weight[band: band + overlap] = weight[band: band + overlap] * (1 - ramp)
            weight[band + overlap:] = 0
        weights.append(weight)
    return weights


def check_tile_size(tile: int) -> None:
    """Raise a ValueError unless ``tile`` is 0 (no tiles) or a tile size the tiling accepts."""
    if tile and (tile < 16 or tile % 8):
        raise ValueError(f"tile size must be 0 (off) or a multiple of 8 pixels of at least 16; got {tile}.")


def _check_tile(tile: int, overlap: int) -> None:
    check_tile_size(tile)
    if overlap < 1 or overlap > tile // 4:
        raise ValueError(f"tile overlap {overlap} must be between 1 and a quarter of the tile ({tile // 4}).")


Region = tuple[int, int, int, int]  # top, left, height, width of a tile, in pixels
RegionWork = Callable[[torch.Tensor, Region], torch.Tensor]


def tile_count(height: int, width: int, tile: int, overlap: int | None = None) -> tuple[int, int, int]:
    """How many tiles :func:`run_in_tiles` cuts an H x W image into, and their (height, width);
    ``tile`` 0 is one tile of the whole image."""
    if tile <= 0:
        return 1, height, width
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    tile_h, tile_w = min(tile, height), min(tile, width)
    return len(tile_starts(height, tile_h, overlap)) * len(tile_starts(width, tile_w, overlap)), tile_h, tile_w


def run_in_tiles(image: torch.Tensor, tile: int, work: RegionWork, overlap: int | None = None,
                 on_tile: TileCallback | None = None) -> torch.Tensor:
    """``work(crop, region)`` on overlapping ``tile`` x ``tile`` crops of ``image``, cross-faded.

    image: (B, C, H, W); ``work`` returns the crop's (B, 3, h, w) result. ``tile`` 0, or a tile
    covering the image, calls ``work`` once on the whole image, so that result is exactly the
    untiled one. ``on_tile(done, total)`` follows each tile. Returns (B, 3, H, W) float32 on the
    image's device.
    """
    height, width = image.shape[-2:]
    if tile > 0:
        overlap = default_overlap(tile) if overlap is None else int(overlap)
        _check_tile(tile, overlap)
    total, tile_h, tile_w = tile_count(height, width, tile, overlap)
    if total == 1:
        result = work(image, (0, 0, height, width)).to(image.device)
        if on_tile is not None:
            on_tile(1, 1)
        return result
    rows, columns = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    row_weights, column_weights = blend_weights(height, tile_h, overlap), blend_weights(width, tile_w, overlap)
    output = torch.zeros(image.shape[0], 3, height, width, dtype=torch.float32, device=image.device)
    done = 0
    for top, row_weight in zip(rows, row_weights):
        for left, column_weight in zip(columns, column_weights):
            region = (top, left, tile_h, tile_w)
            stylized = work(image[..., top: top + tile_h, left: left + tile_w], region).to(image.device)
            weight = (row_weight[:, None] * column_weight[None, :]).to(image.device)
            output[..., top: top + tile_h, left: left + tile_w].addcmul_(stylized, weight)
            del stylized
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return output


def stylize_tiled(model: MambaST, content: torch.Tensor, style: torch.Tensor, tile: int,
                  overlap: int | None = None, seed: int | None = None, shuffle: bool = True,
                  on_tile: TileCallback | None = None, seam_smoothing: int = 0) -> torch.Tensor:
    """:meth:`MambaST.stylize` in overlapping tiles of ``tile`` x ``tile`` pixels.

    content: (B, 3, H, W) float in 0..1, any size; style: (1 or B, 3, H', W'). ``tile``: pixels,
    a multiple of 8 (0: the whole image); ``overlap`` (default :func:`default_overlap`) at most
    a quarter of it. When one tile covers the image the result is exactly ``model.stylize``'s.
    The style is encoded once, resized to the tile (see the module docstring), and every tile
    uses the same seed and so the same permutations; ``seed=None`` draws one, kept in
    ``model.last_seed``. ``on_tile(done, total)`` is called after each tile (progress bars; it
    may raise to cancel). ``seam_smoothing`` blends each tile's token grids (:mod:`mambast.controls.seams`).
    Returns (B, 3, H, W) float32 on the content's device, unclamped.
    """
    check_image(content, "content")
    check_image(style, "style", minimum=1)
    if shuffle and seed is None:
        seed = new_seed()
    encoded: dict[tuple[int, int], object] = {}

    def on_grid(crop: torch.Tensor, _offset) -> torch.Tensor:
        encoding = model.encode_content(crop)
        if encoding.padded_size not in encoded:  # every tile has the same grids: one encoding serves them all
            encoded[encoding.padded_size] = model.encode_style(style, encoding.padded_size)
        features = model.fuse(encoding, encoded[encoding.padded_size], seed=seed, shuffle=shuffle)
        return model.decode(features, encoding.image_size)

    def stylize_region(crop: torch.Tensor, region: Region) -> torch.Tensor:
        return on_grids(on_grid, crop, seam_smoothing, model.config.patch_size)

    return run_in_tiles(content, tile, stylize_region, overlap, on_tile)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an accelerator (CUDA, ROCm, MPS, XPU) or allocator out-of-memory error."""
    out_of_memory = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(error, out_of_memory):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory() -> None:
    """Hand the accelerators' cached blocks back (hosts with a memory manager pass their own)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()


Result = TypeVar("Result")


def with_smaller_tiles_on_out_of_memory(attempt: Callable[[int], Result], tile: int, longer_side: int,
                                        minimum_tile: int = MINIMUM_TILE,
                                        on_retry: Callable[[int], None] | None = None,
                                        release_memory: Callable[[], None] | None = None) -> Result:
    """``attempt(tile)``, retried with half the tile on out-of-memory until it fits.

    The pattern of ComfyUI's upscale-model node: an out-of-memory error frees the cache and starts
    again with tiles half as large (an untiled run, ``tile`` 0, first falls back to half the
    image's ``longer_side``), down to ``minimum_tile`` pixels, below which the error is raised.
    ``on_retry(tile)`` is told each new tile size; ``release_memory`` (default
    :func:`release_cached_memory`) frees the cache between attempts.
    """
    while True:
        try:
            return attempt(tile)
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are retried
            current = tile if tile > 0 else longer_side
            smaller = (current // 2) // 8 * 8
            if not is_out_of_memory(error) or smaller < minimum_tile:
                raise
        # Outside the except block, so that the failed attempt's tensors are no longer referenced.
        (release_memory or release_cached_memory)()
        tile = smaller
        if on_retry is not None:
            on_retry(tile)


def stylize_with_fallback(model: MambaST, content: torch.Tensor, style: torch.Tensor, tile: int = 0,
                          overlap: int | None = None, seed: int | None = None, shuffle: bool = True,
                          on_tile: TileCallback | None = None, minimum_tile: int = MINIMUM_TILE,
                          on_retry: Callable[[int], None] | None = None, seam_smoothing: int = 0) -> torch.Tensor:
    """Stylize untiled (``tile=0``) or in tiles, retrying with half the tile on out-of-memory
    (see :func:`with_smaller_tiles_on_out_of_memory`). The seed is drawn once, so a retry gives
    the same style shuffle."""
    if shuffle and seed is None:
        seed = new_seed()
    return with_smaller_tiles_on_out_of_memory(
        lambda size: stylize_tiled(model, content, style, size, overlap=overlap, seed=seed, shuffle=shuffle,
                                   on_tile=on_tile, seam_smoothing=seam_smoothing),
        tile, max(content.shape[-2:]), minimum_tile, on_retry)
