"""Frame-to-frame flicker of stylized video, with and without the steady-video controls.

A synthetic moving sequence (a slow pan over a smooth random scene with a square moving across
it) is stylized with random 3+3-layer weights in four ways: a fresh seed per frame (what a loop
of independent runs does), one seed for every frame (the default of the nodes), and one seed
plus temporal smoothing 0.3 and 0.6. Flicker is the mean absolute difference between
consecutive output frames, also given relative to the content's own frame-to-frame change.

    python bench/flicker.py [--frames 12] [--size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mambast  # noqa: E402
from mambast.network.random_weights import random_official_tensors  # noqa: E402
from mambast.run.pipeline import Controls, stylize_images  # noqa: E402


def moving_sequence(frames: int, size: int) -> torch.Tensor:
    """(T, 3, size, size): a pan over a smooth scene, plus a bright square crossing it."""
    generator = torch.Generator().manual_seed(0)
    scene = F.interpolate(torch.rand(1, 3, 12, 24, generator=generator), size=(size, 2 * size),
                          mode="bicubic", align_corners=False).clamp(0, 1)[0]
    video = []
    for t in range(frames):
        frame = scene[:, :, 2 * t: 2 * t + size].clone()
        top, left = size // 3, size // 8 + 4 * t
        frame[:, top: top + size // 4, left: left + size // 4] = torch.tensor([0.95, 0.8, 0.3]).view(3, 1, 1)
        video.append(frame)
    return torch.stack(video)


def flicker(video: torch.Tensor) -> float:
    return float((video[1:] - video[:-1]).abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = mambast.build(mambast.Checkpoint(random_official_tensors(seed=0)), device="cpu")
    frames = moving_sequence(args.frames, args.size)
    style = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    content_change = flicker(frames)
    print(f"{args.frames} frames of {args.size}x{args.size}, random 3+3 weights; content's own change "
          f"{content_change:.4f} per frame")
    print(f"{'variant':<34} {'flicker':>8} {'vs content':>10}")
    with torch.inference_mode():
        fresh = torch.cat([stylize_images(model, frames[t:t + 1], style, Controls(seed=1000 + t)).clamp(0, 1)
                           for t in range(args.frames)])
        variants = {"fresh seed per frame": fresh}
        for label, smoothing in (("one seed (default)", 0.0), ("one seed + smoothing 0.3", 0.3),
                                 ("one seed + smoothing 0.6", 0.6)):
            controls = Controls(seed=7, temporal_smoothing=smoothing)
            variants[label] = stylize_images(model, frames, style, controls).clamp(0, 1)
    for label, video in variants.items():
        value = flicker(video)
        print(f"{label:<34} {value:8.4f} {value / content_change:9.2f}x")


if __name__ == "__main__":
    main()
