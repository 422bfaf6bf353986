"""Seam smoothing (``mambast.controls.seams``): off is today's output exactly; on, it blends stylizations
on shifted token grids, removes a known grid, and works with batches, masks, tiles, the staged
nodes, the command line and the progress bar."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambast.commands import main as run_command
from mambast.controls.seams import (SEAM_SMOOTHING_CHOICES, check_seam_smoothing, grid_contrast, grid_offsets, grid_weights,
                           on_grids, shift_back, shift_onto_grid)
from mambast.controls.tiling import stylize_tiled
from mambast.run.pipeline import Controls, stylize_images
from mambast.utils.imaging import read_image, write_image


def images(batch, height, width, seed):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def comfy_image(batch, height, width, seed):
    """A ComfyUI IMAGE: (B, H, W, C) in 0..1."""
    return images(batch, height, width, seed).permute(0, 2, 3, 1)


def smooth_image(height, width, seed=0):
    """Sums of sines with random frequencies and phases: smooth, and aligned with no grid."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    channels = []
    for _ in range(3):
        frequencies, phases = torch.rand(4, 2, generator=generator) * 0.15 + 0.02, torch.rand(4, generator=generator)
        channels.append(sum(torch.sin(f[0] * y + f[1] * x + 6.3 * p) for f, p in zip(frequencies, phases)))
    return (torch.stack(channels)[None] / 8 + 0.5).clamp(0, 1)


def blocky_work(image: torch.Tensor, _offset=None) -> torch.Tensor:
    """A stand-in stylization with a known token grid: each 8 x 8 block of the (shifted) image
    is offset by its own mean detail, a step at every border of the grid it was given."""
    detail = image - F.avg_pool2d(image, 5, stride=1, padding=2, count_include_pad=False)
    height, width = image.shape[-2:]
    padded = F.pad(detail, (0, -width % 8, 0, -height % 8), mode="replicate")
    blocks = F.interpolate(F.avg_pool2d(padded, 8) * 40, scale_factor=8, mode="nearest")
    return image + blocks[..., :height, :width]


def test_choices_offsets_and_weights():
    assert grid_offsets(0) == grid_offsets(1) == [(0, 0)]
    assert grid_offsets(2) == [(0, 0), (4, 4)]
    assert grid_offsets(4) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert len(set(grid_offsets(16))) == 16 and {dy for dy, _ in grid_offsets(16)} == {0, 2, 4, 6}
    for bad in (3, -1, 5, 64):
        with pytest.raises(ValueError, match="seam smoothing"):
            check_seam_smoothing(bad)
    assert set(SEAM_SMOOTHING_CHOICES) == {0, 1, 2, 4, 16}
    for count in (2, 4, 16):
        weights = grid_weights(grid_offsets(count), (21, 19))
        assert weights.shape == (count, 1, 21, 19)
        torch.testing.assert_close(weights.sum(0), torch.ones(1, 21, 19))
    weights = grid_weights(grid_offsets(4), (16, 16))
    assert weights[0, 0, 3, 3] > 0.8 and weights[0, 0, 7, 3] < 0.05  # grid (0, 0): its centre, its border


def test_shifting_onto_a_grid_and_back_keeps_every_pixel_it_covers():
    image = images(2, 13, 17, 0)
    for dy, dx in grid_offsets(16):
        shifted = shift_onto_grid(image, (dy, dx))
        assert shifted.shape == image.shape  # same size: same grid, same work
        assert torch.equal(shifted[..., dy:, dx:], image[..., :13 - dy, :17 - dx])
        back = shift_back(shifted, (dy, dx))
        assert torch.equal(back[..., :13 - dy, :17 - dx], image[..., :13 - dy, :17 - dx])
        weights = grid_weights(grid_offsets(16), (13, 17))[grid_offsets(16).index((dy, dx))]
        assert (weights[..., 13 - dy:, :] == 0).all() and (weights[..., :, 17 - dx:] == 0).all()
    tiny = images(1, 3, 3, 1)  # smaller than the shift: replicated instead of reflected
    assert shift_onto_grid(tiny, (4, 4)).shape == tiny.shape
    assert torch.equal(on_grids(lambda x, _: x, tiny, 4), tiny)


@pytest.mark.parametrize("content", ["smooth", "noisy"])
def test_smoothing_removes_a_known_grid(content):
    image = smooth_image(128, 128) if content == "smooth" else (smooth_image(128, 128) * 0.8 + images(1, 128, 128, 3)
                                                                * 0.2)
    off = grid_contrast(blocky_work(image))
    assert min(off) > 1.5  # the stand-in leaves a strong grid
    for count in (2, 4, 16):
        smoothed = grid_contrast(on_grids(blocky_work, image, count))
        assert max(abs(c - 1) for c in smoothed) < 0.5 * min(c - 1 for c in off), (count, smoothed, off)


def test_grid_contrast_is_one_without_a_grid_and_ignores_a_2px_pattern():
    image = smooth_image(128, 128)
    assert all(abs(c - 1) < 0.05 for c in grid_contrast(image))
    pattern = image.clone()
    pattern[..., :, 1::2] += 0.05  # a 2 px column pattern, as the CNN decoder leaves
    assert abs(grid_contrast(pattern)[0] - 1) < 0.05


