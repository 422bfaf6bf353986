"""Time and memory of the `chunked` and `numba` selective scans against the sequential `reference`.

Shape: one MSTD layer of a 512x512 image (u, delta: 1 x 4096 x 4096; B, C: 1 x 4 x 16 x 4096),
with the released model's scale of values (A = -(1..16), softplus steps in 0.001..0.1). Each
backend runs in a fresh process (``numba`` where Numba is installed; its compilation, or loading
from Numba's cache, happens in the warm-up call) (so peak memory is its own), several times; the medians and the
ratios are printed.

    python bench/scan.py [--repeats 5] [--threads 2] [--length 4096]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median, run_isolated, timed_runs  # noqa: E402


def scan_inputs(length: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    channels, state, groups = 4096, 16, 4
    low, high = math.log(1e-3), math.log(1e-1)
    step = torch.exp(torch.rand(channels, generator=generator) * (high - low) + low)
    return dict(
        u=torch.randn(1, channels, length, generator=generator),
        delta=torch.randn(1, channels, length, generator=generator) * 0.3,
        A=-torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1),
        B=torch.randn(1, groups, state, length, generator=generator),
        C=torch.randn(1, groups, state, length, generator=generator),
        D=torch.ones(channels),
        delta_bias=step + torch.log(-torch.expm1(-step)),
        delta_softplus=True,
    )


def measure(backend: str, repeats: int, threads: int, length: int) -> dict:
    import torch

    from mambast.kernels.scan import BACKENDS

    torch.set_num_threads(threads)
    inputs = scan_inputs(length)
    with torch.inference_mode():
        BACKENDS[backend](**inputs)  # warm-up (Numba compiles or loads its cache here)
    return {"backend": backend, **timed_runs(lambda: BACKENDS[backend](**inputs), repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.repeats, args.threads, args.length)))
        return
    common = ("--repeats", str(args.repeats), "--threads", str(args.threads), "--length", str(args.length))
    from mambast.kernels.scan import numba_available

    names = ("reference", "chunked") + (("numba",) if numba_available() else ())
    results = {name: run_isolated(Path(__file__), "--worker", name, *common) for name in names}
    print(f"selective scan, u 1x4096x{args.length}, B/C 1x4x16x{args.length}, {args.threads} threads, "
          f"median of {args.repeats}")
    for name, result in results.items():
        print(f"  {name:<10} {median(result['seconds']):8.3f} s   peak +{result['peak_mib']:8.1f} MiB   "
              f"runs: {', '.join(f'{s:.3f}' for s in result['seconds'])}")
    ref = results["reference"]
    for name in names[1:]:
        ours = results[name]
        print(f"  {name} is {median(ref['seconds']) / median(ours['seconds']):.1f}x faster and uses "
              f"{ours['peak_mib'] / ref['peak_mib']:.3f}x the reference's peak memory")


if __name__ == "__main__":
    main()
