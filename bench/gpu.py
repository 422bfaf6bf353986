"""GPU figures: the Triton scan's tile shapes, then `stylize` per image, in one run on one card.

Random 3 + 3 layer weights of the released architecture, the inputs of bench/stylize.py, batch 1
unless said. Every timing is the median of CUDA-event timed runs after warm-up; memory is
``torch.cuda.max_memory_allocated`` (weights included) over one call. Baselines measured in the
same run: the ``chunked`` scan (a loop of small launches) against the Triton kernel, float32
against float16/bfloat16 dense layers.

    python bench/gpu.py [--out results.json] [--repeats 30] [--figures stylize,graphs,frames,compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Tile shapes tried for the kernel, (BLOCK_L, BLOCK_D, num_warps); the fastest one correct to 1e-5
# is used for the rest of the run.
TILE_SHAPES = [(16, 16, 4), (16, 16, 2), (16, 16, 8), (32, 16, 8), (32, 16, 4), (32, 8, 4), (16, 32, 8),
               (16, 8, 2), (8, 16, 2), (64, 8, 4), (8, 32, 4)]


def gpu_median_ms(run, repeats: int, warmup: int = 3) -> tuple[float, list[float]]:
    """Median milliseconds of ``run()`` timed with CUDA events (each call synchronised)."""
    import torch

    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), times


def peak_allocated_mib(run) -> float:
    """Peak allocated CUDA memory during one ``run()``, weights and inputs included, in MiB."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def scan_problem(device, length=4096, channels=1024, state=16, seed=0, dtype=None):
    """A 512 px self block's scan: four directions over a 64 x 64 grid, token-major, the
    activations in ``dtype`` (bfloat16 by default, as with bfloat16 dense layers)."""
    import torch

    dtype = dtype or torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows, columns = (torch.randn(1, length, channels, generator=g).to(device, dtype) for _ in range(2))
    return dict(u=[rows, columns, rows, columns],
                delta=(torch.randn(1, 4, length, channels, generator=g) * 0.5 - 3).to(device, dtype),
                A=(-torch.exp(torch.randn(4 * channels, state, generator=g))).to(device),
                B=[torch.randn(1, length, state, generator=g).to(device, dtype) for _ in range(4)],
                C=[torch.randn(1, length, state, generator=g).to(device, dtype) for _ in range(4)],
                D=torch.randn(4 * channels, generator=g).to(device),
                delta_bias=torch.zeros(4 * channels).to(device), delta_softplus=True,
                reverse=(False, False, True, True), combine=(0, 1, 0, 1))


def sweep_tiles(device, results: dict) -> tuple:
    import torch
    import triton.testing

    from mambast.kernels.scan.chunked import selective_scan_chunked_directions
    from mambast.kernels.scan.triton_scan import selective_scan_triton_directions

    problem = scan_problem(device)
    with torch.inference_mode():
        expected = selective_scan_chunked_directions(**problem)
        chunked_ms, _ = gpu_median_ms(lambda: selective_scan_chunked_directions(**problem), 3, warmup=1)
    print(f"scan, 4 directions x 4096 tokens x 1024 channels x 16 states: chunked (launch per token) "
          f"{chunked_ms:.1f} ms")
    results["scan"] = {"chunked_ms": chunked_ms, "tiles": []}
    best = None
    for shape in TILE_SHAPES:
        block_l, block_d, warps = shape
        name = f"tiles L{block_l:>2} D{block_d:>2} w{warps}"
        tuning = dict(block_l=block_l, block_d=block_d, num_warps=warps)
        try:
            run = lambda: selective_scan_triton_directions(**problem, **tuning)  # noqa: E731
            got = run()
            error = max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected))
            ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
        except Exception as failure:  # a shape the compiler rejects (registers, shared memory)
            print(f"  {name}: failed: {type(failure).__name__}: {failure}"[:300])
            continue
        ok = error <= 1e-5
        print(f"  {name}: {ms * 1000:8.1f} us, rel. error {error:.1e}{'' if ok else '  WRONG'}")
        results["scan"]["tiles"].append({**tuning, "ms": ms, "rel_error": error})
        if ok and (best is None or ms < best[0]):
            best = (ms, shape, name)
    print(f"best: {best[2]}: {best[0] * 1000:.1f} us, {chunked_ms / best[0]:.0f}x the chunked scan")
    results["scan"]["best"] = {"config": list(best[1]), "ms": best[0]}
    return best[1]


