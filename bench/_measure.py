"""Helpers for the benchmarks: run a measurement in a fresh process and read its peak memory."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def resident_mib() -> float:
    """Current resident memory of this process in MiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def reset_peak() -> None:
    """Start the peak of :func:`peak_mib` afresh from the current resident memory (Linux >= 4.0),
    so that loading the model does not count; elsewhere the peak stays the process's."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_mib() -> float:
    """Peak resident memory of this process so far (since :func:`reset_peak`), in MiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_isolated(script: Path, *args: str) -> dict:
    """Run ``script`` with ``args`` in a fresh interpreter; it prints one JSON line last."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed_runs(run: Callable[[], object], repeats: int) -> dict:
    """Call ``run`` ``repeats`` times under inference mode: the seconds of each call, the peak
    resident memory above what was resident before the first (``peak_mib``) and in all."""
    import torch

    baseline = resident_mib()
    reset_peak()
    seconds = []
    with torch.inference_mode():
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "peak_mib": peak_mib() - baseline, "peak_total_mib": peak_mib()}
