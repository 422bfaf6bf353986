"""What each node does, as plain functions on ComfyUI values; no ComfyUI import beyond ``comfy``.

Images are processed one at a time (bounded memory, a progress step per image, Cancel checked
between scan chunks), and every image of a batch uses the same seed, hence the same style
permutations: frames of a video do not flicker from reshuffling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..mambast import (COLOUR_MODES, DTYPES, SCAN_CHOICES as SCAN_BACKEND_CHOICES, Controls, MambaST, StyleEncoding,
                       StyleMix, automatic_dtype, batch_item, finish, is_out_of_memory, load, match_colour,
                       shows_nothing, tile_to_fit, working_size)
from ..mambast.run import staged
from . import comfy as host
from .layout import join_image, normalise_mask, split_image

DTYPE_CHOICES = ("auto", *DTYPES)
SCAN_CHOICES = SCAN_BACKEND_CHOICES
SEAM_SMOOTHING_CHOICES = ("off", "2 grids", "4 grids", "16 grids")


@dataclasses.dataclass
class LoadedModel:
    """MAMBAST_MODEL: the network under ComfyUI's memory manager."""

    patcher: Any
    checkpoint: str
    model: MambaST


@dataclasses.dataclass
class ContentPayload:
    """MAMBAST_CONTENT: the encoded content images (on each token grid of the seam smoothing) and
    the alpha channel to give back."""

    contents: staged.EncodedContents
    alpha: torch.Tensor | None


@dataclasses.dataclass
class FeaturesPayload:
    """MAMBAST_FEATURES: the fused features (on each token grid) and the alpha channel to give back."""

    features: staged.FusedFeatures
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


def checked_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    """``value`` when it is one of ``choices``; else a ValueError naming the input and the choices.
    ComfyUI does not check combo values of V3 nodes (or a route's query) against their options."""
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(choices)}.")
    return value


def dense_dtype(choice: str, device: torch.device | None = None) -> torch.dtype:
    """The dense layers' dtype for a loader choice. ``auto`` is float32 on GPUs (half precision
    changed the picture visibly, bfloat16 up to 0.08 max abs at 512 px, and was not faster for
    single images in docs/gpu.md's measurements) and on CPUs, except on a CPU with native
    bfloat16 where bfloat16 measured faster (:func:`mambast.run.precision.automatic_dtype`); the
    halves stay a choice."""
    if choice != "auto":
        return DTYPES[choice]
    return automatic_dtype(device if device is not None else host.load_device())


def load_model(checkpoint: str, dtype: str = "auto", scan: str = "auto") -> LoadedModel:
    """MambaSTLoader: read the weights on the offload device and wrap them for ComfyUI."""
    checked_choice(dtype, DTYPE_CHOICES, "dtype")
    checked_choice(scan, SCAN_CHOICES, "scan backend")
    path = host.resolve_checkpoint(checkpoint)
    model = load(path, device=host.offload_device(), dtype=dense_dtype(dtype, host.load_device()), scan=scan)
    return LoadedModel(host.wrap_model(model), checkpoint, model)


# Progress messages to the browser: a few a second, and the last (Cancel is still checked at every tick).
PROGRESS_INTERVAL = 0.25
STAGED_ADVICE = "Use MambaST Stylize with a tile_size (e.g. 512), a smaller processing_size, or smaller images"


def _run(loaded: LoadedModel, stage: staged.Stage, what: str, advice: str = STAGED_ADVICE):
    """Load the model for the stage's working size, then run it with ComfyUI's progress bar and
    Cancel (:func:`mambast.run.staged.run_stage`: a bar that ends exactly, CUDA graphs for shapes
    that repeat). An out-of-memory error that escapes (the tiled fallback could not help) frees
    ComfyUI's cache and says what to do."""
    host.load_for_inference(loaded.patcher, staged.working_memory(stage, host.load_device().type))
    bar = host.progress_bar(max(1, sum(stage.planned)))
    try:
        return staged.run_stage(stage, lambda done, total: bar.update_absolute(done, max(1, total)),
                                host.throw_if_interrupted, host.notifier(), PROGRESS_INTERVAL)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        host.free_cache()
        height, width = stage.working_size
        raise MemoryError(f"Out of memory while {what} a {width}x{height} image on {loaded.model.device}. {advice}; "
                          "ComfyUI's cache was freed.") from None


def seam_smoothing_grids(choice: str) -> int:
    """The number of token grids of a ``seam_smoothing`` widget value ("off", "2 grids", ...)."""
    checked_choice(choice, SEAM_SMOOTHING_CHOICES, "seam smoothing")
    return 0 if choice == "off" else int(choice.split()[0])


def encode_content(loaded: LoadedModel, image: torch.Tensor, seam_smoothing: str = "off") -> ContentPayload:
    """MambaSTEncodeContent: IMAGE -> content encodings, one image at a time, on each token grid
    of the seam smoothing (the later stages follow the grids they are given)."""
    rgb, alpha = split_image(image, "content image")
    stage = staged.EncodeContents(loaded.model, rgb, seam_smoothing_grids(seam_smoothing), host.intermediate_device())
    return ContentPayload(_run(loaded, stage, "encoding"), alpha)


def encode_style(loaded: LoadedModel, image: torch.Tensor, style_scale: float = 1.0) -> StyleEncoding:
    """MambaSTEncodeStyle: IMAGE -> a style, encoded when it is fused, on each content's grid.

    The MSTD pairs style tokens with content tokens, so a style is only useful on a content's
    token grid: encoding it here at its own size (a 6000 px photo, say) would cost time and
    memory for tokens nobody uses. The encodings made on content grids are cached in the style
    (a few grids): a batch of frames, and later runs with other seeds, encode it once.
    """
    rgb, _ = split_image(image, "style image")
    return StyleEncoding.from_images(rgb.to(host.intermediate_device()), style_scale)


