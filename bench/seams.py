"""Grid contrast of stylized images with seam smoothing off and on, and what it costs.

    python bench/seams.py [--size 256] [--counts 2,4,16] [--content photo.jpg] [--threads 2]

Grid contrast, per direction: the mean absolute difference between neighbouring pixels across
the 8 px token borders (pixel 8k+7 to 8k+8), divided by the same between neighbours inside the
tokens that straddle a 2 px cell border as the token border does (8k+1, 8k+3, 8k+5 to the next):
1.0 is no grid. Those inside pairs are the fair comparison because the CNN decoder upsamples
three times by 2 and leaves a 2 px pattern of its own (odd pairs differ more than even pairs
everywhere), which a ratio against all inside pairs would count as a grid.

Measured on the released architecture with random weights (3 + 3 layers, 512 channels), whose
outputs show no step at the token borders beyond the decoder's 2 px pattern, and on the same
model with a known grid added ("stepped"): each token's 8 x 8 block shifted by a fixed projection
of its fused features, a step at every token border on top of the decoder's texture, which is
what the paper's patch discontinuities look like. Random weights cannot show how strong the
grid of the released weights is; the stepped model shows what the blending does to a real one.

Contents: a smooth one (bicubic from 8 x 8 random colours) and a photograph-like one (1/f noise,
the spectrum of natural images) unless --content gives a file. Every variant runs in this
process, one after another, same seed; time is the median of --repeats runs, the ratio against off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def contents(size: int, path: str | None):
    import torch
    import torch.nn.functional as F

    from mambast.utils.imaging import read_image, resize_shorter_side

    generator = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(size, size), mode="bicubic",
                           align_corners=False).clamp(0, 1)
    if path:
        image = resize_shorter_side(read_image(path), size)
        return {"smooth": smooth, Path(path).name: image[..., :size, :size]}
    # 1/f noise: random phases with an amplitude falling as 1/frequency, per channel, mixed to colours.
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    amplitude = 1 / torch.clamp((fx ** 2 + fy ** 2).sqrt(), min=1 / size)
    phase = torch.rand(3, size, size // 2 + 1, generator=generator) * 2 * torch.pi
    field = torch.fft.irfft2(amplitude * torch.exp(1j * phase), s=(size, size))
    mixing = torch.tensor([[1.0, 0.3, 0.1], [0.3, 1.0, 0.3], [0.1, 0.3, 1.0]])
    field = torch.einsum("ij,jhw->ihw", mixing, field)
    field = (field - field.mean()) / field.std() * 0.18 + 0.5
    return {"smooth": smooth, "photograph-like (1/f)": field.clamp(0, 1)[None]}


def stepped(model, amplitude: float = 0.15):
    """The model with a known token grid added to its output: each token's 8 x 8 block shifted by
    a fixed projection of its fused features (standard deviation ``amplitude``), a step at every
    token border on top of the decoder's own texture."""
    import torch
    import torch.nn.functional as F

    projection = torch.randn(3, model.config.d_model, generator=torch.Generator().manual_seed(1))
    decode = model.decode

    def decode_with_steps(features, size=None):
        image = decode(features)
        offsets = torch.einsum("cd,bdhw->bchw", projection, features.float())
        offsets = (offsets - offsets.mean()) / offsets.std() * amplitude
        image = image + F.interpolate(offsets, scale_factor=model.config.patch_size, mode="nearest")
        return image if size is None else image[..., : size[0], : size[1]]

    model.decode = decode_with_steps
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--counts", default="2,4,16", help="seam_smoothing values to measure beside off")
    parser.add_argument("--content", help="an image file to measure besides the smooth content")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="random,stepped")
    args = parser.parse_args()

    import torch

    import mambast
    from mambast.controls.seams import grid_contrast
    from mambast.network.random_weights import random_official_tensors
    from mambast.run.pipeline import Controls, stylize_images

    torch.set_num_threads(args.threads)
    style = mambast.utils.imaging.read_image(ROOT / "example_inputs" / "mambast_example_style.jpg")
    counts = [0] + [int(c) for c in args.counts.split(",") if c]
    print(f"grid contrast (token borders / inside, 1.0 = no grid) across columns, rows; {args.size} px, "
          f"{args.threads} threads, time median of {args.repeats}")
    for model_name in args.models.split(","):
        model = mambast.build(mambast.Checkpoint(random_official_tensors(seed=2)), device="cpu")
        if model_name == "stepped":
            model = stepped(model)
        for content_name, content in contents(args.size, args.content).items():
            print(f"\n{model_name} weights, {content_name} content:")
            base_time = None
            for count in counts:
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    with torch.inference_mode():
                        out = stylize_images(model, content, style, Controls(seed=3, seam_smoothing=count))
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                base_time = base_time or seconds
                columns, rows = grid_contrast(out.clamp(0, 1))
                label = "off" if count == 0 else f"{count} grids"
                print(f"  {label:<9} columns {columns:6.3f}  rows {rows:6.3f}   {seconds:7.2f} s  "
                      f"({seconds / base_time:4.1f}x)", flush=True)


if __name__ == "__main__":
    main()
