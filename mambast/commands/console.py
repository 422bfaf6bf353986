"""A batch command's console: its progress bar, what it skipped and why, its summary."""

from __future__ import annotations

import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from ..controls.tiling import is_out_of_memory
from ..utils.imaging import ImageFileError


class StylizeRun:
    """What a ``stylize`` run did so far, its progress bar and its messages on stderr."""

    def __init__(self, total: int, show_bar: bool = True, prefix: str = ""):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        # Under torchrun only rank 0 draws the bar; every rank's messages carry its rank.
        self.show_bar, self.prefix = show_bar, prefix
        self.written = self.kept = self.failed_pairs = 0
        self.unreadable: dict[Path, str] = {}  # input -> why it was skipped, said once
        self.written_by: dict[Path, str] = {}  # output -> the pair that wrote it in this run
        self.model_seconds = 0.0  # in the model's calls (encodings, fusion, decoding), reading and writing excluded
        self._bar_open = False

    @contextmanager
    def timing(self, device: torch.device):
        """Add the time of the block to :attr:`model_seconds`, the device's queued work included."""
        _synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize(device)
            self.model_seconds += time.perf_counter() - start

    def say(self, message: str) -> None:
        """A line on stderr below the progress bar."""
        if self._bar_open:
            sys.stderr.write("\n")
            self._bar_open = False
        sys.stderr.write(self.prefix + message + "\n")
        sys.stderr.flush()

    def advance(self, label: str) -> None:
        """One more pair dealt with (written, kept or failed): redraw the progress bar."""
        self.done += 1
        if not self.show_bar:
            return
        width = 24
        filled = width * self.done // self.total
        elapsed = time.perf_counter() - self.started
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:6.1f}s "
                         f"{label[:40]:<40}")
        self._bar_open = self.done < self.total
        if not self._bar_open:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def skip_input(self, role: str, path: Path, error: Exception) -> None:
        reason = str(error) if isinstance(error, ImageFileError) else f"{path}: {_describe(error)}"
        self.unreadable[path] = reason
        self.say(f"skipped {role}: {reason}")

    def fail_pair(self, pair: str, error: Exception | str) -> None:
        self.failed_pairs += 1
        self.say(f"failed {pair}: {error if isinstance(error, str) else _describe(error)}")

    def keep_existing(self, target: Path) -> None:
        self.kept += 1
        self.say(f"{target} exists, skipped (use --overwrite to replace it).")

    @property
    def failed(self) -> bool:
        return bool(self.unreadable or self.failed_pairs)

    def summary(self) -> str:
        parts = [f"{self.written} of {self.total} outputs written"]
        if self.unreadable:
            parts.append(_count(len(self.unreadable), "input") + " skipped")
        if self.failed_pairs:
            parts.append(_count(self.failed_pairs, "pair") + " failed")
        if self.kept:
            parts.append(_count(self.kept, "existing output") + " kept (use --overwrite to replace)")
        return "; ".join(parts) + "."


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _describe(error: Exception) -> str:
    """An exception in a line; an unexpected kind (a bug, most likely) also gets its traceback."""
    if is_out_of_memory(error):
        return f"out of memory ({error}); try --tile 512, a smaller --size or --dtype float16."
    if isinstance(error, (ValueError, OSError)):
        return str(error)
    return f"{type(error).__name__}: {error}\n" + "".join(traceback.format_exception(type(error), error,
                                                                                   error.__traceback__)).rstrip()
