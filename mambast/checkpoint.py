"""Find, read, validate and convert Mamba-ST weights.

Two layouts are read:
- the official release: a folder with three ``.pth`` state dicts, the CNN decoder
  (``decoder_iter_*.pth``), the patch embedding (``embedding_iter_*.pth``) and the Mamba body
  (``mamba_iter_*.pth``, also published as ``transformer_iter_*.pth``); each file is recognised
  by its keys, not its name, and the VGG used only in training (``vgg_normalised.pth``) is skipped;
- one ``.safetensors`` file holding the same tensors under the prefixes ``decoder.``,
  ``embedding.`` and ``mamba.``.

``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that would run code is
refused before anything runs.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

WEIGHTS_URL = "https://drive.google.com/drive/folders/1pVhJFwk2f3arP7zUDFAe5_PJrPSG1gc2"
OFFICIAL_FILES = "decoder_iter_160000.pth, embedding_iter_160000.pth and mamba_iter_160000.pth " \
                 "(or transformer_iter_160000.pth)"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
PARTS = ("decoder", "embedding", "mamba")

# Tensors of the official checkpoints that the reference computes with but never uses for the
# stylized image: the unused positional branch, a second skip scale, and the style projection
# that self blocks are built with.
_UNUSED = (
    re.compile(r"^mamba\.new_ps\."),
    re.compile(r"\.skip_scale2$"),
    re.compile(r"^mamba\.encoder_[cs]\.layers\.\d+\.self_attention\.in_style_proj\.weight$"),
)


class CheckpointError(ValueError):
    """Weights that cannot be used, with what was wrong, where, and what to do."""


@dataclass
class Checkpoint:
    """Tensors under the ``decoder.``/``embedding.``/``mamba.`` prefixes, and the file of each."""

    tensors: dict[str, torch.Tensor]
    origin: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def file_of(self, key: str) -> str:
        """The file that holds (or, for a missing key, should hold) ``key``."""
        if key in self.origin:
            return self.origin[key]
        part = key.split(".", 1)[0]
        return next((path for k, path in self.origin.items() if k.split(".", 1)[0] == part), self.source)


def missing_weights_message(searched: list[str] | tuple[str, ...]) -> str:
    """What to tell someone whose weights were not found in ``searched``."""
    places = ", ".join(str(p) for p in searched) or "(no folder)"
    return (f"No Mamba-ST weights found (searched: {places}). Download the official files {OFFICIAL_FILES} "
            f"from {WEIGHTS_URL} and put them together in a folder there (e.g. models/mambast/official/), "
            "or convert them to one .safetensors file with `python -m mambast convert`.")


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to load. It is not a plain weights file (loading it would run code or "
            f"build objects other than tensors): {str(error).splitlines()[0]} Only use weights from a "
            "source you trust, or convert them to .safetensors.") from None
    except Exception as error:  # truncated or not a torch file at all
        raise CheckpointError(f"{path}: cannot be read as PyTorch weights ({type(error).__name__}: {error}). "
                              "Re-download the file.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}.")
    return state


def classify_state_dict(state: dict[str, torch.Tensor]) -> str | None:
    """Which official file a state dict is: "decoder", "embedding", "mamba", "vgg" or None."""
    keys = set(state)
    if "proj.weight" in keys:
        return "embedding"
    if any(k.startswith(("encoder_c.", "encoder_s.", "decoder.layers.")) for k in keys):
        return "mamba"
    if keys and all(re.fullmatch(r"\d+\.(weight|bias)", k) for k in keys):
        # The VGG starts with a 1x1 conv at index 0; the CNN decoder's first conv is index 1.
        return "vgg" if "0.weight" in keys else "decoder"
    return None


def read_official_folder(folder: Path) -> Checkpoint:
    """Read the three official ``.pth`` files of ``folder``, recognised by their keys."""
    found: dict[str, list[Path]] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    for path in candidates:
        state = _load_pickle(path)
        kind = classify_state_dict(state)
        if kind in PARTS:
            found.setdefault(kind, []).append(path)
            parts[kind] = state
    for kind, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise CheckpointError(f"{folder}: several {kind} files ({names}); keep one set of weights per folder.")
    missing = [kind for kind in PARTS if kind not in found]
    if missing:
        raise CheckpointError(
            f"{folder}: no {' / '.join(missing)} weights among {[p.name for p in candidates] or 'no .pth files'}. "
            f"The folder must hold the official files {OFFICIAL_FILES}; download them from {WEIGHTS_URL}.")
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for kind in PARTS:
        for key, tensor in parts[kind].items():
            tensors[f"{kind}.{key}"] = tensor
            origin[f"{kind}.{key}"] = str(found[kind][0])
    return Checkpoint(tensors, origin, str(folder))


def read_safetensors(path: Path) -> Checkpoint:
    """Read one ``.safetensors`` file in the prefixed layout."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({error}). Re-download or re-convert it.") from None
    stray = sorted(k for k in tensors if k.split(".", 1)[0] not in PARTS)
    if stray:
        raise CheckpointError(f"{path}: key {stray[0]!r} has none of the prefixes decoder./embedding./mamba.; "
                              "this is not a Mamba-ST file in the prefixed layout.")
    return Checkpoint(tensors, {}, str(path))


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read weights from an official folder or a prefixed ``.safetensors`` / ``.pth`` file."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_official_folder(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder. " + missing_weights_message([str(path.parent)]))
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        state = _load_pickle(path)
        if all(k.split(".", 1)[0] in PARTS for k in state):
            return Checkpoint(state, {}, str(path))
        raise CheckpointError(f"{path}: a single .pth must hold all three parts under the prefixes decoder./"
                              "embedding./mamba.; for the official release, point at the folder holding its files.")
    raise CheckpointError(f"{path}: unsupported file type {path.suffix!r}; use a folder of official .pth files "
                          "or a .safetensors file.")


def usable_tensors(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint without the tensors that the stylized image never depends on."""
    return {k: v for k, v in checkpoint.tensors.items() if not any(p.search(k) for p in _UNUSED)}


def check_against(checkpoint: Checkpoint, expected: dict[str, torch.Size]) -> None:
    """Raise a CheckpointError for the first missing, unexpected or mis-shaped tensor."""
    tensors = usable_tensors(checkpoint)
    for key, shape in expected.items():
        if key not in tensors:
            raise CheckpointError(f"{checkpoint.file_of(key)}: missing tensor {key!r} (expected shape "
                                  f"{tuple(shape)}). The file is incomplete or not Mamba-ST weights.")
        if tensors[key].shape != shape:
            raise CheckpointError(f"{checkpoint.file_of(key)}: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                                  f"expected {tuple(shape)}. The file does not match the architecture read from "
                                  "the rest of the checkpoint.")
    for key in tensors:
        if key not in expected:
            raise CheckpointError(f"{checkpoint.file_of(key)}: unexpected tensor {key!r} "
                                  f"(shape {tuple(tensors[key].shape)}). Is this a Mamba-ST checkpoint?")


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def convert_to_safetensors(source: str | os.PathLike, destination: str | os.PathLike,
                           dtype: str = "float32") -> int:
    """Write ``source`` (official folder or file) as one prefixed ``.safetensors``; returns the tensor count.

    Every tensor of the official files is kept, unused ones included, so the result is a
    faithful copy of the release.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise CheckpointError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    checkpoint = read_checkpoint(source)
    tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in sorted(checkpoint.tensors.items())}
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(destination), metadata={"format": "pt", "source": "mambast convert"})
    return len(tensors)
