"""Ours against EFDM, the default of ComfyUI-StyleTransferPlus, and StyTr2, in one run on the CPU.

    python bench/peers.py [--sizes 512,1024] [--stytr2-sizes 512] [--repeats 3] [--threads 2]

EFDM (Zhang et al., CVPR 2022) is AdaIN's network with exact feature distribution matching in
place of AdaIN: the reference's normalised VGG-19 up to relu4_1 encodes content and style (the
style resized to the content's size, as that node does), each channel of the content's features
takes the sorted values of the style's in its own rank order, and AdaIN's mirrored decoder (nine
3x3 convolutions with reflection padding, three nearest-neighbour upsamplings) paints the result.
StyTr2 (Deng et al., CVPR 2022; the transformer Mamba-ST starts from), its stylization path: an 8 x 8
patch embedding of 512 channels for both images, content-aware positional encoding (an 18 x 18 average pool, a
1x1 convolution, bilinear upsampling) on the content, three post-norm encoder layers for each
image, three decoder layers (two attentions from the content to the style each, 8 heads, 2048-wide
feed-forward), a final layer norm, and the same CNN decoder as AdaIN's. Every model gets random
weights of their released shapes (only the time and memory are compared),
float32, batch 1. Each model and size runs in a fresh process: a warm-up call, then the median of
--repeats calls, and the process's peak resident memory above what it held before the calls. The
models of one size take turns call by call (ours, EFDM, StyTr2, ours, ...), each in its own
process, so that a slow minute of the machine weighs on every model alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import Worker, median, peak_mib, reset_peak, resident_mib, serve  # noqa: E402
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


def stytr2_network():
    """StyTr2's stylization path with random weights: ``run(content, style)`` -> image."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    width, heads, hidden, depth = 512, 8, 2048, 3

    class Layer(nn.Module):
        """Post-norm attention layer(s) then feed-forward; ``attentions`` of (query, key, value)."""

        def __init__(self, attentions: int):
            super().__init__()
            self.attentions = nn.ModuleList(nn.MultiheadAttention(width, heads) for _ in range(attentions))
            self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(attentions + 1))
            self.feed_forward = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))

        def forward(self, x, position=None, memory=None):
            for attention, norm in zip(self.attentions, self.norms):
                query = x if position is None else x + position
                key, value = (query, x) if memory is None else (memory, memory)
                # need_weights left on, as StyTr2's layers call their attentions: PyTorch then takes
                # its general path and forms the attention weights.
                x = norm(x + attention(query, key, value)[0])
            return self.norms[-1](x + self.feed_forward(x))

    embed = nn.Conv2d(3, width, 8, stride=8)  # one patch embedding for both images
    position_conv = nn.Conv2d(width, width, 1)
    encoder_c = nn.ModuleList(Layer(1) for _ in range(depth))
    encoder_s = nn.ModuleList(Layer(1) for _ in range(depth))
    decoder_layers = nn.ModuleList(Layer(2) for _ in range(depth))
    final_norm = nn.LayerNorm(width)
    _, cnn_decoder = efdm_network()
    modules = nn.ModuleList([embed, position_conv, encoder_c, encoder_s, decoder_layers,
                             final_norm, cnn_decoder]).eval()

    def run(content, style):
        c, s = embed(content), embed(style)
        position = F.interpolate(position_conv(F.adaptive_avg_pool2d(c, 18)), size=c.shape[-2:], mode="bilinear")
        batch, channels, height, width_ = c.shape
        tokens = lambda x: x.flatten(2).permute(2, 0, 1)  # noqa: E731  (L, B, C), as nn.MultiheadAttention takes
        c, s, position = tokens(c), tokens(s), tokens(position)
        for layer in encoder_s:
            s = layer(s)
        for layer in encoder_c:
            c = layer(c, position)
        for layer in decoder_layers:
            c = layer(c, position, memory=s)
        c = final_norm(c).permute(1, 2, 0).reshape(batch, channels, height, width_)
        return cnn_decoder(c)

    run.modules = modules
    return run


