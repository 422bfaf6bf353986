"""Peak working memory of a stylization against the estimate handed to ComfyUI.

ComfyUI frees memory (unloading other models) before a node runs, by the amount the node asks
for: :func:`mambast.resources.activation_bytes`. Too little and the run may not fit; too much
and other users' models are evicted for nothing. This measures, for each size in a fresh
process, the peak resident memory above what was resident before the run (model and input
images loaded; CPU, float32, random weights of the released architecture, the nodes' path
``stylize_images``) and prints the estimate's ratio to it; the test of the formula holds the
measured table (tests/test_resources.py).

    python bench/memory.py [--sizes 512 1024 2048] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_isolated, timed_runs  # noqa: E402


def measure(side: int, threads: int) -> dict:
    import torch

    from mambast.pipeline import Controls, stylize_images
    from mambast.resources import activation_bytes
    from stylize import bench_inputs, build_model

    torch.set_num_threads(threads)
    content, style = bench_inputs(side, side)
    model = build_model("chunked")
    result = timed_runs(lambda: stylize_images(model, content, style, Controls(seed=0)), repeats=1)
    return {"side": side, "peak_mib": result["peak_mib"], "seconds": result["seconds"][0],
            "estimate_mib": activation_bytes(model.config, side, side) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.threads)))
        return
    print(f"peak working memory of stylize_images, CPU, float32, {args.threads} threads, random 3+3 weights:")
    for side in args.sizes:
        row = run_isolated(Path(__file__), "--worker", str(side), "--threads", str(args.threads))
        print(f"  {side:>5} px  measured +{row['peak_mib']:7.0f} MiB   estimate {row['estimate_mib']:7.0f} MiB   "
              f"estimate / measured {row['estimate_mib'] / row['peak_mib']:.2f}   ({row['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
