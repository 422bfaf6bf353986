"""Tiled stylization: exact when one tile covers the image, close to untiled otherwise, no seams."""

from __future__ import annotations

import pytest
import torch

from mambast.controls import tiling
from mambast.controls.tiling import blend_weights, stylize_tiled, stylize_with_fallback, tile_starts


def smooth_image(height, width, seed=0):
    """A content with large-scale structure (a photo-like image, not per-pixel noise)."""
    coarse = torch.rand(1, 3, max(2, height // 16), max(2, width // 16), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def style_image(seed=1):
    return torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (1000, 512, 64), (4096, 1024, 128), (33, 16, 4),
                                                   (520, 512, 64), (17, 16, 4), (2000, 64, 16), (64, 64, 8)])
def test_blending_weights_are_a_partition_of_unity(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    weights = blend_weights(length, tile, overlap)
    total = torch.zeros(length)
    for start, weight in zip(starts, weights):
        assert start >= 0 and start + min(tile, length) <= length
        assert (weight >= 0).all() and (weight <= 1).all()
        total[start: start + min(tile, length)] += weight
    assert (total - 1).abs().max() <= 1e-6
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("size", [(64, 96), (37, 91)])
def test_a_tile_covering_the_image_equals_untiled_exactly(small_model, size):
    content = smooth_image(*size)
    with torch.inference_mode():
        untiled = small_model.stylize(content, style_image(), seed=4)
        tiled = stylize_tiled(small_model, content, style_image(), tile=96, seed=4)
    assert torch.equal(tiled, untiled)


def test_tiled_output_stays_close_to_untiled(full_model):
    # The scan is global, so tiles cannot be exact; measured on this case (released architecture,
    # random weights): correlation 0.996, mean |difference| 0.039 (7% of the output's std 0.57),
    # max 0.30.
    content = smooth_image(192, 256)
    with torch.inference_mode():
        untiled = full_model.stylize(content, style_image(), seed=3)
        tiled = stylize_tiled(full_model, content, style_image(), tile=128, seed=3)
    assert tiled.shape == untiled.shape
    correlation = torch.corrcoef(torch.stack([tiled.flatten(), untiled.flatten()]))[0, 1]
    assert correlation >= 0.98
    assert (tiled - untiled).abs().mean() <= 0.15 * untiled.std()


def border_lines(length, tile, overlap):
    """Pixel boundaries (between line i and i + 1) where a tile or a blending band starts or ends."""
    starts = tile_starts(length, tile, overlap)
    lines = set()
    for start in starts:
        lines.update({start - 1, start + tile - 1})
    for a, b in zip(starts, starts[1:]):
        band = b + (a + tile - b - overlap) // 2
        lines.update({band - 1, band + overlap - 1})
    return sorted(line for line in lines if 0 <= line < length - 1)


def seam_contrast(image, length, tile, overlap):
    """Largest mean |difference| across a tile/band border over the largest across any other boundary
    (more than 2 pixels from a border), along the last axis of ``image``: above 1 means a visible seam."""
    gradient = (image[..., 1:] - image[..., :-1]).abs().mean(dim=(0, 1, 2))
    borders = border_lines(length, tile, overlap)
    elsewhere = [i for i in range(length - 1) if all(abs(i - b) > 2 for b in borders)]
    return float(gradient[borders].max() / gradient[elsewhere].max())


def test_no_seam_at_tile_borders_where_a_hard_cut_shows_one(small_model):
    content, style = smooth_image(192, 256), style_image()
    with torch.inference_mode():
        tiled = stylize_tiled(small_model, content, style, tile=128, overlap=16, seed=3)
        halves = [stylize_tiled(small_model, content[..., i * 128:(i + 1) * 128], style, tile=128, seed=3)
                  for i in range(2)]
    # Measured: 0.74 across columns, 0.75 across rows (the untiled image: 0.64); the hard cut 2.3.
    assert seam_contrast(tiled, 256, 128, 16) <= 1.0
    assert seam_contrast(tiled.transpose(-1, -2), 192, 128, 16) <= 1.0
    assert seam_contrast(torch.cat(halves, dim=-1), 256, 128, 16) > 1.5  # the measure can see a seam


def test_style_is_encoded_once_and_every_tile_uses_the_same_seed(small_model, monkeypatch):
    encoded, seeds = [], []
    encode_style, fuse = small_model.encode_style, small_model.fuse
    monkeypatch.setattr(small_model, "encode_style", lambda *a, **k: encoded.append(a[1]) or encode_style(*a, **k))
    monkeypatch.setattr(small_model, "fuse", lambda *a, **k: seeds.append(k["seed"]) or fuse(*a, **k))
    progress = []
    with torch.inference_mode():
        stylize_tiled(small_model, smooth_image(100, 150), style_image(), tile=64, seed=None,
                      on_tile=lambda done, total: progress.append((done, total)))
    assert encoded == [(64, 64)]
    assert len(seeds) == 6 and len(set(seeds)) == 1 and seeds[0] is not None
    assert small_model.last_seed == seeds[0]
    assert progress == [(i, 6) for i in range(1, 7)]


def test_out_of_memory_halves_the_tile_until_it_fits(small_model, monkeypatch):
    encode_content = small_model.encode_content
    largest_side = []

    def encode_or_run_out(image):
        largest_side.append(max(image.shape[-2:]))
        if max(image.shape[-2:]) > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return encode_content(image)

    monkeypatch.setattr(small_model, "encode_content", encode_or_run_out)
    retries = []
    with torch.inference_mode():
        out = stylize_with_fallback(small_model, smooth_image(200, 240), style_image(), tile=256, seed=1,
                                    minimum_tile=32, on_retry=retries.append)
    assert retries == [128, 64]
    assert max(largest_side[-1:]) == 64
    assert out.shape == (1, 3, 200, 240)


def test_out_of_memory_below_the_minimum_tile_is_raised(small_model, monkeypatch):
    def always_out(image):
        raise RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)")

    monkeypatch.setattr(small_model, "encode_content", always_out)
    with pytest.raises(RuntimeError, match="out of memory"):
        stylize_with_fallback(small_model, smooth_image(64, 64), style_image(), tile=64, minimum_tile=32)


