"""The training state file: everything a stopped run needs to go on as if it had never stopped.

``training_state.pt`` holds plain types only (tensors, numbers, strings, lists, dicts): the
model's and the extra official tensors, Adam's moments and step counts, the gradient scaler,
the iteration, the options that define the run, and per rank its data streams' positions and
its random number generators' states. So ``torch.load(weights_only=True)`` reads it back: a
state file cannot run code when it is loaded. It is written whole or not at all (a temporary
file moved into place), so a run killed while saving leaves the previous state intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..utils.files import write_atomically

STATE_FILE = "training_state.pt"
STATE_FORMAT = 1


class TrainingStateError(ValueError):
    """A training state that cannot be resumed: absent, unreadable, or from another kind of run."""


def state_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / STATE_FILE


def save_state(state: dict, folder: str | os.PathLike) -> Path:
    """Write ``state`` (plain types only) to ``folder``/training_state.pt, replacing the previous one whole."""
    path = state_path(folder)
    write_atomically(path, lambda temporary: torch.save({"format": STATE_FORMAT, **state}, temporary))
    return path


def load_state(folder: str | os.PathLike) -> dict:
    """The state saved in ``folder``, read with ``weights_only=True``, on the CPU."""
    path = state_path(folder)
    if not path.is_file():
        raise TrainingStateError(f"{path}: no training state to resume. It is written with each checkpoint "
                                 "(--save-every) and when a run is stopped with Ctrl-C; run without --resume to "
                                 "start a new run.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated zip, a foreign pickle: weights_only refuses to run it
        raise TrainingStateError(f"{path} cannot be read ({type(error).__name__}: {str(error)[:200]}). Delete "
                                 "it to start again from the last checkpoint's weights with --init.") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingStateError(f"{path} is not a training state of this version (format "
                                 f"{state.get('format') if isinstance(state, dict) else type(state).__name__}, "
                                 f"expected {STATE_FORMAT}).")
    return state


def random_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The states of PyTorch's generators this process draws from: the CPU's, and the CUDA device's."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_random_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Set the generators back to :func:`random_states` (a CUDA state only onto a CUDA device)."""
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
