"""The paper's evaluation over aligned (stylized, content, style) images, one pair at a time.

What each metric sees, as the reference's ``evaluation/eval_artfid.py`` prepares it (torchvision's
``Resize(512)`` on PIL images: the shorter side to 512, the longer truncated, bilinear):

- FID: the stylized images against their style images (one style image per pair), both resized,
  through ArtFID's Inception, in 0..1 without normalisation.
- LPIPS: each stylized image against its content image, both resized; LPIPS gray on their
  grayscale (PIL ``L``) versions.
- CFSD: each stylized image against its content image at the stylized image's own size.
- ArtFID = (1 + LPIPS) * (1 + FID).

Where the reference expects a content image already of the stylized image's shape, a content
of another shape is resized to it. Only features are kept between pairs (2048 numbers per image
for FID; the style images' are computed once per file), never the images.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np
import torch

from ..utils.imaging import read_image
from .frechet import frechet_distance
from .weights import MetricNetworks

METRIC_SIZE = 512
# The paper's figures for Mamba-ST (Botti et al., WACV 2025), 20 content x 40 style images at 512 px.
PAPER = {"art_fid": 27.11, "fid": 16.75, "lpips": 0.53, "cfsd": 0.33}
PAPER_SECONDS_FOR_800 = 24.70
PAPER_PEAK_MIB = 1414

ImageSource = Union[str, os.PathLike, torch.Tensor]


def art_fid(fid: float, lpips: float) -> float:
    """ArtFID (Wright & Ommer 2022): (1 + LPIPS) * (1 + FID)."""
    return (1 + lpips) * (1 + fid)


@dataclass
class Scores:
    """The protocol's metrics over ``pairs`` pairs (lower is better for each)."""

    art_fid: float
    fid: float
    lpips: float
    lpips_gray: float
    cfsd: float
    pairs: int

    def as_dict(self) -> dict:
        return asdict(self)


def picture(source: ImageSource):
    """An RGB PIL image of ``source``: a file (read upright, with the pixel limit of
    :func:`mambast.utils.imaging.read_image`) or an image tensor (3, H, W) / (1, 3, H, W) in 0..1,
    rounded to 8 bits as a saved PNG would hold it."""
    from PIL import Image

    image = source if isinstance(source, torch.Tensor) else read_image(source)
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"one image at a time, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image (3, H, W), got shape {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def resize_shorter_side(picture, size: int):
    """torchvision's ``Resize(size)`` on a PIL image: the shorter side to ``size``, the longer
    scaled and truncated, bilinear (PIL's, antialiased); unchanged when already that size."""
    from PIL import Image

    width, height = picture.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return picture if new_size == picture.size else picture.resize(new_size, Image.BILINEAR)


def resized_to(picture, size: tuple[int, int]):
    from PIL import Image

    return picture if picture.size == size else picture.resize(size, Image.BILINEAR)


def as_tensor(picture, device: torch.device | str) -> torch.Tensor:
    """(1, C, H, W) float32 in 0..1 (C = 3 for RGB, 1 for ``L``), as torchvision's ``ToTensor``."""
    array = np.asarray(picture, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].to(device, torch.float32) / 255


@dataclass
class PairMeasurement:
    """What the protocol keeps of one pair: the Inception features of the stylized image and of its
    style image (FID), and the pair's LPIPS, LPIPS gray and CFSD."""

    stylized_features: np.ndarray
    style_features: np.ndarray
    lpips: float
    lpips_gray: float
    cfsd: float

    def as_record(self) -> dict:
        """JSON-ready, features included (2048 numbers each), to continue an interrupted run."""
        return {"lpips": self.lpips, "lpips_gray": self.lpips_gray, "cfsd": self.cfsd,
                "stylized_features": self.stylized_features.tolist(), "style_features": self.style_features.tolist()}

    @classmethod
    def from_record(cls, record: dict) -> "PairMeasurement":
        return cls(np.asarray(record["stylized_features"], dtype=np.float64),
                   np.asarray(record["style_features"], dtype=np.float64), float(record["lpips"]),
                   float(record["lpips_gray"]), float(record["cfsd"]))


