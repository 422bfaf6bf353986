"""The pictures and clip the example workflows load, put where ComfyUI's LoadImage finds them.

The templates must run as shipped, so their inputs are either on every install (ComfyUI's
``example.png``) or provided here (``example_inputs/``, drawn by tools/make_example_inputs.py).
They are copied into the input folder at start, each only where no file of that name exists:
nothing a user has is ever overwritten.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

LOGGER = logging.getLogger("ComfyUI-MambaST")
SOURCE = Path(__file__).resolve().parents[1] / "example_inputs"


def install_example_inputs(input_directory: str | Path) -> list[str]:
    """Copy the example inputs missing from ``input_directory``; returns the names copied.

    A failure (a read-only folder, say) is logged once and leaves the pack working: only the
    templates miss their pictures then.
    """
    copied = []
    try:
        target = Path(input_directory)
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(SOURCE.glob("mambast_example_*")):
            destination = target / source.name
            if destination.exists() or destination.is_symlink():
                continue
            partial = destination.with_name(f".{source.name}.partial")
            shutil.copyfile(source, partial)
            partial.replace(destination)
            copied.append(source.name)
    except OSError as error:
        LOGGER.warning("ComfyUI-MambaST: could not copy the example workflows' inputs into %s (%s); the "
                       "templates will ask for their pictures.", input_directory, error)
    return copied