def test_off_is_todays_output_exactly(small_model):
    content, style = images(2, 40, 56, 0), images(1, 32, 32, 1)
    with torch.inference_mode():
        plain = small_model.stylize(content, style, seed=5)
        for off in (0, 1):
            assert torch.equal(small_model.stylize(content, style, seed=5, seam_smoothing=off), plain)
            assert torch.equal(stylize_images(small_model, content, style, Controls(seed=5, seam_smoothing=off)),
                               stylize_images(small_model, content, style, Controls(seed=5)))
            assert torch.equal(stylize_tiled(small_model, content, style, 0, seed=5, seam_smoothing=off), plain)


def test_smoothing_is_the_blend_of_the_shifted_stylizations(small_model):
    content, style = images(1, 40, 48, 0), images(1, 32, 32, 1)
    with torch.inference_mode():
        smoothed = small_model.stylize(content, style, seed=5, seam_smoothing=2)
        by_hand = [shift_back(small_model.stylize(shift_onto_grid(content, o), style, seed=5), o)
                   for o in grid_offsets(2)]
        weights = grid_weights(grid_offsets(2), (40, 48))
        torch.testing.assert_close(smoothed, by_hand[0] * weights[0] + by_hand[1] * weights[1])
        assert not torch.equal(smoothed, by_hand[0])
        # The library, the pipeline and the tiled path agree; the same seed gives the same picture.
        torch.testing.assert_close(stylize_images(small_model, content, style, Controls(seed=5, seam_smoothing=2)),
                                   smoothed)
        torch.testing.assert_close(stylize_tiled(small_model, content, style, 0, seed=5, seam_smoothing=2), smoothed)
        assert torch.equal(small_model.stylize(content, style, seed=5, seam_smoothing=2), smoothed)


def test_smoothing_works_with_batches_masks_tiles_and_video(small_model):
    frames, style = images(2, 40, 48, 0), images(1, 40, 40, 1)
    mask = torch.zeros(40, 48)
    mask[:, :24] = 1
    controls = Controls(seed=3, seam_smoothing=2, mask=mask, temporal_smoothing=0.5, tile=32)
    with torch.inference_mode():
        out = stylize_images(small_model, frames, style, controls)
        assert out.shape == frames.shape and torch.isfinite(out).all()
        assert torch.equal(out[..., 32:], frames[..., 32:])  # outside the mask: the content
        assert not torch.equal(out, stylize_images(small_model, frames, style,
                                                   Controls(seed=3, mask=mask, temporal_smoothing=0.5, tile=32)))
        assert torch.equal(out, stylize_images(small_model, frames, style, controls))


def test_the_staged_nodes_equal_the_all_in_one_node_with_smoothing(comfy):
    stages, loaded = comfy.stages, comfy.stages.load_model("small.safetensors")
    content = comfy_image(2, 40, 48, seed=0)
    style = comfy_image(1, 32, 32, seed=1)
    for choice in ("2 grids", "4 grids"):
        staged = stages.decode(loaded, stages.fuse(loaded, stages.encode_content(loaded, content, choice),
                                                   stages.encode_style(loaded, style), seed=4, strength=0.6,
                                                   temporal_smoothing=0.3))
        direct = stages.stylize(loaded, content, style, seed=4, processing_size=0, strength=0.6,
                                temporal_smoothing=0.3, seam_smoothing=choice)
        torch.testing.assert_close(staged, direct)
    off = stages.stylize(loaded, content, style, seed=4, processing_size=0)
    assert torch.equal(stages.stylize(loaded, content, style, seed=4, processing_size=0, seam_smoothing="off"), off)
    with pytest.raises(ValueError, match="seam smoothing"):
        stages.encode_content(loaded, content, "3 grids")


def test_the_progress_bar_counts_the_grids(comfy):
    from test_node_reliability import assert_truthful

    stages, loaded = comfy.stages, comfy.stages.load_model("small.safetensors")
    content, style = comfy_image(2, 32, 40, seed=0), comfy_image(1, 32, 32, seed=1)
    encoded = stages.encode_content(loaded, content, "2 grids")
    fused = stages.fuse(loaded, stages.encode_content(loaded, content, "4 grids"), stages.encode_style(loaded, style),
                        seed=1)
    for run in (lambda: stages.stylize(loaded, content[:1], style, seed=1, processing_size=0,
                                       seam_smoothing="4 grids", tile_size=32, strength=0.5),
                lambda: stages.encode_content(loaded, content[:1, :24, :24], "16 grids"),
                lambda: stages.fuse(loaded, encoded, stages.encode_style(loaded, style), seed=1, strength=0.5),
                lambda: stages.decode(loaded, fused)):
        comfy.progress.clear()
        run()
        assert_truthful(comfy.progress)


def test_the_command_line_smooths_on_request(tmp_path, small_tensors):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "small.safetensors"
    save_file(small_tensors, str(checkpoint))
    write_image(images(1, 40, 48, 0), tmp_path / "content.png")
    write_image(images(1, 32, 32, 1), tmp_path / "style.png")
    outputs = {}
    for smoothing in ("0", "4"):
        folder = tmp_path / f"out{smoothing}"
        assert run_command(["stylize", str(tmp_path / "content.png"), "--style", str(tmp_path / "style.png"),
                            "--checkpoint", str(checkpoint), "-o", str(folder), "--seed", "2", "--size", "0",
                            "--device", "cpu", "--seam-smoothing", smoothing]) == 0
        outputs[smoothing] = read_image(folder / "content_stylized_style.png")
    assert outputs["0"].shape == outputs["4"].shape and not torch.equal(outputs["0"], outputs["4"])
    with pytest.raises(SystemExit):
        run_command(["stylize", str(tmp_path / "content.png"), "--style", str(tmp_path / "style.png"), "-o",
                     str(tmp_path / "x"), "--seam-smoothing", "3"])
