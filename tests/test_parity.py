"""Our fuse and stylize reproduce the official code's outputs (../shared/fixtures/parity_small)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mambast
from mambast.controls.shuffle import style_permutations
from mambast.network.random_weights import write_official_folder
from mambast.utils.imaging import read_image

from conftest import PARITY, needs_parity, parity_cases

pytestmark = needs_parity()
CASES = parity_cases()


@pytest.fixture(scope="module", params=["safetensors", "official folder"])
def checkpoint_path(request, tmp_path_factory):
    if request.param == "safetensors":
        return PARITY / "weights.safetensors"
    tensors = mambast.read_checkpoint(PARITY / "weights.safetensors").tensors
    folder = tmp_path_factory.mktemp("parity_official")
    return write_official_folder({k: v.float() for k, v in tensors.items()}, folder,
                                 mamba_name="transformer_iter_160000.pth")


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_fuse_and_stylize_match_reference_outputs(checkpoint_path, backend, case):
    model = mambast.load(checkpoint_path, device="cpu", scan=backend)
    folder = PARITY / "cases" / case["case"]
    content, style = read_image(folder / "content.png"), read_image(folder / "style.png")
    with torch.inference_mode():
        content_encoding = model.encode_content(content)
        style_encoding = model.encode_style(style, content_encoding.padded_size)
        features = model.fuse(content_encoding, style_encoding, seed=case["seed"], shuffle=case["shuffle"])
        stylized = model.stylize(content, style, seed=case["seed"], shuffle=case["shuffle"])
    assert np.abs(features.numpy() - np.load(folder / "hs.npy")).max() <= 1e-4
    assert np.abs(stylized.numpy() - np.load(folder / "expected_ics.npy")).max() <= 1e-4


@pytest.mark.parametrize("case", [c for c in CASES if c["shuffle"]], ids=lambda c: c["case"])
def test_style_permutations_match_the_reference_draws(case):
    expected = np.load(PARITY / "cases" / case["case"] / "perms.npy")
    got = style_permutations(case["seed"], case["tokens"], expected.shape[0])
    assert np.array_equal(np.stack([p.numpy() for p in got]), expected)


def test_a_wrong_seed_is_detected_by_the_fixture_tolerance():
    case = next(c for c in CASES if c["shuffle"])
    model = mambast.load(PARITY / "weights.safetensors", device="cpu")
    folder = PARITY / "cases" / case["case"]
    with torch.inference_mode():
        stylized = model.stylize(read_image(folder / "content.png"), read_image(folder / "style.png"),
                                 seed=case["seed"] + 1)
    assert np.abs(stylized.numpy() - np.load(folder / "expected_ics.npy")).max() > 1e-3
