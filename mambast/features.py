"""Operations on fused features, before the CNN decoder: style strength and temporal smoothing."""

from __future__ import annotations

import torch

from .imaging import pad_to_multiple
from .model import ContentEncoding, MambaST
from .styles import StyleSource


def identity_features(model: MambaST, content: ContentEncoding, content_image: torch.Tensor,
                      seed: int | None, shuffle: bool) -> torch.Tensor:
    """The content fused with itself as the style: the identity path that the paper trains to
    reconstruct the content (the reference's ``Icc``). content_image: (B, 3, H, W) unpadded."""
    as_style = model.encode_style(pad_to_multiple(content_image, model.config.patch_size), content.padded_size)
    return model.fuse(content, as_style, seed=seed, shuffle=shuffle)


def fuse_with_strength(model: MambaST, content: ContentEncoding, content_image: torch.Tensor,
                       style: StyleSource | None, strength: float, seed: int | None,
                       shuffle: bool = True) -> torch.Tensor:
    """Features interpolated between the identity path (strength 0) and the stylization (1).

    Strength 0 never touches the style (it may be None); strength 1 is plain :meth:`MambaST.fuse`.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"style strength must be between 0 and 1; got {strength}.")
    if strength == 0.0:
        return identity_features(model, content, content_image, seed, shuffle)
    if style is None:
        raise ValueError("a style is needed for a style strength above 0.")
    stylized = model.fuse(content, style, seed=seed, shuffle=shuffle)
    if strength == 1.0:
        return stylized
    identity = identity_features(model, content, content_image, seed, shuffle)
    return torch.lerp(identity, stylized, strength)


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
