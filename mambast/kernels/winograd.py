"""The CNN decoder on CPUs: NNPACK's Winograd convolutions, in bands of rows.

The CNN decoder is about 130 GFLOP at 512 px, nearly all of it 3x3 convolutions, and oneDNN
already runs them near this kind of CPU's peak. Winograd's algorithm needs 2.25x to 4x fewer
multiplications for a 3x3 kernel; NNPACK, built into PyTorch's CPU wheels, implements it, but
PyTorch routes a convolution to NNPACK only for batches of 16 or more. Called directly it runs
the decoder's convolutions 1.9x to 2.8x faster here (bench/stylize.py), with a relative
difference of about 1e-5 per convolution (Winograd's rounding, within the parity tests). A
convolution to fewer than ``NNPACK_MIN_OUT_CHANNELS`` channels is faster through oneDNN: the last
one, 64 to 3 channels, took 0.19 s against 0.35 s at 1024 px here (64 to 64: even).

NNPACK keeps a workspace for its transforms that grows to the largest convolution it was given
and is never freed (about 0.8 GB for the decoder's last convolution at 1024 px), so the image
goes through in bands of rows of at most ``BAND_PIXELS`` output pixels: the workspace stays
under about 90 MB, and the bands run no slower (that convolution: about 0.5 s in bands of 32 or
64 rows against 0.53 s whole, here; bands of 16 rows were slower). Bands are also kept to at
most ``BAND_MACS`` multiply-accumulates, and Cancel is checked between them
(:func:`mambast.utils.progress.cancel_point`): the decoder's first convolution at 2048 px is 77 G
multiply-accumulates, seconds on a small CPU.

The decoder is a chain of ``[2x nearest upsampling] reflection padding, 3x3 convolution [ReLU]``
stages (:func:`decoder_stages`). Each band's padded input is gathered straight from the stage's
unpadded, not yet upsampled input (:func:`band_input`), and the ReLU runs on the band while it
is in cache: the upsampled and padded full-size images are never made (at 1024 px the
upsampling, padding and band copies in front of the first full-resolution convolution took 0.51 s,
its gathers 0.11 s).

Used for float32 CPU tensors when NNPACK is available; anything else, or an NNPACK failure,
takes ``F.conv2d``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.progress import cancel_point
from .fused import gather_band

BAND_PIXELS = 32768
BAND_MACS = 8 * 2**30
NNPACK_MIN_OUT_CHANNELS = 64


@functools.lru_cache(maxsize=1)
def nnpack_available() -> bool:
    try:
        return bool(torch._nnpack_available())
    except Exception:  # an older or stripped build
        return False


def _winograd_applies(layer: nn.Conv2d, image: torch.Tensor) -> bool:
    return (image.device.type == "cpu" and image.dtype == torch.float32 and image.dim() == 4
            and _plain_3x3(layer) and layer.padding == (0, 0)
            and layer.out_channels >= NNPACK_MIN_OUT_CHANNELS and nnpack_available())


def _plain_3x3(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3) and layer.stride == (1, 1)
            and layer.dilation == (1, 1) and layer.groups == 1)


def _ordinary(layer: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
    return F.conv2d(image, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _convolve(layer: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
    """One valid 3x3 convolution of contiguous NCHW ``image``: NNPACK where it applies and works."""
    if _winograd_applies(layer, image):
        try:
            return torch._nnpack_spatial_convolution(image, layer.weight, layer.bias, [0, 0])
        except (RuntimeError, AttributeError):  # a shape NNPACK refuses, or a build without the op
            pass
    return _ordinary(layer, image)


@dataclass(frozen=True)
class Stage:
    """``[nearest upsampling by scale] reflection padding of 1, conv (3x3, valid) [ReLU]``."""

    conv: nn.Conv2d
    scale: int = 1
    relu: bool = False


def decoder_stages(layers: nn.Sequential) -> list[Stage] | None:
    """The decoder as a list of :class:`Stage`, or None when its layers are not such a chain."""
    stages: list[Stage] = []
    scale, padded = 1, False
    items = list(layers)
    index = 0
    while index < len(items):
        layer = items[index]
        if isinstance(layer, nn.Upsample) and not padded and _integer_scale(layer):
            scale *= _integer_scale(layer)
        elif isinstance(layer, nn.ReflectionPad2d) and tuple(layer.padding) == (1, 1, 1, 1) and not padded:
            padded = True
        elif padded and _plain_3x3(layer) and layer.padding == (0, 0):
            relu = index + 1 < len(items) and isinstance(items[index + 1], nn.ReLU)
            stages.append(Stage(layer, scale, relu))
            index += relu
            scale, padded = 1, False
        else:
            return None
        index += 1
    return stages if stages and scale == 1 and not padded else None


def _integer_scale(layer: nn.Upsample) -> int:
    factor = layer.scale_factor
    if layer.mode != "nearest" or layer.size is not None or isinstance(factor, tuple) or factor is None:
        return 0
    return int(factor) if float(factor).is_integer() and factor >= 1 else 0


def _source_indices(length: int, scale: int, device: torch.device) -> torch.Tensor:
    """For each position of the upsampled, reflection-padded axis, its index in the input axis."""
    upsampled = length * scale
    positions = torch.arange(-1, upsampled + 1, device=device).abs()
    positions = torch.where(positions >= upsampled, 2 * (upsampled - 1) - positions, positions)
    return positions // scale


def band_input(image: torch.Tensor, rows: torch.Tensor, scale: int) -> torch.Tensor:
    """Rows ``rows`` (input-row indices, from :func:`_source_indices`) of
    ``reflection_pad(upsample(image, scale), 1)``, contiguous NCHW, without building the whole
    upsampled or padded image."""
    fused = gather_band(image, rows, scale)
    if fused is not None:
        return fused
    batch, channels, _, width = image.shape
    picked = image.index_select(2, rows)
    wide = width * scale
    band = image.new_empty((batch, channels, rows.numel(), wide + 2))
    inner = band[..., 1: wide + 1]
    if scale == 1:
        inner.copy_(picked)
    else:
        inner.unflatten(-1, (width, scale)).copy_(picked.unsqueeze(-1).expand(-1, -1, -1, -1, scale))
    band[..., 0].copy_(band[..., 2])
    band[..., wide + 1].copy_(band[..., wide - 1])
    return band


def _stage(stage: Stage, image: torch.Tensor) -> torch.Tensor:
    """One stage on NCHW ``image``, in bands of output rows (a Cancel check between bands)."""
    layer = stage.conv
    image = image.contiguous()  # once per stage (the first one's input is a channels-last view): every band reads it
    batch, _, height, width = image.shape
    out_height, out_width = height * stage.scale, width * stage.scale
    if min(out_height, out_width) < 2:
        # reflection padding needs two pixels a side: let PyTorch say so in its own words
        F.pad(image, (1, 1, 1, 1), mode="reflect")
    rows_of = _source_indices(height, stage.scale, image.device)
    pixels = min(BAND_PIXELS, BAND_MACS // max(1, layer.weight[0].numel() * layer.out_channels * batch))
    rows = max(1, pixels // max(1, out_width))
    if out_height <= rows:
        return _finish(stage, _convolve(layer, band_input(image, rows_of, stage.scale)))
    out = image.new_empty((batch, layer.out_channels, out_height, out_width))
    for top in range(0, out_height, rows):
        cancel_point()
        bottom = min(top + rows, out_height)
        band = band_input(image, rows_of[top: bottom + 2], stage.scale)
        convolved = _convolve(layer, band)
        if stage.relu:  # ReLU and the copy into place in one pass
            torch.clamp_min(convolved, 0, out=out[:, :, top:bottom])
        else:
            out[:, :, top:bottom] = convolved
    return out


def _finish(stage: Stage, out: torch.Tensor) -> torch.Tensor:
    return torch.relu_(out) if stage.relu else out


def run_stages(stages: list[Stage], image: torch.Tensor, after_each=None) -> torch.Tensor:
    """The decoder's stages on (B, C, h, w) ``image`` (float32, CPU): NCHW out.

    ``after_each`` is called after every stage (the progress tick)."""
    for stage in stages:
        image = _stage(stage, image)
        if after_each is not None:
            after_each()
    return image
