"""Ours against EFDM, the default of ComfyUI-StyleTransferPlus, in one run on the CPU.

    python bench/peers.py [--sizes 512,1024] [--repeats 3] [--threads 2]

EFDM (Zhang et al., CVPR 2022) is AdaIN's network with exact feature distribution matching in
place of AdaIN: the reference's normalised VGG-19 up to relu4_1 encodes content and style (the
style resized to the content's size, as that node does), each channel of the content's features
takes the sorted values of the style's in its own rank order, and AdaIN's mirrored decoder (nine
3x3 convolutions with reflection padding, three nearest-neighbour upsamplings) paints the result.
Both models get random weights of their released shapes (only the time and memory are compared),
float32, batch 1. Each model and size runs in a fresh process: a warm-up call, then the median of
--repeats calls, and the process's peak resident memory above what it held before the calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import median, run_isolated, timed_runs  # noqa: E402
from stylize import bench_inputs, build_model  # noqa: E402

# AdaIN's decoder: (input channels, output channels) of each 3x3 convolution, "up" for a 2x upsampling.
DECODER_PLAN = ((512, 256), "up", (256, 256), (256, 256), (256, 256), (256, 128), "up", (128, 128), (128, 64), "up",
                (64, 64), (64, 3))
RELU4_1 = 31  # modules of the normalised VGG-19 up to relu4_1


def efdm_network():
    """(encode, decode): the normalised VGG-19 to relu4_1 and AdaIN's decoder, random weights."""
    import torch
    from torch import nn

    from mambast.training.vgg import VGGEncoder

    torch.manual_seed(0)
    encoder = nn.Sequential(*list(VGGEncoder().children())[:RELU4_1]).eval()
    layers = []
    for index, step in enumerate(DECODER_PLAN):
        if step == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            continue
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(*step, 3)]
        if index < len(DECODER_PLAN) - 1:
            layers.append(nn.ReLU())
    return encoder, nn.Sequential(*layers).eval()


def exact_feature_distribution_matching(content, style):
    """Each channel of ``content`` (B, C, H, W) given the sorted values of ``style``'s same channel
    (the same number of elements) in the content's own rank order."""
    batch, channels = content.shape[:2]
    flat = content.reshape(batch, channels, -1)
    ranks = flat.argsort(dim=-1).argsort(dim=-1)
    values = style.reshape(batch, channels, -1).sort(dim=-1).values
    return values.gather(-1, ranks).reshape(content.shape)


def measure(variant: str, size: int, repeats: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    content, style = bench_inputs(size, size)
    if variant == "ours":
        model = build_model("chunked")

        def run():
            model.stylize(content, style, seed=0)
    else:
        encoder, decoder = efdm_network()

        def run():
            resized = F.interpolate(style, size=content.shape[-2:], mode="bilinear", align_corners=False)
            decoder(exact_feature_distribution_matching(encoder(content), encoder(resized)))

    with torch.inference_mode():
        run()  # warm-up
    result = timed_runs(run, repeats)
    return {"variant": variant, "size": size, "seconds": median(result["seconds"]), "runs": result["seconds"],
            "peak_mib": result["peak_mib"], "peak_total_mib": result["peak_total_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.size, args.repeats, args.threads)))
        return
    print(f"stylize one square image, random weights, float32, batch 1, {args.threads} threads, fresh process per "
          f"row, median of {args.repeats} after a warm-up")
    for size in (int(s) for s in args.sizes.split(",")):
        rows = {}
        for variant in ("ours", "efdm"):
            rows[variant] = run_isolated(Path(__file__), "--worker", variant, "--size", str(size), "--repeats",
                                         str(args.repeats), "--threads", str(args.threads))
            row = rows[variant]
            print(f"  {size:>5} px  {variant:<5} {row['seconds']:7.2f} s   peak +{row['peak_mib']:6.0f} MiB "
                  f"({row['peak_total_mib']:5.0f} in all)   runs: {', '.join(f'{s:.2f}' for s in row['runs'])}",
                  flush=True)
        ratio = rows["ours"]["seconds"] / rows["efdm"]["seconds"]
        print(f"  {size:>5} px  ours takes {ratio:.2f}x EFDM's time (target <= 0.8x), "
              f"{rows['ours']['peak_total_mib'] / rows['efdm']['peak_total_mib']:.2f}x its peak memory")


if __name__ == "__main__":
    main()
