"""What each node does, as plain functions on ComfyUI values; no ComfyUI import beyond ``comfy``.

Images are processed one at a time (bounded memory, a progress step per image, Cancel checked
between scan chunks), and every image of a batch uses the same seed, hence the same style
permutations: frames of a video do not flicker from reshuffling.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import torch

from ..mambast import MambaST, load, pair_batches
from ..mambast.colour import match_colour
from ..mambast.features import fuse_with_strength, smooth_over_time
from ..mambast.imaging import resize_shorter_side
from ..mambast.model import ContentEncoding, StyleEncoding
from ..mambast.pipeline import COLOUR_MODES, Controls, finish, stylize_images
from ..mambast.styles import StyleMix
from ..mambast.progress import progress_callback
from ..mambast.resources import activation_bytes, progress_ticks
from . import comfy as host
from .layout import join_image, pick, split_image

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
SCAN_CHOICES = ("auto", "chunked", "triton", "reference", "mamba_ssm")


@dataclasses.dataclass
class LoadedModel:
    """MAMBAST_MODEL: the network under ComfyUI's memory manager."""

    patcher: Any
    checkpoint: str
    model: MambaST


@dataclasses.dataclass
class ContentPayload:
    """MAMBAST_CONTENT: encoded content images, the images themselves (for the identity path of
    the style strength) and the alpha channel to give back."""

    encoding: ContentEncoding
    image: torch.Tensor
    alpha: torch.Tensor | None


@dataclasses.dataclass
class FeaturesPayload:
    """MAMBAST_FEATURES: fused features (B, d_model, h, w), the size to crop to, the alpha."""

    features: torch.Tensor
    image_size: tuple[int, int]
    alpha: torch.Tensor | None


def needed_style_inputs(strength: float, inputs: dict, second_weight: float = 0.0) -> list[str]:
    """The lazy style inputs a node still has to evaluate: none at strength 0 (no style work).

    ``inputs`` holds the node's inputs as ComfyUI passes them to ``check_lazy_status``: a
    connected lazy input not yet evaluated is present as None; an unconnected one is absent
    (and must not be requested).
    """
    wanted = ["style"] if strength > 0 else []
    if strength > 0 and second_weight > 0:
        wanted.append("style_2")
    return [name for name in wanted if name in inputs and inputs[name] is None]


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    # ComfyUI does not check combo values of V3 nodes against their options.
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}.")


def load_model(checkpoint: str, dtype: str = "auto", scan: str = "auto") -> LoadedModel:
    """MambaSTLoader: read the weights on the offload device and wrap them for ComfyUI."""
    _check_choice(dtype, DTYPE_CHOICES, "dtype")
    _check_choice(scan, SCAN_CHOICES, "scan backend")
    path = host.resolve_checkpoint(checkpoint)
    dense_dtype = host.preferred_half_dtype(host.load_device()) if dtype == "auto" else getattr(torch, dtype)
    model = load(path, device=host.offload_device(), dtype=dense_dtype, scan=scan)
    return LoadedModel(host.wrap_model(model), checkpoint, model)


@contextlib.contextmanager
def _running(loaded: LoadedModel, images: int, height: int, width: int,
             **stages: bool) -> Iterator[Callable[[int], None]]:
    """Load the model for ``images`` images of H x W; yields ``image_done(index)``.

    Inside, every progress tick of the model checks ComfyUI's Cancel and moves the bar.
    """
    model = loaded.model
    host.load_for_inference(loaded.patcher, activation_bytes(model.config, height, width))
    per_image = max(1, progress_ticks(model.config, height, width, **stages))
    bar = host.progress_bar(images * per_image)
    position = {"image": 0, "ticks": 0}

    def on_tick() -> None:
        host.throw_if_interrupted()
        position["ticks"] = min(position["ticks"] + 1, per_image - 1)
        bar.update_absolute(position["image"] * per_image + position["ticks"])

    def image_done(index: int) -> None:
        position["image"], position["ticks"] = index + 1, 0
        bar.update_absolute((index + 1) * per_image)
        host.throw_if_interrupted()

    with progress_callback(on_tick), torch.inference_mode():
        yield image_done


def _to(encoding: ContentEncoding, device: torch.device) -> ContentEncoding:
    return dataclasses.replace(encoding, tokens=encoding.tokens.to(device))


