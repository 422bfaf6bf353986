"""Style strength: fused features between the content's identity path (0) and the stylization (1).

The functions drive the model they are handed (its ``encode_style`` and ``fuse``); the types
are imported for annotations only, so this control sits below the network it drives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..utils.imaging import pad_to_multiple

if TYPE_CHECKING:
    from ..network.encodings import ContentEncoding, StyleSource
    from ..network.model import MambaST


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
