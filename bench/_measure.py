"""Helpers for the benchmarks: run a measurement in a fresh process and read its peak memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mambast.measure import peak_mib, reset_peak, resident_mib  # noqa: E402,F401  (the benchmarks import them from here)


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
