"""Damaged, mixed-up and hostile weights end in a CheckpointError that names the file and says what to do.

Every file here is built under tmp_path from the random official-layout weights.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import mambast
from mambast.network.checkpoint import CheckpointError, read_checkpoint
from mambast.network.random_weights import write_official_folder

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _safetensors_with_header(path, header: dict, data: bytes = bytes(16)):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _part(tensors, part):
    return {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(part + ".")}


@pytest.fixture()
def never_reaches_safetensors(monkeypatch):
    """Fail the test if safetensors' own reader is called: the header check must refuse first."""
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("safetensors.load_file was called on a file the header check should refuse")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)


# 1. Truncated files

def test_truncated_pth_names_the_file_and_says_re_download(tmp_path, small_tensors):
    folder = write_official_folder(small_tensors, tmp_path)
    _cut_in_half(folder / "mamba_iter_160000.pth")
    with pytest.raises(CheckpointError) as error:
        mambast.load(folder, device="cpu")
    message = str(error.value)
    assert "mamba_iter_160000.pth" in message and "Re-download" in message
    assert "damaged or incomplete" in message


def test_truncated_safetensors_names_the_file_and_first_missing_tensor(tmp_path, small_tensors,
                                                                       never_reaches_safetensors):
    path = tmp_path / "weights.safetensors"
    save_file(small_tensors, str(path))
    _cut_in_half(path)
    with pytest.raises(CheckpointError, match=r"tensor 'mamba\.[^']+' lies past the end of the file") as error:
        read_checkpoint(path)
    assert str(path) in str(error.value) and "truncated" in str(error.value) and "Re-download" in str(error.value)


# 2. Wrong shapes (test_checkpoint.py covers a resized tensor)

def test_tensor_with_wrong_number_of_dimensions_is_named_not_crashed(tmp_path, small_tensors):
    tensors = dict(small_tensors)
    key = "mamba.encoder_c.layers.0.self_attention.A_logs"  # one the architecture is read from
    tensors[key] = tensors[key].flatten()
    path = tmp_path / "weights.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as error:
        mambast.load(path, device="cpu")
    message = str(error.value)
    assert str(path) in message and repr(key) in message and "(4096,)" in message and "2 dimensions" in message


# 3. NaN and Inf weights are refused

@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensors_and_their_count(tmp_path, small_tensors, bad_value):
    tensors = {k: v.clone() for k, v in small_tensors.items()}
    bad = ["decoder.1.weight", "mamba.decoder.norm.weight", "mamba.encoder_s.layers.1.self_attention.Ds",
           "mamba.encoder_c.layers.0.self_attention.in_proj.weight"]
    for key in bad:
        tensors[key].view(-1)[3] = bad_value
    path = tmp_path / "weights.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as error:
        mambast.load(path, device="cpu")
    message = str(error.value)
    assert str(path) in message and "4 tensor(s) hold NaN or infinite values" in message and "1 more" in message
    assert "'decoder.1.weight'" in message and "corrupt" in message and "Re-download" in message


def test_non_finite_weights_name_the_official_file_that_holds_them(tmp_path, small_tensors):
    tensors = {k: v.clone() for k, v in small_tensors.items()}
    tensors["embedding.proj.bias"][0] = float("nan")
    folder = write_official_folder(tensors, tmp_path)
    with pytest.raises(CheckpointError, match=r"embedding_iter_160000\.pth: 1 tensor\(s\) hold NaN .*'embedding\."
                                              r"proj\.bias'"):
        mambast.validate(read_checkpoint(folder))


# 4. Hostile safetensors headers are refused before anything is allocated

def test_safetensors_header_length_beyond_the_file_is_refused(tmp_path, never_reaches_safetensors):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2 ** 60) + b"{}")
    with pytest.raises(CheckpointError, match=r"header claims 1152921504606846976 bytes but the file has 10"):
        read_checkpoint(path)


def test_safetensors_header_over_the_size_cap_is_refused(tmp_path, never_reaches_safetensors):
    path = tmp_path / "big_header.safetensors"
    path.write_bytes(struct.pack("<Q", 200 * 1024 * 1024) + b"{" + bytes(1024))
    with pytest.raises(CheckpointError, match=r"big_header\.safetensors: its header claims 209715200 bytes"):
        read_checkpoint(path)


def test_safetensors_tensor_past_the_end_of_the_file_is_refused_naming_it(tmp_path, never_reaches_safetensors):
    path = _safetensors_with_header(tmp_path / "w.safetensors", {
        "__metadata__": {"format": "pt"},
        "mamba.huge": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 2 ** 62]}})
    with pytest.raises(CheckpointError, match=r"tensor 'mamba\.huge' lies past the end of the file"):
        read_checkpoint(path)


def test_safetensors_tensor_whose_shape_does_not_match_its_bytes_is_refused(tmp_path, never_reaches_safetensors):
    path = _safetensors_with_header(tmp_path / "w.safetensors", {
        "mamba.huge": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 16]}})
    with pytest.raises(CheckpointError, match=r"'mamba\.huge' is declared F32 of shape \(1099511627776, "
                                              r"1099511627776\) \(\d+ bytes\) but holds 16 bytes"):
        read_checkpoint(path)


@pytest.mark.parametrize("entry", [{"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]},
                                   {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]},
                                   {"dtype": "F32", "shape": [4]},
                                   "not a table"],
                         ids=["negative size", "reversed offsets", "no offsets", "not a table"])
