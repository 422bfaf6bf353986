"""Files written whole or not at all, for every writer of weights, states and logs; their fingerprints."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write through ``write(temporary path)`` and move the result onto ``path``.

    The temporary file sits beside ``path`` (same file system, so the move is atomic): a reader
    sees the previous file or the new one, never half of one, and a failed or interrupted write
    leaves no temporary behind. Parent folders are made as needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def sha256_of(paths: list[str | os.PathLike] | str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, or of several files' names and bytes in the given order:
    what tells a run which weights it was made with."""
    digest = hashlib.sha256()
    single = isinstance(paths, (str, os.PathLike))
    for path in [paths] if single else paths:
        if not single:
            digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
