"""The staged API: a stylization as the nodes run it, one stage over a whole batch at a time.

Encode Content, Fuse (MSTD) and Decode are each a stage here, and the all-in-one MambaST Stylize
is one more. A stage knows before it runs how many progress ticks each image will take
(``planned``, so that a host's progress bar ends exactly) and the size the model works at
(``working_size``, for a memory estimate); :func:`run_stage` runs it with the host's progress
report and Cancel check. The stages and the all-in-one pipeline share the per-image loop and the
per-grid steps of :mod:`mambast.run.steps`, so the staged nodes give exactly its result.

A host keeps what a stage returns (:class:`EncodedContents`, :class:`FusedFeatures`) between its
nodes, on the ``storage`` device it names (ComfyUI's intermediate device); the model's device
only holds the image at work.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Generic, TypeVar

import torch

from ..controls.seams import blend_grids, check_seam_smoothing, grid_offsets, shift_onto_grid
from ..kernels.cuda_graphs import replaying_repeats
from ..network.encodings import ContentEncoding, StyleSource, batch_item, pair_batches, pending_style_images
from ..network.model import MambaST
from ..utils.imaging import check_image
from ..utils.progress import ProgressTracker, ThrottledReport, progress_callback
from .pipeline import Controls, batch_ticks, stylize_images, working_size
from .resources import activation_bytes, decode_ticks, encode_ticks, fuse_ticks
from .steps import Offset, decode_on_grid, each_image, encode_on_grid, fuse_on_grid

Result = TypeVar("Result")
ImageDone = Callable[[int], None]


@dataclasses.dataclass
class EncodedContents:
    """Content images encoded on each token grid of the seam smoothing (the nodes' MAMBAST_CONTENT).

    ``images``: the pictures (B, 3, H, W), which the identity path of the style strength reads;
    ``grids``: their encodings (tokens (B, L, d_model)) by grid offset, the image's own grid (0, 0)
    first.
    """

    images: torch.Tensor
    grids: dict[Offset, ContentEncoding]

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.grids[(0, 0)].image_size


@dataclasses.dataclass
class FusedFeatures:
    """Fused features on each token grid (the nodes' MAMBAST_FEATURES): by grid offset, the features
    (B, d_model, h, w) and the size (H, W) their decoding is cropped to; (0, 0) first."""

    grids: dict[Offset, tuple[torch.Tensor, tuple[int, int]]]

    @property
    def batch_size(self) -> int:
        return self.grids[(0, 0)][0].shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.grids[(0, 0)][1]


class Stage(Generic[Result]):
    """A stage over a batch: ``planned`` ticks per image, ``working_size`` (H, W) of the images or
    tiles the model holds at once, and :meth:`run`, which reports each finished image."""

    model: MambaST

    @property
    def planned(self) -> list[int]:
        raise NotImplementedError

    @property
    def working_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def run(self, image_done: ImageDone | None = None) -> Result:
        raise NotImplementedError


@dataclasses.dataclass
class EncodeContents(Stage[EncodedContents]):
    """Content images (B, 3, H, W) in 0..1 encoded one at a time, on each of the ``seam_smoothing``
    token grids (0: only their own); the later stages follow the grids they are given."""

    model: MambaST
    images: torch.Tensor
    seam_smoothing: int = 0
    storage: torch.device | None = None

    def __post_init__(self):
        check_image(self.images, "content")
        check_seam_smoothing(self.seam_smoothing)

    @property
    def offsets(self) -> list[Offset]:
        return grid_offsets(self.seam_smoothing, self.model.config.patch_size)

    @property
    def working_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    @property
    def planned(self) -> list[int]:
        per_image = len(self.offsets) * encode_ticks(self.model.config, *self.working_size, self.model.scan_backend)
        return [per_image] * self.images.shape[0]

    def run(self, image_done: ImageDone | None = None) -> EncodedContents:
        offsets = self.offsets
        encoded: dict[Offset, list[ContentEncoding]] = {offset: [] for offset in offsets}

        def encode_one(index: int) -> None:
            for offset in offsets:
                encoding, _ = encode_on_grid(self.model, self.images[index:index + 1], offset)
                encoded[offset].append(dataclasses.replace(encoding, tokens=_to(encoding.tokens, self.storage)))

        each_image(self.images.shape[0], encode_one, image_done)
        grids = {offset: dataclasses.replace(encodings[0], tokens=torch.cat([e.tokens for e in encodings]))
                 for offset, encodings in encoded.items()}
        return EncodedContents(_to(self.images, self.storage), grids)


@dataclasses.dataclass
class FuseContents(Stage[FusedFeatures]):
    """The MSTD over encoded contents, one image at a time, one seed for the batch, on each token
    grid the contents were encoded on, with the style strength and temporal smoothing.

    The style is encoded on each grid it meets, once (cached in the style object on ``storage``:
    a batch of frames, and later runs with other seeds, encode it once); at strength 0 it is not
    needed (None).
    """

    model: MambaST
    contents: EncodedContents
    style: StyleSource | None
    seed: int | None
    shuffle: bool = True
    strength: float = 1.0
    temporal_smoothing: float = 0.0
    storage: torch.device | None = None

    def __post_init__(self):
        if self.strength > 0:
            if self.style is None:
                raise ValueError("style: connect a style (MambaST Encode Style) or set strength to 0.")
            pair_batches(self.contents.batch_size, self.style.batch_size)

    @property
    def working_size(self) -> tuple[int, int]:
        return self.contents.image_size

    @property
    def planned(self) -> list[int]:
        """Every image fuses on every grid; the first also encodes the style on the grids where it
        is not encoded yet."""
        config, backend = self.model.config, self.model.scan_backend
        per_image, style_encodings, seen = 0, 0, set()
        for encoding in self.contents.grids.values():
            height, width = encoding.image_size
            per_image += fuse_ticks(config, height, width, backend, self.strength)
            if self.strength > 0 and encoding.grid not in seen:
                seen.add(encoding.grid)
                style_encodings += (pending_style_images(self.style, encoding.grid)
                                    * encode_ticks(config, height, width, backend))
        return [per_image + style_encodings] + [per_image] * (self.contents.batch_size - 1)

    def run(self, image_done: ImageDone | None = None) -> FusedFeatures:
        model, grids = self.model, self.contents.grids
        style_tokens = {offset: model.style_on_grid(self.style, encoding, cache_device=self.storage)
                        for offset, encoding in grids.items()} if self.strength > 0 else {}
        fused: dict[Offset, list[torch.Tensor]] = {offset: [] for offset in grids}
        previous: dict[Offset, torch.Tensor] = {}

        def fuse_one(index: int) -> None:
            image = batch_item(self.contents.images, index).to(model.device)
            for offset, encoding in grids.items():
                one = dataclasses.replace(encoding, tokens=batch_item(encoding.tokens, index).to(model.device))
                features = fuse_on_grid(model, one, shift_onto_grid(image, offset), style_tokens.get(offset), index,
                                        self.strength, self.seed, self.shuffle, self.temporal_smoothing, previous,
                                        offset)
                fused[offset].append(_to(features, self.storage))

        each_image(self.contents.batch_size, fuse_one, image_done)
        return FusedFeatures({offset: (torch.cat(fused[offset]), encoding.image_size)
                              for offset, encoding in grids.items()})


@dataclasses.dataclass
class DecodeFeatures(Stage[torch.Tensor]):
    """Fused features decoded to images (B, 3, H, W), unclamped, one image at a time; the token
    grids of the seam smoothing decoded and blended."""

    model: MambaST
    features: FusedFeatures
    storage: torch.device | None = None

    @property
    def working_size(self) -> tuple[int, int]:
        return self.features.image_size

    @property
    def planned(self) -> list[int]:
        return [decode_ticks(self.model.config) * len(self.features.grids)] * self.features.batch_size

    def run(self, image_done: ImageDone | None = None) -> torch.Tensor:
        offsets = list(self.features.grids)

        def decode_one(index: int) -> torch.Tensor:
            decoded = [decode_on_grid(self.model, features[index:index + 1], size, offset)
                       for offset, (features, size) in self.features.grids.items()]
            return _to(blend_grids(decoded, offsets, self.model.config.patch_size), self.storage)

        return torch.cat(each_image(self.features.batch_size, decode_one, image_done))


@dataclasses.dataclass
class StylizeBatch(Stage[torch.Tensor]):
    """All stages with every control in one (:func:`mambast.run.pipeline.stylize_images`): content
    (B, 3, H, W) -> stylized (B, 3, H, W), unclamped. ``release_memory`` frees the host's cache
    between out-of-memory retries in smaller tiles."""

    model: MambaST
    content: torch.Tensor
    style: torch.Tensor | None
    controls: Controls
    second_style: torch.Tensor | None = None
    release_memory: Callable[[], None] | None = None

    @property
    def working_size(self) -> tuple[int, int]:
        """The processing size, or the tile when tiling."""
        height, width = working_size(tuple(self.content.shape[-2:]), self.controls.processing_size)
        tile = self.controls.tile
        return (min(height, tile), min(width, tile)) if tile else (height, width)

    @property
    def planned(self) -> list[int]:
        size = working_size(tuple(self.content.shape[-2:]), self.controls.processing_size)
        return batch_ticks(self.model, size, self.content.shape[0], self.controls, self.style, self.second_style)

    def run(self, image_done: ImageDone | None = None) -> torch.Tensor:
        return stylize_images(self.model, self.content, self.style, self.controls, self.second_style, image_done,
                              self.release_memory)


def run_stage(stage: Stage[Result], report: Callable[[int, int], None] | None = None,
              check_cancel: Callable[[], None] | None = None, notice: Callable[[str], None] | None = None,
              report_interval: float = 0.25) -> Result:
    """Run ``stage`` for inference with a host's progress ``report(done, total)`` (a total that ends
    exactly at what ran) and ``check_cancel`` (raise to stop) called at every tick and cancel
    point (``report`` at most every ``report_interval`` seconds, and at the end; Cancel at every
    tick); ``notice(text)`` tells the user of a long first wait (compiling the CPU kernels). On
    CUDA, stages whose shapes repeat (a batch, video frames) replay from CUDA graphs, dropped when
    the stage ends (:mod:`mambast.kernels.cuda_graphs`)."""
    throttled = ThrottledReport(report or (lambda done, total: None), report_interval)
    tracker = ProgressTracker(stage.planned, throttled)

    def on_tick() -> None:
        if check_cancel is not None:
            check_cancel()
        tracker.tick()

    try:
        with progress_callback(on_tick, tracker.replan, check_cancel, notice), torch.inference_mode(), \
                replaying_repeats(stage.model.device):
            return stage.run(lambda index: tracker.image_done())
    finally:
        throttled.flush()


def working_memory(stage: Stage, device_type: str) -> int:
    """Bytes of working memory ``stage`` needs on a device of ``device_type`` ("cpu", "cuda", ...),
    weights not included: what a host frees before running it (:func:`activation_bytes`)."""
    return activation_bytes(stage.model.config, *stage.working_size, device_type=device_type, dtype=stage.model.dtype)


def _to(tensor: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return tensor if device is None else tensor.to(device)
