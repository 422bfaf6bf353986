"""Numba kernels behind :mod:`mambast.kernels.fused` (imported only when Numba is present).

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


@_njit(inline="always", fastmath=True)
def row_statistics(row, epsilon):
    """A layer norm's (mean, 1 / standard deviation) of a row, in two passes (the mean, then the
    mean square of the deviations), as PyTorch's layer norm takes them: no cancellation."""
    inverse = np.float32(1.0 / row.shape[0])
    total = _ZERO
    for j in range(row.shape[0]):
        total += row[j]
    mean = total * inverse
    squares = _ZERO
    for j in range(row.shape[0]):
        deviation = row[j] - mean
        squares += deviation * deviation
    return mean, _ONE / np.sqrt(squares * inverse + epsilon)


@_njit(parallel=True, fastmath=True)
def norm_times_silu(y, gate, weight, bias, epsilon, out):
    """out[r] = layer_norm(y[r]) * silu(gate[r]) for every row r of (R, C) float32 arrays;
    ``out`` may be ``gate`` itself."""
    rows, channels = y.shape
    for r in numba.prange(rows):
        y_row, gate_row, out_row = y[r], gate[r], out[r]
        mean, scale = row_statistics(y_row, epsilon)
        for j in range(channels):
            out_row[j] = ((y_row[j] - mean) * scale * weight[j] + bias[j]) * silu(gate_row[j])


@_njit(parallel=True, fastmath=True)
def skip_norm(mixed, tokens, skip, weight, bias, epsilon, residual, out):
    """out[r] = layer_norm(mixed[r] + tokens[r] * skip) [+ tokens[r] when ``residual``] for every
    row r of (R, C) float32 arrays: a VSS block's output and its stack's skip connection (the
    sum is built in ``out``'s row first)."""
    rows, channels = mixed.shape
    for r in numba.prange(rows):
        mixed_row, token_row, out_row = mixed[r], tokens[r], out[r]
        for j in range(channels):
            out_row[j] = mixed_row[j] + token_row[j] * skip[j]
        mean, scale = row_statistics(out_row, epsilon)
        for j in range(channels):
            normed = (out_row[j] - mean) * scale * weight[j] + bias[j]
            out_row[j] = normed + token_row[j] if residual else normed


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


@_njit(parallel=True, fastmath=True)
def depthwise_silu(grid, weight, bias, out):
    """out = silu(depthwise_conv(grid) + bias) on channels-last (B, H, W, C) grids, zero padding
    of ``k // 2`` for a (k, k, C) ``weight`` (k odd): PyTorch's ``Conv2d(C, C, k, padding=k // 2,
    groups=C)``. Each output pixel sums its k x k neighbours across the channels (the vectorised
    axis) into a row of C floats that stays in L1."""
    batch, height, width, channels = grid.shape
    size = weight.shape[0]
    reach = size // 2
    for task in numba.prange(batch * height):
        b, y = task // height, task % height
        total = np.empty(channels, np.float32)
        for x in range(width):
            for c in range(channels):
                total[c] = bias[c]
            for dy in range(size):
                row = y + dy - reach
                if row < 0 or row >= height:
                    continue
                for dx in range(size):
                    column = x + dx - reach
                    if column < 0 or column >= width:
                        continue
                    pixel, taps = grid[b, row, column], weight[dy, dx]
                    for c in range(channels):
                        total[c] += pixel[c] * taps[c]
            target = out[b, y, x]
            for c in range(channels):
                target[c] = silu(total[c])
