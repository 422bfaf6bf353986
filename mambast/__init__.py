"""Mamba-ST style transfer in pure PyTorch (Botti et al., WACV 2025, arXiv 2409.10385).

    import mambast
    model = mambast.load("models/mambast/official")        # folder of official .pth, or .safetensors
    with torch.inference_mode():
        out = model.stylize(content, style, seed=0)         # (B, 3, H, W) in, unclamped out

The names imported here are the library's public face (the README shows them in use). The
sub-packages are grouped by role, each importing only from the ones listed before it: ``utils``
(progress, files, images), ``kernels`` (scan backends, fused passes, CUDA graphs), ``controls``
(what artists turn), ``network`` (the architecture and its weights), ``run`` (stylizing batches,
the staged API of the nodes, estimates), then ``training``, ``evaluation``, ``release`` (installing
the authors' weights) and ``commands``.
"""

from __future__ import annotations

from .controls.colour import keep_content_colour, match_colour
from .controls.masking import shows_nothing
from .controls.seams import SEAM_SMOOTHING_CHOICES
from .controls.tiling import is_out_of_memory, run_in_tiles, stylize_tiled, stylize_with_fallback
from .kernels.cuda_graphs import GraphedStylize, StageGraphs
from .kernels.scan import (CHOICES as SCAN_CHOICES, backend_for as scan_backend_for, mamba_ssm_available,
                           numba_available)
from .network.checkpoint import (DTYPES, PICKLE_SUFFIXES, WEIGHTS_SUFFIXES, WEIGHTS_URL, Checkpoint, CheckpointError,
                                 convert_to_safetensors, dtype_name, missing_weights_message, read_checkpoint)
from .network.config import MambaSTConfig
from .network.encodings import ContentEncoding, StyleEncoding, StyleMix, StyleSource, batch_item, pair_batches
from .network.loading import build, default_device, load, validate
from .network.model import MambaST
from .release import (DownloadStopped, FileProgress, InstallError, InstallReport, download_weights, install_from,
                      manual_steps)
from .run.pipeline import COLOUR_MODES, Controls, finish, stylize_images, working_size
from .run.precision import automatic_dtype
from .run.resources import activation_bytes, tile_to_fit
from .utils.imaging import IMAGE_SUFFIXES, ImageFileError, check_image, read_image, write_image
from .utils.progress import ThrottledReport, progress_callback

__version__ = "0.1.0"

__all__ = [
    # the network and its weights
    "MambaST", "MambaSTConfig", "ContentEncoding", "StyleEncoding", "StyleMix", "StyleSource", "batch_item",
    "pair_batches", "load", "build", "validate", "default_device", "read_checkpoint", "Checkpoint", "CheckpointError",
    "convert_to_safetensors", "missing_weights_message", "WEIGHTS_URL", "WEIGHTS_SUFFIXES", "PICKLE_SUFFIXES",
    "DTYPES", "dtype_name", "automatic_dtype", "download_weights", "install_from", "manual_steps", "InstallError",
    "InstallReport", "DownloadStopped", "FileProgress",
    # images
    "read_image", "write_image", "check_image", "ImageFileError", "IMAGE_SUFFIXES",
    # stylizing with the controls
    "Controls", "COLOUR_MODES", "stylize_images", "finish", "working_size", "stylize_tiled", "stylize_with_fallback",
    "run_in_tiles", "is_out_of_memory", "keep_content_colour", "match_colour", "shows_nothing",
    "SEAM_SMOOTHING_CHOICES",
    # how it runs
    "SCAN_CHOICES", "scan_backend_for", "mamba_ssm_available", "numba_available", "GraphedStylize", "StageGraphs",
    "progress_callback", "ThrottledReport",
    "activation_bytes", "tile_to_fit",
]
