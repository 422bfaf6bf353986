"""Node defects an artist or a request reaches without trying: paths outside the model folders,
2-D and short masks, the auto dtype, progress that tells the truth, out-of-memory, style caching."""

from __future__ import annotations

import collections
import importlib
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_fakes import Interrupted
from mambast.network.random_weights import write_official_folder


def image(batch, height, width, channels=3, seed=0):
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def outside(tmp_path, small_tensors):
    """Weights outside every model folder: a request must never reach them."""
    folder = tmp_path / "elsewhere"
    write_official_folder(small_tensors, folder / "secret")
    save_file(small_tensors, str(folder / "secret.safetensors"))
    return folder


@pytest.fixture()
def reads(monkeypatch, comfy):
    """Every checkpoint path the pack reads."""
    checkpoint = importlib.import_module(comfy.pack.__name__ + ".mambast.network.checkpoint")
    seen = []
    original = checkpoint.read_checkpoint

    def recording(path):
        seen.append(str(path))
        return original(path)

    # Wherever the pack's modules hold the function (each imports it by name): all replaced.
    for name, module in list(sys.modules.items()):
        if name.startswith(comfy.pack.__name__ + ".") and getattr(module, "read_checkpoint", None) is original:
            monkeypatch.setattr(module, "read_checkpoint", recording)
    return seen


def bad_names(outside: Path) -> list[str]:
    return [str(outside / "secret") + "/", str(outside / "secret.safetensors"), "../../elsewhere/secret/",
            "../../elsewhere/secret.safetensors", "official/../../../elsewhere/secret/", "/etc/passwd",
            "notes.txt", "official", "small.safetensors/", "", "official/decoder_iter_1.pth"]


def test_the_loader_refuses_every_name_the_model_folders_do_not_offer(comfy, outside, reads):
    for name in bad_names(outside):
        with pytest.raises(ValueError) as error:
            comfy.stages.load_model(name, "auto", "auto")
        message = str(error.value)
        assert "elsewhere" not in message.replace(repr(name), "") and "secret" not in message.replace(repr(name), "")
        assert "small.safetensors" in message and "official/" in message  # what the folder does hold
    assert reads == []


def test_the_status_route_reads_and_lists_nothing_outside_the_model_folders(comfy, outside, reads):
    status = importlib.import_module(comfy.pack.__name__ + ".nodes.status")
    for name in [n for n in bad_names(outside) if n]:  # no name: the general status, tested elsewhere
        report = status.status_report(name, "auto")
        assert not report["ok"]
        shown = str(report).replace(repr(name), "").replace(name, "")
        assert "secret" not in shown and "decoder_iter" not in shown
    assert reads == []
    good = status.status_report("official/", "auto")
    assert good["ok"] and len(reads) == 1 and reads[0].startswith(str(comfy.models_dir))


def test_a_symlinked_entry_the_folder_offers_still_loads(comfy, outside):
    os.symlink(outside / "secret.safetensors", Path(comfy.models_dir) / "mambast" / "linked.safetensors")
    assert "linked.safetensors" in comfy.host.list_checkpoints()
    assert comfy.stages.load_model("linked.safetensors").model.config.d_model == 64


def test_sft_files_are_listed_and_load(comfy, small_tensors):
    save_file(small_tensors, str(Path(comfy.models_dir) / "mambast" / "other.sft"))
    assert "other.sft" in comfy.host.list_checkpoints()
    assert comfy.stages.load_model("other.sft").model.config.d_model == 64


def test_auto_dtype_is_float32_even_where_comfyui_prefers_half_precision(comfy, monkeypatch):
    management = importlib.import_module("comfy.model_management")
    monkeypatch.setattr(management, "should_use_bf16", lambda device=None, **_: True)
    monkeypatch.setattr(management, "should_use_fp16", lambda device=None, **_: True)
    assert comfy.stages.load_model("small.safetensors", "auto").model.dtype == torch.float32
    assert comfy.stages.load_model("small.safetensors", "bfloat16").model.dtype == torch.bfloat16


# -- masks ------------------------------------------------------------------------------------