class Evaluation:
    """The protocol over pairs measured one at a time (:meth:`add`, or :meth:`include` for a pair
    measured before), then :meth:`scores`."""

    def __init__(self, networks: MetricNetworks | None, device: torch.device | str = "cpu",
                 metric_size: int = METRIC_SIZE):
        if metric_size < 75:
            raise ValueError(f"metric_size must be at least 75 (Inception's smallest input), got {metric_size}")
        self.networks, self.device, self.metric_size = networks, torch.device(device), metric_size
        self.measurements: list[PairMeasurement] = []
        self._style_cache: dict[str, np.ndarray] = {}

    @property
    def pairs(self) -> int:
        return len(self.measurements)

    def add(self, stylized: ImageSource, content: ImageSource, style: ImageSource) -> PairMeasurement:
        """Measure one pair and include it. Files and tensors alike."""
        measurement = self.measure(stylized, content, style)
        self.include(measurement)
        return measurement

    def include(self, measurement: PairMeasurement) -> None:
        self.measurements.append(measurement)

    @torch.inference_mode()
    def measure(self, stylized: ImageSource, content: ImageSource, style: ImageSource) -> PairMeasurement:
        """One pair's measurement; a style file seen before reuses its FID features."""
        networks, size = self.networks, self.metric_size
        stylized_picture = picture(stylized)
        stylized_small = resize_shorter_side(stylized_picture, size)
        stylized_features = self._inception(stylized_small)
        key = str(Path(style).resolve()) if not isinstance(style, torch.Tensor) else None
        style_features = self._style_cache.get(key) if key is not None else None
        if style_features is None:
            style_features = self._inception(resize_shorter_side(picture(style), size))
            if key is not None:
                self._style_cache[key] = style_features
        content_picture = picture(content)
        content_small = resized_to(resize_shorter_side(content_picture, size), stylized_small.size)
        distances = [float(networks.lpips(*(as_tensor(p, self.device) for p in pictures))[0])
                     for pictures in ((stylized_small, content_small),
                                      (stylized_small.convert("L"), content_small.convert("L")))]
        content_full = resized_to(content_picture, stylized_picture.size)
        cfsd = float(networks.cfsd(as_tensor(stylized_picture, self.device), as_tensor(content_full, self.device))[0])
        return PairMeasurement(stylized_features, style_features, distances[0], distances[1], cfsd)

    def _inception(self, picture) -> np.ndarray:
        return self.networks.inception(as_tensor(picture, self.device))[0].double().cpu().numpy()

    def scores(self) -> Scores:
        if self.pairs < 2:
            raise ValueError(f"FID needs at least 2 pairs, got {self.pairs}")
        fid = frechet_distance(np.stack([m.stylized_features for m in self.measurements]),
                               np.stack([m.style_features for m in self.measurements]))
        lpips = sum(m.lpips for m in self.measurements) / self.pairs
        return Scores(art_fid=art_fid(fid, lpips), fid=fid, lpips=lpips,
                      lpips_gray=sum(m.lpips_gray for m in self.measurements) / self.pairs,
                      cfsd=sum(m.cfsd for m in self.measurements) / self.pairs, pairs=self.pairs)


def evaluate_images(stylized: Iterable[ImageSource], contents: Iterable[ImageSource], styles: Iterable[ImageSource],
                    networks: MetricNetworks, device: torch.device | str = "cpu", metric_size: int = METRIC_SIZE,
                    on_pair: Callable[[int], None] | None = None) -> Scores:
    """The protocol's :class:`Scores` of three aligned sequences (files or image tensors),
    consumed lazily: the i-th stylized image was made from the i-th content and style images.
    Sequences of different lengths are refused before anything is computed (iterators without a
    length, when one ends first). ``on_pair(done)`` is called after each pair (a progress bar)."""
    lengths = [len(items) for items in (stylized, contents, styles) if hasattr(items, "__len__")]
    if len(set(lengths)) > 1:
        raise ValueError(f"the stylized, content and style sequences have different lengths "
                         f"({', '.join(map(str, lengths))}); pair i is stylized[i] made from contents[i] and "
                         "styles[i].")
    evaluation = Evaluation(networks, device, metric_size)
    sentinel = object()
    for triple in _aligned(stylized, contents, styles, sentinel):
        evaluation.add(*triple)
        if on_pair is not None:
            on_pair(evaluation.pairs)
    return evaluation.scores()


def _aligned(stylized, contents, styles, sentinel):
    from itertools import zip_longest

    for index, triple in enumerate(zip_longest(stylized, contents, styles, fillvalue=sentinel)):
        if any(item is sentinel for item in triple):
            raise ValueError(f"the stylized, content and style sequences have different lengths (one ends at "
                             f"pair {index})")
        yield triple
