"""The process's memory, read the same way by the benchmarks and by ``python -m mambast evaluate``."""

from __future__ import annotations

import os
import sys


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
    """Peak resident memory of this process so far (since :func:`reset_peak`), in MiB; 0 where
    the system does not say (Windows)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource  # not on Windows
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
