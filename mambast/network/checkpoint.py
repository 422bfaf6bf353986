"""Find, read, validate and convert Mamba-ST weights.

Two layouts are read:
- the official release: a folder with three ``.pth`` state dicts, the CNN decoder
  (``decoder_iter_*.pth``), the patch embedding (``embedding_iter_*.pth``) and the Mamba body
  (``mamba_iter_*.pth``, also published as ``transformer_iter_*.pth``); each file is recognised
  by its keys, not its name, and the VGG used only in training (``vgg_normalised.pth``) is skipped;
- one ``.safetensors`` (or ``.sft``) file holding the same tensors under the prefixes ``decoder.``,
  ``embedding.`` and ``mamba.``.

``.pth`` files are read with ``torch.load(weights_only=True)``: a pickle that would run code is
refused before anything runs. A safetensors header is checked against the file's size before
safetensors reads it, so a damaged or hostile header never makes us allocate what it claims.
Every bad file ends in a CheckpointError that names the file (and tensor) and says what to do.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..utils.files import write_atomically

WEIGHTS_URL = "https://drive.google.com/drive/folders/1pVhJFwk2f3arP7zUDFAe5_PJrPSG1gc2"
OFFICIAL_FILES = "decoder_iter_160000.pth, embedding_iter_160000.pth and mamba_iter_160000.pth " \
                 "(or transformer_iter_160000.pth)"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")  # ComfyUI lists .sft as safetensors too
WEIGHTS_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
PARTS = ("decoder", "embedding", "mamba")

# safetensors' own limit on the JSON header; anything larger is not a real weights file.
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024
SAFETENSORS_ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                          "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# How many bad tensors a message lists by name before it only counts them.
_NAMED_IN_MESSAGES = 3

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
    return (f"No Mamba-ST weights found (searched: {places}). Install the official files with `python -m mambast "
            "download` (in ComfyUI: the MambaST Loader's Download weights), or download "
            f"{OFFICIAL_FILES} from {WEIGHTS_URL} and put them together in a folder there (e.g. "
            "models/mambast/official/).")


def suffix_of(path: str | os.PathLike) -> str:
    """The file suffix that decides how weights are read, in lower case (``.PTH`` reads as ``.pth``)."""
    return Path(path).suffix.lower()


_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"RIFF", "a RIFF file (WebP image or audio)"), (b"%PDF", "a PDF document"),
               (b"PK\x03\x04", "a zip archive (the format of PyTorch .pth files)"))


def _describe_content(head: bytes) -> str | None:
    """What the first bytes of a file say it is, when that is something recognisable."""
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return what
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<")):
        return "an HTML page (what an interrupted or refused download often saves)"
    if head and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return "a text file"
    return None


def _refuse_folder(path: Path) -> None:
    raise CheckpointError(f"{path}: is a folder, not a weights file. Point at the weights file itself, or at "
                          f"a folder holding the official files {OFFICIAL_FILES}.")


def _open_weights_file(path: Path) -> tuple[int, bytes]:
    """The size and first 64 bytes of a weights file; a CheckpointError for folders, empty files and the like."""
    if path.is_dir():
        _refuse_folder(path)
    if not path.is_file():  # a pipe or device would block or stream forever
        raise CheckpointError(f"{path}: is not a regular file; point at a weights file.")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); its download or copy did not finish. "
                              "Re-download the file.")
    with open(path, "rb") as handle:
        return size, handle.read(64)


def _first_sentence(error: BaseException, limit: int = 200) -> str:
    sentence = (str(error).splitlines() or [""])[0].split(". ")[0]
    return f"{type(error).__name__}: {sentence[:limit]}"


def load_pickle(path: Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file's tensors, read with ``weights_only=True``: a pickle that would run
    code is refused; a file of another kind gets a :class:`CheckpointError` that says what it is.
    ``source``: where the file comes from, for that message (default: the official weights)."""
    _, head = _open_weights_file(path)
    # Files written by torch.save are zip archives, or for the legacy format a pickle (protocol byte 0x80).
    what = None if head.startswith((b"PK\x03\x04", b"\x80")) else _describe_content(head)
    if what:
        source = source or f"the official files are {OFFICIAL_FILES}, from {WEIGHTS_URL}"
        raise CheckpointError(f"{path}: cannot be read as PyTorch weights: it is {what}, not a weights file. "
                              f"Re-download the file ({source}).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to load. It is not a plain weights file (loading it would run code or "
            f"build objects other than tensors): {str(error).splitlines()[0]} Only use weights from a "
            "source you trust, or convert them to .safetensors.") from None
    except Exception as error:  # truncated or not a torch file at all
        raise CheckpointError(f"{path}: cannot be read as PyTorch weights; the file is damaged or incomplete (e.g. "
                              f"a download cut short) ({_first_sentence(error)}). Re-download the file.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a state dict of named tensors, found {type(state).__name__}.")
    return state


