"""Temporal smoothing: fused features of video frames blended with the frames before them.

The batch is read as consecutive frames; smoothing the MSTD's output (before the CNN decoder)
keeps the strokes of one frame close to the last one's, so a stylized clip flickers less.
"""

from __future__ import annotations

import torch


def smooth_over_time(features: torch.Tensor, factor: float, previous: torch.Tensor | None = None) -> torch.Tensor:
    """Exponential smoothing along the batch, read as consecutive video frames.

    out_t = (1 - factor) * features_t + factor * out_{t-1}, on features (T, C, h, w);
    ``previous`` is the smoothed frame before them (C, h, w), or a batch ending with it, for
    frames processed a few at a time. factor 0 returns the features unchanged.
    """
    if not 0.0 <= factor < 1.0:
        raise ValueError(f"temporal smoothing must be in [0, 1); got {factor}.")
    if factor == 0.0:
        return features
    if previous is not None and previous.dim() == features.dim():
        previous = previous[-1]
    frames = []
    for frame in features.unbind(0):
        previous = frame if previous is None else torch.lerp(frame, previous.to(frame), factor)
        frames.append(previous)
    return torch.stack(frames)
