"""MambaST: the network and its stages (encode content, encode style, fuse, decode)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..controls.seams import on_grids
from ..controls.shuffle import new_seed, style_permutations
from ..controls.styles import fit_style_image, mix_tokens
from ..kernels import scan as scan_backends
from ..kernels.cuda_graphs import replay_stage
from ..kernels.winograd import decoder_stages, nnpack_available, run_stages
from ..utils.imaging import check_image, pad_to_multiple, padded_size
from ..utils.progress import cancel_point, tick
from .blocks import SCAN_PARAMETERS, SS2D, MambaBody, PatchEmbedding, build_cnn_decoder
from .config import MambaSTConfig
from .encodings import ContentEncoding, GridCache, StyleEncoding, StyleMix, StyleSource, pair_batches

_CHANNELS_LAST_DEVICES = ("cpu", "cuda")


class MambaST(nn.Module):
    """Mamba-ST inference (Botti et al., WACV 2025), stage by stage.

    Images are (B, 3, H, W) float tensors in 0..1. Outputs of :meth:`decode` and
    :meth:`stylize` are not clamped, like the reference; clamp to 0..1 before saving.
    Every stage is differentiable; wrap calls in ``torch.inference_mode()`` when not training.
    Module names (``embedding``, ``mamba``, ``decoder``) follow the official checkpoint files.
    """

    def __init__(self, config: MambaSTConfig | None = None):
        super().__init__()
        self.config = config or MambaSTConfig()
        self.embedding = PatchEmbedding(self.config)
        self.mamba = MambaBody(self.config)
        self.decoder = build_cnn_decoder(self.config)
        self.last_seed: int | None = None

    # -- properties -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embedding.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dense layers' dtype (the selective scan always runs in float32)."""
        return self.embedding.proj.weight.dtype

    @property
    def scan_backend(self) -> str:
        """The selective-scan backend that runs on the model's device."""
        return scan_backends.backend_for(self._scan_choice, self.device)

    _scan_choice: str | None = None

    def set_scan_backend(self, name: str | None) -> None:
        """Choose the scan backend ("reference", "chunked", "mamba_ssm"; None/"auto" = automatic)."""
        self._scan_choice = scan_backends.validate_backend_name(name)
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = self._scan_choice

    def _apply(self, fn, recurse=True):
        # Keep the scan's own parameters in float32 when the dense layers change dtype.
        super()._apply(fn, recurse)
        for name, parameter in self.named_parameters():
            if name.rsplit(".", 1)[-1] in SCAN_PARAMETERS and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
        return self

    # -- stages -----------------------------------------------------------------------------
    def _embed(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) on the model's device, H, W multiples of the patch -> tokens (B, L, d_model)
        and grid (h, w)."""
        features = self.embedding(image)
        grid = (features.shape[2], features.shape[3])
        # contiguous once here: the first block's norm would copy it anyway, and every pass after reads it densely
        return features.flatten(2).transpose(1, 2).contiguous(), grid

    def _encode(self, name: str, encoder: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Padded images (B, 3, H, W) -> ``encoder``'s tokens (B, L, d_model) and their grid (h, w)."""
        image = image.to(self.device)
        patch = self.config.patch_size
        grid = (image.shape[2] // patch, image.shape[3] // patch)
        return replay_stage(self, name, lambda padded: encoder(*self._embed(padded)), image), grid

    def encode_content(self, image: torch.Tensor) -> ContentEncoding:
        """Encode content images (B, 3, H, W) in 0..1, any H, W >= 8.

        The image is reflect-padded to whole patches; decoding crops back to (H, W).
        """
        check_image(image, "content")
        patch = self.config.patch_size
        tokens, grid = self._encode("content encoder", self.mamba.encoder_c, pad_to_multiple(image, patch))
        return ContentEncoding(tokens, grid, tuple(image.shape[-2:]), patch)

    def encode_style(self, image: torch.Tensor, size: tuple[int, int] | None = None,
                     scale: float = 1.0) -> StyleEncoding:
        """Encode style images (B, 3, H, W) in 0..1.

        The style is laid out to ``size`` (H, W), which should be the content's padded size
        (``ContentEncoding.padded_size``) so that its tokens fill the content's grid; without
        ``size`` it takes its own size rounded up to whole patches. ``scale`` sets the style's
        size relative to that (bigger or smaller strokes; 1 simply resizes). Any style size
        works when ``size`` is given (it is resized); without it both sides must be at least 8.
        """
        check_image(image, "style", minimum=8 if size is None else 1)
        patch = self.config.patch_size
        target = tuple(size) if size is not None else padded_size(*image.shape[-2:], patch)
        if target[0] % patch or target[1] % patch:
            raise ValueError(f"style size {target} must be a multiple of the patch size {patch}.")
        tokens, grid = self._encode("style encoder", self.mamba.encoder_s, fit_style_image(image, target, scale))
        return StyleEncoding(tokens, grid, image, GridCache({grid: tokens}), scale)

    def style_on_grid(self, style: StyleSource, content: ContentEncoding,
                      cache_device: torch.device | None = None) -> torch.Tensor:
        """The style's tokens (B, L, d_model) on the content's grid, on the model's device.

        A style encoded on another grid is re-encoded from its image, one image at a time (as
        :meth:`stylize` does) and cached in the style object, on ``cache_device`` if given. A
        :class:`~mambast.controls.styles.StyleMix` resolves both of its styles and mixes their tokens.
        """
        cached = style.by_grid.get(content.grid)
        if cached is None and isinstance(style, StyleEncoding) and style.grid == content.grid:
            cached = style.tokens
        if cached is None:
            if isinstance(style, StyleMix):
                cached = mix_tokens(self.style_on_grid(style.first, content, cache_device),
                                    self.style_on_grid(style.second, content, cache_device), style.weight, style.seed)
            elif style.image is None:
                raise ValueError(f"The style was encoded on a {style.grid[1]}x{style.grid[0]} token grid but the "
                                 f"content is {content.grid[1]}x{content.grid[0]}; encode the style with "
                                 "size=content.padded_size.")
            else:  # moved to the model's device one picture at a time: styles can be large photos
                cached = torch.cat([self.encode_style(style.image[i:i + 1].to(self.device), content.padded_size,
                                                      style.scale).tokens for i in range(style.image.shape[0])])
            style.by_grid[content.grid] = cached if cache_device is None else cached.to(cache_device)
        return cached.to(self.device)

    def permutations(self, tokens: int, seed: int | None, shuffle: bool) -> list[torch.Tensor | None]:
        """The MSTD's style permutations, one per decoder layer (None when not shuffling)."""
        layers = self.config.decoder_layers
        if not shuffle:
            self.last_seed = None
            return [None] * layers
        seed = new_seed() if seed is None else int(seed)
        self.last_seed = seed
        return [p.to(self.device) for p in style_permutations(seed, tokens, layers)]

    def fuse(self, content: ContentEncoding, style: StyleSource, seed: int | None = None,
             shuffle: bool = True, permutations: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """The Mamba-ST Decoder: fused features (B, d_model, h, w), the CNN decoder's input.

        One style is used for every content image, or styles pair with contents one to one.
        All images of the batch share one permutation per layer, drawn from ``seed`` (None
        draws a fresh one, kept in ``last_seed``); ``shuffle=False`` keeps the style in place.
        ``permutations`` (one per decoder layer, on the model's device) replaces the draw.
        """
        pair_batches(content.tokens.shape[0], style.batch_size)
        style_tokens = self.style_on_grid(style, content)
        content = ContentEncoding(content.tokens.to(self.device), content.grid, content.image_size, content.patch_size)
        if permutations is None:
            permutations = self.permutations(content.tokens.shape[1], seed, shuffle)
        height, width = content.grid

        def mstd(content_tokens: torch.Tensor, style_tokens: torch.Tensor, *permutations: torch.Tensor | None
                 ) -> torch.Tensor:
            if style_tokens.shape[0] != content_tokens.shape[0]:  # one style for every content image
                style_tokens = style_tokens.expand(content_tokens.shape[0], -1, -1)
            return self.mamba.decoder(content_tokens, style_tokens, content.grid, list(permutations))

        fused = replay_stage(self, "MSTD", mstd, content.tokens, style_tokens, *permutations, key=content.grid)
        # A channels-last view of the tokens: no copy, and the layout the CNN decoder runs fastest in.
        return fused.reshape(fused.shape[0], height, width, -1).permute(0, 3, 1, 2)

    def decode(self, features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """CNN decoder: features (B, d_model, h, w) -> image (B, 3, 8h, 8w), unclamped, float32.

        ``size`` (H, W) crops the result, e.g. to ``ContentEncoding.image_size``.
        """
        features = features.to(device=self.device, dtype=self.dtype)
        image = replay_stage(self, "CNN decoder", self._decode_pixels, features)
        if size is not None:
            image = image[..., : size[0], : size[1]]
        return image

    def _decode_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """The CNN decoder's layers on features of the model's device and dtype: float32 pixels."""
        stages = decoder_stages(self.decoder)
        cancel_point()
        if stages is not None and image.device.type == "cpu" and image.dtype == torch.float32 and nnpack_available():
            # NNPACK's Winograd convolutions in bands, upsampling, padding and ReLU fused (mambast.kernels.winograd)
            image = run_stages(stages, image, after_each=tick)
        else:
            if image.device.type in _CHANNELS_LAST_DEVICES:
                # oneDNN and cuDNN convolve channels-last (NHWC) images faster (about 15% here on a CPU).
                image = image.contiguous(memory_format=torch.channels_last)
            for layer in self.decoder:
                image = layer(image)
                if isinstance(layer, nn.Conv2d):
                    tick()
                else:  # at full resolution an upsampling or padding alone takes a moment
                    cancel_point()
        return image.float().contiguous()

    def stylize(self, content: torch.Tensor, style: torch.Tensor, seed: int | None = None,
                shuffle: bool = True, seam_smoothing: int = 0) -> torch.Tensor:
        """Content (B, 3, H, W) styled like ``style`` (1 or B, 3, H', W'): (B, 3, H, W), unclamped.

        The style is resized to the content's padded size before encoding. ``seam_smoothing``
        (0, 1: off; 2, 4, 16 grids) blends stylizations on token grids offset by fractions of a
        patch against the patch seams, at about that many times the work (:mod:`mambast.controls.seams`);
        every grid uses the same seed (drawn once when None).
        """
        if seam_smoothing > 1 and shuffle and seed is None:
            seed = new_seed()

        def on_grid(image: torch.Tensor, _offset) -> torch.Tensor:
            content_encoding = self.encode_content(image)
            style_encoding = self.encode_style(style, content_encoding.padded_size)
            features = self.fuse(content_encoding, style_encoding, seed=seed, shuffle=shuffle)
            return self.decode(features, content_encoding.image_size)

        return on_grids(on_grid, content, seam_smoothing, self.config.patch_size)
