"""The authors' Google Drive folder, read through a Drive client: list its files, fetch one.

The weights carry no licence, so they are never mirrored: they come from the authors' own
folder, on the user's request. :class:`GdownClient` reads it with ``gdown`` (MIT licence; it
brings requests, beautifulsoup4, filelock and tqdm), imported only when a download starts. A
client is anything with :meth:`list_files` and :meth:`fetch`; tests give stand-ins, and
:class:`FolderClient` serves a local folder as if it were the authors' one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Protocol

from ..network.checkpoint import WEIGHTS_URL

AUTHORS_FOLDER = WEIGHTS_URL
# Seconds to wait for Drive before giving up: to connect, and between two reads of a download.
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0
# A folder served instead of the authors' (tests: nothing is ever downloaded in them).
STAND_IN_ENV = "MAMBAST_DRIVE_STAND_IN"

Progress = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None); raise to stop


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file of the folder: Drive's id for it and its name."""

    id: str
    name: str


class DriveError(RuntimeError):
    """The folder or a file could not be read: no network, Drive's download quota, a changed folder."""


class DownloadStopped(Exception):
    """Raised from a progress callback to stop a download (Cancel)."""


class DriveClient(Protocol):
    def list_files(self, folder_url: str) -> list[RemoteFile]:
        """Every file of the folder (its sub-folders included)."""

    def fetch(self, file: RemoteFile, destination: Path, progress: Progress | None = None) -> None:
        """Write ``file`` to ``destination``, calling ``progress`` as bytes arrive."""


class GdownClient:
    """The authors' folder through ``gdown``; its errors become :class:`DriveError`."""

    def _gdown(self):
        try:
            import gdown
        except ImportError:
            raise DriveError("the Google Drive client gdown is not installed (pip install \"gdown>=6.4\", in the "
                             "Python that runs the pack)") from None
        return gdown

    def list_files(self, folder_url: str) -> list[RemoteFile]:
        gdown = self._gdown()
        try:
            listed = gdown.download_folder(url=folder_url, skip_download=True, quiet=True,
                                           timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except Exception as error:  # noqa: BLE001 - requests, gdown and parsing errors alike
            raise DriveError(f"could not list the folder: {_reason(error)}") from None
        return [RemoteFile(entry.id, Path(entry.path).name) for entry in listed or []]

    def fetch(self, file: RemoteFile, destination: Path, progress: Progress | None = None) -> None:
        gdown = self._gdown()
        try:
            gdown.download(id=file.id, output=str(destination), quiet=progress is not None, progress=progress,
                           timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except (KeyboardInterrupt, DownloadStopped):
            raise
        except Exception as error:  # noqa: BLE001
            raise DriveError(f"could not download {file.name}: {_reason(error)}") from None
        if not destination.is_file():
            raise DriveError(f"could not download {file.name}: Drive sent nothing")


class FolderClient:
    """A local folder served as the authors' folder, with the same progress reports."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def list_files(self, folder_url: str) -> list[RemoteFile]:
        if not self.folder.is_dir():
            raise DriveError(f"could not list the folder: {self.folder} is not a folder")
        return [RemoteFile(str(path), path.name) for path in sorted(self.folder.rglob("*")) if path.is_file()]

    def fetch(self, file: RemoteFile, destination: Path, progress: Progress | None = None) -> None:
        source = Path(file.id)
        total, done = source.stat().st_size, 0
        with open(source, "rb") as reading, open(destination, "wb") as writing:
            while chunk := reading.read(1 << 20):
                writing.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)


def default_client() -> DriveClient:
    """The authors' folder through gdown, or the folder ``MAMBAST_DRIVE_STAND_IN`` names."""
    stand_in = os.environ.get(STAND_IN_ENV, "").strip()
    return FolderClient(stand_in) if stand_in else GdownClient()


def _reason(error: BaseException) -> str:
    """An error of the Drive client in a few words: the connection's own text is long and says little."""
    try:
        import requests

        if isinstance(error, (requests.ConnectionError, requests.Timeout)):
            return ("no connection to drive.google.com (this machine is offline, or a firewall or proxy is in the "
                    f"way: {type(error).__name__})")
    except ImportError:
        pass
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300] + ("..." if len(text) > 300 else "")