def prepare(variant: str, size: int, threads: int):
    """(run, scan): one stylization of a ``size`` px square by ``variant``, and our scan backend."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    content, style = bench_inputs(size, size)
    if variant == "ours":
        model = build_model(None)  # the automatic scan backend, as shipped
        return (lambda: model.stylize(content, style, seed=0)), model.scan_backend
    if variant == "stytr2":
        network = stytr2_network()
        return (lambda: network(content, style)), None
    encoder, decoder = efdm_network()

    def run():
        resized = F.interpolate(style, size=content.shape[-2:], mode="bilinear", align_corners=False)
        decoder(exact_feature_distribution_matching(encoder(content), encoder(resized)))

    return run, None


def work(variant: str, size: int, threads: int) -> None:
    """Serve ``warm``, ``run`` (one timed call) and ``done`` (peak memory) for the parent process."""
    import time

    import torch

    run, scan = prepare(variant, size, threads)
    baseline = {}

    def warm() -> dict:
        with torch.inference_mode():
            run()
        baseline["mib"] = resident_mib()
        reset_peak()
        return {"scan": scan}

    def timed() -> dict:
        with torch.inference_mode():
            started = time.perf_counter()
            run()
            return {"seconds": time.perf_counter() - started}

    serve({"warm": warm, "run": timed,
           "done": lambda: {"peak_mib": peak_mib() - baseline["mib"], "peak_total_mib": peak_mib()}})


def measure_in_turns(variants: list[str], size: int, repeats: int, threads: int) -> dict:
    """Each variant in its own fresh process, warmed up, then called in turns ``repeats`` times."""
    workers = {v: Worker(Path(__file__), "--worker", v, "--size", str(size), "--threads", str(threads))
               for v in variants}
    try:
        rows = {v: {"variant": v, "size": size, "runs": [], **worker.call("warm")} for v, worker in workers.items()}
        for _ in range(repeats):
            for variant, worker in workers.items():
                rows[variant]["runs"].append(worker.call("run")["seconds"])
        for variant, worker in workers.items():
            rows[variant].update(worker.call("done"), seconds=median(rows[variant]["runs"]))
    finally:
        for worker in workers.values():
            worker.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--stytr2-sizes", default="512",
                        help="sizes to time StyTr2 at (its attention takes tens of GiB at 1024 px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker, args.size, args.threads)
        return
    print(f"stylize one square image, random weights, float32, batch 1, {args.threads} threads, a fresh process per "
          f"model and size, median of {args.repeats} calls in turns after a warm-up")
    stytr2_sizes = {int(s) for s in args.stytr2_sizes.split(",") if s}
    for size in (int(s) for s in args.sizes.split(",")):
        variants = ["ours", "efdm"] + (["stytr2"] if size in stytr2_sizes else [])
        rows = measure_in_turns(variants, size, args.repeats, args.threads)
        for variant in variants:
            row = rows[variant]
            label = f"{variant} ({row['scan']} scan)" if row.get("scan") else variant
            print(f"  {size:>5} px  {label:<20} {row['seconds']:7.2f} s   peak +{row['peak_mib']:6.0f} MiB "
                  f"({row['peak_total_mib']:5.0f} in all)   runs: {', '.join(f'{s:.2f}' for s in row['runs'])}",
                  flush=True)
        ratio = rows["ours"]["seconds"] / rows["efdm"]["seconds"]
        print(f"  {size:>5} px  ours takes {ratio:.2f}x EFDM's time (target <= 0.8x), "
              f"{rows['ours']['peak_total_mib'] / rows['efdm']['peak_total_mib']:.2f}x its peak memory")
        if "stytr2" in rows:
            print(f"  {size:>5} px  ours is {rows['stytr2']['seconds'] / rows['ours']['seconds']:.2f}x faster than "
                  f"StyTr2's stylization path, {rows['ours']['peak_total_mib'] / rows['stytr2']['peak_total_mib']:.2f}x "
                  "its peak memory")


if __name__ == "__main__":
    main()
