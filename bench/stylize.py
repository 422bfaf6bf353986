"""Time and memory of `MambaST.stylize` against a slow path doing what the reference does per image.

Same random 3 + 3 layer weights (the released architecture) and the same inputs for every variant,
float32, batch 1. Each variant runs in a fresh process (so the peak memory is its own), several
times; medians and ratios are printed.

Variants:
- ``ours``: :meth:`MambaST.stylize` as shipped (the automatic scan backend: ``numba`` where
  Numba is installed, else ``chunked``).
- ``ours, chunked scan``: the same with the pure-PyTorch ``chunked`` scan (no Numba).
- ``ours, torch.compile`` (only when asked for): ``torch.compile(model.stylize)``, see
  :func:`compiled_stylize`.
- ``reference path``: the reference's stylization path, patch embedding -> Mamba body -> CNN
  decoder, with the ``reference`` (sequential) scan, the four scan directions stacked, flipped
  and merged as copies, and the CNN decoder in contiguous NCHW: what the reference computes.
  It is built from our modules, so the layers the reference and we share (linears, in-place
  ReLU, the permutation draws) run as fast as ours: the ratios are if anything understated.
- ``reference forward``: what the reference's ``forward`` runs at test time: the stylization path,
  then the two identity passes (content with content, style with style), then the VGG-19 losses.
  The VGG is the reference's encoder up to relu5_1 (random weights, same layer plan) run on the
  content, the style and the three outputs, with the content, style and identity losses
  (mean/std and MSE terms) computed from its features.

    python bench/stylize.py [--size 512] [--repeats 3] [--threads 2] [--variants ours,reference path,...]
    python bench/stylize.py --breakdown [--size 512]     # where the time of our stylize goes
    python bench/stylize.py --variants "ours,ours, torch.compile"   # torch.compile against the plain call
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median, run_isolated, timed_runs  # noqa: E402

VARIANTS = ("ours", "ours, chunked scan", "reference path", "reference forward")
# Opt-in (--variants): minutes of compilation before the first image.
COMPILED = "ours, torch.compile"


def compiled_stylize(model):
    """``torch.compile(model.stylize)``, the Numba kernels and NNPACK's convolutions left outside
    the compiled graphs: Dynamo cannot trace Numba, and NNPACK's convolution has no fake-tensor
    kernel (compiling it fails with "Mismatched Tensor types in NNPack convolutionOutput")."""
    import torch

    import mambast.kernels.fused
    import mambast.network.blocks
    import mambast.network.model

    for name in ("depthwise_silu", "norm_times_silu_", "skip_norm", "gather_band"):
        setattr(mambast.kernels.fused, name, torch.compiler.disable(getattr(mambast.kernels.fused, name)))
    mambast.network.blocks.SS2D._scan_orders = torch.compiler.disable(mambast.network.blocks.SS2D._scan_orders)
    mambast.network.model.MambaST._decode_pixels = torch.compiler.disable(mambast.network.model.MambaST._decode_pixels)
    return torch.compile(model.stylize)


def bench_inputs(height: int, width: int):
    """A photo-like content (smooth structure plus fine noise) and a textured style, seeded."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)

    def picture(h, w):
        coarse = F.interpolate(torch.rand(1, 3, max(2, h // 32), max(2, w // 32), generator=generator),
                               size=(h, w), mode="bilinear", align_corners=False)
        return (coarse + 0.1 * torch.rand(1, 3, h, w, generator=generator)).clamp(0, 1)

    return picture(height, width), picture(height, width)


def build_model(scan: str | None):
    import mambast
    from mambast.network.random_weights import random_official_tensors

    return mambast.build(mambast.Checkpoint(random_official_tensors(seed=0)), device="cpu", scan=scan)


def vgg_encoder():
    """The reference's VGG-19 (``vgg_normalised``) up to relu5_1, as slices ending at relu1_1..relu5_1."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    plan = [[3, 64], [64, "M", 128], [128, "M", 256], [256, 256, 256, "M", 512], [512, 512, 512, "M", 512]]
    slices, channels = [], 64
    first = [nn.Conv2d(3, 3, 1), nn.ReflectionPad2d(1), nn.Conv2d(3, 64, 3), nn.ReLU()]
    slices.append(nn.Sequential(*first))
    for block in plan[1:]:
        layers = []
        for item in block:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, item, 3), nn.ReLU()]
                channels = item
        slices.append(nn.Sequential(*layers))
    # relu1_1's slice is followed by conv1_2 before the pool of block 2 in the reference.
    slices[1] = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(64, 64, 3), nn.ReLU(), *slices[1])
    return [s.eval().requires_grad_(False) for s in slices]


def vgg_losses(vgg, content, style, stylized, content_identity, style_identity):
    """The reference's training losses at test time (its forward returns them with the images)."""
    import torch.nn.functional as F

    def features(image):
        out = [image]
        for part in vgg:
            out.append(part(out[-1]))
        return out[1:]

    def mean_std(feature):
        flat = feature.flatten(2)
        return flat.mean(-1), (flat.var(-1) + 1e-5).sqrt()

    def normal(feature):
        mean, std = mean_std(feature)
        return (feature - mean[..., None, None]) / std[..., None, None]

    c, s, cs, cc, ss = (features(x) for x in (content, style, stylized, content_identity, style_identity))
    loss_c = sum(F.mse_loss(normal(cs[i]), normal(c[i])) for i in (-2, -1))
    loss_s = sum(F.mse_loss(a, b) for i in range(5) for a, b in zip(mean_std(cs[i]), mean_std(s[i])))
    loss_lambda1 = F.mse_loss(content_identity, content) + F.mse_loss(style_identity, style)
    loss_lambda2 = sum(F.mse_loss(cc[i], c[i]) + F.mse_loss(ss[i], s[i]) for i in range(5))
    return loss_c, loss_s, loss_lambda1, loss_lambda2


def measure(variant: str, size: tuple[int, int], repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    content, style = bench_inputs(*size)
    if variant.startswith("ours"):
        model = build_model("chunked" if variant == "ours, chunked scan" else None)
        stylize = compiled_stylize(model) if variant == COMPILED else model.stylize
    else:
        import mambast.network.model

        # The reference backend runs the blocks on the stacked direction copies; the CNN decoder
        # stays in the reference's contiguous NCHW layout.
        mambast.network.model._CHANNELS_LAST_DEVICES = ()
        model = build_model("reference")
        decode = model.decode
        model.decode = lambda features, size=None: decode(features.contiguous(), size)
        stylize = model.stylize
    vgg = vgg_encoder() if variant == "reference forward" else None

    def run():
        stylized = stylize(content, style, seed=0)
        if vgg is not None:
            content_identity = model.stylize(content, content, seed=0)
            style_identity = model.stylize(style, style, seed=0)
            vgg_losses(vgg, content, style, stylized, content_identity, style_identity)

    if variant.startswith("ours"):
        with torch.inference_mode():
            stylize(content, style, seed=0)  # warm-up: Numba (and torch.compile) compile, or load their caches
    return {"variant": variant, "scan": model.scan_backend, **timed_runs(run, repeats)}


def breakdown(size: tuple[int, int], repeats: int, threads: int) -> None:
    """Print where the time of ``stylize`` goes: the scans, the CNN decoder, the rest (in this process)."""
    import torch

    import mambast.network.blocks

    torch.set_num_threads(threads)
    model = build_model(None)
    content, style = bench_inputs(*size)
    spent = {"selective scans": 0.0, "CNN decoder": 0.0}

    def timed(function, name):
        def run(*args, **kwargs):
            started = time.perf_counter()
            result = function(*args, **kwargs)
            spent[name] += time.perf_counter() - started
            return result
        return run

    for name in ("selective_scan_chunked_directions", "selective_scan_numba_orders"):
        setattr(mambast.network.blocks, name, timed(getattr(mambast.network.blocks, name), "selective scans"))
    model.decode = timed(model.decode, "CNN decoder")
    rows = []
    with torch.inference_mode():
        model.stylize(content, style, seed=0)
        for _ in range(repeats):
            spent.update({k: 0.0 for k in spent})
            started = time.perf_counter()
            model.stylize(content, style, seed=0)
            total = time.perf_counter() - started
            rows.append({**spent, "rest (VSS projections, norms, depthwise convs, embedding)":
                         total - sum(spent.values()), "total": total})
    print(f"where the time of stylize goes, {size[1]}x{size[0]}, {threads} threads, {model.scan_backend} scan, "
          f"median of {repeats}:")
    for name in rows[0]:
        print(f"  {name:<58} {median([r[name] for r in rows]):6.2f} s")


def parse_variants(text: str) -> list[str]:
    """The variants named in a comma-separated list (names may hold commas themselves)."""
    known = VARIANTS + (COMPILED,)
    pieces = [piece.strip() for piece in text.split(",") if piece.strip()]
    chosen, start = [], 0
    while start < len(pieces):
        for end in range(len(pieces), start, -1):  # the longest known name first
            if ", ".join(pieces[start:end]) in known:
                chosen.append(", ".join(pieces[start:end]))
                start = end
                break
        else:
            raise SystemExit(f"unknown variant {pieces[start]!r}; choose from: {'; '.join(known)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[512], help="H [W] of content and style")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {VARIANTS + (COMPILED,)}")
    parser.add_argument("--breakdown", action="store_true",
                        help="only print where the time of our stylize goes (scans, CNN decoder, rest)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = (args.size[0], args.size[-1])
    if args.breakdown:
        breakdown(size, args.repeats, args.threads)
        return
    if args.worker:
        print(json.dumps(measure(args.worker, size, args.repeats, args.threads)))
        return
    variants = parse_variants(args.variants)
    common = ("--size", str(size[0]), str(size[1]), "--repeats", str(args.repeats), "--threads", str(args.threads))
    results = {v: run_isolated(Path(__file__), "--worker", v, *common) for v in variants}
    print(f"stylize {size[1]}x{size[0]}, random 3+3-layer weights, float32, batch 1, {args.threads} threads, "
          f"median of {args.repeats}; peak = resident memory above the loaded model (total in brackets)")
    for name, result in results.items():
        print(f"  {name + ' (' + result['scan'] + ')':<30} {median(result['seconds']):8.2f} s   peak +{result['peak_mib']:7.0f} MiB "
              f"({result['peak_total_mib']:5.0f})   runs: {', '.join(f'{s:.2f}' for s in result['seconds'])}")
    if "ours" in results:
        ours = results["ours"]
        for name, result in results.items():
            if name != "ours":
                print(f"  ours vs {name}: {median(result['seconds']) / median(ours['seconds']):.1f}x faster, "
                      f"{ours['peak_mib'] / result['peak_mib']:.2f}x the peak memory")


if __name__ == "__main__":
    main()
