"""Numba kernels behind :mod:`mambast.fused` (imported only when Numba is present).

Module-level functions, so that Numba can cache the compiled code on disk between processes.
"""

from __future__ import annotations

import numba
import numpy as np

from .scan.numba_kernel import _LOG2_E, _njit, exp2_nonpositive

_ZERO, _ONE = np.float32(0.0), np.float32(1.0)


@_njit(inline="always", fastmath=True)
def silu(x):
    """x * sigmoid(x), with e**-|x| from the vectorisable 2**x (a call to ``exp`` would not
    vectorise): sigmoid(x) = 1 / (1 + e**-x) for x >= 0, e**x / (1 + e**x) below."""
    z = exp2_nonpositive(-abs(x) * _LOG2_E)
    return x * (_ONE if x >= _ZERO else z) / (_ONE + z)


@_njit(parallel=True, fastmath=True)
def norm_times_silu(y, gate, weight, bias, epsilon, out):
    """out[r] = layer_norm(y[r]) * silu(gate[r]) for every row r of (R, C) float32 arrays.

    ``out`` may be ``gate`` itself. The statistics are taken in two passes (mean, then the
    mean square of the deviations), as PyTorch's layer norm does: no cancellation."""
    rows, channels = y.shape
    inverse = np.float32(1.0 / channels)
    for r in numba.prange(rows):
        y_row, gate_row, out_row = y[r], gate[r], out[r]
        total = _ZERO
        for j in range(channels):
            total += y_row[j]
        mean = total * inverse
        squares = _ZERO
        for j in range(channels):
            deviation = y_row[j] - mean
            squares += deviation * deviation
        scale = _ONE / np.sqrt(squares * inverse + epsilon)
        for j in range(channels):
            out_row[j] = ((y_row[j] - mean) * scale * weight[j] + bias[j]) * silu(gate_row[j])


@_njit(parallel=True, fastmath=True)
def gather_band(image, rows, scale, band):
    """band[b, c, i] = reflection-padded (1 pixel) row ``rows[i]`` of ``image[b, c]`` upsampled
    ``scale`` times (nearest) along the row; image (B, C, h, w), band (B, C, len(rows), w*scale + 2).

    One pass over the band: the rows picked, widened and padded as they are written."""
    batch, channels, _, width = image.shape
    wide = width * scale
    for task in numba.prange(batch * channels):
        b, c = task // channels, task % channels
        source, target = image[b, c], band[b, c]
        for i in range(rows.shape[0]):
            row, out = source[rows[i]], target[i]
            if scale == 1:
                for x in range(width):
                    out[x + 1] = row[x]
            elif scale == 2:
                for x in range(width):
                    out[2 * x + 1] = row[x]
                    out[2 * x + 2] = row[x]
            else:
                for x in range(wide):
                    out[x + 1] = row[x // scale]
            out[0] = out[2]
            out[wide + 1] = out[wide - 1]
