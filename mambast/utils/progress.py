"""A progress hook the long loops call, so a host (ComfyUI) can advance a bar or cancel a run.

The library never imports a host: it calls :func:`tick` between blocks and every few chunks of
a scan, :func:`cancel_point` inside long operations (bands of a large convolution or dense
layer: places to stop that are not progress), and :func:`replan` when a run starts over
differently (smaller tiles after running out of memory), and :func:`notice_if_slow` around a
call that may keep the user waiting the first time (compiling kernels); a host installs callbacks
with :func:`progress_callback`. A callback may raise (e.g. ComfyUI's interrupt exception) to stop
the computation at that point.
:class:`ProgressTracker` turns those calls into a bar that reaches its end exactly.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from typing import Callable, Iterator, Sequence

log = logging.getLogger(__name__)

_callbacks: contextvars.ContextVar[tuple[Callable[[], None] | None, Callable[[int], None] | None,
                                         Callable[[], None] | None, Callable[[str], None] | None]] = \
    contextvars.ContextVar("mambast_progress", default=(None, None, None, None))


def tick() -> None:
    """Call the installed tick callback, if any (cheap when none is installed)."""
    on_tick = _callbacks.get()[0]
    if on_tick is not None:
        on_tick()


def replan(ticks: int) -> None:
    """Tell the host that the current image starts over and now needs ``ticks`` more ticks."""
    on_replan = _callbacks.get()[1]
    if on_replan is not None:
        on_replan(ticks)


def cancel_point() -> None:
    """A place where the host may stop the run (its check callback may raise); no progress."""
    on_check = _callbacks.get()[2]
    if on_check is not None:
        on_check()


@contextlib.contextmanager
def notice_if_slow(text: str, after: float = 2.0) -> Iterator[None]:
    """Tell the user ``text`` if the block is still running ``after`` seconds in: through the host's
    notice callback when one is installed (ComfyUI shows it on the node), else in the log. For a
    wait that only the first run pays (compiling kernels), so that it is not a silent one."""
    on_notice = _callbacks.get()[3]

    def tell() -> None:
        if on_notice is not None:
            on_notice(text)
        else:
            log.warning("MambaST: %s", text)

    timer = threading.Timer(after, tell)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def progress_callback(on_tick: Callable[[], None] | None, on_replan: Callable[[int], None] | None = None,
                      on_check: Callable[[], None] | None = None,
                      on_notice: Callable[[str], None] | None = None) -> Iterator[None]:
    """Install the callbacks for the duration of the ``with`` block (in this thread/context).

    ``on_check`` is called at each :func:`cancel_point` (a Cancel check that moves no bar);
    ``on_notice(text)`` by :func:`notice_if_slow`, possibly from another thread."""
    token = _callbacks.set((on_tick, on_replan, on_check, on_notice))
    try:
        yield
    finally:
        _callbacks.reset(token)


class TickCount:
    """How many ticks a :func:`counting_ticks` block made."""

    def __init__(self):
        self.ticks = 0


@contextlib.contextmanager
def counting_ticks(forward: bool) -> Iterator[TickCount]:
    """Count the ticks made inside the block; pass them and the Cancel checks on to the installed
    callbacks only when ``forward`` (else the block runs silent and cannot be cancelled).

    A CUDA graph is recorded from a silent run and replays without Python: the count is what a
    replay then reports (:mod:`mambast.kernels.cuda_graphs`).
    """
    on_tick, on_replan, on_check, on_notice = _callbacks.get()
    count = TickCount()

    def counted() -> None:
        count.ticks += 1
        if forward and on_tick is not None:
            on_tick()

    token = _callbacks.set((counted, on_replan if forward else None, on_check if forward else None, on_notice))
    try:
        yield count
    finally:
        _callbacks.reset(token)


class ProgressTracker:
    """Ticks counted against the ticks planned for each image, reported as (done, total).

    ``planned[i]`` is what image i should take (see :mod:`mambast.run.resources`). :meth:`replan`
    replaces the current image's remaining plan (a retry in smaller tiles: the ticks already
    spent stay counted, as work that ran); :meth:`image_done` closes an image, so the total is
    always what ran plus what is still planned, and the bar ends exactly at its total.
    """

    def __init__(self, planned: Sequence[int], report: Callable[[int, int], None]):
        self.later = [max(0, int(p)) for p in planned]
        self.report = report
        self.done = 0
        self.current = self.later.pop(0) if self.later else 0  # ticks left planned for this image

    @property
    def total(self) -> int:
        return self.done + self.current + sum(self.later)

    def tick(self) -> None:
        self.done += 1
        self.current = max(0, self.current - 1)
        self.report(self.done, self.total)

    def replan(self, ticks: int) -> None:
        self.current = max(0, int(ticks))
        self.report(self.done, self.total)

    def image_done(self) -> None:
        self.current = self.later.pop(0) if self.later else 0
        self.report(self.done, self.total)


class ThrottledReport:
    """``report(*arguments)`` passed on at most once per ``interval`` seconds, and the last call
    always, by :meth:`flush`: a host's progress messages stay a few a second however fast the
    ticks come (a 512 px run ticks about 75 times a second on a CPU), while Cancel, checked at
    every tick, is not slowed. :meth:`now` passes a report on at once (a start, an end)."""

    def __init__(self, report: Callable[..., None], interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic):
        self.report, self.interval, self.clock = report, interval, clock
        self.last: float | None = None
        self.pending: tuple | None = None

    def __call__(self, *arguments) -> None:
        if self.last is not None and self.clock() - self.last < self.interval:
            self.pending = arguments
            return
        self.now(*arguments)

    def now(self, *arguments) -> None:
        """Pass ``arguments`` on at once; a report held back before them is dropped."""
        self.last, self.pending = self.clock(), None
        self.report(*arguments)

    def flush(self) -> None:
        """Pass on the last report held back, if any."""
        if self.pending is not None:
            self.now(*self.pending)
