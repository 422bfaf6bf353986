"""Stylize a batch of images with every artist control, one image at a time.

The all-in-one path of the ComfyUI pack (MambaST Stylize) and of scripts. It walks the batch and
each image's token grids with the steps of :mod:`mambast.run.steps`, which the staged nodes run
too; colour and mask are applied after decoding by :func:`finish`, which those nodes share.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch

from ..controls.colour import keep_content_colour, match_colour
from ..controls.masking import composite, prepare_mask, shows_nothing
from ..controls.seams import blend_grids, check_seam_smoothing, grid_offsets
from ..controls.shuffle import new_seed
from ..controls.tiling import Region, check_tile_size, run_in_tiles, tile_count, with_smaller_tiles_on_out_of_memory
from ..network.encodings import StyleEncoding, StyleMix, StyleSource, batch_item, pair_batches, pending_style_images
from ..network.model import MambaST
from ..utils.imaging import resize
from ..utils.progress import replan
from .resources import stylize_ticks, token_grid
from .steps import Offset, decode_on_grid, each_image, encode_on_grid, fuse_on_grid

COLOUR_MODES = ("style", "keep content", "match style to content")


@dataclasses.dataclass(frozen=True)
class Controls:
    """How to stylize. See the help of the MambaST Stylize node for what each does to a picture."""

    seed: int | None = None
    shuffle: bool = True
    strength: float = 1.0
    style_scale: float = 1.0
    colour: str = "style"
    temporal_smoothing: float = 0.0
    processing_size: int = 0  # shorter side the model works at; 0 keeps the input size
    second_style_weight: float = 0.0  # share of tokens drawn from a second style, when one is given
    mask: torch.Tensor | None = None  # (1 or B, H, W): where to show the stylization
    feather: float = 0.0
    invert_mask: bool = False
    tile: int = 0  # stylize in overlapping tiles of this many pixels (0 = whole images)
    seam_smoothing: int = 0  # token grids blended against the patch seams (0 or 1: off); mambast.controls.seams

    def __post_init__(self):
        if self.colour not in COLOUR_MODES:
            raise ValueError(f"colour must be one of {', '.join(COLOUR_MODES)}; got {self.colour!r}.")
        check_tile_size(self.tile)
        check_seam_smoothing(self.seam_smoothing)
        if self.processing_size < 0:
            raise ValueError(f"processing size must be 0 (keep the input size) or positive; "
                             f"got {self.processing_size}.")
        if self.mask is not None:
            if self.mask.dim() == 2:  # one (H, W) mask for every image
                object.__setattr__(self, "mask", self.mask.unsqueeze(0))
            if self.mask.dim() != 3:
                raise ValueError(f"mask must be (H, W) or (B, H, W); got {tuple(self.mask.shape)}.")


def stylize_images(model: MambaST, content: torch.Tensor, style: torch.Tensor | None,
                   controls: Controls = Controls(), second_style: torch.Tensor | None = None,
                   image_done: Callable[[int], None] | None = None,
                   release_memory: Callable[[], None] | None = None) -> torch.Tensor:
    """Content (B, 3, H, W) -> stylized (B, 3, H, W), unclamped, with ``controls`` applied.

    One style image (encoded once per token grid) serves every content image, or styles pair
    one to one; all images share the seed, and with temporal smoothing the batch is read as
    video frames. Every run falls back to tiles, halved until they fit, on out-of-memory
    (``release_memory`` frees the cache between attempts; see :mod:`mambast.controls.tiling`).
    """
    if controls.seed is None:
        controls = dataclasses.replace(controls, seed=new_seed())  # one seed for every image
    if controls.mask is not None and controls.mask.shape[0] not in (1, content.shape[0]):
        raise ValueError(f"Cannot pair {content.shape[0]} content image(s) with {controls.mask.shape[0]} masks: give "
                         "one mask (used for every image) or one mask per content image.")
    styles = prepare_styles(content, style, second_style, controls)
    previous: dict[tuple[Region, Offset], torch.Tensor] = {}  # smoothed features of the last frame, by tile and grid
    tile = controls.tile  # once a run needed smaller tiles, the next images start with them

    def stylize_one(index: int) -> torch.Tensor:
        nonlocal tile
        original = content[index:index + 1]
        if masked_out(controls, index):  # nothing would show: no model work
            return original.float()
        working = resize(original, working_size(tuple(original.shape[-2:]), controls.processing_size))
        size = tuple(working.shape[-2:])
        if tile != controls.tile:
            replan(_retry_ticks(model, size, styles, dataclasses.replace(controls, tile=tile)))

        def attempt(tile: int) -> torch.Tensor:
            return run_in_tiles(working, tile, functools.partial(_stylize_region, model, styles, index, controls,
                                                                 previous))

        def retry(smaller: int) -> None:
            nonlocal tile
            tile = smaller
            replan(_retry_ticks(model, size, styles, dataclasses.replace(controls, tile=smaller)))

        image = with_smaller_tiles_on_out_of_memory(attempt, tile, max(size), on_retry=retry,
                                                    release_memory=release_memory)
        image = resize(image, tuple(original.shape[-2:]))
        return finish(original, image.to(original.device), controls, index)

    return torch.cat(each_image(content.shape[0], stylize_one, image_done))


def prepare_styles(content: torch.Tensor, style: torch.Tensor | None, second_style: torch.Tensor | None,
                   controls: Controls) -> StyleSource | None:
    """The style pictures as a style source for :meth:`MambaST.style_on_grid` (not encoded yet:
    each is encoded once per token grid it meets), or None at strength 0 (no style work)."""
    if controls.strength <= 0:
        return None
    if style is None:
        raise ValueError("a style image is needed for a style strength above 0.")
    pair_batches(content.shape[0], style.shape[0])
    if controls.colour == "match style to content":
        style = match_colour(style, content)
    first = StyleEncoding.from_images(style, controls.style_scale)
    if second_style is None or controls.second_style_weight == 0.0:
        return first
    second = StyleEncoding.from_images(second_style, controls.style_scale)
    return StyleMix(first, second, controls.second_style_weight, controls.seed if controls.seed is not None else 0)


def _stylize_region(model: MambaST, styles: StyleSource | None, index: int, controls: Controls,
                    previous: dict, image: torch.Tensor, region: Region) -> torch.Tensor:
    """One content image, or one tile of it: on each token grid of the seam smoothing encoded, fused
    with the controls, smoothed over time and decoded (a grid at a time), then blended."""
    offsets = grid_offsets(controls.seam_smoothing, model.config.patch_size)
    decoded = []
    for offset in offsets:
        encoding, shifted = encode_on_grid(model, image, offset)
        tokens = model.style_on_grid(styles, encoding) if styles is not None else None
        # Keyed by the tile's place and grid: after a retry in smaller tiles the next frame starts afresh.
        features = fuse_on_grid(model, encoding, shifted, tokens, index, controls.strength, controls.seed,
                                controls.shuffle, controls.temporal_smoothing, previous, (region, offset))
        decoded.append(decode_on_grid(model, features, encoding.image_size, offset))
    return blend_grids(decoded, offsets, model.config.patch_size)


def image_ticks(model: MambaST, size: tuple[int, int], controls: Controls, style_images: int = 0) -> int:
    """Progress ticks of stylizing one image of ``size`` (H, W, after ``processing_size``) with
    ``controls``, encoding ``style_images`` style pictures on its (tiles') grid on the way."""
    height, width = size
    return stylize_ticks(model.config, height, width, model.scan_backend, controls.tile, controls.strength,
                         style_images, controls.seam_smoothing)


def masked_out(controls: Controls, index: int) -> bool:
    """Whether image ``index``'s mask shows none of the stylization (the image is kept as is)."""
    mask = batch_item(controls.mask, index)
    return mask is not None and shows_nothing(mask, controls.invert_mask)


def batch_ticks(model: MambaST, size: tuple[int, int], batch: int, controls: Controls,
                style: torch.Tensor | None, second_style: torch.Tensor | None = None) -> list[int]:
    """The ticks :func:`stylize_images` will take for each image of a batch of ``size`` (H, W,
    after ``processing_size``): the first image that is stylized also encodes the style
    pictures; an image its mask hides entirely takes none."""
    style_images = 0
    if controls.strength > 0 and style is not None:
        style_images = style.shape[0]
        if second_style is not None and controls.second_style_weight > 0:
            style_images += second_style.shape[0]
    planned = []
    for index in range(batch):
        if masked_out(controls, index):
            planned.append(0)
        else:
            planned.append(image_ticks(model, size, controls, style_images))
            style_images = 0
    return planned


def _retry_ticks(model: MambaST, size: tuple[int, int], styles: StyleSource | None, controls: Controls) -> int:
    """Ticks of an image started over with ``controls.tile``, counting the style pictures not
    yet encoded on the new tiles' grid."""
    _, tile_h, tile_w = tile_count(*size, controls.tile)
    grid = token_grid(model.config, tile_h, tile_w)
    return image_ticks(model, size, controls, pending_style_images(styles, grid) if styles is not None else 0)


def working_size(size: tuple[int, int], processing_size: int, minimum: int = 8) -> tuple[int, int]:
    """(H, W) at which a content of ``size`` is stylized: the shorter side brought down to
    ``processing_size`` (0: kept), never enlarged beyond the ``minimum`` the model needs.

    Enlarging would only cost time: a 4 x 4 picture worked at 512 px took minutes and came back
    4 x 4. The result is resized back to ``size`` in every case.
    """
    height, width = size
    shorter = min(height, width)
    target = max(min(shorter, processing_size) if processing_size > 0 else shorter, minimum)
    if target == shorter:
        return height, width
    scale = target / shorter
    return max(1, round(height * scale)), max(1, round(width * scale))


def finish(content: torch.Tensor, stylized: torch.Tensor, controls: Controls, index: int = 0) -> torch.Tensor:
    """The steps after decoding: keep the content's colours, then show it only inside the mask.

    Both work on displayable pictures, so when either applies the stylized image is clamped to
    0..1 before and after each step (as the images between nodes are).
    """
    if controls.colour == "keep content" or controls.mask is not None:
        stylized = stylized.clamp(0.0, 1.0)
    if controls.colour == "keep content":
        stylized = keep_content_colour(content, stylized).clamp(0.0, 1.0)
    if controls.mask is not None:
        mask = batch_item(controls.mask, index)
        weights = prepare_mask(mask, tuple(stylized.shape[-2:]), controls.feather, controls.invert_mask)
        stylized = composite(content, stylized, weights)
    return stylized
