"""What the loader node's status line shows: device, scan backend, dense dtype, and whether weights load."""

from __future__ import annotations

import functools
import os

from .. import mambast
from . import comfy as host
from . import stages
from .download import OFFICIAL


# What a CPU run without Numba misses (docs/performance.md: about half the time at 512 px with it).
NUMBA_HINT = "pip install numba in ComfyUI's Python: about twice as fast on this CPU"


@functools.lru_cache(maxsize=8)
def _check_weights(path: str, modified: float) -> str:
    """A one-line description of the architecture; raises CheckpointError when unusable."""
    config = mambast.validate(mambast.read_checkpoint(path))
    return (f"{config.encoder_layers}+{config.decoder_layers} layers, d_model {config.d_model}, "
            f"d_state {config.d_state}")


def _modified(path: str) -> float:
    if os.path.isdir(path):
        return max((os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)), default=0.0)
    return os.path.getmtime(path)


def status_report(checkpoint: str | None = None, scan: str = "auto", dtype: str = "auto") -> dict:
    """JSON-ready status for the loader node.

    ``ok`` is False with a ``message`` saying what to do when the weights, the scan choice or
    the dtype choice cannot be used; ``summary`` is the line the frontend shows. ``dtype`` is
    the dense layers' dtype the loader will use (what ``auto`` resolves to on this machine).
    """
    device = host.load_device()
    report: dict = {"device": str(device), "mamba_ssm": mambast.mamba_ssm_available(),
                    "folders": host.model_folders(), "checkpoints": host.list_checkpoints(), "ok": True}
    try:
        report["scan"] = mambast.scan_backend_for(scan, device)
        dense = stages.dense_dtype(stages.checked_choice(dtype, stages.DTYPE_CHOICES, "dtype"), device)
        report["dtype"] = mambast.dtype_name(dense)
        if checkpoint:
            path = host.resolve_checkpoint(checkpoint)
            report["weights"] = _check_weights(path, _modified(path))
        elif not report["checkpoints"]:
            raise host.UnknownCheckpoint("", [])
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        report["ok"], report["message"], report["short"] = False, str(error), short_reason(error)
        # The Loader offers to fetch the release where it is not installed (nothing else usable may be).
        about_weights = isinstance(error, (host.UnknownCheckpoint, mambast.CheckpointError)) or not report["checkpoints"]
        report["download"] = about_weights and f"{OFFICIAL}/" not in report["checkpoints"]
    scan_text = report.get("scan", scan)
    dtype_text = report.get("dtype", dtype) + (" (auto)" if dtype == "auto" and "dtype" in report else "")
    head = f"{device} | {scan_text} scan | {dtype_text}"
    if report["ok"]:
        weights = f" | {report['weights']}" if "weights" in report else ""
        report["summary"] = f"{head}{weights}"
        if device.type == "cpu" and not mambast.numba_available():
            report["hint"] = NUMBA_HINT
            report["summary"] += f" | {NUMBA_HINT}"
    else:
        report["summary"] = f"{head} | not usable: {report['short']}"
    return report


def short_reason(error: Exception) -> str:
    """What is wrong and what to do first, in an artist's words, for the status on the node;
    ``message`` has the whole text (a damaged file's byte counts, the tensor, the manual steps)."""
    if isinstance(error, host.UnknownCheckpoint):
        return error.short()
    text = str(error)
    if isinstance(error, mambast.CheckpointError):
        if "different checkpoints" in text or "several " in text:
            return "this folder mixes the files of two checkpoints: keep one set of three files in it"
        if "NaN" in text or "infinite" in text:
            return "damaged (its weights hold invalid numbers): delete it and download it again"
        if "no such file" in text:
            return "the weights are gone from the models folder: press r to refresh the list"
        return "damaged or not a Mamba-ST file: delete it and download it again"
    head, separator, rest = text.partition(": ")
    if separator and os.sep in head:
        text = rest
    return text
