"""Make the pictures and the clip the example workflows load, so every template runs as shipped.

    python tools/make_example_inputs.py        # needs numpy, Pillow and PyAV (ComfyUI's Python has them)

Everything is drawn from code with fixed seeds (no third-party pictures): two painting-like
styles (swirling strokes in a flow field; a stained-glass mosaic) and a short clip panning over
a drawn landscape. The pack copies them into ComfyUI's input folder at start, under names that
start with ``mambast_example_`` and only where no file of that name exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "example_inputs"


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in 0..1 varying over about ``size / cells`` pixels (bilinear upsampling of a grid)."""
    grid = rng.random((cells + 1, cells + 1))
    picture = Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(picture, dtype=np.float32) / 255.0


def swirls(size: int = 512, seed: int = 3) -> np.ndarray:
    """Brush strokes following a field of vortices (line integral convolution of noise), in night blues
    and warm yellows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    vx, vy = np.zeros_like(x), np.zeros_like(y)
    for cx, cy, strength in zip(rng.uniform(0, size, 7), rng.uniform(0, size, 7), rng.uniform(-1, 1, 7)):
        dx, dy = x - cx, y - cy
        falloff = np.exp(-(dx * dx + dy * dy) / (2 * (size / 4) ** 2))
        vx += -dy * strength * falloff
        vy += dx * strength * falloff
    vx += 0.35 * size / 4  # a drift, so the strokes run on between the vortices
    norm = np.sqrt(vx * vx + vy * vy) + 1e-6
    vx, vy = vx / norm, vy / norm
    noise = rng.random((size, size)).astype(np.float32)
    strokes = np.zeros_like(noise)
    for direction in (1.0, -1.0):  # integrate the noise along the field, both ways
        px, py = x.copy(), y.copy()
        for _ in range(14):
            ix, iy = np.clip(px.astype(int), 0, size - 1), np.clip(py.astype(int), 0, size - 1)
            strokes += noise[iy, ix]
            px += direction * vx[iy, ix]
            py += direction * vy[iy, ix]
    strokes = (strokes - strokes.min()) / (strokes.max() - strokes.min())
    light = smooth_noise(rng, size, 5)
    tone = np.clip(0.55 * light + 0.6 * (strokes - 0.5) + 0.25, 0, 1)[..., None]
    night, moon = np.array([0.08, 0.16, 0.42]), np.array([0.98, 0.86, 0.35])
    mid = np.array([0.30, 0.55, 0.75])
    colour = np.where(tone < 0.5, night + (mid - night) * (tone / 0.5), mid + (moon - mid) * ((tone - 0.5) / 0.5))
    return np.clip(colour, 0, 1)


def mosaic(size: int = 512, seed: int = 5) -> np.ndarray:
    """Stained glass: Voronoi cells in saturated colours with dark lead lines."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, (90, 2))
    palette = np.array([[0.80, 0.12, 0.12], [0.95, 0.65, 0.10], [0.10, 0.35, 0.75], [0.12, 0.55, 0.30],
                        [0.55, 0.20, 0.60], [0.95, 0.90, 0.70]])
    colours = palette[rng.integers(0, len(palette), len(points))] * rng.uniform(0.75, 1.0, (len(points), 1))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    distances = np.stack([np.hypot(x - px, y - py) for px, py in points])
    order = np.sort(distances, axis=0)
    nearest = np.argmin(distances, axis=0)
    edge = np.clip((order[1] - order[0]) / 4.0, 0, 1)[..., None]  # dark where two cells meet
    glow = 0.85 + 0.15 * smooth_noise(rng, size, 9)[..., None]
    return np.clip(colours[nearest] * glow * edge + 0.05 * (1 - edge), 0, 1)


def landscape(width: int, height: int, seed: int = 7) -> np.ndarray:
    """A drawn landscape: sky, sun, three ranges of hills, a lake and trees."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, horizon = np.array([0.35, 0.55, 0.85]), np.array([0.95, 0.80, 0.65])
    picture = top + (horizon - top) * (y / height)[..., None] ** 1.5
    sun = np.exp(-((x - 0.7 * width) ** 2 + (y - 0.25 * height) ** 2) / (2 * (0.05 * height) ** 2))[..., None]
    picture = picture + sun * (np.array([1.0, 0.95, 0.7]) - picture)
    for level, colour in ((0.50, [0.45, 0.52, 0.62]), (0.62, [0.30, 0.45, 0.30]), (0.75, [0.20, 0.35, 0.18])):
        phase = rng.uniform(0, 6.3, 3)
        ridge = level * height + height * (0.06 * np.sin(x / width * 9 + phase[0])
                                            + 0.03 * np.sin(x / width * 23 + phase[1]))
        picture = np.where((y > ridge)[..., None], np.array(colour), picture)
    lake = (y > 0.85 * height) & (np.abs(x - 0.35 * width) < 0.25 * width)
    picture = np.where(lake[..., None], np.array([0.25, 0.45, 0.70]) * (0.9 + 0.1 * np.sin(y)[..., None]), picture)
    for tree_x in rng.uniform(0, width, 28):
        base = 0.8 * height + rng.uniform(0, 0.15 * height)
        tall = rng.uniform(0.08, 0.16) * height
        inside = (y < base) & (y > base - tall) & (np.abs(x - tree_x) < (y - (base - tall)) * 0.35)
        picture = np.where(inside[..., None], np.array([0.08, 0.25, 0.12]), picture)
    return np.clip(picture, 0, 1)


def save_picture(array: np.ndarray, name: str) -> None:
    Image.fromarray((array * 255 + 0.5).astype(np.uint8)).save(OUT / name, quality=90, optimize=True)
    print(f"wrote {name}")


def save_clip(name: str, frames: int = 36, size: int = 256, fps: int = 12) -> None:
    """A slow pan over the landscape: consecutive frames overlap, as in real footage."""
    import av

    scene = (landscape(size * 3, size) * 255 + 0.5).astype(np.uint8)
    with av.open(str(OUT / name), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"crf": "28"}
        for index in range(frames):
            left = round(index * (scene.shape[1] - size) / (frames - 1))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[:, left:left + size]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    print(f"wrote {name}")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    save_picture(swirls(), "mambast_example_style.jpg")
    save_picture(mosaic(), "mambast_example_style_2.jpg")
    save_clip("mambast_example_frames.mp4")


if __name__ == "__main__":
    main()
