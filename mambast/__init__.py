"""Mamba-ST style transfer in pure PyTorch (Botti et al., WACV 2025, arXiv 2409.10385).

    import mambast
    model = mambast.load("models/mambast/official")        # folder of official .pth, or .safetensors
    with torch.inference_mode():
        out = model.stylize(content, style, seed=0)         # (B, 3, H, W) in, unclamped out

The names below are the library's public face; the sub-packages are grouped by role:
``utils`` (progress, files, images), ``kernels`` (scan backends, fused passes, CUDA graphs),
``controls`` (what artists turn), ``network`` (the architecture and its weights), ``run``
(stylizing batches, the staged API, estimates), ``training``, ``evaluation``, ``commands``.
"""

from __future__ import annotations

from .network.checkpoint import (DTYPES, WEIGHTS_URL, Checkpoint, CheckpointError, convert_to_safetensors,
                                  missing_weights_message, read_checkpoint)
from .network.config import MambaSTConfig
from .network.encodings import ContentEncoding, StyleEncoding, StyleMix, pair_batches
from .network.loading import build, default_device, load, validate
from .network.model import MambaST

__version__ = "0.1.0"

__all__ = ["DTYPES", "WEIGHTS_URL", "Checkpoint", "CheckpointError", "ContentEncoding", "MambaST", "MambaSTConfig",
           "StyleEncoding", "StyleMix", "build", "convert_to_safetensors", "default_device", "load",
           "missing_weights_message", "pair_batches", "read_checkpoint", "validate"]