def stylize_figures(device, repeats: int, results: dict) -> None:
    import torch

    import mambast
    from mambast.network.random_weights import random_official_tensors
    from stylize import bench_inputs

    tensors = random_official_tensors(seed=0)
    content, style = (t.to(device) for t in bench_inputs(512, 512))
    rows = []

    def measure(label, dtype, scan="triton", size=512, batch=1, runs=repeats):
        model = mambast.build(mambast.Checkpoint(tensors), device=device, dtype=dtype, scan=scan)
        c, s = (content, style) if size == 512 else (t.to(device) for t in bench_inputs(size, size))
        c = c.expand(batch, -1, -1, -1).contiguous()
        with torch.inference_mode():
            run = lambda: model.stylize(c, s, seed=0)  # noqa: E731
            ms, _ = gpu_median_ms(run, runs)
            peak = peak_allocated_mib(run)
            out = run().float()
        row = {"label": label, "dtype": str(dtype).replace("torch.", ""), "scan": scan, "size": size,
               "batch": batch, "ms": ms, "ms_per_image": ms / batch, "peak_allocated_mib": peak}
        rows.append(row)
        print(f"{label:<34} {ms / batch:9.2f} ms/image  peak {peak:7.0f} MiB")
        return out

    reference = measure("512 float32, chunked scan", torch.float32, scan="chunked", runs=3)
    kernel32 = measure("512 float32, triton scan", torch.float32)
    results["float32_triton_vs_chunked_max_abs"] = float((kernel32 - reference).abs().max())
    # TF32 matrix products (10-bit mantissas in the dense layers' products): how much of the float32
    # time is the dense layers, and what it costs in the picture; PyTorch's default is off.
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tf32 = measure("512 float32, TF32 products", torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    results["tf32_vs_float32"] = {"max_abs": float((tf32 - kernel32).abs().max()),
                                  "mean_abs": float((tf32 - kernel32).abs().mean())}
    print(f"  TF32 vs float32: max abs {results['tf32_vs_float32']['max_abs']:.4f}, "
          f"mean abs {results['tf32_vs_float32']['mean_abs']:.5f}")
    for dtype in (torch.bfloat16, torch.float16):
        out = measure(f"512 {str(dtype)[6:]}, triton scan", dtype)
        difference = (out - kernel32).abs()
        correlation = float(torch.corrcoef(torch.stack([out.flatten(), kernel32.flatten()]))[0, 1])
        results[f"{str(dtype)[6:]}_vs_float32"] = {"max_abs": float(difference.max()),
                                                    "mean_abs": float(difference.mean()),
                                                    "correlation": correlation}
        print(f"  vs float32: max abs {float(difference.max()):.3f}, mean abs {float(difference.mean()):.4f}, "
              f"correlation {correlation:.5f} (output std {float(kernel32.std()):.3f})")
    measure("512 bfloat16, batch 8", torch.bfloat16, batch=8, runs=10)
    measure("1024 bfloat16", torch.bfloat16, size=1024, runs=10)
    measure("2048 bfloat16", torch.bfloat16, size=2048, runs=5)
    measure("1024 float32", torch.float32, size=1024, runs=5)
    results["stylize"] = rows


def graph_figure(device, results: dict) -> None:
    """stylize replayed from CUDA graphs (mambast.kernels.cuda_graphs): the launch gaps' share, and the
    check that a replay gives the plain call's image for other seeds and pixels."""
    import torch

    import mambast
    from mambast.kernels.cuda_graphs import GraphedStylize
    from mambast.network.random_weights import random_official_tensors
    from stylize import bench_inputs

    tensors = random_official_tensors(seed=0)
    rows = []
    for dtype, size in ((torch.bfloat16, 512), (torch.float16, 512), (torch.float32, 512), (torch.bfloat16, 1024)):
        model = mambast.build(mambast.Checkpoint(tensors), device=device, dtype=dtype, scan="triton")
        content, style = (t.to(device) for t in bench_inputs(size, size))
        graphed = GraphedStylize(model)
        try:
            graphed(content, style, seed=0)
            ms, _ = gpu_median_ms(lambda: graphed(content, style, seed=1), 50)
            peak = peak_allocated_mib(lambda: graphed(content, style, seed=1))
            with torch.inference_mode():
                other = content.flip(-1).contiguous()
                difference = max(float((graphed(other, style, seed=s) - model.stylize(other, style, seed=s)).abs().max())
                                 for s in (5, 6))
        except Exception as failure:
            print(f"CUDA graph {dtype} {size}: failed: {type(failure).__name__}: {failure}"[:400])
            results["graph_error"] = str(failure)[:400]
            return
        label = f"{size} {str(dtype)[6:]}, CUDA graph"
        print(f"{label:<34} {ms:9.2f} ms/image  peak {peak:7.0f} MiB  replay vs plain max abs {difference:.2e}")
        rows.append({"label": label, "ms": ms, "peak_allocated_mib": peak, "replay_vs_plain_max_abs": difference})
        graphed = model = None  # free the graph pools before the next capture
        torch.cuda.empty_cache()
    results["graphs"] = rows


def frames_figure(device, results: dict, size: int = 512, count: int = 16, runs: int = 3,
                  dtype_name: str = "float32") -> None:
    """A batch of video frames through the MambaST Stylize node's path (mambast.run.pipeline, one
    frame at a time): plain stages against stages replayed from CUDA graphs as the nodes run them
    (recorded anew in every run, as in every node execution), frames per second, peak allocated
    memory, and the check that both give the same frames to the last bit."""
    import torch

    import mambast
    from mambast.kernels.cuda_graphs import StageGraphs
    from mambast.network.random_weights import random_official_tensors
    from mambast.run.pipeline import Controls, stylize_images
    from stylize import bench_inputs

    dtype = getattr(torch, dtype_name)
    model = mambast.build(mambast.Checkpoint(random_official_tensors(seed=0)), device=device, dtype=dtype)
    content, style = (t.to(device) for t in bench_inputs(size, size))
    frames = torch.cat([torch.roll(content, shifts=4 * i, dims=-1) for i in range(count)])  # a pan
    controls = Controls(seed=0, temporal_smoothing=0.3)

    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def batch(replayed: bool) -> torch.Tensor:
        with torch.inference_mode():
            if not replayed:
                return stylize_images(model, frames, style, controls)
            with StageGraphs().active():
                return stylize_images(model, frames, style, controls)

    row = {"size": size, "frames": count, "dtype": dtype_name, "scan": model.scan_backend}
    outputs = {}
    for replayed in (False, True):
        label = "replayed" if replayed else "plain"
        outputs[label] = batch(replayed)  # warm-up: kernels compiled, caches filled
        times = []
        for _ in range(runs):
            synchronise()
            started = time.perf_counter()
            batch(replayed)
            synchronise()
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        peak = peak_allocated_mib(lambda: batch(replayed)) if device.type == "cuda" else float("nan")
        row[label] = {"seconds": seconds, "frames_per_second": count / seconds, "peak_allocated_mib": peak}
        print(f"{count} frames {size} px {dtype_name}, {label:<8} {count / seconds:8.1f} frames/s  "
              f"peak {peak:7.0f} MiB")
    row["same_to_the_last_bit"] = bool(torch.equal(outputs["plain"], outputs["replayed"]))
    row["max_abs"] = float((outputs["plain"] - outputs["replayed"]).abs().max())
    row["ratio"] = row["plain"]["seconds"] / row["replayed"]["seconds"]
    print(f"  replayed: {row['ratio']:.2f}x the plain stages' speed; same to the last bit: "
          f"{row['same_to_the_last_bit']} (max abs {row['max_abs']:.1e})")
    results.setdefault("frames", []).append(row)


def compile_figure(device, results: dict, size: int = 512) -> None:
    """torch.compile of stylize (default and reduce-overhead modes) against the plain call, float32."""
    import torch

    import mambast
    from mambast.network.random_weights import random_official_tensors
    from stylize import bench_inputs

    model = mambast.build(mambast.Checkpoint(random_official_tensors(seed=0)), device=device)
    content, style = (t.to(device) for t in bench_inputs(size, size))
    with torch.inference_mode():
        plain = model.stylize(content, style, seed=0)
        plain_ms, _ = gpu_median_ms(lambda: model.stylize(content, style, seed=0), 30)
    rows = [{"mode": "plain", "ms": plain_ms}]
    print(f"torch.compile, {size} px float32: plain {plain_ms:.2f} ms")
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        compiled = torch.compile(model.stylize, mode=mode)
        try:
            started = time.perf_counter()
            with torch.inference_mode():
                out = compiled(content, style, seed=0)
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - started
                ms, _ = gpu_median_ms(lambda: compiled(content, style, seed=0), 30)
        except Exception as failure:
            print(f"  {mode}: failed: {type(failure).__name__}: {failure}"[:400])
            rows.append({"mode": mode, "error": str(failure)[:400]})
            continue
        difference = float((out - plain).abs().max())
        print(f"  {mode}: {ms:.2f} ms ({plain_ms / ms:.2f}x plain), first call {compile_s:.0f} s, "
              f"max abs vs plain {difference:.1e}")
        rows.append({"mode": mode, "ms": ms, "first_call_s": compile_s, "max_abs_vs_plain": difference})
    results["compile"] = rows


def profile_figure(device, results: dict, dtype_name: str = "bfloat16") -> None:
    """Where the 512 px time goes on the GPU: the kernels by total time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import mambast
    from mambast.network.random_weights import random_official_tensors
    from stylize import bench_inputs

    model = mambast.build(mambast.Checkpoint(random_official_tensors(seed=0)), device=device,
                          dtype=getattr(torch, dtype_name), scan="triton")
    content, style = (t.to(device) for t in bench_inputs(512, 512))
    print(f"profile, 512 px {dtype_name}:")
    with torch.inference_mode():
        for _ in range(3):
            model.stylize(content, style, seed=0)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                model.stylize(content, style, seed=0)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18)
    print(table)
    results[f"profile_{dtype_name}"] = table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-sweep", action="store_true", help="use the shipped tile shape")
    parser.add_argument("--figures", default="sweep,stylize,graphs,frames,compile,profile",
                        help="which figures, comma-separated (default: all, in this order)")
    args = parser.parse_args()

    import torch
    import triton

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA or ROCm GPU.")
    device = torch.device("cuda")
    results = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__, "triton": triton.__version__,
               "capability": list(torch.cuda.get_device_capability(device))}
    print(f"{results['card']}, torch {torch.__version__}, triton {triton.__version__}")
    started = time.perf_counter()
    import mambast.kernels.scan.triton_kernel as kernel

    figures = set(args.figures.split(","))
    if "sweep" in figures and not args.skip_sweep:
        kernel.BLOCK_L, kernel.BLOCK_D, kernel.NUM_WARPS = sweep_tiles(device, results)
    if "stylize" in figures:
        stylize_figures(device, args.repeats, results)
    if "graphs" in figures:
        graph_figure(device, results)
    if "frames" in figures:
        frames_figure(device, results)
        frames_figure(device, results, dtype_name="bfloat16")
    if "compile" in figures:
        compile_figure(device, results)
    if "profile" in figures:
        profile_figure(device, results)
        profile_figure(device, results, "float32")
    results["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"done in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
