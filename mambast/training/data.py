"""Endless, exactly resumable streams of training crops from a folder of images.

Like the reference's training data (``Resize((512, 512))`` then ``RandomCrop(256)``, files
drawn in a fresh random order every epoch, forever), with three differences that a long run
needs: a file that cannot be read is skipped and counted instead of ending the run, one level
of sub-folders is searched as well, and the stream's position can be saved and restored.

Why the stream is exactly resumable, with or without worker processes: sample number ``p``
of a stream is a pure function of ``p`` (epoch ``p // n`` shuffles the ``n`` files and draws
their crops from a generator keyed by the run's seed, the rank, the stream and the epoch).
Workers only compute that function ahead of time; the stream consumes the results in order of
``p``, so its state is just the next ``p`` and the set of files found unreadable.
"""

from __future__ import annotations

import itertools
import signal
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ..utils.imaging import IMAGE_SUFFIXES, ImageFileError, read_image_resized
from .seeds import generator

#: What a stream hands back for one sample: the file's index, the crop (3, crop, crop) or None,
#: and why the file could not be read (None when it was read, or was known to be unreadable).
Sample = tuple[int, "torch.Tensor | None", "str | None"]


class TrainingDataError(ValueError):
    """A training folder that cannot feed training: missing, empty, or without one readable image."""