def read_tensor_file(path: Path, what: str, source: str | None = None) -> dict[str, torch.Tensor]:
    """The named tensors of a ``.pth``/``.pt``/``.bin`` file (weights only) or a ``.safetensors``
    file, on the CPU. ``what`` names the file in errors ("the VGG weights"), ``source`` says where
    it comes from."""
    suffix = suffix_of(path)
    if suffix in PICKLE_SUFFIXES:
        return load_pickle(path, source)  # weights_only: a pickle that would run code is refused
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        check_safetensors_header(path)
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot be read as safetensors ({error}). Re-download it.") from None
    raise CheckpointError(f"{path}: unsupported file type {path.suffix!r} for {what}; give a "
                          f"{' or '.join(PICKLE_SUFFIXES)} file or a .safetensors file with the same keys.")


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


def check_one_checkpoint(folder: Path, found: dict[str, list[Path]]) -> None:
    """Refuse a folder whose part files come from more than one checkpoint."""
    for kind, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise CheckpointError(f"{folder}: several {kind} files ({names}); keep one set of weights per folder.")
    iterations = {paths[0].name: match.group(1) for paths in found.values()
                  if (match := re.search(r"_iter_(\d+)", paths[0].stem))}
    if len(set(iterations.values())) > 1:
        files = ", ".join(f"{name} (iteration {number})" for name, number in sorted(iterations.items()))
        raise CheckpointError(f"{folder}: the files come from different checkpoints: {files}. Keep one set per "
                              "folder: the decoder, embedding and mamba files of the same iteration.")


def read_official_folder(folder: Path) -> Checkpoint:
    """Read the three official ``.pth`` files of ``folder``, recognised by their keys."""
    found: dict[str, list[Path]] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    entries = sorted(p for p in folder.iterdir() if suffix_of(p) in PICKLE_SUFFIXES)
    candidates = [p for p in entries if p.is_file()]
    for path in candidates:
        state = load_pickle(path)
        kind = classify_state_dict(state)
        if kind in PARTS:
            found.setdefault(kind, []).append(path)
            parts[kind] = state
    check_one_checkpoint(folder, found)
    missing = [kind for kind in PARTS if kind not in found]
    if missing:
        folders = [p.name for p in entries if p.is_dir()]
        note = f" ({', '.join(folders)}: a folder, not a file)" if folders else ""
        held = (f"no {' / '.join(missing)} weights among {[p.name for p in candidates]}" if candidates
                else "the folder holds no weights (no decoder / embedding / mamba .pth files)")
        raise CheckpointError(f"{folder}: {held}{note}. Put the official files {OFFICIAL_FILES} in this folder; "
                              f"download them from {WEIGHTS_URL}.")
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for kind in PARTS:
        for key, tensor in parts[kind].items():
            tensors[f"{kind}.{key}"] = tensor
            origin[f"{kind}.{key}"] = str(found[kind][0])
    return Checkpoint(tensors, origin, str(folder))


def check_safetensors_header(path: Path) -> None:
    """Refuse a ``.safetensors`` file whose header is not consistent with the file, before anything is allocated.

    The format: an 8-byte little-endian header length, that many bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
    tensor data, offsets counted from its start.
    """
    size, head = _open_weights_file(path)
    what = _describe_content(head)
    not_safetensors = f"it is {what}, not a safetensors file" if what else "it is damaged or not a safetensors file"
    if size < 8:
        raise CheckpointError(f"{path}: only {size} bytes; {not_safetensors}. Re-download or re-convert it.")
    length = int.from_bytes(head[:8], "little")
    if length > MAX_SAFETENSORS_HEADER_BYTES or 8 + length > size:
        raise CheckpointError(f"{path}: its header claims {length} bytes but the file has {size}; {not_safetensors} "
                              "(or it was cut short). Re-download or re-convert it.")
    with open(path, "rb") as handle:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: its header is not a JSON table of tensors; {not_safetensors}. "
                              "Re-download or re-convert it.")
    data_bytes = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if (not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(n) is int for n in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name!r} has an unreadable entry in the header ({info!r:.200}); "
                                  "the file is damaged. Re-download or re-convert it.")
        if dtype not in SAFETENSORS_ITEM_BYTES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}; Mamba-ST weights are "
                                  "float32, float16 or bfloat16. Re-convert with `python -m mambast convert`.")
        if offsets[1] > data_bytes:
            raise CheckpointError(f"{path}: tensor {name!r} lies past the end of the file (bytes {offsets[0]}.."
                                  f"{offsets[1]} of {data_bytes}); the file is truncated. Re-download or "
                                  "re-convert it.")
        needed = SAFETENSORS_ITEM_BYTES[dtype] * math.prod(shape)
        if offsets[1] - offsets[0] != needed:
            raise CheckpointError(f"{path}: tensor {name!r} is declared {dtype} of shape {tuple(shape)} ({needed} "
                                  f"bytes) but holds {offsets[1] - offsets[0]} bytes; the file is damaged. "
                                  "Re-download or re-convert it.")


