"""Memory kept for backward and forward+backward time of the chunked scan under autograd:
the recomputing backward (the default) against autograd recording the chunk loop.

Shape: one SS2D scan of the training run (256 px: L = 1024 tokens; four directions of 1024
channels: D = 4096; G = 4, N = 16) at ``--batch`` images; training uses 8, the default of 2 keeps
the recorded baseline (several GiB at 8) within a small machine. Values on the released model's
scale (bench/scan.py's inputs), every input requiring grad as in training. Each variant runs in a
fresh process so that its peak memory is its own; the medians and the ratios are printed.

"saved" is what autograd holds between forward and backward (saved_tensors_hooks, each storage
once: the inputs themselves included); "peak" is the resident memory above what the inputs took.

    python bench/scan_backward.py [--batch 2] [--length 1024] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median, peak_mib, reset_peak, resident_mib, run_isolated  # noqa: E402
from scan import scan_inputs  # noqa: E402

VARIANTS = ("recorded", "recomputing")


def training_inputs(batch: int, length: int) -> dict:
    """bench/scan.py's one-image inputs repeated over the batch, each a leaf requiring grad."""
    inputs = scan_inputs(length)
    for name in ("u", "delta", "B", "C"):
        inputs[name] = inputs[name].repeat(batch, *[1] * (inputs[name].dim() - 1))
    return {k: (v.requires_grad_(True) if hasattr(v, "requires_grad_") else v) for k, v in inputs.items()}


def measure(variant: str, batch: int, length: int, repeats: int, threads: int) -> dict:
    import torch

    from mambast.kernels.scan.chunked import selective_scan_chunked

    torch.set_num_threads(threads)
    inputs = training_inputs(batch, length)
    weights = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    baseline = resident_mib()
    reset_peak()
    forward, backward = [], []
    for _ in range(repeats):
        for value in inputs.values():
            if hasattr(value, "grad"):
                value.grad = None
        storages.clear()
        started = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            y = selective_scan_chunked(**inputs, recompute=variant == "recomputing")
        forward.append(time.perf_counter() - started)
        started = time.perf_counter()
        y.backward(weights)
        backward.append(time.perf_counter() - started)
        del y
    return {"variant": variant, "forward": forward, "backward": backward,
            "saved_mib": sum(storages.values()) / 2**20, "peak_mib": peak_mib() - baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = (args.batch, args.length, args.repeats, args.threads)
    if args.worker:
        print(json.dumps(measure(args.worker, *settings)))
        return
    flags = [f"--{name}={value}" for name, value in zip(("batch", "length", "repeats", "threads"), settings)]

    print(f"u, delta: {args.batch} x 4096 x {args.length}; B, C: {args.batch} x 4 x 16 x {args.length}; "
          f"{args.repeats} runs, {args.threads} threads; whole-sequence states: "
          f"{args.batch * 4096 * args.length * 16 * 4 / 2**20:.0f} MiB")
    results = {}
    for variant in VARIANTS:
        result = run_isolated(Path(__file__), "--worker", variant, *flags)
        result["total"] = [f + b for f, b in zip(result["forward"], result["backward"])]
        results[variant] = result
        print(f"{variant:12s} forward {median(result['forward']):7.2f} s  backward "
              f"{median(result['backward']):7.2f} s  saved {result['saved_mib']:8.0f} MiB  "
              f"peak {result['peak_mib']:8.0f} MiB")
    new, old = results["recomputing"], results["recorded"]
    print("recomputing / recorded:")
    for key in ("forward", "backward", "total"):
        print(f"  {key:9s} time  {median(new[key]) / median(old[key]):.3f}")
    print(f"  saved for backward {new['saved_mib'] / old['saved_mib']:.3f}")
    print(f"  peak memory        {new['peak_mib'] / old['peak_mib']:.3f}")


if __name__ == "__main__":
    main()
