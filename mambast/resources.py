"""What a run costs, for hosts that budget memory and draw progress bars."""

from __future__ import annotations

import math

from .config import MambaSTConfig
from .imaging import padded_size
from .scan.chunked import DEFAULT_CHUNK

# Working floats per token inside a VSS block (projections, the four scan directions, delta,
# scan output and their merge) in units of d_inner, and per output pixel in the CNN decoder.
_FLOATS_PER_TOKEN_PER_INNER = 24
_FLOATS_PER_PIXEL = 256


def activation_bytes(config: MambaSTConfig, height: int, width: int, batch: int = 1) -> int:
    """A generous estimate of the working memory to stylize ``batch`` images of H x W (float32)."""
    padded_h, padded_w = padded_size(height, width, config.patch_size)
    tokens = (padded_h // config.patch_size) * (padded_w // config.patch_size)
    per_image = tokens * _FLOATS_PER_TOKEN_PER_INNER * config.d_inner + padded_h * padded_w * _FLOATS_PER_PIXEL
    return 4 * batch * per_image


def progress_ticks(config: MambaSTConfig, height: int, width: int, content: bool = True, style: bool = True,
                   fuse: bool = True, decode: bool = True) -> int:
    """How many times :func:`mambast.progress.tick` fires for one image of the given stages.

    Counts one tick per VSS block, one per scan chunk (chunked backend) and one per CNN decoder
    convolution; other backends tick less often, so treat it as an upper bound.
    """
    padded_h, padded_w = padded_size(height, width, config.patch_size)
    tokens = (padded_h // config.patch_size) * (padded_w // config.patch_size)
    per_block = 1 + math.ceil(tokens / DEFAULT_CHUNK)
    blocks = config.encoder_layers * (int(content) + int(style)) + config.decoder_layers * int(fuse)
    return blocks * per_block + (len(config.decoder_channels) - 1) * int(decode)