def test_a_2d_mask_is_applied_by_stylize_and_composite_alike(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    frames, style = image(2, 32, 40), image(1, 32, 32, seed=1)
    flat = torch.zeros(16, 20)
    flat[4:12, 5:15] = 1.0
    one = stages.stylize(loaded, frames, style, seed=2, processing_size=0, mask=flat)
    batched = stages.stylize(loaded, frames, style, seed=2, processing_size=0, mask=flat.unsqueeze(0))
    assert torch.equal(one, batched)
    plain = stages.stylize(loaded, frames, style, seed=2, processing_size=0)
    assert torch.equal(stages.mask_composite(frames, plain, flat), one)
    outside = torch.ones(32, 40, dtype=torch.bool)
    outside[6:26, 8:32] = False  # the mask, resized to the image, and its bilinear edge
    assert torch.equal(one[:, outside], frames[:, outside])  # the mask is applied: content outside
    assert not torch.equal(one[:, 10:22, 12:28], frames[:, 10:22, 12:28])  # and the style inside


def test_a_short_mask_batch_is_cycled_as_comfyui_does(comfy):
    stages = comfy.stages
    frames, stylized = image(3, 16, 16), image(3, 16, 16, seed=1)
    masks = torch.stack([torch.ones(16, 16), torch.zeros(16, 16)])
    out = stages.mask_composite(frames, stylized, masks)
    assert torch.equal(out[0], stylized[0]) and torch.equal(out[1], frames[1])
    assert torch.equal(out[2], stylized[2])  # the third image takes the first mask again


def test_masks_of_another_size_are_resized_and_4d_masks_read(comfy):
    stages = comfy.stages
    frames, stylized = image(1, 32, 32), image(1, 32, 32, seed=1)
    small = torch.zeros(1, 1, 8, 8)
    small[..., :, 4:] = 1.0
    out = stages.mask_composite(frames, stylized, small)
    assert torch.equal(out[0, :, :12], frames[0, :, :12]) and torch.equal(out[0, :, 20:], stylized[0, :, 20:])


@pytest.mark.parametrize("mask, message", [(torch.zeros(5), "expected a MASK"), (torch.zeros(0, 8, 8), "empty"),
                                           (torch.full((8, 8), float("nan")), "NaN")])
def test_unusable_masks_are_refused_naming_the_input(comfy, mask, message):
    with pytest.raises(ValueError, match=f"mask: .*{message}"):
        comfy.stages.mask_composite(image(1, 8, 8), image(1, 8, 8, seed=1), mask)


def test_nan_pixels_are_refused_naming_the_input(comfy):
    frames = image(1, 16, 16)
    frames[0, 3, 3, 1] = float("inf")
    loaded = comfy.stages.load_model("small.safetensors")
    with pytest.raises(ValueError, match="content image: 1 pixels are NaN or infinite"):
        comfy.stages.stylize(loaded, frames, image(1, 16, 16), seed=0)


# -- progress ---------------------------------------------------------------------------------

def assert_truthful(progress: list[tuple[int, int]], skipped_images: int = 0) -> None:
    """The bar's total never changes, every tick moves it by one, and it ends at the total."""
    totals = {total for _, total in progress}
    values = [value for value, _ in progress]
    assert len(totals) == 1, totals
    assert values == sorted(values) and values[-1] == progress[-1][1]
    assert sorted(set(values) - {0}) == list(range(1, values[-1] + 1))  # 0: an image skipped first
    # A value is reported at most twice (a tick, then an image ending there), and once more for
    # each image skipped there: a bar that stops moving while the work goes on repeats it many times.
    assert max(collections.Counter(values).values()) <= 2 + skipped_images


@pytest.mark.parametrize("options", [dict(tile_size=32), dict(), dict(strength=0.5), dict(strength=0.0),
                                     dict(tile_size=24, strength=0.7, style_2_weight=0.3),
                                     dict(processing_size=24, tile_size=16)],
                         ids=["tiles", "whole", "strength", "identity", "tiles-blend", "processing-size"])
def test_the_progress_bar_counts_what_really_runs(comfy, options):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    second = image(1, 24, 24, seed=2) if "style_2_weight" in options else None
    weight = options.pop("style_2_weight", 0.0)
    stages.stylize(loaded, image(2, 40, 72), image(1, 32, 32, seed=1), seed=0,
                   processing_size=options.pop("processing_size", 0), second_style=second,
                   second_style_weight=weight, **options)
    assert_truthful(comfy.progress)


def test_the_staged_nodes_progress_bars_count_what_really_runs(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    frames = image(3, 24, 40)
    content = stages.encode_content(loaded, frames)
    style = stages.encode_style(loaded, image(1, 30, 30, seed=1))
    assert_truthful(comfy.progress)
    features = None
    for step in (lambda: stages.fuse(loaded, content, style, seed=1, strength=0.5),
                 lambda: stages.fuse(loaded, content, style, seed=2),  # the style is cached by now
                 lambda: stages.decode(loaded, features)):
        comfy.progress.clear()
        features = step()
        assert_truthful(comfy.progress)


def test_untiled_runs_fall_back_to_tiles_on_out_of_memory_and_free_comfyuis_cache(comfy, monkeypatch):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    encode_content = type(loaded.model).encode_content
    sides = []

    def runs_out_above_80_px(self, picture):
        sides.append(max(picture.shape[-2:]))
        if max(picture.shape[-2:]) > 80:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return encode_content(self, picture)

    monkeypatch.setattr(type(loaded.model), "encode_content", runs_out_above_80_px)
    out = stages.stylize(loaded, image(2, 72, 160), image(1, 32, 32, seed=1), seed=0, processing_size=0)
    assert out.shape == (2, 72, 160, 3)
    assert sides[0] == 160 and max(sides[1:]) <= 80 and comfy.cache_frees  # the second image starts in tiles
    values = [value for value, _ in comfy.progress]
    assert values == sorted(values) and values[-1] == comfy.progress[-1][1]


def test_out_of_memory_in_a_staged_node_frees_the_cache_and_says_what_to_do(comfy, monkeypatch):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")

    def runs_out(self, picture):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(type(loaded.model), "encode_content", runs_out)
    with pytest.raises(MemoryError, match="Out of memory while encoding a 40x24 image.*tile_size"):
        stages.encode_content(loaded, image(1, 24, 40))
    assert comfy.cache_frees


def test_cancel_is_not_mistaken_for_out_of_memory(comfy):
    comfy.interrupt = True
    with pytest.raises(Interrupted):
        comfy.stages.stylize(comfy.stages.load_model("small.safetensors"), image(1, 24, 24), image(1, 24, 24), seed=0)


def test_an_image_larger_than_the_free_memory_is_tiled_from_the_start_on_a_cpu(comfy, monkeypatch, caplog):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    resources = importlib.import_module(comfy.pack.__name__ + ".mambast.run.resources")
    management = importlib.import_module("comfy.model_management")
    monkeypatch.setattr(management, "free_memory_bytes", resources.activation_bytes(loaded.model.config, 64, 64))
    encode_content = type(loaded.model).encode_content
    sides = []
    monkeypatch.setattr(type(loaded.model), "encode_content",
                        lambda self, picture: sides.append(max(picture.shape[-2:])) or encode_content(self, picture))
    with caplog.at_level(logging.WARNING):
        out = stages.stylize(loaded, image(1, 96, 144), image(1, 32, 32, seed=1), seed=0, processing_size=0)
    assert out.shape == (1, 96, 144, 3)
    assert max(sides) <= 64 and len(sides) > 1 and "64 px tiles" in caplog.text


# -- styles -----------------------------------------------------------------------------------

def test_encode_style_does_no_model_work_and_fuse_encodes_at_the_content_size(comfy, monkeypatch):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    sizes = []
    original = type(loaded.model).encode_style

    def recording(self, picture, size=None, scale=1.0):
        sizes.append(tuple(size) if size is not None else tuple(picture.shape[-2:]))
        return original(self, picture, size, scale)

    monkeypatch.setattr(type(loaded.model), "encode_style", recording)
    style = stages.encode_style(loaded, image(1, 600, 400, seed=1))
    assert sizes == []
    stages.fuse(loaded, stages.encode_content(loaded, image(2, 24, 40)), style, seed=0)
    assert sizes == [(24, 40)]


def test_the_style_cache_keeps_a_few_content_sizes_only(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    style = stages.encode_style(loaded, image(1, 32, 32, seed=1))
    for side in range(16, 16 + 8 * 8, 8):
        stages.fuse(loaded, stages.encode_content(loaded, image(1, side, 24)), style, seed=0)
    assert len(style.by_grid) <= 4
    assert (72 // 8, 3) in style.by_grid  # the latest size stays


def test_an_empty_mask_returns_the_content_at_once_and_says_so(comfy, monkeypatch, caplog):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    calls = []
    monkeypatch.setattr(type(loaded.model), "encode_content", lambda self, picture: calls.append(1))
    frames = image(2, 24, 32, channels=4)
    with caplog.at_level(logging.WARNING):
        out = stages.stylize(loaded, frames, image(1, 24, 24, seed=1), seed=0, mask=torch.zeros(24, 32))
    assert torch.equal(out, frames) and calls == [] and comfy.loads == []
    assert "mask is empty" in caplog.text and "MaskEditor" in caplog.text
    inverted = stages.stylize(loaded, frames, image(1, 24, 24, seed=1), seed=0, mask=torch.ones(24, 32),
                              invert_mask=True)
    assert torch.equal(inverted, frames)


def test_images_whose_mask_is_empty_are_skipped_and_the_others_stylized(comfy, caplog):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    frames = image(3, 24, 32)
    masks = torch.zeros(3, 24, 32)
    masks[1] = 1.0
    with caplog.at_level(logging.WARNING):
        out = stages.stylize(loaded, frames, image(1, 24, 24, seed=1), seed=0, processing_size=0, mask=masks)
    assert torch.equal(out[0], frames[0]) and torch.equal(out[2], frames[2])
    assert not torch.equal(out[1], frames[1])
    assert "image(s) 1, 3 of the batch" in caplog.text
    assert_truthful(comfy.progress, skipped_images=1)


def test_a_wrong_checkpoint_name_says_which_and_lists_what_the_folder_holds(comfy):
    with pytest.raises(ValueError) as error:
        comfy.stages.load_model("gone.safetensors")
    message = str(error.value)
    assert "'gone.safetensors' is not in the mambast model folder" in message
    assert "official/, small.safetensors" in message and "No Mamba-ST weights found" not in message


def test_example_inputs_are_copied_without_overwriting_what_the_user_has(comfy, tmp_path, caplog):
    examples = importlib.import_module(comfy.pack.__name__ + ".nodes.examples")
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "mambast_example_style.jpg").write_bytes(b"the user's own file")
    copied = examples.install_example_inputs(folder)
    assert "mambast_example_style.jpg" not in copied and "mambast_example_frames.mp4" in copied
    assert (folder / "mambast_example_style.jpg").read_bytes() == b"the user's own file"
    assert (folder / "mambast_example_style_2.jpg").read_bytes() == \
        (examples.SOURCE / "mambast_example_style_2.jpg").read_bytes()
    assert examples.install_example_inputs(folder) == []
    assert not list(folder.glob(".*partial"))
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the input folder should be")
    with caplog.at_level(logging.WARNING):
        assert examples.install_example_inputs(blocked) == []
    assert "could not copy" in caplog.text


@pytest.mark.parametrize("height, width", [(1, 1), (7, 7), (4, 4), (1, 10000)])
def test_tiny_images_and_thin_strips_are_stylized_at_the_size_the_model_needs(comfy, monkeypatch, height, width):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors")
    encode_content = type(loaded.model).encode_content
    sizes = []
    monkeypatch.setattr(type(loaded.model), "encode_content",
                        lambda self, picture: sizes.append(tuple(picture.shape[-2:])) or encode_content(self, picture))
    out = stages.stylize(loaded, image(1, height, width), image(1, 32, 32, seed=1), seed=0, processing_size=512)
    assert out.shape == (1, height, width, 3) and torch.isfinite(out).all()
    assert min(sizes[0]) == 8  # enlarged only to the 8 px the model needs, never to 512
    with pytest.raises(ValueError, match="both sides must be at least 8"):  # the staged node says so
        stages.encode_content(loaded, image(1, height, width))
