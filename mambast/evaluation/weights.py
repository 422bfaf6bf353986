"""Where the metric networks' weight files are, and loading them (weights only, nothing downloaded).

Each file is looked for in the metrics folder (``--metrics-dir``, else ``$MAMBAST_METRICS_DIR``),
then where the library that owns it keeps it: torch hub's checkpoint folder for torchvision's
AlexNet and VGG-19, the installed ``lpips`` package for its linear layers, and ArtFID's download
folder for its Inception. In the metrics folder a ``.safetensors`` file with the same name stem
and keys is taken too.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..network.checkpoint import CheckpointError, read_tensor_file
from .cfsd import CFSD
from .lpips import LPIPS
from .networks import INCEPTION_HEADS, ArtInception

METRICS_ENV = "MAMBAST_METRICS_DIR"


def _torch_hub(name: str) -> list[Path]:
    return [Path(torch.hub.get_dir()) / "checkpoints" / name]


def _lpips_package(name: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec("lpips")  # found, not imported: importing it needs torchvision
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(folder) / "weights" / "v0.1" / name for folder in spec.submodule_search_locations]


def _art_fid_download(name: str) -> list[Path]:
    return [Path(tempfile.gettempdir()) / "art_fid" / name]


@dataclass(frozen=True)
class MetricFile:
    """One weight file: its name, what it is for, where to get it and where its owner keeps it."""

    name: str
    purpose: str
    source: str
    owner_cache: Callable[[str], list[Path]]

    def candidates(self, folder: Path | None) -> list[Path]:
        near = [folder / self.name, folder / (Path(self.name).stem + ".safetensors")] if folder else []
        return near + self.owner_cache(self.name)


METRIC_FILES = {
    "inception": MetricFile(
        "art_inception.pth", "ArtFID's Inception-v3 trained on art, for FID",
        "https://huggingface.co/matthias-wright/art_inception/resolve/main/art_inception.pth (the ArtFID release)",
        _art_fid_download),
    "alexnet": MetricFile(
        "alexnet-owt-7be5be79.pth", "torchvision's ImageNet AlexNet, the trunk of LPIPS",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision)", _torch_hub),
    "lpips": MetricFile(
        "alex.pth", "the linear layers of LPIPS v0.1 (AlexNet)",
        "the lpips package (pip install lpips puts it at lpips/weights/v0.1/alex.pth), or "
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
        _lpips_package),
    "vgg19": MetricFile(
        "vgg19-dcbb9e9d.pth", "torchvision's ImageNet VGG-19, for CFSD",
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth (torchvision)", _torch_hub),
}


class MetricWeightsMissing(FileNotFoundError):
    """Some metric weight files are nowhere to be found; the message names each, its source and its place."""


def metrics_folder(explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit``, else ``$MAMBAST_METRICS_DIR``, else None."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(METRICS_ENV):
        return Path(os.environ[METRICS_ENV]).expanduser()
    return None


def find_metric_files(metrics_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The path of every file of :data:`METRIC_FILES`, or :class:`MetricWeightsMissing` naming
    all that are missing at once."""
    folder = metrics_folder(metrics_dir)
    found, missing = {}, []
    for key, spec in METRIC_FILES.items():
        candidates = spec.candidates(folder)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append((spec, candidates))
        else:
            found[key] = path
    if missing:
        raise MetricWeightsMissing(missing_metric_files_message(missing, folder))
    return found


def missing_metric_files_message(missing: list[tuple[MetricFile, list[Path]]], folder: Path | None) -> str:
    if folder is not None:
        place = f"put it in {folder}"
    else:
        place = f"put it in a folder and pass --metrics-dir FOLDER (or set ${METRICS_ENV})"
    lines = [f"{len(missing)} metric weight file(s) not found; evaluation downloads nothing:"]
    for spec, searched in missing:
        looked = ", ".join(str(p) for p in searched) or ("nowhere else: no metrics folder was given, and the package "
                                                         "that keeps it is not installed")
        lines.append(f"  {spec.name}: {spec.purpose}. Get it from {spec.source}; {place}. Looked at: {looked}.")
    return "\n".join(lines)


@dataclass
class MetricNetworks:
    """The three networks of the protocol, loaded, in eval mode, without gradients."""

    inception: ArtInception
    lpips: LPIPS
    cfsd: CFSD
    files: dict[str, Path]

    def to(self, device: torch.device | str) -> "MetricNetworks":
        for network in (self.inception, self.lpips, self.cfsd):
            network.to(device)
        return self


def load_metric_networks(metrics_dir: str | os.PathLike | None = None,
                         device: torch.device | str = "cpu") -> MetricNetworks:
    """Find (:func:`find_metric_files`), check and load the metric networks onto ``device``.

    A file with the wrong keys or shapes raises :class:`~mambast.network.checkpoint.CheckpointError`
    naming it; pickles that would run code are refused."""
    files = find_metric_files(metrics_dir)
    inception = ArtInception()
    tensors = _read(files["inception"], "inception")
    _load(inception, {k: v for k, v in tensors.items() if not k.startswith(INCEPTION_HEADS)}, files, "inception")
    lpips = LPIPS()
    _load(lpips.trunk, _features_of(_read(files["alexnet"], "alexnet"), lpips.trunk), files, "alexnet")
    linear = _read(files["lpips"], "lpips")
    expected = {f"lin{i}.model.1.weight": p.shape for i, p in enumerate(lpips.linear)}
    _check_keys(linear, expected, files, "lpips", exact=False)
    lpips.load_linear_layers({k: v.float() for k, v in linear.items()})
    cfsd = CFSD()
    _load(cfsd.vgg, _features_of(_read(files["vgg19"], "vgg19"), cfsd.vgg), files, "vgg19")
    networks = MetricNetworks(inception, lpips, cfsd, files)
    for network in (inception, lpips, cfsd):
        network.eval().requires_grad_(False)
    return networks.to(device)


def _read(path: Path, key: str) -> dict[str, torch.Tensor]:
    spec = METRIC_FILES[key]
    return read_tensor_file(path, f"{spec.name} ({spec.purpose})", f"{spec.name} comes from {spec.source}")


def _features_of(tensors: dict[str, torch.Tensor], network: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors that ``network`` (a prefix of torchvision's ``features``) holds; the
    rest of the file (later layers, the classifier) is not read."""
    wanted = set(network.state_dict())
    return {k: v for k, v in tensors.items() if k in wanted} | {k: None for k in wanted - set(tensors)}


def _load(network: nn.Module, tensors: dict[str, torch.Tensor | None], files: dict[str, Path], key: str) -> None:
    expected = {k: v.shape for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    _check_keys(tensors, expected, files, key, exact=True)
    network.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)


def _check_keys(tensors: dict[str, torch.Tensor | None], expected: dict[str, torch.Size], files: dict[str, Path],
                key: str, exact: bool) -> None:
    path, spec = files[key], METRIC_FILES[key]
    missing = [k for k in expected if tensors.get(k) is None]
    unexpected = [k for k in tensors if k not in expected] if exact else []
    if missing or unexpected:
        raise CheckpointError(f"{path}: not the expected weights: missing keys {missing[:3]}"
                              + (f", unexpected keys {unexpected[:3]}" if unexpected else "")
                              + f" ({len(missing)} missing). It should be {spec.name}, {spec.purpose}, from {spec.source}.")
    for key, shape in expected.items():
        tensor = tensors[key]
        if tensor.shape != shape or not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} is {tuple(tensor.shape)} {tensor.dtype}, expected "
                                  f"{tuple(shape)} floating point; not the expected weights.")
