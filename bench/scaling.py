"""Seconds and peak memory of `MambaST.stylize` across image sizes: is it linear in the pixels?

Random 3 + 3 layer weights (the released architecture), float32, batch 1, square and 16:9
images whose longer side is 256, 512, 1024 and 2048 pixels; each size in a fresh process (its
peak memory is its own), the median of several runs. Prints a table with seconds per megapixel
and writes a plot (needs matplotlib, only for the plot).

    python bench/scaling.py [--sides 256 512 1024 2048] [--repeats 3] [--threads 2] [--plot bench/scaling.png]
    python bench/scaling.py --sides 4096 --aspects 1 --tile 1024 --repeats 1 --plot ''   # large, tiled
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median, run_isolated, timed_runs  # noqa: E402

ASPECTS = {"1": (1, 1), "16:9": (9, 16)}


def image_size(side: int, aspect: str) -> tuple[int, int]:
    """(H, W) with the longer side ``side`` and the given aspect (height:width = a:b, rounded to 8)."""
    a, b = ASPECTS[aspect]
    return max(8, round(side * a / b / 8) * 8), side


def measure(height: int, width: int, repeats: int, threads: int, tile: int) -> dict:
    import torch

    from stylize import bench_inputs, build_model

    torch.set_num_threads(threads)
    model = build_model("chunked")
    content, style = bench_inputs(height, width)
    if tile:
        from mambast.controls.tiling import stylize_tiled

    def run():
        if tile:
            stylize_tiled(model, content, style, tile=tile, seed=0)
        else:
            model.stylize(content, style, seed=0)

    timing = timed_runs(run, repeats)
    return {"size": [height, width], "seconds": timing["seconds"], "peak_mib": timing["peak_mib"], "tile": tile}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for aspect in sorted({r["aspect"] for r in rows}):
        series = [r for r in rows if r["aspect"] == aspect]
        pixels = [r["megapixels"] for r in series]
        label = "square" if aspect == "1" else aspect
        time_axis.plot(pixels, [r["median"] for r in series], "o-", label=label)
        memory_axis.plot(pixels, [r["peak_mib"] for r in series], "o-", label=label)
    for axis, name in ((time_axis, "seconds"), (memory_axis, "peak memory above the model (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("megapixels")
        axis.set_ylabel(name)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    largest = max(rows, key=lambda r: r["megapixels"])
    reference = [p * largest["median"] / largest["megapixels"] for p in (r["megapixels"] for r in rows)]
    time_axis.plot(sorted(r["megapixels"] for r in rows), sorted(reference), ":", color="grey", label="linear")
    time_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--aspects", nargs="+", default=["1", "16:9"], choices=list(ASPECTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-repeats", type=int, default=1, help="repeats for images over 2 megapixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=0, help="stylize in tiles of this many pixels (0 = off)")
    parser.add_argument("--plot", default=str(Path(__file__).with_name("scaling.png")),
                        help="where to write the plot ('' for none)")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(*args.worker, args.repeats, args.threads, args.tile)))
        return
    rows = []
    for aspect in args.aspects:
        for side in args.sides:
            height, width = image_size(side, aspect)
            repeats = args.large_repeats if height * width > 2 * 2**20 else args.repeats
            result = run_isolated(Path(__file__), "--worker", str(height), str(width), "--repeats", str(repeats),
                                  "--threads", str(args.threads), "--tile", str(args.tile))
            megapixels = height * width / 1e6
            rows.append(dict(aspect=aspect, size=(height, width), megapixels=megapixels,
                             median=median(result["seconds"]), runs=result["seconds"], peak_mib=result["peak_mib"]))
            row = rows[-1]
            print(f"  {width:>5}x{height:<5} {megapixels:6.2f} MPix  {row['median']:8.2f} s  "
                  f"{row['median'] / megapixels:6.2f} s/MPix  peak +{row['peak_mib']:7.0f} MiB  "
                  f"runs: {', '.join(f'{s:.2f}' for s in row['runs'])}", flush=True)
    per_megapixel = [r["median"] / r["megapixels"] for r in rows]
    tiling = f", tiles of {args.tile} px" if args.tile else ""
    title = f"MambaST.stylize, CPU, {args.threads} threads, float32{tiling}"
    print(f"{title}: seconds per megapixel {min(per_megapixel):.2f}..{max(per_megapixel):.2f} "
          f"(spread {max(per_megapixel) / min(per_megapixel):.2f}x)")
    print("\n| image | megapixels | seconds | s / MPix | peak memory |\n|---|---|---|---|---|")
    for row, rate in zip(rows, per_megapixel):
        height, width = row["size"]
        print(f"| {width}x{height} | {row['megapixels']:.2f} | {row['median']:.2f} | {rate:.2f} | "
              f"+{row['peak_mib']:.0f} MiB |")
    if args.plot:
        plot(rows, Path(args.plot), title)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