def test_other_errors_are_not_retried(small_model, monkeypatch):
    calls = []

    def broken(image):
        calls.append(image.shape)
        raise ValueError("not a memory problem")

    monkeypatch.setattr(small_model, "encode_content", broken)
    with pytest.raises(ValueError):
        stylize_with_fallback(small_model, smooth_image(64, 64), style_image(), tile=0)
    assert len(calls) == 1


@pytest.mark.parametrize("tile, overlap", [(20, None), (8, None), (64, 32)])
def test_bad_tile_sizes_are_refused_with_the_rule(small_model, tile, overlap):
    with pytest.raises(ValueError, match="tile"):
        stylize_tiled(small_model, smooth_image(64, 64), style_image(), tile=tile, overlap=overlap)


def test_out_of_memory_recognises_cuda_and_mps_messages():
    assert tiling.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert tiling.is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not tiling.is_out_of_memory(RuntimeError("shape mismatch"))


def test_cli_tile_option_stylizes_in_tiles(tmp_path, small_tensors):
    from safetensors.torch import save_file

    from mambast.utils.imaging import read_image, write_image

    from test_cli import run_cli

    save_file(small_tensors, str(tmp_path / "w.safetensors"))
    write_image(smooth_image(72, 100)[0], tmp_path / "cat.png")
    write_image(style_image()[0], tmp_path / "monet.png")
    common = ("stylize", "cat.png", "--style", "monet.png", "--checkpoint", "w.safetensors", "--size", "0",
              "--seed", "2", "--device", "cpu")
    tiled = run_cli(*common, "-o", "tiled", "--tile", "48", cwd=tmp_path)
    assert tiled.returncode == 0, tiled.stderr
    assert read_image(tmp_path / "tiled" / "cat_stylized_monet.png").shape == (1, 3, 72, 100)
    refused = run_cli(*common, "-o", "bad", "--tile", "50", cwd=tmp_path)
    assert refused.returncode != 0 and "multiple of 8" in refused.stderr
