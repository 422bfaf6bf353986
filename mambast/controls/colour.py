"""Colour controls: keep the content's colours, or match the style's colours to the content."""

from __future__ import annotations

import torch

# ITU-R BT.601 luma/chroma (YCbCr without offsets), on RGB in 0..1.
_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                          [-0.168736, -0.331264, 0.5],
                          [0.5, -0.418688, -0.081312]])


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) luma and two chroma channels."""
    return _apply(_TO_YCBCR, image)


def from_ycbcr(image: torch.Tensor) -> torch.Tensor:
    return _apply(torch.linalg.inv(_TO_YCBCR), image)


def keep_content_colour(content: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
    """The stylized luminance with the content's chroma: the style's strokes, the content's colours.

    content, stylized: (B, 3, H, W) RGB of the same size (content may have batch 1).
    """
    mixed = to_ycbcr(content.expand_as(stylized)).clone()
    mixed[:, :1] = to_ycbcr(stylized)[:, :1]
    return from_ycbcr(mixed)


def match_colour(style: torch.Tensor, content: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Recolour ``style`` so its colour mean and covariance equal the content's.

    A linear map x -> A (x - mu_style) + mu_content with A = Cov_c^1/2 Cov_s^-1/2 (the colour
    transfer used to preserve colour in neural style transfer). style: (B, 3, H, W); content:
    (B', 3, H', W'), its statistics pooled over the batch so that every frame of a video gets
    the same recoloured style. The result is clamped to 0..1.
    """
    # Statistics in float64 on the CPU (MPS has no float64); the images are small next to the model.
    eye = torch.eye(3, dtype=torch.float64) * eps
    target = content.detach().transpose(0, 1).reshape(3, -1).double().cpu()
    mean_t, cov_t = target.mean(1, keepdim=True), torch.cov(target) + eye
    out = []
    for index in range(style.shape[0]):
        source = style[index].detach().reshape(3, -1).double().cpu()
        mean_s, cov_s = source.mean(1, keepdim=True), torch.cov(source) + eye
        transform = _sqrtm(cov_t) @ torch.linalg.inv(_sqrtm(cov_s))
        recoloured = transform @ (source - mean_s) + mean_t
        out.append(recoloured.reshape(style.shape[1:]).to(device=style.device, dtype=style.dtype))
    return torch.stack(out).clamp(0.0, 1.0)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