def encode_content(loaded: LoadedModel, image: torch.Tensor) -> ContentPayload:
    """MambaSTEncodeContent: IMAGE -> content encodings, one image at a time."""
    rgb, alpha = split_image(image, "content image")
    model, storage = loaded.model, host.intermediate_device()
    encodings = []
    with _running(loaded, rgb.shape[0], *rgb.shape[-2:], style=False, fuse=False, decode=False) as image_done:
        for index in range(rgb.shape[0]):
            encodings.append(_to(model.encode_content(rgb[index:index + 1]), storage))
            image_done(index)
    tokens = torch.cat([e.tokens for e in encodings])
    return ContentPayload(dataclasses.replace(encodings[0], tokens=tokens), rgb.to(storage), alpha)


def encode_style(loaded: LoadedModel, image: torch.Tensor, style_scale: float = 1.0) -> StyleEncoding:
    """MambaSTEncodeStyle: IMAGE -> style encodings at the style's own size.

    The image is kept (on ComfyUI's intermediate device) so the fuse stage can re-encode the
    style on a content's token grid; such encodings are cached in the returned object.
    """
    rgb, _ = split_image(image, "style image")
    model, storage = loaded.model, host.intermediate_device()
    encodings = []
    with _running(loaded, rgb.shape[0], *rgb.shape[-2:], content=False, fuse=False, decode=False) as image_done:
        for index in range(rgb.shape[0]):
            encodings.append(model.encode_style(rgb[index:index + 1], scale=style_scale))
            image_done(index)
    tokens = torch.cat([e.tokens for e in encodings]).to(storage)
    grid = encodings[0].grid
    return StyleEncoding(tokens, grid, rgb.to(storage), {grid: tokens}, style_scale)


def blend_styles(first: StyleEncoding | StyleMix, second: StyleEncoding | StyleMix, weight: float,
                 seed: int) -> StyleMix:
    """MambaSTStyleBlend: a share ``weight`` of the style tokens drawn from ``second``."""
    return StyleMix(first, second, weight, seed)


def fuse(loaded: LoadedModel, content: ContentPayload, style: StyleEncoding | StyleMix | None, seed: int,
         shuffle: bool = True, strength: float = 1.0, temporal_smoothing: float = 0.0) -> FeaturesPayload:
    """MambaSTFuse: the MSTD stage, one content image at a time, one seed for the batch."""
    encoding = content.encoding
    count = encoding.tokens.shape[0]
    if strength > 0:
        if style is None:
            raise ValueError("style: connect a style (MambaST Encode Style) or set strength to 0.")
        pair_batches(count, style.batch_size)
    model, storage = loaded.model, host.intermediate_device()
    height, width = encoding.image_size
    features, previous = [], None
    with _running(loaded, count, height, width, content=False, style=strength < 1, decode=False) as image_done:
        # Re-encodings for a new grid are cached in the style object on the intermediate
        # device: a batch of frames, and later runs with other seeds, encode the style once.
        style_tokens = model.style_on_grid(style, encoding, cache_device=storage) if strength > 0 else None
        for index in range(count):
            one_content = dataclasses.replace(encoding, tokens=pick(encoding.tokens, index).to(model.device))
            one_style = StyleEncoding(pick(style_tokens, index), encoding.grid) if strength > 0 else None
            image = pick(content.image, index).to(model.device)
            fused = fuse_with_strength(model, one_content, image, one_style, strength, seed, shuffle)
            previous = smooth_over_time(fused, temporal_smoothing, previous)
            features.append(previous.to(storage))
            image_done(index)
    return FeaturesPayload(torch.cat(features), encoding.image_size, content.alpha)


def decode(loaded: LoadedModel, features: FeaturesPayload) -> torch.Tensor:
    """MambaSTDecode: fused features -> IMAGE (clamped to 0..1, the content's alpha restored)."""
    model, storage = loaded.model, host.intermediate_device()
    count = features.features.shape[0]
    images = []
    with _running(loaded, count, *features.image_size, content=False, style=False, fuse=False) as image_done:
        for index in range(count):
            images.append(model.decode(features.features[index:index + 1], features.image_size).to(storage))
            image_done(index)
    return join_image(torch.cat(images), features.alpha)