def test_safetensors_unreadable_tensor_entry_is_refused_naming_it(tmp_path, never_reaches_safetensors, entry):
    path = _safetensors_with_header(tmp_path / "w.safetensors", {"mamba.odd": entry})
    with pytest.raises(CheckpointError, match=r"tensor 'mamba\.odd' has an unreadable entry"):
        read_checkpoint(path)


def test_safetensors_header_that_is_not_json_is_refused(tmp_path, never_reaches_safetensors):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 8) + b"\xff\xfe[[[[[[" + bytes(8))
    with pytest.raises(CheckpointError, match="header is not a JSON table of tensors"):
        read_checkpoint(path)


# 6. An empty folder

def test_empty_folder_says_it_holds_no_weights_and_which_files_to_put_there(tmp_path):
    with pytest.raises(CheckpointError) as error:
        mambast.load(tmp_path, device="cpu")
    message = str(error.value)
    assert str(tmp_path) in message and "holds no weights" in message
    assert "decoder_iter_160000.pth" in message and "drive.google.com" in message


# 7. Files of different checkpoints in one folder

def test_files_of_different_iterations_are_refused_naming_files_and_iterations(tmp_path, small_tensors):
    folder = write_official_folder(small_tensors, tmp_path)
    (folder / "mamba_iter_160000.pth").rename(folder / "mamba_iter_80000.pth")
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(folder)
    message = str(error.value)
    assert "mamba_iter_80000.pth (iteration 80000)" in message
    assert "decoder_iter_160000.pth (iteration 160000)" in message and "keep one set per folder" in message.lower()


@pytest.mark.parametrize("foreign_part", ["embedding", "decoder"])
def test_parts_of_models_with_different_widths_name_both_files(tmp_path, small_tensors, foreign_part):
    from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors

    import dataclasses
    narrow = dataclasses.replace(SMALL_CONFIG, d_model=32, decoder_channels=(32,) + SMALL_CONFIG.decoder_channels[1:])
    folder = write_official_folder(small_tensors, tmp_path)
    torch.save(_part(random_official_tensors(narrow, seed=3), foreign_part), folder / f"{foreign_part}_iter_160000.pth")
    with pytest.raises(CheckpointError) as error:
        mambast.load(folder, device="cpu")
    message = str(error.value)
    assert f"{foreign_part}_iter_160000.pth: 32" in message and "mamba_iter_160000.pth: 64" in message
    assert "different models" in message


# 8. .sft and upper-case suffixes

@pytest.mark.parametrize("name", ["weights.sft", "weights.SAFETENSORS", "weights.Sft"])
def test_sft_and_upper_case_safetensors_load_like_safetensors(tmp_path, small_tensors, name):
    save_file(small_tensors, str(tmp_path / name))
    assert mambast.load(tmp_path / name, device="cpu").config.d_model == 64


def test_upper_case_pth_files_are_read_in_an_official_folder(tmp_path, small_tensors):
    folder = write_official_folder(small_tensors, tmp_path)
    for path in list(folder.iterdir()):
        path.rename(path.with_suffix(".PTH"))
    assert len(read_checkpoint(folder).tensors) == len(small_tensors)


def test_truncated_sft_gets_the_same_header_check(tmp_path, small_tensors, never_reaches_safetensors):
    path = tmp_path / "weights.sft"
    save_file(small_tensors, str(path))
    _cut_in_half(path)
    with pytest.raises(CheckpointError, match=r"lies past the end of the file .*the file is truncated"):
        read_checkpoint(path)


# 9. Files that are not weights at all

@pytest.mark.parametrize("content, kind", [(PNG, "a PNG image"), (b"<!DOCTYPE html><html>Quota exceeded", "HTML page"),
                                           (b"just some notes\n", "a text file")], ids=["png", "html", "text"])
def test_pth_that_is_not_weights_says_what_it_is(tmp_path, small_tensors, content, kind):
    folder = write_official_folder(small_tensors, tmp_path)
    (folder / "decoder_iter_160000.pth").write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        mambast.load(folder, device="cpu")
    message = str(error.value)
    assert "decoder_iter_160000.pth" in message and kind in message and "not a weights file" in message


def test_png_renamed_safetensors_says_it_is_an_image(tmp_path, never_reaches_safetensors):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(PNG)
    with pytest.raises(CheckpointError, match="it is a PNG image, not a safetensors file"):
        read_checkpoint(path)


@pytest.mark.parametrize("name", ["weights.safetensors", "weights.pth", "weights.sft"])
def test_zero_byte_file_is_refused_as_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"the file is empty \(0 bytes\).*Re-download"):
        read_checkpoint(tmp_path / name)


@pytest.mark.parametrize("name", ["weights.safetensors", "weights.pth"])
def test_folder_named_like_a_weights_file_says_it_is_a_folder(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a weights file"):
        read_checkpoint(tmp_path / name)


def test_folder_inside_an_official_folder_named_like_a_part_is_reported(tmp_path, small_tensors):
    folder = write_official_folder(small_tensors, tmp_path)
    (folder / "decoder_iter_160000.pth").unlink()
    (folder / "decoder_iter_160000.pth").mkdir()
    with pytest.raises(CheckpointError, match=r"no decoder weights .*decoder_iter_160000\.pth: a folder, not a file"):
        read_checkpoint(folder)
