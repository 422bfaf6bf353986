"""Endurance: memory over many stylizations in one process, and how fast Cancel stops a run.

1. Library path: ``--runs`` stylizations at ``--size`` px (random weights of the released
   architecture, the nodes' ``stylize_images`` path) in this process; the resident memory after
   each run is recorded and its drift after the first ``--settle`` runs printed (CPU target:
   within 5%). On CUDA the allocated memory after each run is compared with the first's.
2. Through a real ComfyUI (when ``COMFYUI_DIR`` is set; ``COMFYUI_PYTHON`` its Python): the
   same number of all-in-one prompts queued one after another; the server's resident memory is
   sampled after each.
3. Cancel latency on the CPU, at each of ``--cancel-sizes``: a stylization runs in a thread,
   Cancel is pressed (the progress hook raises, as ComfyUI's interrupt does) after a moment, and
   the time from the press to the run having stopped is printed (target: at most 1 s).

    python bench/soak.py [--runs 200] [--size 256] [--cancel-sizes 512 2048]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import resident_mib  # noqa: E402


def drift(series: list[float], settle: int) -> tuple[float, float, float]:
    """(reference after ``settle`` runs, highest later, relative drift of the highest)."""
    reference = series[settle - 1]
    highest = max(series[settle:]) if len(series) > settle else reference
    return reference, highest, (highest - reference) / reference


def soak_library(runs: int, size: int, settle: int) -> None:
    import torch

    from mambast.pipeline import Controls, stylize_images
    from stylize import bench_inputs, build_model

    model = build_model("chunked")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = model.to(device)
    resident, allocated = [], []
    started = time.perf_counter()
    with torch.inference_mode():
        for run in range(runs):
            content, style = bench_inputs(size, size)
            stylize_images(model, content, style, Controls(seed=run))
            resident.append(resident_mib())
            if device.type == "cuda":
                torch.cuda.synchronize()
                allocated.append(torch.cuda.memory_allocated() / 2**20)
    reference, highest, change = drift(resident, settle)
    print(f"library: {runs} stylizations at {size} px in {time.perf_counter() - started:.0f} s; resident after "
          f"run {settle}: {reference:.0f} MiB, highest after: {highest:.0f} MiB, drift {100 * change:+.1f}%; "
          f"first {resident[0]:.0f}, last {resident[-1]:.0f} MiB")
    if allocated:
        print(f"  CUDA allocated after each run: first {allocated[0]:.1f} MiB, min {min(allocated):.1f}, "
              f"max {max(allocated):.1f}, last {allocated[-1]:.1f}")


def soak_server(runs: int, size: int, settle: int) -> None:
    from mambast.imaging import write_image
    from mambast.random_weights import random_official_tensors
    from stylize import bench_inputs
    from tools.comfyui_server import prepare, running_comfyui

    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        prepare(base, {"release.safetensors": random_official_tensors(seed=0)})
        content, style = bench_inputs(size, size)
        write_image(content, base / "input" / "content.png")
        write_image(style, base / "input" / "style.png")
        graph = {
            "1": {"class_type": "MambaSTLoader", "inputs": {"checkpoint": "release.safetensors", "dtype": "auto",
                                                            "scan": "auto"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "content.png"}},
            "3": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
            "4": {"class_type": "MambaSTStylize", "inputs": {
                "model": ["1", 0], "content": ["2", 0], "style": ["3", 0], "seed": 0, "shuffle": True,
                "processing_size": 0, "strength": 1.0, "style_scale": 1.0, "colour": "style",
                "temporal_smoothing": 0.0}},
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        }
        resident = []
        with running_comfyui(base, os.environ["COMFYUI_DIR"], os.environ.get("COMFYUI_PYTHON")) as server:
            started = time.perf_counter()
            for run in range(runs):
                graph["4"]["inputs"]["seed"] = run  # a new seed: ComfyUI's cache does not skip the node
                server.run(graph)
                resident.append(server.resident_mib())
            seconds = time.perf_counter() - started
        reference, highest, change = drift(resident, settle)
        print(f"server: {runs} prompts at {size} px in {seconds:.0f} s; resident after run {settle}: "
              f"{reference:.0f} MiB, highest after: {highest:.0f} MiB, drift {100 * change:+.1f}%; "
              f"first {resident[0]:.0f}, last {resident[-1]:.0f} MiB")


def cancel_latency(size: int, delay: float) -> float:
    """Seconds from pressing Cancel to the run having stopped, at ``size`` px on the CPU."""
    import torch

    from mambast.pipeline import Controls, stylize_images
    from mambast.progress import progress_callback
    from stylize import bench_inputs, build_model

    class Cancelled(Exception):
        pass

    model = build_model("chunked")
    content, style = bench_inputs(size, size)
    pressed = threading.Event()
    stopped: dict[str, float] = {}

    def check() -> None:  # what ComfyUI's interrupt check does at every tick
        if pressed.is_set():
            raise Cancelled()

    def work() -> None:
        try:
            with progress_callback(check), torch.inference_mode():
                stylize_images(model, content, style, Controls(seed=0))
        except Cancelled:
            pass
        stopped["at"] = time.perf_counter()

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(delay)
    pressed_at = time.perf_counter()
    pressed.set()
    thread.join()
    return stopped["at"] - pressed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--settle", type=int, default=10, help="runs before the reference memory is taken")
    parser.add_argument("--cancel-sizes", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--cancel-after", type=float, nargs="*", default=[0.5, 2.0, 5.0],
                        help="seconds into the run at which Cancel is pressed (one trial each)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["library", "server", "cancel"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if "library" not in args.skip:
        soak_library(args.runs, args.size, args.settle)
    if "server" not in args.skip:
        if os.environ.get("COMFYUI_DIR"):
            soak_server(args.runs, args.size, args.settle)
        else:
            print("server: skipped (set COMFYUI_DIR to a ComfyUI checkout)")
    if "cancel" not in args.skip:
        for size in args.cancel_sizes:
            latencies = [cancel_latency(size, delay) for delay in args.cancel_after]
            print(f"cancel at {size} px: " + ", ".join(f"{1000 * s:.0f} ms (pressed at {d} s)"
                                                      for s, d in zip(latencies, args.cancel_after)))


if __name__ == "__main__":
    main()
