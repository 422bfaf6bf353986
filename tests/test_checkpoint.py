"""Loading is safe and explicit: bad files are refused with the file, key and shapes named."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

import mambast
from mambast.network.checkpoint import CheckpointError, classify_state_dict, convert_to_safetensors, read_checkpoint
from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors, write_official_folder


def test_missing_tensor_names_file_key_and_expected_shape(tmp_path, small_tensors):
    tensors = dict(small_tensors)
    del tensors["mamba.decoder.layers.1.self_attention.x_proj_weight"]
    write_official_folder(tensors, tmp_path)
    with pytest.raises(CheckpointError) as error:
        mambast.load(tmp_path, device="cpu")
    message = str(error.value)
    assert "mamba_iter_160000.pth" in message
    assert "'mamba.decoder.layers.1.self_attention.x_proj_weight'" in message
    assert "(4, 8, 128)" in message


def test_misshaped_tensor_names_file_key_expected_and_found_shapes(tmp_path, small_tensors):
    tensors = dict(small_tensors)
    tensors["decoder.5.weight"] = torch.zeros(32, 32, 5, 5)
    path = tmp_path / "weights.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as error:
        mambast.load(path, device="cpu")
    message = str(error.value)
    assert str(path) in message and "'decoder.5.weight'" in message
    assert "(32, 32, 5, 5)" in message and "(32, 32, 3, 3)" in message


def test_unexpected_tensor_is_refused(tmp_path, small_tensors):
    path = tmp_path / "weights.safetensors"
    save_file({**small_tensors, "mamba.extra.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'mamba\.extra\.weight' \(shape \(2,\)\)"):
        mambast.load(path, device="cpu")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, small_tensors):
    marker = tmp_path / "code_ran"
    write_official_folder(small_tensors, tmp_path)
    evil = tmp_path / "embedding_iter_160000.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"proj.weight": _RunsCode(marker)}, handle)
    with pytest.raises(CheckpointError, match="refused to load") as error:
        mambast.load(tmp_path, device="cpu")
    assert "embedding_iter_160000.pth" in str(error.value)
    assert not marker.exists()


def test_not_a_weights_file_says_so(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as PyTorch weights"):
        read_checkpoint(path)


def test_folder_without_weights_names_what_is_missing_and_where_to_get_it(tmp_path):
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(tmp_path)
    assert "drive.google.com" in str(error.value)
    assert "decoder / embedding / mamba" in str(error.value)


def test_two_sets_of_weights_in_one_folder_are_refused(tmp_path, small_tensors):
    write_official_folder(small_tensors, tmp_path, mamba_name="mamba_iter_160000.pth")
    write_official_folder(small_tensors, tmp_path, mamba_name="transformer_iter_150000.pth")
    with pytest.raises(CheckpointError, match="several mamba files"):
        read_checkpoint(tmp_path)


def test_files_are_recognised_by_their_keys():
    tensors = random_official_tensors(SMALL_CONFIG)
    for part in ("decoder", "embedding", "mamba"):
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(part + ".")}
        assert classify_state_dict(state) == part
    assert classify_state_dict({"0.weight": torch.zeros(3, 3, 1, 1), "2.weight": torch.zeros(1)}) == "vgg"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_safetensors_load_into_the_requested_dtype(tmp_path, small_tensors, dtype):
    folder = write_official_folder(small_tensors, tmp_path / "official")
    converted = tmp_path / "converted.safetensors"
    count = convert_to_safetensors(folder, converted, dtype=dtype)
    assert count == len(small_tensors)
    as_float = mambast.load(converted, device="cpu")
    assert as_float.dtype == torch.float32
    expected = small_tensors["mamba.encoder_s.layers.0.self_attention.in_proj.weight"].to(getattr(torch, dtype))
    assert torch.equal(as_float.state_dict()["mamba.encoder_s.layers.0.self_attention.in_proj.weight"],
                       expected.float())
    as_bf16 = mambast.load(converted, device="cpu", dtype="bfloat16")
    assert as_bf16.dtype == torch.bfloat16


def test_conversion_keeps_every_official_tensor(tmp_path, small_tensors):
    folder = write_official_folder(small_tensors, tmp_path / "official")
    converted = tmp_path / "converted.safetensors"
    convert_to_safetensors(folder, converted)
    tensors = read_checkpoint(converted).tensors
    assert set(tensors) == set(small_tensors)
    assert all(torch.equal(tensors[k], small_tensors[k]) for k in tensors)
    assert any(re.search(r"new_ps|skip_scale2", k) for k in tensors)
