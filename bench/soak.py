"""Endurance: memory over many stylizations in one process, and how fast Cancel stops a run.

1. Library path: ``--runs`` stylizations at ``--size`` px (random weights of the released
   architecture, the nodes' ``stylize_images`` path) in this process; the resident memory after
   each run is recorded; after the first ``--settle`` runs its largest deviation from its median
   and its trend are printed (CPU target: within 5%). On CUDA the allocated memory after each run is compared with the first's.
2. Through a real ComfyUI (when ``COMFYUI_DIR`` is set; ``COMFYUI_PYTHON`` its Python): the
   same number of all-in-one prompts queued one after another; the server's resident memory is
   sampled after each.
3. Cancel latency on the CPU, at each of ``--cancel-sizes``: a stylization runs in a thread,
   Cancel is pressed (the progress hook raises, as ComfyUI's interrupt does) after a moment, and
   the time from the press to the run having stopped is printed (target: at most 1 s); then the
   longest time between two Cancel checks over a whole run, the worst case wherever it is pressed.

    python bench/soak.py [--runs 200] [--size 256] [--cancel-sizes 512 2048]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import resident_mib  # noqa: E402


def drift(series: list[float], settle: int) -> str:
    """How resident memory behaves after the first ``settle`` runs: its median, the largest
    deviation from it (the allocator keeps or returns freed pages from run to run), and the trend
    from the first to the last twenty runs (a leak grows; a steady process does not)."""
    steady = series[settle:] or series[-1:]
    middle = statistics.median(steady)
    deviation = max(abs(value - middle) for value in steady) / middle
    head, tail = statistics.mean(steady[:20]), statistics.mean(steady[-20:])
    return (f"after run {settle}: median {middle:.0f} MiB, within {100 * deviation:.1f}% of it (range "
            f"{min(steady):.0f}-{max(steady):.0f}); mean of the first 20 runs after it {head:.0f} MiB, of the last "
            f"20 {tail:.0f} MiB ({100 * (tail - head) / head:+.1f}%); first run {series[0]:.0f}, last {series[-1]:.0f} MiB")


def release_free_heap() -> bool:
    """Return the C allocator's free pages to the system (glibc's malloc_trim), so that what stays
    resident is memory in use: a leak shows there, the allocator's caching does not."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def soak_library(runs: int, size: int, settle: int, trim: bool = False) -> None:
    import torch

    from mambast.run.pipeline import Controls, stylize_images
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
            if trim:
                release_free_heap()
            resident.append(resident_mib())
            if device.type == "cuda":
                torch.cuda.synchronize()
                allocated.append(torch.cuda.memory_allocated() / 2**20)
    what = "resident memory once the allocator returned its free pages (memory in use)" if trim else "resident memory"
    print(f"library: {runs} stylizations at {size} px in {time.perf_counter() - started:.0f} s; {what} "
          + drift(resident, settle))
    if allocated:
        print(f"  CUDA allocated after each run: first {allocated[0]:.1f} MiB, min {min(allocated):.1f}, "
              f"max {max(allocated):.1f}, last {allocated[-1]:.1f}")


def soak_server(runs: int, size: int, settle: int, control: bool = False) -> list[float]:
    """``runs`` all-in-one prompts through a real ComfyUI; with ``control`` a graph of core nodes
    only (the same pictures scaled and previewed), to tell the server's own growth from ours."""
    from mambast.network.random_weights import random_official_tensors
    from mambast.utils.imaging import write_image
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
        if control:
            graph["4"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "bilinear",
                                                                   "scale_by": 1.0}}
            del graph["1"], graph["3"]
        resident = []
        with running_comfyui(base, os.environ["COMFYUI_DIR"], os.environ.get("COMFYUI_PYTHON")) as server:
            started = time.perf_counter()
            for run in range(runs):
                if control:  # a new value each time, so that ComfyUI's cache does not skip the node
                    graph["4"]["inputs"]["scale_by"] = 1.0 + (run + 1) * 1e-4
                else:
                    graph["4"]["inputs"]["seed"] = run
                server.run(graph)
                resident.append(server.resident_mib())
            seconds = time.perf_counter() - started
        kind = "core-node prompts (control)" if control else "prompts"
        print(f"server: {runs} {kind} at {size} px in {seconds:.0f} s; the server's resident memory "
              + drift(resident, settle))
        return resident


def cancel_latency(size: int, delay: float) -> float:
    """Seconds from pressing Cancel to the run having stopped, at ``size`` px on the CPU."""
    import torch

    from mambast.run.pipeline import Controls, stylize_images
    from mambast.utils.progress import progress_callback
    from stylize import bench_inputs, build_model

    class Cancelled(Exception):
        pass

    model = build_model("chunked")
    content, style = bench_inputs(size, size)
    pressed = threading.Event()
    stopped: dict[str, float] = {}

    def check() -> None:  # what ComfyUI's interrupt check does at every tick and Cancel check
        if pressed.is_set():
            raise Cancelled()

    def work() -> None:
        try:
            with progress_callback(check, None, check), torch.inference_mode():
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


def longest_gap(size: int) -> tuple[float, float]:
    """(the longest time between two Cancel checks in a whole stylization at ``size`` px, the
    run's seconds): the worst case of the Cancel latency, wherever the button is pressed."""
    import torch

    from mambast.run.pipeline import Controls, stylize_images
    from mambast.utils.progress import progress_callback
    from stylize import bench_inputs, build_model

    model = build_model("chunked")
    content, style = bench_inputs(size, size)
    stamps = [time.perf_counter()]
    with progress_callback(lambda: stamps.append(time.perf_counter()), None,
                           lambda: stamps.append(time.perf_counter())), torch.inference_mode():
        stylize_images(model, content, style, Controls(seed=0))
    stamps.append(time.perf_counter())
    return max(b - a for a, b in zip(stamps, stamps[1:])), stamps[-1] - stamps[0]


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
    parser.add_argument("--control", action="store_true",
                        help="server: also run the same number of core-node prompts, to compare the server's growth")
    parser.add_argument("--trim", action="store_true",
                        help="library: return the C allocator's free pages (malloc_trim) after each run before "
                             "sampling, so that what is measured is the memory in use")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if "library" not in args.skip:
        soak_library(args.runs, args.size, args.settle, args.trim)
    if "server" not in args.skip:
        if os.environ.get("COMFYUI_DIR"):
            soak_server(args.runs, args.size, args.settle)
            if args.control:
                soak_server(args.runs, args.size, args.settle, control=True)
        else:
            print("server: skipped (set COMFYUI_DIR to a ComfyUI checkout)")
    if "cancel" not in args.skip:
        for size in args.cancel_sizes:
            latencies = [cancel_latency(size, delay) for delay in args.cancel_after]
            print(f"cancel at {size} px: " + ", ".join(f"{1000 * s:.0f} ms (pressed at {d} s)"
                                                      for s, d in zip(latencies, args.cancel_after)))
            gap, seconds = longest_gap(size)
            print(f"  longest time between two Cancel checks in a whole {size} px run ({seconds:.0f} s): "
                  f"{1000 * gap:.0f} ms")


if __name__ == "__main__":
    main()
