"""bfloat16 dense layers against float32 on the CPU: time, and how much the picture changes.

    python bench/precision.py [--size 512] [--threads 2]

Stylizes one image with the released architecture (random weights, the scan in float32 as
always) with the dense layers in float32 and in bfloat16, each after a warm-up, and prints both
times, their ratio, the output's max and mean absolute difference (the output's standard
deviation beside them for scale), whether this CPU has native bfloat16, and the speed-up that
``mambast.run.precision.bfloat16_speedup`` measures, which decides what "auto" means here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ROOT  # noqa: E402,F401  (puts the package on the path)
from stylize import bench_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import mambast
    from mambast.network.random_weights import random_official_tensors
    from mambast.run.precision import automatic_dtype, bfloat16_speedup, native_bfloat16

    torch.set_num_threads(args.threads)
    content, style = bench_inputs(args.size, args.size)
    tensors = random_official_tensors(seed=0)
    outputs, seconds = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model = mambast.build(mambast.Checkpoint(tensors), device="cpu", dtype=dtype)
        with torch.inference_mode():
            model.stylize(content, style, seed=0)
            started = time.perf_counter()
            outputs[dtype] = model.stylize(content, style, seed=0)
            seconds[dtype] = time.perf_counter() - started
    difference = (outputs[torch.bfloat16] - outputs[torch.float32]).abs()
    print(f"{args.size}x{args.size}, CPU, {args.threads} threads, random weights of the released architecture, "
          f"{mambast.build(mambast.Checkpoint(tensors), device='cpu').scan_backend} scan:")
    print(f"  float32  {seconds[torch.float32]:7.2f} s")
    print(f"  bfloat16 {seconds[torch.bfloat16]:7.2f} s   ({seconds[torch.float32] / seconds[torch.bfloat16]:.2f}x "
          "float32's speed)")
    print(f"  bfloat16 against float32: max abs {difference.max():.4f}, mean abs {difference.mean():.4f} "
          f"(float32 output std {outputs[torch.float32].std():.3f})")
    print(f"  native bfloat16 on this CPU: {native_bfloat16()}; the probe's bfloat16 speed-up: "
          f"{bfloat16_speedup():.2f}x; auto here means {automatic_dtype('cpu')}")


if __name__ == "__main__":
    main()
