"""What a training run tells its user: a progress bar, a JSON-lines log, TensorBoard scalars, preview grids.

Only rank 0 reports (:class:`TrainingReport` with ``enabled=False`` does nothing), so a run on
several processes writes each file once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from ..utils.files import write_atomically
from ..utils.imaging import write_image
from .losses import LossWeights

LOG_FILE = "train_log.jsonl"
PREVIEW_FOLDER = "previews"
TENSORBOARD_FOLDER = "tensorboard"
LOSSES = ("content", "style", "identity1", "identity2")


def trim_log(path: Path, iteration: int) -> None:
    """Drop the lines of ``path`` past ``iteration``: a resumed run logs those iterations again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= iteration:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short when the run was killed
    text = "".join(line + "\n" for line in kept)
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def preview_grid(content: torch.Tensor, style: torch.Tensor, stylized: torch.Tensor) -> torch.Tensor:
    """One row per image, content | style | stylized: (3, B * H, 3 * W) clamped to 0..1.

    content, style, stylized: (B, 3, H, W); the style is resized to the content's size if needed.
    """
    from ..utils.imaging import resize

    style = resize(style, tuple(content.shape[-2:]))
    rows = torch.cat([content, style, stylized.to(content.dtype)], dim=3)  # (B, 3, H, 3W)
    return torch.cat(list(rows), dim=1).clamp(0, 1)


class TrainingReport:
    """The bar on stderr, ``train_log.jsonl``, TensorBoard (when it imports) and previews of one run.

    Each log line holds the means over the iterations since the previous line (``iterations``
    of them): the four losses unweighted and weighted, the total, the learning rate, the
    training time so far in seconds and the counts of skipped (unreadable) files.
    """

    def __init__(self, folder: Path, weights: LossWeights, max_iter: int, start_iteration: int, log_every: int,
                 seconds_before: float = 0.0, enabled: bool = True, stream: TextIO | None = None):
        self.folder, self.weights, self.max_iter, self.log_every = folder, weights, max_iter, log_every
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start_iteration = start_iteration
        self.seconds_before, self.started = seconds_before, time.perf_counter()
        self._sums: dict[str, float] = {}
        self._count = 0
        self._bar_open = False
        self._interactive = self.stream.isatty()
        self._tensorboard = None
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)
            trim_log(folder / LOG_FILE, start_iteration)
            self._tensorboard = _tensorboard_writer(folder / TENSORBOARD_FOLDER, start_iteration)

    @property
    def seconds(self) -> float:
        """Training time so far, earlier sessions of a resumed run included."""
        return self.seconds_before + time.perf_counter() - self.started

    def say(self, message: str) -> None:
        """A line on stderr, below the progress bar."""
        if not self.enabled:
            return
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(message + "\n")
        self.stream.flush()

    def weighted(self, losses: dict[str, float]) -> dict[str, float]:
        return {name: getattr(self.weights, name) * losses[name] for name in LOSSES}

    def iteration_done(self, iteration: int, losses: dict[str, float], lr: float, skipped: dict[str, int]) -> None:
        """Iteration ``iteration`` (counted from 1) ended with these unweighted ``losses`` and ``total``."""
        if not self.enabled:
            return
        for name, value in losses.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1
        if self._interactive:
            self._draw_bar(iteration, losses)
        if iteration % self.log_every == 0 or iteration == self.max_iter:
            means = {name: total / self._count for name, total in self._sums.items()}
            self._write_line(iteration, means, lr, skipped)
            if not self._interactive:
                self.say(f"{iteration}/{self.max_iter} {self._describe(means)}")
            self._sums, self._count = {}, 0

    def _describe(self, losses: dict[str, float]) -> str:
        weighted = self.weighted(losses)
        return " ".join(f"{name} {value:.4g}" for name, value in weighted.items()) + f" total {losses['total']:.4g}"

    def _draw_bar(self, iteration: int, losses: dict[str, float]) -> None:
        width = 20
        filled = width * iteration // max(self.max_iter, 1)
        done = iteration - self.start_iteration
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.max_iter - iteration) / rate if rate > 0 else 0.0
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {iteration}/{self.max_iter} {rate:.2f} it/s "
                          f"{_clock(left)} left | {self._describe(losses)} ")
        self.stream.flush()
        self._bar_open = True

    def _write_line(self, iteration: int, means: dict[str, float], lr: float, skipped: dict[str, int]) -> None:
        weighted = self.weighted(means)
        line = {"iteration": iteration, "iterations": self._count, **{name: means[name] for name in LOSSES},
                **{f"{name}_weighted": weighted[name] for name in LOSSES}, "total": means["total"], "lr": lr,
                "seconds": round(self.seconds, 3), **{f"skipped_{name}": count for name, count in skipped.items()}}
        with open(self.folder / LOG_FILE, "a") as log:
            log.write(json.dumps(line) + "\n")
        if self._tensorboard is not None:
            for name in LOSSES:
                self._tensorboard.add_scalar(f"loss/{name}", means[name], iteration)
                self._tensorboard.add_scalar(f"loss_weighted/{name}", weighted[name], iteration)
            self._tensorboard.add_scalar("loss/total", means["total"], iteration)
            self._tensorboard.add_scalar("lr", lr, iteration)
            self._tensorboard.flush()

    def preview(self, iteration: int, content: torch.Tensor, style: torch.Tensor, stylized: torch.Tensor) -> Path | None:
        """Write the grid of :func:`preview_grid` to previews/iter_<iteration>.png (whole or not at all)."""
        if not self.enabled:
            return None
        path = self.folder / PREVIEW_FOLDER / f"iter_{iteration:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(preview_grid(content.cpu(), style.cpu(), stylized.cpu()), path)
        return path

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _tensorboard_writer(folder: Path, start_iteration: int):
    """A TensorBoard SummaryWriter when ``torch.utils.tensorboard`` imports (it needs ``tensorboard``), else None.

    ``purge_step`` hides the events a stopped run logged past the iteration it resumes from.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=start_iteration + 1 if start_iteration else None)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
