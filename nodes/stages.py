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
from ..mambast.imaging import resize, resize_shorter_side
from ..mambast.model import ContentEncoding, StyleEncoding
from ..mambast.progress import progress_callback
from ..mambast.resources import activation_bytes, progress_ticks
from . import comfy as host
from .layout import join_image, pick, split_image

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
SCAN_CHOICES = ("auto", "chunked", "reference", "mamba_ssm")


@dataclasses.dataclass
class LoadedModel:
    """MAMBAST_MODEL: the network under ComfyUI's memory manager."""

    patcher: Any
    checkpoint: str
    model: MambaST


@dataclasses.dataclass
class ContentPayload:
    """MAMBAST_CONTENT: encoded content images and the alpha channel to give back."""

    encoding: ContentEncoding
    alpha: torch.Tensor | None


@dataclasses.dataclass
class FeaturesPayload:
    """MAMBAST_FEATURES: fused features (B, d_model, h, w), the size to crop to, the alpha."""

    features: torch.Tensor
    image_size: tuple[int, int]
    alpha: torch.Tensor | None


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
    return ContentPayload(dataclasses.replace(encodings[0], tokens=tokens), alpha)


def encode_style(loaded: LoadedModel, image: torch.Tensor) -> StyleEncoding:
    """MambaSTEncodeStyle: IMAGE -> style encodings at the style's own size.

    The image is kept (on ComfyUI's intermediate device) so the fuse stage can re-encode the
    style on a content's token grid; such encodings are cached in the returned object.
    """
    rgb, _ = split_image(image, "style image")
    model, storage = loaded.model, host.intermediate_device()
    encodings = []
    with _running(loaded, rgb.shape[0], *rgb.shape[-2:], content=False, fuse=False, decode=False) as image_done:
        for index in range(rgb.shape[0]):
            encodings.append(model.encode_style(rgb[index:index + 1]))
            image_done(index)
    tokens = torch.cat([e.tokens for e in encodings]).to(storage)
    grid = encodings[0].grid
    return StyleEncoding(tokens, grid, rgb.to(storage), {grid: tokens})


def fuse(loaded: LoadedModel, content: ContentPayload, style: StyleEncoding, seed: int,
         shuffle: bool = True) -> FeaturesPayload:
    """MambaSTFuse: the MSTD stage, one content image at a time, one seed for the batch."""
    encoding = content.encoding
    count = encoding.tokens.shape[0]
    pair_batches(count, style.batch_size)
    model, storage = loaded.model, host.intermediate_device()
    height, width = encoding.image_size
    features = []
    with _running(loaded, count, height, width, content=False, style=False, decode=False) as image_done:
        # Re-encodings for a new grid are cached in the style object on the intermediate
        # device: a batch of frames, and later runs with other seeds, encode the style once.
        style_tokens = model.style_on_grid(style, encoding, cache_device=storage)
        for index in range(count):
            one_content = dataclasses.replace(encoding, tokens=pick(encoding.tokens, index).to(model.device))
            one_style = StyleEncoding(pick(style_tokens, index), encoding.grid)
            features.append(model.fuse(one_content, one_style, seed=seed, shuffle=shuffle).to(storage))
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


def stylize(loaded: LoadedModel, content_image: torch.Tensor, style_image: torch.Tensor, seed: int,
            shuffle: bool = True, processing_size: int = 0) -> torch.Tensor:
    """MambaSTStylize: all stages in one; the same arithmetic as the staged nodes.

    ``processing_size`` > 0 resizes the content's shorter side to that many pixels for the
    model, and the result back to the content's size.
    """
    content_rgb, alpha = split_image(content_image, "content image")
    style_rgb, _ = split_image(style_image, "style image")
    pair_batches(content_rgb.shape[0], style_rgb.shape[0])
    if processing_size < 0:
        raise ValueError(f"processing size must be 0 (keep the input size) or positive; got {processing_size}.")
    model, storage = loaded.model, host.intermediate_device()
    original_size = tuple(content_rgb.shape[-2:])
    working = resize_shorter_side(content_rgb, processing_size)
    count = working.shape[0]
    images = []
    with _running(loaded, count, *working.shape[-2:]) as image_done:
        style_cache: dict[int, torch.Tensor] = {}
        for index in range(count):
            content = model.encode_content(working[index:index + 1])
            key = index if style_rgb.shape[0] > 1 else 0
            if key not in style_cache:
                style_cache[key] = model.encode_style(style_rgb[key:key + 1], content.padded_size).tokens
            style = StyleEncoding(style_cache[key], content.grid)
            image = model.decode(model.fuse(content, style, seed=seed, shuffle=shuffle), content.image_size)
            images.append(resize(image, original_size).to(storage))
            image_done(index)
    return join_image(torch.cat(images), alpha)
