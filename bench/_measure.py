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

from mambast.utils.measure import peak_mib, reset_peak, resident_mib  # noqa: E402,F401  (the benchmarks import them from here)


def run_isolated(script: Path, *args: str) -> dict:
    """Run ``script`` with ``args`` in a fresh interpreter; it prints one JSON line last."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


class Worker:
    """``script`` with ``args`` in a fresh interpreter that answers commands: each line written to
    it gets one JSON line back. Several workers called in turn share the machine's slow and fast
    minutes, so that the ratio of their timings is not the noise of when each ran."""

    def __init__(self, script: Path, *args: str):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen([sys.executable, str(script), *args], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def call(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args} ended: exit status {self.process.wait()}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def serve(commands: dict[str, Callable[[], dict]]) -> None:
    """The worker's side of :class:`Worker`: run the named command for each line of standard input."""
    for line in sys.stdin:
        print(json.dumps(commands[line.strip()]()), flush=True)


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
