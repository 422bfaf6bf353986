"""Weights in, a ready network out: checking a checkpoint against the architecture, building and loading.

A checkpoint is checked before any tensor is used: every key present with its shape, the parts
from one model, no NaN or infinity; the architecture is read off the tensors themselves.
"""

from __future__ import annotations

import functools
import os

import torch

from .checkpoint import (DTYPES, Checkpoint, CheckpointError, check_against, check_dimensions, check_finite,
                          check_parts_agree, read_checkpoint, usable_tensors)
from .config import MambaSTConfig
from .model import MambaST


def default_device() -> torch.device:
    """CUDA when available, then MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"Unsupported dtype {dtype}; choose one of {', '.join(DTYPES)}.")
    return dtype


@functools.lru_cache(maxsize=1)
def released_shapes() -> dict[str, torch.Size]:
    """Every tensor's shape in the released architecture (3 + 3 layers, d_model 512), by key."""
    with torch.device("meta"):
        return {k: v.shape for k, v in MambaST(MambaSTConfig()).state_dict().items()}


def validate(checkpoint: Checkpoint) -> MambaSTConfig:
    """The architecture of ``checkpoint``, after checking every tensor's presence, shape and values.

    Raises CheckpointError naming the file, the key and the expected and found shapes, the files
    of parts that come from different models, or the tensors holding NaN or infinite values.
    """
    check_dimensions(checkpoint, released_shapes())
    check_parts_agree(checkpoint)
    try:
        config = MambaSTConfig.from_state_dict(checkpoint.tensors)
    except KeyError as missing:
        raise CheckpointError(f"{checkpoint.source}: missing tensor {missing.args[0]!r}, needed to read the "
                              "architecture. Is this a Mamba-ST checkpoint?") from None
    with torch.device("meta"):
        skeleton = MambaST(config)
    check_against(checkpoint, {k: v.shape for k, v in skeleton.state_dict().items()})
    check_finite(checkpoint)
    return config


def build(checkpoint: Checkpoint, device: torch.device | str | None = None,
          dtype: torch.dtype | str | None = None, scan: str | None = None) -> MambaST:
    """A ready MambaST (eval mode) from tensors already read; see :func:`load`."""
    model = MambaST(validate(checkpoint))
    model.load_state_dict(usable_tensors(checkpoint), strict=True)
    model.set_scan_backend(scan)
    return model.to(device=torch.device(device) if device is not None else default_device(),
                    dtype=_as_dtype(dtype)).eval().requires_grad_(False)


def load(path: str | os.PathLike, device: torch.device | str | None = None,
         dtype: torch.dtype | str | None = None, scan: str | None = None) -> MambaST:
    """Load Mamba-ST weights for inference.

    path: a folder with the official ``decoder_iter_*.pth``, ``embedding_iter_*.pth`` and
    ``mamba_iter_*.pth``/``transformer_iter_*.pth`` files, or one ``.safetensors`` file with
    ``decoder.``/``embedding.``/``mamba.`` prefixes. The architecture is read from the tensors.
    device: default CUDA, then MPS, then CPU. dtype: of the dense layers (float32 default,
    float16, bfloat16); the selective scan stays float32. scan: "reference", "chunked",
    "mamba_ssm" or None for automatic (``MAMBAST_SCAN`` overrides automatic).
    Parameters are frozen (``requires_grad=False``); call ``requires_grad_(True)`` to fine-tune.
    """
    return build(read_checkpoint(path), device=device, dtype=dtype, scan=scan)
