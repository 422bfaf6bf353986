"""The VGG-19 of the reference's ``vgg_normalised.pth``: the fixed feature extractor of the losses.

The network is an ``nn.Sequential`` with the reference's 53 modules, so its state dict has the
file's keys (``0.weight`` ... ``51.bias``; module 52 is the last ReLU). Module 0 is a 1x1
convolution that normalises the input, so images go in as they are, (B, 3, H, W) in 0..1.
The losses read five ReLU outputs, relu1_1 ... relu5_1, and so run only the first 44 modules.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..network.checkpoint import WEIGHTS_URL, CheckpointError, read_tensor_file

VGG_FILE = "vgg_normalised.pth"
# VGG-19's 3x3 convolutions by output channels, "pool" for a 2x2 max pooling.
_PLAN = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, 256, "pool", 512, 512, 512, 512, "pool",
         512, 512, 512, 512)
# Where relu1_1 ... relu5_1 end in the module list: the reference's enc_1 ... enc_5 are the
# slices between consecutive ends.
FEATURE_ENDS = (4, 11, 18, 31, 44)


class VGGWeightsNotFound(FileNotFoundError):
    """The VGG weights file is not there; the message says where to get it and where to put it."""


def _layers() -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    channels = 3
    for step in _PLAN:
        if step == "pool":
            layers.append(nn.MaxPool2d(2, 2, 0, ceil_mode=True))
            continue
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, step, 3), nn.ReLU()]
        channels = step
    return layers


class VGGEncoder(nn.Sequential):
    """The reference's normalised VGG-19, frozen: :meth:`features` gives relu1_1 ... relu5_1."""

    def __init__(self, *modules: nn.Module):
        # Modules given only by nn.Sequential's slicing, which rebuilds the class from a part.
        super().__init__(*(modules or _layers()))

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in 0..1 -> the five maps relu1_1 ... relu5_1, (B, 64, H, W) ... (B, 512, H/16, W/16)."""
        maps = []
        start = 0
        for end in FEATURE_ENDS:
            for index in range(start, end):
                image = self[index](image)
            maps.append(image)
            start = end
        return maps


def missing_vgg_message(path: Path) -> str:
    """What to tell someone whose VGG weights are not at ``path``."""
    return (f"{path}: no such file. Training Mamba-ST needs the reference's VGG-19 weights, {VGG_FILE}, from the "
            f"authors' Google Drive folder {WEIGHTS_URL} (the folder of the released Mamba-ST weights). Download "
            f"it and put it at {path} (a .safetensors with the same keys works too).")


def _check_layout(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> None:
    missing = [key for key in expected if key not in tensors]
    unexpected = [key for key in tensors if key not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: not the VGG-19 of {VGG_FILE}: missing keys {missing[:3]}, unexpected keys "
                              f"{unexpected[:3]} (expected {len(expected)} keys, 0.weight ... 51.bias).")
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected "
                                  f"{tuple(shape)}; not the VGG-19 of {VGG_FILE}.")
        if not tensors[key].is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} is {tensors[key].dtype}, not floating point.")


def load_vgg(path: str | os.PathLike) -> VGGEncoder:
    """The frozen VGG encoder (eval mode, no gradients for its weights) from ``path``, on the CPU, float32.

    ``path``: the reference's ``vgg_normalised.pth`` (read with ``weights_only=True``) or a
    ``.safetensors`` with the same keys (float16 or bfloat16 files are cast to float32).
    Raises :class:`VGGWeightsNotFound` (a FileNotFoundError) when the file is absent, and a
    :class:`~mambast.network.checkpoint.CheckpointError` (a ValueError) naming the file for anything else.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise VGGWeightsNotFound(missing_vgg_message(path))
    tensors = read_tensor_file(path, f"the VGG weights ({VGG_FILE})",
                               f"{VGG_FILE} is in the authors' folder {WEIGHTS_URL}")
    encoder = VGGEncoder()
    _check_layout(path, tensors, {key: value.shape for key, value in encoder.state_dict().items()})
    encoder.load_state_dict({key: value.float() for key, value in tensors.items()}, strict=True)
    return encoder.eval().requires_grad_(False)
