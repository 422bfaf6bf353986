"""3x3 convolutions of the CNN decoder through NNPACK's Winograd kernels on CPUs.

The CNN decoder is about 130 GFLOP at 512 px, nearly all of it 3x3 convolutions, and oneDNN
already runs them near this kind of CPU's peak. Winograd's algorithm needs 2.25x to 4x fewer
multiplications for a 3x3 kernel; NNPACK, built into PyTorch's CPU wheels, implements it, but
PyTorch routes a convolution to NNPACK only for batches of 16 or more. Called directly it runs
the decoder's convolutions 1.9x to 2.8x faster here (bench/stylize.py), with a relative
difference of about 1e-5 per convolution (Winograd's rounding, within the parity tests).

NNPACK keeps a workspace for its transforms that grows to the largest convolution it was given
and is never freed (about 0.8 GB for the decoder's last convolution at 1024 px), so the image
goes through in bands of rows of at most ``BAND_PIXELS`` output pixels: the workspace stays
under about 90 MB, and the bands run no slower (that convolution: about 0.5 s in bands of 32 or
64 rows against 0.53 s whole, here; bands of 16 rows were slower).

Bands are also kept to at most ``BAND_MACS`` multiply-accumulates, and Cancel is checked between
them (:func:`mambast.progress.cancel_point`): the decoder's first convolution at 2048 px is
77 G multiply-accumulates, seconds on a small CPU.

Used for float32 CPU tensors when NNPACK is available; anything else, or an NNPACK failure,
takes ``F.conv2d``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .progress import cancel_point

BAND_PIXELS = 32768
BAND_MACS = 8 * 2**30


@functools.lru_cache(maxsize=1)
def nnpack_available() -> bool:
    try:
        return bool(torch._nnpack_available())
    except Exception:  # an older or stripped build
        return False


def _winograd_applies(layer: nn.Conv2d, image: torch.Tensor) -> bool:
    return (image.device.type == "cpu" and image.dtype == torch.float32 and image.dim() == 4
            and layer.kernel_size == (3, 3) and layer.stride == (1, 1) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.padding == (0, 0) and nnpack_available())


def conv3x3(layer: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
    """``layer(image)``, through NNPACK when it applies (NCHW out then, else the layer's own)."""
    if _winograd_applies(layer, image):
        try:
            return _banded(layer, image.contiguous())
        except (RuntimeError, AttributeError):  # a shape NNPACK refuses, or a build without the op
            pass
    return F.conv2d(image, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _banded(layer: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
    """NNPACK's valid 3x3 convolution of NCHW ``image``, in bands of rows (each band reads the two
    rows below it too)."""
    height, width = image.shape[2] - 2, image.shape[3] - 2
    pixels = min(BAND_PIXELS, BAND_MACS // max(1, layer.weight[0].numel() * layer.out_channels * image.shape[0]))
    rows = max(1, pixels // max(1, width))
    if height <= rows:
        return torch._nnpack_spatial_convolution(image, layer.weight, layer.bias, [0, 0])
    out = image.new_empty((image.shape[0], layer.out_channels, height, width))
    for top in range(0, height, rows):
        cancel_point()
        bottom = min(top + rows, height)
        out[:, :, top:bottom] = torch._nnpack_spatial_convolution(image[:, :, top:bottom + 2].contiguous(),
                                                                  layer.weight, layer.bias, [0, 0])
    return out
