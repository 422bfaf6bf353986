"""Peak working memory of a stylization against the estimate handed to ComfyUI.

ComfyUI frees memory (unloading other models) before a node runs, by the amount the node asks
for: :func:`mambast.run.resources.activation_bytes`. Too little and the run may not fit; too much
and other users' models are evicted for nothing. This measures, for each size in a fresh
process, the peak resident memory above what was resident before the run (model and input
images loaded; CPU, float32, random weights of the released architecture, the nodes' path
``stylize_images``) and prints the estimate's ratio to it; the test of the formula holds the
measured table (tests/test_resources.py).

    python bench/memory.py [--sizes 512 1024 2048] [--threads 2]
    python bench/memory.py --breakdown [--sizes 512]    # where the process's peak goes

``--breakdown`` follows one fresh process from the interpreter to the end of a second stylization
and prints the resident memory each step adds (PyTorch, this package, Numba's compiled scan
kernel and fused passes, the weights read from a .safetensors file by ``mambast.load``, the
inputs), each stage's peak above what was resident when it started and what it leaves behind
(its result, and for the CNN decoder NNPACK's workspace, which is never freed), and the
process's peak.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))


def load_fused_passes() -> None:
    """Run each of mambast.kernels.fused's compiled passes once on tiny inputs, in the layouts a
    stylization gives them: their machine code is then loaded (from Numba's cache) or compiled."""
    import torch
    from torch import nn

    from mambast.kernels import fused

    with torch.inference_mode():
        grid = torch.rand(1, 3, 3, 8)
        fused.depthwise_silu(grid, nn.Conv2d(8, 8, 3, padding=1, groups=8))
        rows, norm = torch.rand(4, 8), nn.LayerNorm(8)
        fused.norm_times_silu_(rows, rows.clone(), norm)
        fused.skip_norm(rows, rows, torch.ones(8), norm, True)
        image = torch.rand(1, 2, 3, 4)
        fused.gather_band(image, torch.tensor([1, 0, 1]), 2)


def measure(side: int, threads: int) -> dict:
    import torch

    from _measure import timed_runs

    from mambast.run.pipeline import Controls, stylize_images
    from mambast.run.resources import activation_bytes
    from stylize import bench_inputs, build_model

    torch.set_num_threads(threads)
    content, style = bench_inputs(side, side)
    model = build_model("chunked")
    result = timed_runs(lambda: stylize_images(model, content, style, Controls(seed=0)), repeats=1)
    return {"side": side, "peak_mib": result["peak_mib"], "seconds": result["seconds"][0],
            "estimate_mib": activation_bytes(model.config, side, side) / 2**20}


def breakdown(side: int, threads: int, checkpoint: str) -> dict:
    """Resident memory step by step in this (fresh) process; see the module's docstring."""
    import gc
    import importlib.util

    # mambast.utils.measure read without importing the package (which imports PyTorch)
    spec = importlib.util.spec_from_file_location("measure", ROOT / "mambast" / "measure.py")
    measure_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_module)
    peak_mib, reset_peak, resident_mib = measure_module.peak_mib, measure_module.reset_peak, measure_module.resident_mib
    steps = [("Python interpreter", resident_mib())]

    def step(name: str) -> None:
        gc.collect()
        steps.append((name, resident_mib()))

    import torch

    torch.set_num_threads(threads)
    step("PyTorch")
    import mambast
    from mambast.kernels.scan import numba_available

    step("mambast")
    if numba_available():
        from mambast.kernels.scan.numba_scan import selective_scan_numba

        tokens = torch.rand(1, 64, 16)
        selective_scan_numba(tokens, tokens, -torch.rand(64, 4), torch.rand(1, 1, 4, 16), torch.rand(1, 1, 4, 16))
        step("Numba, LLVM and the compiled scan kernel")
        load_fused_passes()
        step("the compiled fused passes (mambast.kernels.fused)")
    from stylize import bench_inputs

    model = mambast.load(checkpoint, device="cpu")
    parameters = sum(p.numel() for p in model.parameters())
    step(f"weights read ({parameters / 1e6:.1f} M parameters, {parameters * 4 / 2**20:.0f} MiB in float32)")
    content, style = bench_inputs(side, side)
    step("content and style images")
    stages = []

    def stage(name: str, run, *args, **kwargs):
        before = resident_mib()
        reset_peak()
        result = run(*args, **kwargs)
        gc.collect()
        stages.append({"stage": name, "peak_above_mib": peak_mib() - before, "kept_mib": resident_mib() - before,
                       "peak_total_mib": peak_mib()})
        return result

    with torch.inference_mode():
        encoded = stage("encode content (3 VSS blocks)", model.encode_content, content)
        style_encoded = stage("encode style (3 VSS blocks)", model.encode_style, style, encoded.padded_size)
        features = stage("fuse (3 MSTD blocks)", model.fuse, encoded, style_encoded, seed=0)
        image = stage("CNN decoder (first call)", model.decode, features, encoded.image_size)
        del encoded, style_encoded, features, image
        step("after the first stylization, its results dropped")
        stage("whole stylize, second call", model.stylize, content, style, seed=0)
    step("after the second stylization")
    return {"side": side, "scan": model.scan_backend,
            "steps": [{"step": name, "resident_mib": mib} for name, mib in steps], "stages": stages}


def print_breakdown(row: dict) -> None:
    print(f"where the memory of one process goes, {row['side']} px, {row['scan']} scan:")
    previous = 0.0
    for entry in row["steps"]:
        print(f"  {entry['step']:<58} resident {entry['resident_mib']:7.0f} MiB  "
              f"({entry['resident_mib'] - previous:+6.0f})")
        previous = entry["resident_mib"]
    for entry in row["stages"]:
        print(f"  {entry['stage']:<58} peak +{entry['peak_above_mib']:5.0f} MiB above its start, "
              f"keeps {entry['kept_mib']:+5.0f} MiB, process peak {entry['peak_total_mib']:5.0f} MiB")


def run_isolated(*args: str) -> dict:
    from _measure import run_isolated as isolated

    return isolated(Path(__file__), *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true", help="where one process's peak goes, step by step")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        row = breakdown(args.worker, args.threads, args.checkpoint) if args.breakdown else measure(args.worker,
                                                                                                   args.threads)
        print(json.dumps(row))
        return
    if args.breakdown:
        import tempfile

        from safetensors.torch import save_file

        from mambast.network.random_weights import random_official_tensors

        with tempfile.TemporaryDirectory() as folder:
            # the weights come from a file, as in ComfyUI: random ones of the released shapes
            checkpoint = str(Path(folder) / "mambast.safetensors")
            save_file(random_official_tensors(seed=0), checkpoint)
            for side in args.sizes:
                print_breakdown(run_isolated("--breakdown", "--worker", str(side), "--threads", str(args.threads),
                                             "--checkpoint", checkpoint))
        return
    print(f"peak working memory of stylize_images, CPU, float32, {args.threads} threads, random 3+3 weights:")
    for side in args.sizes:
        row = run_isolated("--worker", str(side), "--threads", str(args.threads))
        print(f"  {side:>5} px  measured +{row['peak_mib']:7.0f} MiB   estimate {row['estimate_mib']:7.0f} MiB   "
              f"estimate / measured {row['estimate_mib'] / row['peak_mib']:.2f}   ({row['seconds']:.1f} s)")


if __name__ == "__main__":
    main()
