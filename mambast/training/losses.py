"""The reference's training objective: content, style and two identity losses on VGG features.

:func:`compute_losses` is the reference's ``MambaST.forward`` (models/MambaST.py) with the
statistics of its function.py, computed with the model's own stages: the stylization ``Ics``
(content with style), and the identity passes ``Icc`` (the content as its own style) and
``Iss`` (the style as its own style).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..controls.shuffle import new_seed
from ..network.encodings import ContentEncoding, StyleEncoding
from ..network.model import MambaST
from ..network.random_weights import unused_official_tensors
from .vgg import VGGEncoder

# The reference's function.py adds this to the variance of each channel before the square root.
STATISTICS_EPS = 1e-5
MINIMUM_SIDE = 32


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four losses in the total; the defaults are the reference's train.py's."""

    content: float = 7.0
    style: float = 10.0
    identity1: float = 70.0  # pixels
    identity2: float = 1.0  # VGG features


def channel_mean_std(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of (B, C, H, W), each (B, C, 1, 1).

    The variance is the unbiased one plus ``STATISTICS_EPS``, as the reference computes it.
    """
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1)
    std = (flat.var(dim=2) + STATISTICS_EPS).sqrt().reshape(batch, channels, 1, 1)
    return flat.mean(dim=2).reshape(batch, channels, 1, 1), std


def normalised(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with each channel brought to mean 0 and standard deviation 1 (instance norm)."""
    mean, std = channel_mean_std(features)
    return (features - mean) / std


def style_statistics_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the channel means plus MSE of the channel standard deviations."""
    mean, std = channel_mean_std(features)
    target_mean, target_std = channel_mean_std(target)
    return F.mse_loss(mean, target_mean) + F.mse_loss(std, target_std)


def loss_permutations(seed: int, tokens: list[int], layers: int) -> list[list[torch.Tensor]]:
    """The style permutations of the reference's three decoder passes, on the CPU.

    ``tokens`` gives each pass's token count (Ics, Icc, Iss in this order). One generator seeded
    with ``seed`` serves all passes in turn, each pass drawing one ``argsort(rand(L))`` per
    decoder layer: what the reference's layers draw from the global generator during one forward
    after ``torch.manual_seed(seed)`` (see :func:`mambast.controls.shuffle.style_permutations`).
    """
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return [[torch.argsort(torch.rand(length, generator=generator)) for _ in range(layers)] for length in tokens]


def _check_batch(image: torch.Tensor, name: str, patch: int) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3 \
            or not image.is_floating_point():
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} batch must be a (B, 3, H, W) float tensor in 0..1; got {shape}.")
    height, width = image.shape[-2:]
    # relu5_1 is 1/16 of the image, and its unbiased variance needs more than one pixel (one gives
    # NaN): 32 leaves it 2 x 2.
    if height % patch or width % patch or min(height, width) < MINIMUM_SIDE:
        raise ValueError(f"{name} batch is {width}x{height} pixels; training needs sides that are multiples of "
                         f"{patch} and at least {MINIMUM_SIDE} (the reference trains on 256x256 crops).")


class _Passes:
    """The model's stages for the three decoder passes; each encoding is computed once and shared."""

    def __init__(self, model: MambaST):
        self.model = model
        self.contents: dict[str, ContentEncoding] = {}
        self.styles: dict[tuple[str, tuple[int, int]], StyleEncoding] = {}

    def content(self, name: str, image: torch.Tensor) -> ContentEncoding:
        if name not in self.contents:
            self.contents[name] = self.model.encode_content(image)
        return self.contents[name]

    def style(self, name: str, image: torch.Tensor, size: tuple[int, int]) -> StyleEncoding:
        if (name, size) not in self.styles:
            self.styles[name, size] = self.model.encode_style(image, size)
        return self.styles[name, size]

    def stylize(self, content: ContentEncoding, style: StyleEncoding, permutations: list[torch.Tensor]) -> torch.Tensor:
        device = self.model.device
        features = self.model.fuse(content, style, permutations=[p.to(device) for p in permutations])
        return self.model.decode(features, content.image_size)


def compute_losses(model: MambaST, vgg: VGGEncoder, content: torch.Tensor, style: torch.Tensor,
                   seed: int | None = None, weights: LossWeights | None = None) -> dict[str, torch.Tensor]:
    """The reference's four training losses for a batch, and their weighted total.

    content, style: (B, 3, H, W) float in 0..1, sides multiples of the patch size (8).
    seed: the style permutations of the three decoder passes (see :func:`loss_permutations`);
    None draws a fresh one. Returns scalar tensors ``content``, ``style``, ``identity1``,
    ``identity2`` (unweighted) and ``total`` (weighted by ``weights``, default the reference's),
    differentiable with respect to the model's parameters.
    """
    patch = model.config.patch_size
    _check_batch(content, "content", patch)
    _check_batch(style, "style", patch)
    weights = weights or LossWeights()
    seed = new_seed() if seed is None else int(seed)
    content, style = content.to(model.device), style.to(model.device)
    vgg = vgg.to(model.device)

    passes = _Passes(model)
    content_size, style_size = tuple(content.shape[-2:]), tuple(style.shape[-2:])
    tokens = [content_size[0] * content_size[1] // patch ** 2] * 2 + [style_size[0] * style_size[1] // patch ** 2]
    ics_perms, icc_perms, iss_perms = loss_permutations(seed, tokens, model.config.decoder_layers)
    stylized = passes.stylize(passes.content("content", content), passes.style("style", style, content_size),
                              ics_perms)
    content_identity = passes.stylize(passes.content("content", content),
                                      passes.style("content", content, content_size), icc_perms)
    style_identity = passes.stylize(passes.content("style", style), passes.style("style", style, style_size),
                                    iss_perms)

    with torch.no_grad():  # targets: the reference asserts they carry no gradient
        content_features = vgg.features(content)
        style_features = vgg.features(style)
    stylized_features = vgg.features(stylized)
    content_identity_features = vgg.features(content_identity)
    style_identity_features = vgg.features(style_identity)

    # Summed in the reference's order (relu5_1 before relu4_1 for the content loss).
    content_loss = (F.mse_loss(normalised(stylized_features[-1]), normalised(content_features[-1]))
                    + F.mse_loss(normalised(stylized_features[-2]), normalised(content_features[-2])))
    style_loss = style_statistics_loss(stylized_features[0], style_features[0])
    for level in range(1, 5):
        style_loss = style_loss + style_statistics_loss(stylized_features[level], style_features[level])
    identity1 = F.mse_loss(content_identity, content) + F.mse_loss(style_identity, style)
    identity2 = (F.mse_loss(content_identity_features[0], content_features[0])
                 + F.mse_loss(style_identity_features[0], style_features[0]))
    for level in range(1, 5):
        identity2 = identity2 + (F.mse_loss(content_identity_features[level], content_features[level])
                                 + F.mse_loss(style_identity_features[level], style_features[level]))
    total = (weights.content * content_loss + weights.style * style_loss + weights.identity1 * identity1
             + weights.identity2 * identity2)
    return {"content": content_loss, "style": style_loss, "identity1": identity1, "identity2": identity2,
            "total": total}


class TrainingObjective(torch.nn.Module):
    """The model and its frozen VGG as one module whose forward is :func:`compute_losses`.

    This is the module DistributedDataParallel wraps: its hooks need the losses computed inside
    a module's forward, and the losses call the model's stages rather than its ``forward``.
    """

    def __init__(self, model: MambaST, vgg: VGGEncoder):
        super().__init__()
        self.model = model
        self.vgg = vgg

    def forward(self, content: torch.Tensor, style: torch.Tensor, seed: int | None = None,
                weights: LossWeights | None = None) -> dict[str, torch.Tensor]:
        return compute_losses(self.model, self.vgg, content, style, seed=seed, weights=weights)


def official_gradients(model: MambaST) -> dict[str, torch.Tensor | None]:
    """Each parameter's gradient under its official prefixed key (``decoder.``/``embedding.``/``mamba.``).

    The official tensors our model does not hold (``mamba.new_ps.*``, ``*.skip_scale2``, the
    encoders' ``in_style_proj``) map to None: the reference's loss never reaches them either.
    Parameters without a gradient (frozen, or not reached) map to None too.
    """
    gradients: dict[str, torch.Tensor | None] = {name: parameter.grad for name, parameter in model.named_parameters()}
    for key in unused_official_tensors(model.config):
        gradients[key] = None
    return gradients
