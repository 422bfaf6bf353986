"""Node logic against small fakes of ComfyUI: folders, batches, staged = all-in-one, Cancel."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest
import torch

from comfy_fakes import ROOT, Interrupted, import_pack


def image(batch, height, width, channels=3, seed=0):
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))


def test_pack_imports_without_comfyui_and_exposes_the_entry_point():
    pack = import_pack()
    assert callable(pack.comfy_entrypoint) and pack.WEB_DIRECTORY == "./web"


def test_library_never_imports_comfyui():
    for path in (ROOT / "mambast").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(comfy|folder_paths|server|nodes)\b", text, re.M), path


def test_model_folder_keeps_extra_paths_and_lists_model_files_only(comfy, tmp_path):
    extra = tmp_path / "extra_models"
    (extra / "nested").mkdir(parents=True)
    (extra / "nested" / "other.safetensors").write_bytes(b"")
    folder_paths = importlib.import_module("folder_paths")
    folder_paths.folder_names_and_paths["mambast"] = ([str(extra)], set())
    comfy.host.register_model_folder()
    folders = comfy.host.model_folders()
    assert folders == [str(extra), os.path.join(str(comfy.models_dir), "mambast")]
    assert comfy.host.list_checkpoints() == ["nested/other.safetensors", "official/", "small.safetensors"]


@pytest.mark.parametrize("checkpoint", ["small.safetensors", "official/"])
def test_loader_reads_single_files_and_official_folders(comfy, checkpoint):
    loaded = comfy.stages.load_model(checkpoint, "auto", "auto")
    assert loaded.model.config.d_model == 64
    assert loaded.model.dtype == torch.float32
    assert loaded.patcher.load_device == torch.device("cpu")


def test_missing_weights_name_the_folders_searched_and_where_to_download(comfy):
    with pytest.raises(ValueError) as error:
        comfy.stages.load_model("gone.safetensors", "auto", "auto")
    message = str(error.value)
    assert "'gone.safetensors' is not in the mambast model folder" in message
    assert str(comfy.models_dir / "mambast") in message and "drive.google.com" in message


def test_unknown_combo_values_are_refused(comfy):
    with pytest.raises(ValueError, match="dtype: 'float8' is not one of"):
        comfy.stages.load_model("small.safetensors", "float8", "auto")
    with pytest.raises(ValueError, match="scan backend: 'fast'"):
        comfy.stages.load_model("small.safetensors", "auto", "fast")


def test_staged_nodes_equal_the_all_in_one_node(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    contents, style = image(2, 37, 53), image(1, 40, 30, seed=1)
    staged = stages.decode(loaded, stages.fuse(loaded, stages.encode_content(loaded, contents),
                                               stages.encode_style(loaded, style), seed=7, shuffle=True))
    direct = stages.stylize(loaded, contents, style, seed=7, shuffle=True, processing_size=0)
    assert staged.shape == (2, 37, 53, 3)
    assert torch.equal(staged, direct)
    assert 0.0 <= float(staged.min()) and float(staged.max()) <= 1.0


def test_pairwise_styles_staged_equal_all_in_one(comfy):
    stages = comfy.stages
    loaded = stages.load_model("official/", "auto", "auto")
    contents, styles = image(2, 24, 32), image(2, 24, 24, seed=3)
    staged = stages.decode(loaded, stages.fuse(loaded, stages.encode_content(loaded, contents),
                                               stages.encode_style(loaded, styles), seed=1))
    assert torch.equal(staged, stages.stylize(loaded, contents, styles, seed=1, processing_size=0))


def test_four_frames_with_one_style_encode_it_once_and_share_one_permutation_set(comfy, monkeypatch):
    stages = comfy.stages
    shuffle = importlib.import_module(comfy.pack.__name__ + ".mambast.controls.shuffle")
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    calls = {"style": 0}
    original = type(loaded.model).encode_style

    def counting(self, *args, **kwargs):
        calls["style"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(loaded.model), "encode_style", counting)
    used = []
    monkeypatch.setattr(loaded.model.mamba.decoder, "forward", _recording(loaded.model.mamba.decoder.forward, used))
    shuffle.style_permutations.cache_clear()
    frames = image(4, 32, 48)
    stages.stylize(loaded, frames, image(1, 64, 64, seed=2), seed=123)
    assert calls["style"] == 1
    assert shuffle.style_permutations.cache_info().misses == 1
    assert len(used) == 4 and all(all(a is b for a, b in zip(used[0], perms)) for perms in used)

    calls["style"] = 0
    style = stages.encode_style(loaded, image(1, 64, 64, seed=2))
    content = stages.encode_content(loaded, frames)
    stages.fuse(loaded, content, style, seed=123)
    stages.fuse(loaded, content, style, seed=124)
    assert calls["style"] == 1  # once, on the frames' grid, then cached (never at its own size)


def _recording(forward, used):
    def wrapper(content, style, grid, permutations):
        used.append(list(permutations))
        return forward(content, style, grid, permutations)
    return wrapper


def test_unpairable_batches_name_both_sizes_and_the_rule(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    with pytest.raises(ValueError, match=r"3 content image\(s\) with 2 style image\(s\).*one style"):
        stages.stylize(loaded, image(3, 16, 16), image(2, 16, 16), seed=0)


def test_alpha_is_kept_and_grey_is_handled(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    rgba = image(1, 24, 24, channels=4)
    out = stages.stylize(loaded, rgba, image(1, 24, 24, channels=1, seed=1), seed=0, processing_size=0)
    assert out.shape == (1, 24, 24, 4) and torch.equal(out[..., 3], rgba[..., 3])
    grey = stages.stylize(loaded, image(1, 24, 24, channels=1), image(1, 24, 24, seed=1), seed=0)
    assert grey.shape == (1, 24, 24, 3)


def test_processing_size_works_smaller_and_returns_the_content_size(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    out = stages.stylize(loaded, image(1, 60, 90), image(1, 30, 30, seed=1), seed=0, processing_size=24)
    assert out.shape == (1, 60, 90, 3)


def test_bad_image_input_names_the_input(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    with pytest.raises(ValueError, match="style image: expected an IMAGE"):
        stages.encode_style(loaded, torch.rand(1, 3, 16, 16, 5))


def test_memory_is_requested_before_running_and_progress_reaches_the_end(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    stages.stylize(loaded, image(2, 32, 32), image(1, 32, 32, seed=1), seed=0)
    patcher, memory = comfy.loads[-1]
    assert patcher is loaded.patcher and memory > 0
    values = [value for value, _ in comfy.progress]
    assert values == sorted(values) and comfy.progress[-1][0] == comfy.progress[-1][1]


def test_cancel_stops_at_the_next_check_within_a_scan_chunk(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    checks = {"count": 0, "after_cancel": 0}

    def press_cancel_mid_run():
        checks["count"] += 1
        if checks["count"] == 20:
            comfy.interrupt = True
        elif checks["count"] > 20:
            checks["after_cancel"] += 1

    comfy.on_interrupt_check = press_cancel_mid_run
    with pytest.raises(Interrupted):
        stages.stylize(loaded, image(4, 64, 64), image(1, 64, 64, seed=1), seed=0)
    assert checks["after_cancel"] == 0
    assert comfy.progress[-1][0] < comfy.progress[-1][1]


def test_the_nodes_send_a_few_progress_messages_a_second_and_always_the_last(comfy, monkeypatch):
    stages = comfy.stages
    monkeypatch.setattr(stages, "PROGRESS_INTERVAL", 3600.0)  # nothing but the first and the last
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    checks = []
    comfy.on_interrupt_check = lambda: checks.append(1)
    stages.stylize(loaded, image(2, 64, 64), image(1, 64, 64, seed=1), seed=0, processing_size=0)
    assert len(comfy.progress) == 2 and comfy.progress[-1][0] == comfy.progress[-1][1] > 2
    assert len(checks) >= comfy.progress[-1][1]  # Cancel is still checked at every tick


def test_a_throttled_report_passes_the_first_then_one_per_interval_then_the_last():
    from mambast.utils.progress import ThrottledReport

    now, seen = [0.0], []
    throttled = ThrottledReport(lambda done, total: seen.append(done), 0.25, clock=lambda: now[0])
    for done in range(1, 11):
        throttled(done, 10)
        now[0] += 0.1
    throttled.flush()
    throttled.flush()  # nothing held back any more
    assert seen == [1, 4, 7, 10]


def test_a_report_passed_now_goes_at_once_and_supersedes_the_one_held_back():
    from mambast.utils.progress import ThrottledReport

    now, seen = [0.0], []
    throttled = ThrottledReport(lambda state: seen.append(state), 0.25, clock=lambda: now[0])
    throttled({"done": 1})
    throttled({"done": 2})  # held back
    throttled.now({"state": "done"})
    throttled.flush()  # the held one is gone: the last word stays the final state
    throttled({"done": 3})  # within the interval of the final state
    assert seen == [{"done": 1}, {"state": "done"}]


def test_cancel_is_checked_at_least_once_per_scan_chunk(comfy):
    stages = comfy.stages
    resources = importlib.import_module(comfy.pack.__name__ + ".mambast.run.resources")
    scan = importlib.import_module(comfy.pack.__name__ + ".mambast.kernels.scan")
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    backend = loaded.model.scan_backend
    checks = []
    comfy.on_interrupt_check = lambda: checks.append(1)
    stages.stylize(loaded, image(1, 96, 96), image(1, 96, 96, seed=1), seed=0, processing_size=0)
    config = loaded.model.config
    scans = 2 * config.encoder_layers + config.decoder_layers
    assert scan.scan_ticks(backend, 12 * 12) >= 1
    assert len(checks) >= scans * scan.scan_ticks(backend, 12 * 12)
    # Every progress tick is a check, and long layers add checks between their bands and phases.
    assert len(checks) >= resources.stylize_ticks(config, 96, 96, backend, style_images=1)


def test_status_reports_device_backend_and_whether_weights_load(comfy, tmp_path):
    status = importlib.import_module(comfy.pack.__name__ + ".nodes.status")
    scan = importlib.import_module(comfy.pack.__name__ + ".mambast.kernels.scan")
    automatic = "numba" if scan.numba_available() else "chunked"
    good = status.status_report("small.safetensors", "auto")
    assert good["ok"] and good["device"] == "cpu" and good["scan"] == automatic and good["dtype"] == "float32"
    # what "auto" resolves to here (the tests pin it to float32, see conftest)
    hint = "" if scan.numba_available() else f" | {status.NUMBA_HINT}"
    assert good["summary"] == f"cpu | {automatic} scan | float32 (auto) | 2+2 layers, d_model 64, d_state 8{hint}"
    chosen = status.status_report("small.safetensors", "chunked", "bfloat16")
    assert chosen["summary"] == f"cpu | chunked scan | bfloat16 | 2+2 layers, d_model 64, d_state 8{hint}"
    unknown = status.status_report("small.safetensors", "auto", "float8")
    assert not unknown["ok"] and "dtype" in unknown["message"] and "float32" in unknown["message"]
    assert unknown["summary"].endswith("not usable: " + unknown["short"])
    broken = Path(comfy.models_dir) / "mambast" / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    bad = status.status_report("broken.safetensors", "reference")
    assert not bad["ok"] and "broken.safetensors" in bad["message"] and bad["scan"] == "reference"
    assert "not usable" in bad["summary"]


def test_status_on_a_cpu_without_numba_says_what_installing_it_gains(comfy, monkeypatch):
    status = importlib.import_module(comfy.pack.__name__ + ".nodes.status")
    monkeypatch.setattr(status.mambast, "numba_available", lambda: False)
    report = status.status_report("small.safetensors", "auto")
    assert report["ok"] and report["hint"] == status.NUMBA_HINT and report["summary"].endswith(status.NUMBA_HINT)
    monkeypatch.setattr(status.mambast, "numba_available", lambda: True)
    assert "hint" not in status.status_report("small.safetensors", "auto")


def test_status_without_any_weights_says_where_to_get_them(comfy):
    status = importlib.import_module(comfy.pack.__name__ + ".nodes.status")
    for path in (Path(comfy.models_dir) / "mambast").rglob("*"):
        if path.is_file():
            path.unlink()
    report = status.status_report(None, "auto")
    assert not report["ok"] and "drive.google.com" in report["message"]


def test_staged_controls_equal_the_all_in_one_node(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    frames, style, second = image(3, 32, 40), image(1, 48, 48, seed=1), image(1, 24, 40, seed=2)
    mask = torch.zeros(1, 16, 20)
    mask[:, 4:12, 5:15] = 1.0
    content = stages.encode_content(loaded, frames)
    blended = stages.blend_styles(stages.encode_style(loaded, style, style_scale=1.5),
                                  stages.encode_style(loaded, second, style_scale=1.5), 0.3, seed=5)
    decoded = stages.decode(loaded, stages.fuse(loaded, content, blended, seed=5, strength=0.7,
                                                temporal_smoothing=0.4))
    staged = stages.mask_composite(frames, stages.keep_colour(frames, decoded), mask, feather=3, invert=True)
    direct = stages.stylize(loaded, frames, style, seed=5, processing_size=0, strength=0.7, style_scale=1.5,
                            colour="keep content", temporal_smoothing=0.4, mask=mask, feather=3, invert_mask=True,
                            second_style=second, second_style_weight=0.3)
    assert torch.equal(staged, direct)


def test_matching_colour_before_encoding_equals_the_all_in_one_option(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    frames, style = image(2, 24, 24), image(1, 24, 24, seed=1)
    recoloured = stages.match_style_colour(style, frames)
    staged = stages.decode(loaded, stages.fuse(loaded, stages.encode_content(loaded, frames),
                                               stages.encode_style(loaded, recoloured), seed=2))
    direct = stages.stylize(loaded, frames, style, seed=2, processing_size=0, colour="match style to content")
    assert torch.equal(staged, direct)


def test_strength_zero_asks_for_no_style_and_unconnected_inputs_are_never_requested(comfy):
    needed = comfy.stages.needed_style_inputs
    assert needed(0.0, {"style": None, "style_2": None}, 0.5) == []
    assert needed(0.5, {"style": None, "style_2": None}, 0.5) == ["style", "style_2"]
    assert needed(0.5, {"style": None}, 0.5) == ["style"]
    assert needed(1.0, {"style": object()}, 0.0) == []
    loaded = comfy.stages.load_model("small.safetensors", "auto", "auto")
    frames = image(1, 24, 24)
    identity = comfy.stages.stylize(loaded, frames, None, seed=1, processing_size=0, strength=0.0)
    staged = comfy.stages.decode(loaded, comfy.stages.fuse(loaded, comfy.stages.encode_content(loaded, frames),
                                                           None, seed=1, strength=0.0))
    assert torch.equal(identity, staged)


def test_composite_nodes_check_their_inputs(comfy):
    stages = comfy.stages
    with pytest.raises(ValueError, match="stylized image is 1x20x20"):
        stages.keep_colour(image(1, 24, 24), image(1, 20, 20))
    with pytest.raises(ValueError, match="colour: 'sepia'"):
        stages.stylize(stages.load_model("small.safetensors", "auto", "auto"), image(1, 16, 16),
                       image(1, 16, 16), seed=0, colour="sepia")
    out = stages.mask_composite(image(1, 16, 16), image(1, 16, 16, seed=1), torch.zeros(1, 8, 8))
    assert torch.equal(out, image(1, 16, 16))


def test_all_in_one_tiles_large_images_with_every_control(comfy):
    stages = comfy.stages
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    content, style, second = image(2, 40, 72), image(1, 32, 32, seed=1), image(1, 24, 24, seed=2)
    controls = dict(seed=3, processing_size=0, strength=0.6, style_scale=1.5, temporal_smoothing=0.3,
                    second_style=second, second_style_weight=0.4, colour="keep content")
    whole = stages.stylize(loaded, content, style, tile_size=80, **controls)
    assert torch.equal(whole, stages.stylize(loaded, content, style, **controls))
    tiled = stages.stylize(loaded, content, style, tile_size=32, **controls)
    assert tiled.shape == (2, 40, 72, 3) and 0 <= float(tiled.min()) and float(tiled.max()) <= 1
    assert not torch.equal(tiled, whole)
    with pytest.raises(ValueError, match="tile size must be 0"):
        stages.stylize(loaded, content, style, seed=3, tile_size=30)
