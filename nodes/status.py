"""What the loader node's status line shows: device, scan backend, dense dtype, and whether weights load."""

from __future__ import annotations

import functools
import os

from .. import mambast
from . import comfy as host
from . import stages


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
            raise ValueError(mambast.missing_weights_message(report["folders"]))
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        report["ok"], report["message"], report["short"] = False, str(error), short_reason(error)
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
    """What is wrong in a few words, for a status line on a node; ``message`` has the full text.

    A checkpoint error starts with the file's path, which the widget already shows by name.
    """
    if isinstance(error, host.UnknownCheckpoint):
        return error.short()
    text = str(error)
    head, separator, rest = text.partition(": ")
    if separator and os.sep in head:
        text = rest
    return text