def blend_styles(first: StyleEncoding | StyleMix, second: StyleEncoding | StyleMix, weight: float,
                 seed: int) -> StyleMix:
    """MambaSTStyleBlend: a share ``weight`` of the style tokens drawn from ``second``."""
    return StyleMix(first, second, weight, seed)


def fuse(loaded: LoadedModel, content: ContentPayload, style: StyleEncoding | StyleMix | None, seed: int,
         shuffle: bool = True, strength: float = 1.0, temporal_smoothing: float = 0.0) -> FeaturesPayload:
    """MambaSTFuse: the MSTD stage, one content image at a time, one seed for the batch, on each
    token grid the content was encoded on."""
    stage = staged.FuseContents(loaded.model, content.contents, style, seed, shuffle, strength, temporal_smoothing,
                                host.intermediate_device())
    return FeaturesPayload(_run(loaded, stage, "fusing"), content.alpha)


def decode(loaded: LoadedModel, features: FeaturesPayload) -> torch.Tensor:
    """MambaSTDecode: fused features -> IMAGE (clamped to 0..1, the content's alpha restored);
    the token grids of the seam smoothing decoded and blended."""
    stage = staged.DecodeFeatures(loaded.model, features.features, host.intermediate_device())
    return join_image(_run(loaded, stage, "decoding"), features.alpha)


def stylize(loaded: LoadedModel, content_image: torch.Tensor, style_image: torch.Tensor | None, seed: int,
            shuffle: bool = True, processing_size: int = 0, strength: float = 1.0, style_scale: float = 1.0,
            colour: str = "style", temporal_smoothing: float = 0.0, mask: torch.Tensor | None = None,
            feather: float = 0.0, invert_mask: bool = False, second_style: torch.Tensor | None = None,
            second_style_weight: float = 0.0, tile_size: int = 0, seam_smoothing: str = "off") -> torch.Tensor:
    """MambaSTStylize: all stages and controls in one; the same arithmetic as the staged nodes.

    ``processing_size`` > 0 resizes the content's shorter side to that many pixels for the
    model, and the result back to the content's size. ``tile_size`` > 0 works in overlapping
    tiles (memory bounded by the tile). Every run falls back to tiles, halved until they fit,
    on out-of-memory; an image whose estimate exceeds the free memory is tiled from the start.
    """
    checked_choice(colour, COLOUR_MODES, "colour")
    content_rgb, alpha = split_image(content_image, "content image")
    style_rgb = split_image(style_image, "style image")[0] if style_image is not None else None
    second_rgb = split_image(second_style, "second style image")[0] if second_style is not None else None
    if mask is not None:
        mask = normalise_mask(mask, content_rgb.shape[0], "mask", host.repeat_to_batch_size)
        empty = [index + 1 for index in range(mask.shape[0]) if shows_nothing(mask[index], invert_mask)]
        if empty:
            where = "" if len(empty) == mask.shape[0] else f" for image(s) {', '.join(map(str, empty))} of the batch"
            host.warn_on_node(f"The mask is empty{where}: nothing to stylize there, the content is returned "
                              "unchanged. Paint the area to stylize (right-click the image > Open in MaskEditor), "
                              "or disconnect the mask to stylize the whole image.")
        if len(empty) == mask.shape[0]:
            return join_image(content_rgb, alpha)
    model, storage = loaded.model, host.intermediate_device()
    height, width = working_size(tuple(content_rgb.shape[-2:]), processing_size)
    if not tile_size and host.load_device().type == "cpu":
        # Running out of memory cannot be caught on a CPU (the system ends the process), so the
        # estimate decides beforehand; accelerators try, and fall back to tiles on the error.
        tile_size = tile_to_fit(model.config, height, width, host.free_memory(host.load_device()))
        if tile_size:
            host.warn_on_node(f"a {width}x{height} image needs more memory than is free; working in "
                              f"{tile_size} px tiles.")
    controls = Controls(seed=seed, shuffle=shuffle, strength=strength, style_scale=style_scale, colour=colour,
                        temporal_smoothing=temporal_smoothing, processing_size=processing_size,
                        second_style_weight=second_style_weight, mask=mask, feather=feather,
                        invert_mask=invert_mask, tile=tile_size, seam_smoothing=seam_smoothing_grids(seam_smoothing))
    stage = staged.StylizeBatch(model, content_rgb, style_rgb, controls, second_rgb, host.free_cache)
    advice = "Even the smallest tiles did not fit: close other programs or models, or use a smaller processing_size"
    # Images stay where ComfyUI keeps them; each is moved to the model's device in turn.
    return join_image(_run(loaded, stage, "stylizing", advice).to(storage), alpha)


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
    count = stylized_rgb.shape[0]
    controls = Controls(mask=normalise_mask(mask, count, "mask", host.repeat_to_batch_size), feather=feather,
                        invert_mask=invert)
    images = [finish(batch_item(content_rgb, i), stylized_rgb[i:i + 1], controls, i) for i in range(count)]
    return join_image(torch.cat(images), alpha)


def _same_size(content: torch.Tensor, stylized: torch.Tensor) -> None:
    if content.shape[-2:] != stylized.shape[-2:] or content.shape[0] not in (1, stylized.shape[0]):
        raise ValueError(f"content image is {content.shape[0]}x{content.shape[3]}x{content.shape[2]} but the stylized "
                         f"image is {stylized.shape[0]}x{stylized.shape[3]}x{stylized.shape[2]} (batch x width x "
                         "height): connect the content that was stylized, with the same size.")
