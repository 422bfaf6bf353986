"""What a run costs, for hosts that budget memory and draw progress bars."""

from __future__ import annotations

import torch

from ..controls.seams import grid_offsets
from ..controls.tiling import tile_count
from ..kernels.scan import scan_ticks
from ..network.config import MambaSTConfig
from ..utils.imaging import padded_size

# The peak working memory of a stylization, measured at 512, 1024 and 2048 px (bench/memory.py on
# a CPU, bench/gpu.py on an H200; the tables are in tests/test_resources.py), is a fixed part plus
# a part proportional to the tokens. Per token it is this many floats per channel of d_inner,
# about 1.1 times the measured slope: on a CPU the chunked scan never builds whole-sequence
# tensors; on a GPU the Triton path builds delta for the whole sequence, and half-precision dense
# layers halve their activations. The fixed part on a CPU covers the allocator's and the
# convolutions' workspaces, whose peak varies from run to run (205-333 MiB at 512 px).
_FLOATS_PER_TOKEN_PER_INNER = {"cpu": 12.8, "accelerator": 25.0, "accelerator half": 16.5}
_FIXED_BYTES = {"cpu": 130 * 2**20, "accelerator": 40 * 2**20, "accelerator half": 40 * 2**20}


def activation_bytes(config: MambaSTConfig, height: int, width: int, batch: int = 1, device_type: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> int:
    """The working memory to stylize ``batch`` images of H x W on a device of ``device_type``
    ("cpu", "cuda", "mps", ...) with dense layers in ``dtype``, model weights not included:
    what a host should free before the run. Within 1.0-1.5x of the highest measured peaks."""
    if device_type == "cpu":
        kind = "cpu"
    else:
        kind = "accelerator" if dtype == torch.float32 else "accelerator half"
    per_token = _FLOATS_PER_TOKEN_PER_INNER[kind] * config.d_inner * 4
    return int(_FIXED_BYTES[kind] + batch * _tokens(config, height, width) * per_token)


def _tokens(config: MambaSTConfig, height: int, width: int) -> int:
    grid_h, grid_w = token_grid(config, height, width)
    return grid_h * grid_w


def block_ticks(config: MambaSTConfig, height: int, width: int, backend: str) -> int:
    """Progress ticks of one VSS block on an H x W image: one for the block, and with the
    ``chunked`` and ``numba`` scans one per chunk of tokens (the others scan in one call)."""
    return 1 + scan_ticks(backend, _tokens(config, height, width))


def encode_ticks(config: MambaSTConfig, height: int, width: int, backend: str) -> int:
    """Ticks of one content or style encoding (the encoders have the same depth)."""
    return config.encoder_layers * block_ticks(config, height, width, backend)


def fuse_ticks(config: MambaSTConfig, height: int, width: int, backend: str, strength: float = 1.0) -> int:
    """Ticks of the MSTD for one image; below strength 1 the identity path (the content encoded
    as a style, then fused) runs too, and at strength 0 only it."""
    decoder = config.decoder_layers * block_ticks(config, height, width, backend)
    identity = encode_ticks(config, height, width, backend) + decoder if strength < 1 else 0
    return (decoder if strength > 0 else 0) + identity


def decode_ticks(config: MambaSTConfig) -> int:
    """Ticks of the CNN decoder: one per convolution."""
    return len(config.decoder_channels) - 1


def stylize_ticks(config: MambaSTConfig, height: int, width: int, backend: str, tile: int = 0,
                  strength: float = 1.0, style_images: int = 0, seam_smoothing: int = 0) -> int:
    """Ticks of stylizing one H x W image, in tiles of ``tile`` pixels (0: whole), on each token
    grid of ``seam_smoothing`` (shifted images keep their size: the same work each), including
    the encoding of ``style_images`` style pictures on the tiles' grid (those not cached yet)."""
    tiles, tile_h, tile_w = tile_count(height, width, tile)
    grids = len(grid_offsets(seam_smoothing, config.patch_size))
    per_tile = (encode_ticks(config, tile_h, tile_w, backend) + fuse_ticks(config, tile_h, tile_w, backend, strength)
                + decode_ticks(config))
    return tiles * grids * per_tile + style_images * encode_ticks(config, tile_h, tile_w, backend)


def token_grid(config: MambaSTConfig, height: int, width: int) -> tuple[int, int]:
    """The (h, w) token grid of an H x W image (padded to whole patches)."""
    padded_h, padded_w = padded_size(height, width, config.patch_size)
    return padded_h // config.patch_size, padded_w // config.patch_size


def tile_to_fit(config: MambaSTConfig, height: int, width: int, available: int, minimum_tile: int = 64) -> int:
    """0 when stylizing H x W on a CPU fits in ``available`` bytes by :func:`activation_bytes`;
    else the largest tile (the longer side halved until it fits, a multiple of 8, at least
    ``minimum_tile``) whose run does. For hosts that cannot catch running out of memory (on
    CPUs the system ends the process instead of raising), to decide before allocating."""
    if activation_bytes(config, height, width) <= available:
        return 0
    tile = max(height, width)
    while tile > minimum_tile:
        tile = max(minimum_tile, (tile // 2) // 8 * 8)
        if activation_bytes(config, min(tile, height), min(tile, width)) <= available:
            break
    return tile