def read_safetensors(path: Path) -> Checkpoint:
    """Read one ``.safetensors`` (or ``.sft``) file in the prefixed layout."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_header(path)
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
    """Read weights from an official folder or a prefixed ``.safetensors`` / ``.sft`` / ``.pth`` file."""
    path = Path(path).expanduser()
    suffix = suffix_of(path)
    if path.is_dir():
        if suffix in WEIGHTS_SUFFIXES and not any(suffix_of(p) in PICKLE_SUFFIXES for p in path.iterdir()):
            _refuse_folder(path)
        return read_official_folder(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder. " + missing_weights_message([str(path.parent)]))
    if suffix in SAFETENSORS_SUFFIXES:
        return read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        state = load_pickle(path)
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


def check_dimensions(checkpoint: Checkpoint, reference: dict[str, torch.Size]) -> None:
    """Raise a CheckpointError for a tensor whose number of dimensions differs from ``reference``'s.

    ``reference`` is any Mamba-ST's shapes (sizes may differ, dimensions may not); checked before
    the architecture is read so that reading it never indexes a dimension that is not there.
    """
    for key, tensor in checkpoint.tensors.items():
        if key in reference and tensor.dim() != len(reference[key]):
            raise CheckpointError(f"{checkpoint.file_of(key)}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {len(reference[key])} dimensions (the released model's is "
                                  f"{tuple(reference[key])}). The file is damaged or not Mamba-ST weights.")


def _token_width_of_each_part(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[str, int]]:
    """d_model as each part sees it, with the tensor it is read from: the patch embedding's output
    channels, the Mamba body's input projection, the CNN decoder's first convolution's input channels."""
    widths: dict[str, tuple[str, int]] = {}
    if "embedding.proj.weight" in tensors:
        widths["embedding"] = ("embedding.proj.weight", tensors["embedding.proj.weight"].shape[0])
    in_proj = "mamba.encoder_c.layers.0.self_attention.in_proj.weight"
    if in_proj in tensors:
        widths["mamba"] = (in_proj, tensors[in_proj].shape[-1])
    convs = sorted((int(m.group(1)), key) for key in tensors if (m := re.fullmatch(r"decoder\.(\d+)\.weight", key)))
    if convs:
        widths["decoder"] = (convs[0][1], tensors[convs[0][1]].shape[1])
    return widths


def check_parts_agree(checkpoint: Checkpoint) -> None:
    """Raise a CheckpointError naming both files when the parts disagree on the token width (d_model),
    as when the decoder, embedding and mamba files of different checkpoints share a folder."""
    widths = _token_width_of_each_part(checkpoint.tensors)
    if len({width for _, width in widths.values()}) > 1:
        described = "; ".join(f"{checkpoint.file_of(key)}: {width} ({key!r} {tuple(checkpoint.tensors[key].shape)})"
                              for key, width in widths.values())
        raise CheckpointError(f"The parts of this checkpoint come from different models; their token widths "
                              f"(d_model) disagree: {described}. Keep one set of weights per folder "
                              "(the decoder, embedding and mamba files released together).")


def check_finite(checkpoint: Checkpoint) -> None:
    """Raise a CheckpointError naming the tensors that hold NaN or infinite values.

    Such a weight turns the stylized image black or into noise without any error, so a file
    holding one is refused as corrupt. Only the tensors the image depends on are checked.
    """
    bad = [key for key, tensor in usable_tensors(checkpoint).items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        files = ", ".join(dict.fromkeys(checkpoint.file_of(key) for key in bad))
        named = ", ".join(repr(key) for key in bad[:_NAMED_IN_MESSAGES])
        more = f" and {len(bad) - _NAMED_IN_MESSAGES} more" if len(bad) > _NAMED_IN_MESSAGES else ""
        raise CheckpointError(f"{files}: {len(bad)} tensor(s) hold NaN or infinite values ({named}{more}); the "
                              "weights are corrupt and would give black or garbage images. Re-download the file.")


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``float32``: the name :data:`DTYPES` and the reports use."""
    return str(dtype).removeprefix("torch.")


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
    write_atomically(destination, lambda temporary: save_file(tensors, temporary,
                                                              metadata={"format": "pt", "source": "mambast convert"}))
    return len(tensors)
