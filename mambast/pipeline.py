"""Stylize a batch of images with every artist control, one image at a time.

The all-in-one path of the ComfyUI pack and of scripts; the staged nodes call the same pieces
(fuse_with_strength, smooth_over_time, keep_content_colour, composite) in the same order.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .colour import keep_content_colour, match_colour
from .features import fuse_with_strength, smooth_over_time
from .imaging import resize, resize_shorter_side
from .masking import composite, prepare_mask
from .model import MambaST, StyleEncoding, pair_batches
from .shuffle import new_seed
from .styles import StyleMix
from .tiling import stylize_with_fallback

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

    def __post_init__(self):
        if self.colour not in COLOUR_MODES:
            raise ValueError(f"colour must be one of {', '.join(COLOUR_MODES)}; got {self.colour!r}.")
        if self.tile and (self.strength != 1.0 or self.style_scale != 1.0 or self.temporal_smoothing
                          or self.second_style_weight):
            raise ValueError("tiles work with the plain stylization only: set strength 1, style scale 1, temporal "
                             "smoothing 0 and no second style, or set the tile size to 0.")
        if self.processing_size < 0:
            raise ValueError(f"processing size must be 0 (keep the input size) or positive; "
                             f"got {self.processing_size}.")


def stylize_images(model: MambaST, content: torch.Tensor, style: torch.Tensor | None,
                   controls: Controls = Controls(), second_style: torch.Tensor | None = None,
                   image_done: Callable[[int], None] | None = None) -> torch.Tensor:
    """Content (B, 3, H, W) -> stylized (B, 3, H, W), unclamped, with ``controls`` applied.

    One style image (encoded once) serves every content image, or styles pair one to one; all
    images share the seed, and with temporal smoothing the batch is read as video frames.
    """
    if controls.seed is None:
        controls = dataclasses.replace(controls, seed=new_seed())  # one seed for every image
    needs_style = controls.strength > 0
    if needs_style:
        if style is None:
            raise ValueError("a style image is needed for a style strength above 0.")
        pair_batches(content.shape[0], style.shape[0])
        if controls.colour == "match style to content":
            style = match_colour(style, content)
    styles = None
    outputs, previous = [], None
    for index in range(content.shape[0]):
        original = content[index:index + 1]
        working = resize_shorter_side(original, controls.processing_size)
        if controls.tile:
            image = stylize_with_fallback(model, working, style[index if style.shape[0] > 1 else 0].unsqueeze(0),
                                          tile=controls.tile, seed=controls.seed, shuffle=controls.shuffle)
        else:
            encoding = model.encode_content(working)
            one_style = None
            if needs_style:
                if styles is None:
                    styles = encode_styles(model, style, second_style, controls, encoding.padded_size)
                tokens = model.style_on_grid(styles, encoding)
                one_style = StyleEncoding(tokens[index if tokens.shape[0] > 1 else 0].unsqueeze(0), encoding.grid)
            features = fuse_with_strength(model, encoding, working, one_style, controls.strength, controls.seed,
                                          controls.shuffle)
            features = smooth_over_time(features, controls.temporal_smoothing, previous)
            previous = features
            image = model.decode(features, encoding.image_size)
        image = resize(image, tuple(original.shape[-2:]))
        outputs.append(finish(original, image.to(original.device), controls, index))
        if image_done is not None:
            image_done(index)
    return torch.cat(outputs)


def encode_styles(model: MambaST, style: torch.Tensor, second_style: torch.Tensor | None, controls: Controls,
                  size: tuple[int, int]) -> StyleEncoding | StyleMix:
    """The style images encoded for a content of padded ``size``, one at a time, mixed with the
    second style when one is given with a weight above 0."""
    def encode(images: torch.Tensor) -> StyleEncoding:
        tokens = torch.cat([model.encode_style(images[i:i + 1], size, controls.style_scale).tokens
                            for i in range(images.shape[0])])
        grid = (size[0] // model.config.patch_size, size[1] // model.config.patch_size)
        return StyleEncoding(tokens, grid, images, {grid: tokens}, controls.style_scale)

    first = encode(style)
    if second_style is None or controls.second_style_weight == 0.0:
        return first
    seed = controls.seed if controls.seed is not None else 0
    return StyleMix(first, encode(second_style), controls.second_style_weight, seed)


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
        mask = controls.mask[min(index, controls.mask.shape[0] - 1)].unsqueeze(0)
        weights = prepare_mask(mask, tuple(stylized.shape[-2:]), controls.feather, controls.invert_mask)
        stylized = composite(content, stylized, weights)
    return stylized
