"""The Loader's "Download weights": the released weights fetched by the server, on the user's click.

Nothing in a request chooses what is fetched or where it goes: the source is the authors' folder
(``mambast.download_weights``), the target the ``official`` sub-folder of the first ``mambast``
model folder. One download runs at a time; its progress goes to the browser as ``mambast.download``
events (a few a second) and is answered by ``GET /mambast/download``; Cancel stops it with the
folder left as it was, and a failure says what went wrong and how to do it by hand.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from .. import mambast
from . import comfy as host

LOGGER = logging.getLogger("ComfyUI-MambaST")
OFFICIAL = "official"
EVENT = "mambast.download"
EVENTS_PER_SECOND = 4


def target_folder() -> Path:
    """Where the weights go: ``official/`` in the first folder ComfyUI searches for mambast weights."""
    folders = host.model_folders()
    if not folders:
        raise ValueError("no mambast model folder is registered")
    return Path(folders[0]) / OFFICIAL


class DownloadJob:
    """The one download of this server: started, followed and cancelled by the routes."""

    def __init__(self, send: Callable[[dict], None] | None = None, client: object | None = None):
        self.send = send or (lambda state: None)
        self.client = client
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._events = mambast.ThrottledReport(self._send, 1.0 / EVENTS_PER_SECOND)
        self.state: dict = {"state": "idle"}

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start downloading into :func:`target_folder`; False when a download is running already."""
        with self._lock:
            if self.running():
                return False
            target = target_folder()
            self._cancel.clear()
            self._publish({"state": "running", "target": str(target), "name": None, "index": 0, "count": None,
                           "done": 0, "total": None, "message": "Asking the authors' folder for the files..."})
            self._thread = threading.Thread(target=self._run, args=(target,), name="mambast-download", daemon=True)
            self._thread.start()
            return True

    def cancel(self) -> bool:
        """Ask the running download to stop; False when none runs."""
        if not self.running():
            return False
        self._cancel.set()
        return True

    def wait(self, timeout: float | None = None) -> dict:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return dict(self.state)

    def _progress(self, progress: "mambast.FileProgress") -> None:
        if self._cancel.is_set():
            raise mambast.DownloadStopped()
        update = {"name": progress.name, "index": progress.index, "count": progress.count, "done": progress.done,
                  "total": progress.total, "message": f"Downloading {progress.name} ({progress.index + 1} of "
                                                     f"{progress.count})"}
        finished = progress.total is not None and progress.done >= progress.total
        self._publish({**self.state, **update}, throttle=not finished)

    def _run(self, target: Path) -> None:
        try:
            report = mambast.download_weights(target, client=self.client, progress=self._progress)
        except mambast.DownloadStopped:
            final = {"state": "cancelled", "message": f"Download cancelled; {target} is as it was."}
        except mambast.InstallError as error:
            final = {"state": "failed", "message": str(error), "reason": error.reason}
        except Exception as error:  # noqa: BLE001 - whatever happens, the page is told and the server lives
            reason = f"The download failed: {type(error).__name__}: {error}"
            final = {"state": "failed", "message": f"{reason}\n{mambast.manual_steps(target)}", "reason": reason}
        else:
            final = {"state": "done", "message": report.summary(), "checkpoint": f"{OFFICIAL}/"}
        LOGGER.info("MambaST: %s", final["message"])
        self._publish({**self.state, **final})

    def _publish(self, state: dict, throttle: bool = False) -> None:
        """``state`` is the job's; the page hears of it at once, or (``throttle``) a few times a
        second (a state held back is superseded by the next, which carries all of it)."""
        self.state = state
        (self._events if throttle else self._events.now)(dict(state))

    def _send(self, state: dict) -> None:
        try:
            self.send(state)
        except Exception:  # noqa: BLE001 - a page that went away must not stop the download
            pass


JOB = DownloadJob()