def list_images(folder: str | Path, option: str) -> list[Path]:
    """The image files of ``folder`` and of its sub-folders one level down, sorted by relative path.

    Files count by suffix (:data:`mambast.utils.imaging.IMAGE_SUFFIXES`, any case); hidden files
    and folders (".name", e.g. macOS's "._photo.jpg") are left out. ``option`` names the
    command-line option the folder came from, for the error message.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TrainingDataError(f"{option} {folder}: no such folder. {_what_to_put(option)}")
    found = [path for path in _visible(folder) if _is_image_file(path)]
    for sub in sorted(path for path in _visible(folder) if path.is_dir()):
        found += [path for path in _visible(sub) if _is_image_file(path)]
    if not found:
        raise TrainingDataError(f"{option} {folder} holds no image files. {_what_to_put(option)}")
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _visible(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _what_to_put(option: str) -> str:
    kind = "photographs (e.g. MS-COCO train2014)" if "content" in option else "paintings (e.g. WikiArt)"
    return (f"Put {kind} as {', '.join(IMAGE_SUFFIXES)} files in the {option} folder, directly or in "
            "sub-folders one level down.")


def training_crop(path: Path, load_size: int, crop: int, top: int, left: int) -> torch.Tensor:
    """The image at ``path`` resized to ``load_size`` x ``load_size``, cropped: (3, crop, crop) in 0..1.

    Resized whatever its aspect ratio and up when smaller, as the reference's
    ``Resize((512, 512))`` does: by Pillow's bilinear filter on the 8-bit image, before it
    becomes float. Raises :class:`~mambast.utils.imaging.ImageFileError` for a file that cannot
    be read.
    """
    image = read_image_resized(path, (load_size, load_size))
    return image[0, :, top:top + crop, left:left + crop].contiguous()


class SampleReader(torch.utils.data.Dataset):
    """Sample number ``p`` -> (file index, crop or None, reason): a pure function of ``p``.

    A map-style dataset over the endless positions, so that DataLoader workers can compute
    samples ahead; every worker derives the same epoch orders from the same keys.
    ``known_unreadable`` lets it skip files already found unreadable (a snapshot in workers:
    the stream checks again).
    """

    def __init__(self, files: list[Path], load_size: int, crop: int, seed: int, rank: int, stream: str,
                 known_unreadable: set[int] | dict[int, str] = ()):
        self.files, self.load_size, self.crop = files, load_size, crop
        self.seed, self.rank, self.stream = seed, rank, stream
        self.known_unreadable = known_unreadable
        self._epoch: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's file order (n,) and crop corners (n, 2), drawn from the epoch's own generator."""
        if self._epoch is None or self._epoch[0] != epoch:
            draw = generator(self.seed, "data", self.stream, self.rank, epoch)
            count = len(self.files)
            order = torch.randperm(count, generator=draw)
            corners = torch.randint(0, self.load_size - self.crop + 1, (count, 2), generator=draw)
            self._epoch = (epoch, order, corners)
        return self._epoch[1], self._epoch[2]

    def __getitem__(self, position: int) -> Sample:
        order, corners = self.epoch_plan(position // len(self.files))
        slot = position % len(self.files)
        index = int(order[slot])
        if index in self.known_unreadable:
            return index, None, None
        top, left = (int(value) for value in corners[slot])
        try:
            return index, training_crop(self.files[index], self.load_size, self.crop, top, left), None
        except (ImageFileError, OSError) as error:
            return index, None, str(error)


def _unchanged(sample: Sample) -> Sample:
    """The DataLoader's collate function: samples pass as they are (module level: workers pickle it)."""
    return sample


def _leave_interrupts_to_the_trainer(worker: int) -> None:
    """A worker ignores Ctrl-C: the terminal sends it to the whole process group, and the training
    process alone decides to stop (and says so once), then ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ImageStream:
    """An endless stream of (batch, 3, crop, crop) batches of random crops from ``folder``.

    Each epoch shuffles the files again; the order and crops come from generators keyed by
    ``seed``, ``rank`` and ``stream`` (so content and style, and every rank, draw independently).
    Unreadable files are skipped (each said once through :meth:`take_new_unreadable`) and
    counted in :attr:`skipped`; a folder where no file is readable raises TrainingDataError.
    ``workers`` > 0 reads ahead in that many DataLoader worker processes; the batches are the
    same as with 0. ``pin_memory`` hands batches in page-locked memory, which a CUDA device copies
    from while it computes. :meth:`state_dict` / :meth:`load_state_dict` save and restore the position.
    """

    def __init__(self, folder: str | Path, option: str, batch_size: int, load_size: int = 512, crop: int = 256,
                 seed: int = 0, rank: int = 0, workers: int = 0, pin_memory: bool = False):
        if not 1 <= crop <= load_size:
            raise ValueError(f"the crop ({crop}) must be between 1 and the load size ({load_size}).")
        if batch_size < 1 or workers < 0:
            raise ValueError(f"batch size must be at least 1 and workers at least 0; got {batch_size}, {workers}.")
        self.folder, self.option = Path(folder).expanduser(), option
        self.files = list_images(self.folder, option)
        self.batch_size, self.workers, self.pin_memory = batch_size, workers, pin_memory
        self.position = 0
        self.unreadable: dict[int, str] = {}  # file index -> why it could not be read
        self._new_unreadable: list[int] = []
        self.reader = SampleReader(self.files, load_size, crop, seed, rank, option, self.unreadable)
        self._samples: Iterator[Sample] | None = None

    @property
    def skipped(self) -> int:
        """How many files were found unreadable so far (each counted once)."""
        return len(self.unreadable)

    def take_new_unreadable(self) -> list[tuple[str, str]]:
        """(path relative to the folder, why it cannot be read) of each file found unreadable since the last call."""
        new, self._new_unreadable = self._new_unreadable, []
        return [(self._relative(index), self.unreadable[index]) for index in new]

    def next_batch(self) -> torch.Tensor:
        """The next (batch_size, 3, crop, crop) float32 batch in 0..1, on the CPU."""
        batch = torch.stack([self._next_crop() for _ in range(self.batch_size)])
        return batch.pin_memory() if self.pin_memory else batch

    def _next_crop(self) -> torch.Tensor:
        while True:
            if len(self.unreadable) == len(self.files):
                raise TrainingDataError(f"{self.option} {self.folder}: none of its {len(self.files)} image files "
                                        f"can be read (the last: {self._last_reason()}). "
                                        f"{_what_to_put(self.option)}")
            if self._samples is None:
                self._samples = self._start(self.position)
            index, crop, reason = next(self._samples)
            self.position += 1
            if index in self.unreadable:
                continue
            if crop is None:
                self.unreadable[index] = reason
                self._new_unreadable.append(index)
                continue
            return crop

    def _last_reason(self) -> str:
        return next(reversed(self.unreadable.values()))

    def _start(self, position: int) -> Iterator[Sample]:
        if self.workers == 0:
            return map(self.reader.__getitem__, itertools.count(position))
        # Workers compute samples of positions ahead; they come back in order of position.
        loader = torch.utils.data.DataLoader(self.reader, batch_size=None, sampler=itertools.count(position),
                                             num_workers=self.workers, collate_fn=_unchanged,
                                             worker_init_fn=_leave_interrupts_to_the_trainer)
        return iter(loader)

    def close(self) -> None:
        """Stop the workers (a later batch starts them again where the stream is)."""
        self._samples = None

    def state_dict(self) -> dict:
        """The stream's position: the next sample number and the files found unreadable (by relative path)."""
        return {"position": self.position, "files": len(self.files),
                "unreadable": {self._relative(index): reason for index, reason in self.unreadable.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`: the following batches are those that followed it."""
        if state["files"] != len(self.files):
            warnings.warn(f"{self.option} {self.folder} held {state['files']} image files when the training state "
                          f"was saved and holds {len(self.files)} now: training goes on, on another sequence of "
                          "images than an uninterrupted run would have seen.", stacklevel=2)
        index_of = {self._relative(index): index for index in range(len(self.files))}
        self.close()
        self.position = int(state["position"])
        self.unreadable.clear()
        self.unreadable.update({index_of[name]: reason for name, reason in state["unreadable"].items()
                                if name in index_of})
        self._new_unreadable = []

    def _relative(self, index: int) -> str:
        return self.files[index].relative_to(self.folder).as_posix()