def stylize(loaded: LoadedModel, content_image: torch.Tensor, style_image: torch.Tensor | None, seed: int,
            shuffle: bool = True, processing_size: int = 0, strength: float = 1.0, style_scale: float = 1.0,
            colour: str = "style", temporal_smoothing: float = 0.0, mask: torch.Tensor | None = None,
            feather: float = 0.0, invert_mask: bool = False, second_style: torch.Tensor | None = None,
            second_style_weight: float = 0.0, tile_size: int = 0) -> torch.Tensor:
    """MambaSTStylize: all stages and controls in one; the same arithmetic as the staged nodes.

    ``processing_size`` > 0 resizes the content's shorter side to that many pixels for the
    model, and the result back to the content's size. ``tile_size`` > 0 works in overlapping
    tiles (memory bounded by the tile; halved on out-of-memory).
    """
    _check_choice(colour, COLOUR_MODES, "colour")
    if tile_size and (tile_size < 16 or tile_size % 8):
        raise ValueError(f"tile_size must be 0 (off) or a multiple of 8 of at least 16; got {tile_size}.")
    content_rgb, alpha = split_image(content_image, "content image")
    style_rgb = split_image(style_image, "style image")[0] if style_image is not None else None
    second_rgb = split_image(second_style, "second style image")[0] if second_style is not None else None
    controls = Controls(seed=seed, shuffle=shuffle, strength=strength, style_scale=style_scale, colour=colour,
                        temporal_smoothing=temporal_smoothing, processing_size=processing_size,
                        second_style_weight=second_style_weight, mask=mask, feather=feather,
                        invert_mask=invert_mask, tile=tile_size)
    model, storage = loaded.model, host.intermediate_device()
    height, width = resize_shorter_side(content_rgb[:1], processing_size).shape[-2:]
    if tile_size:
        height, width = min(height, tile_size), min(width, tile_size)  # memory is the tile's
    with _running(loaded, content_rgb.shape[0], height, width) as image_done:
        # Images stay where ComfyUI keeps them; each is moved to the model's device in turn.
        stylized = stylize_images(model, content_rgb, style_rgb, controls, second_rgb, image_done)
    return join_image(stylized.to(storage), alpha)


def keep_colour(content_image: torch.Tensor, stylized_image: torch.Tensor) -> torch.Tensor:
    """MambaSTKeepContentColour: the stylized image's luminance with the content's colours."""
    content_rgb, _ = split_image(content_image, "content image")
    stylized_rgb, alpha = split_image(stylized_image, "stylized image")
    _same_size(content_rgb, stylized_rgb)
    return join_image(finish(content_rgb, stylized_rgb, Controls(colour="keep content")), alpha)


def match_style_colour(style_image: torch.Tensor, content_image: torch.Tensor) -> torch.Tensor:
    """MambaSTMatchColour: the style recoloured to the content's colour statistics."""
    style_rgb, alpha = split_image(style_image, "style image")
    content_rgb, _ = split_image(content_image, "content image")
    return join_image(match_colour(style_rgb, content_rgb), alpha)


def mask_composite(content_image: torch.Tensor, stylized_image: torch.Tensor, mask: torch.Tensor,
                   feather: float = 0.0, invert: bool = False) -> torch.Tensor:
    """MambaSTMaskComposite: the stylized image inside the mask, the content outside."""
    content_rgb, _ = split_image(content_image, "content image")
    stylized_rgb, alpha = split_image(stylized_image, "stylized image")
    _same_size(content_rgb, stylized_rgb)
    if mask.dim() not in (2, 3):
        raise ValueError(f"mask: expected a MASK (batch, height, width); got {tuple(mask.shape)}.")
    controls = Controls(mask=mask if mask.dim() == 3 else mask.unsqueeze(0), feather=feather, invert_mask=invert)
    images = [finish(pick(content_rgb, i), stylized_rgb[i:i + 1], controls, i) for i in range(stylized_rgb.shape[0])]
    return join_image(torch.cat(images), alpha)


def _same_size(content: torch.Tensor, stylized: torch.Tensor) -> None:
    if content.shape[-2:] != stylized.shape[-2:] or content.shape[0] not in (1, stylized.shape[0]):
        raise ValueError(f"content image is {content.shape[0]}x{content.shape[3]}x{content.shape[2]} but the stylized "
                         f"image is {stylized.shape[0]}x{stylized.shape[3]}x{stylized.shape[2]} (batch x width x "
                         "height): connect the content that was stylized, with the same size.")
