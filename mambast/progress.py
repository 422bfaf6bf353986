"""A progress hook the long loops call, so a host (ComfyUI) can advance a bar or cancel a run.

The library never imports a host: it calls :func:`tick` between blocks and every few chunks of
a scan, and a host installs a callback with :func:`progress_callback`. A callback may raise
(e.g. ComfyUI's interrupt exception) to stop the computation at that point.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

_callback: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("mambast_progress",
                                                                                      default=None)


def tick() -> None:
    """Call the installed callback, if any (cheap when none is installed)."""
    callback = _callback.get()
    if callback is not None:
        callback()


@contextlib.contextmanager
def progress_callback(callback: Callable[[], None] | None) -> Iterator[None]:
    """Install ``callback`` for the duration of the ``with`` block (in this thread/context)."""
    token = _callback.set(callback)
    try:
        yield
    finally:
        _callback.reset(token)
