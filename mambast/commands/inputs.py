"""What the commands read: image files and folders, the weights, and the names of outputs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..controls.seams import SEAM_SMOOTHING_CHOICES
from ..network.checkpoint import PICKLE_SUFFIXES, missing_weights_message
from ..utils.imaging import IMAGE_SUFFIXES

CHECKPOINT_ENV = "MAMBAST_CHECKPOINT"
DEFAULT_FOLDER = Path("models") / "mambast"


def collect_images(paths: list[str], role: str) -> list[Path]:
    """Image files named directly or found (non-recursively) in the named folders.
    In a folder only files with an image suffix count, hidden ones (".name", e.g. macOS's
    "._photo.jpg") excepted; the rest are ignored. A file named directly is taken whatever
    its suffix: reading it says whether it is an image.
    """
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"error: {role} {name!r} is neither an image file nor a folder.")
    if not found:
        raise SystemExit(f"error: no {role} images found in {', '.join(paths)}.")
    return found


def find_checkpoint(explicit: str | None) -> Path:
    """--checkpoint, else $MAMBAST_CHECKPOINT, else ./models/mambast (a weights file or folder in it)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CHECKPOINT_ENV):
        return Path(os.environ[CHECKPOINT_ENV])
    folder = DEFAULT_FOLDER.resolve()
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
        if files:
            return files[0]
        if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
            return folder
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if any(p.suffix in PICKLE_SUFFIXES for p in sub.iterdir()):
                return sub
    raise SystemExit("error: " + missing_weights_message([f"--checkpoint, ${CHECKPOINT_ENV}", str(folder)]))


def output_name(content: Path, style: Path) -> str:
    """The file name of the stylization of ``content`` with ``style``."""
    return f"{content.stem}_stylized_{style.stem}.png"


def add_seam_smoothing_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seam-smoothing", type=int, choices=SEAM_SMOOTHING_CHOICES, default=0, metavar="N",
                        help="blend stylizations on N token grids shifted by part of a patch against the 8 px "
                             f"patch seams ({', '.join(map(str, SEAM_SMOOTHING_CHOICES[2:]))}; about N times "
                             "the time; default 0: off, the paper's output)")
