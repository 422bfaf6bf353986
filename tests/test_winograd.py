"""The CNN decoder's 3x3 convolutions through NNPACK's Winograd kernels equal oneDNN's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mambast import winograd


@pytest.mark.parametrize("band_pixels, calls_expected", [(65536, 1), (64, 10)])
def test_winograd_convolution_equals_the_ordinary_one(band_pixels, calls_expected, monkeypatch):
    if not winograd.nnpack_available():
        pytest.skip("this PyTorch build has no NNPACK")
    monkeypatch.setattr(winograd, "BAND_PIXELS", band_pixels)  # 64 px: bands of 2 of the 19 rows
    g = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(16, 8, 3)
    image = torch.randn(2, 16, 21, 34, generator=g)
    expected = F.conv2d(image, layer.weight, layer.bias)
    calls = []
    original = torch._nnpack_spatial_convolution

    def counted(*args):
        calls.append(1)
        return original(*args)

    with torch.inference_mode():
        torch._nnpack_spatial_convolution = counted
        try:
            got = winograd.conv3x3(layer, image.contiguous(memory_format=torch.channels_last))
        finally:
            torch._nnpack_spatial_convolution = original
    assert len(calls) == calls_expected
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("layer, dtype", [(nn.Conv2d(4, 4, 3, padding=1), torch.float32),
                                          (nn.Conv2d(4, 4, 3, stride=2), torch.float32),
                                          (nn.Conv2d(4, 4, 5), torch.float32),
                                          (nn.Conv2d(4, 4, 3), torch.float64)])
def test_other_convolutions_take_the_ordinary_path(layer, dtype, monkeypatch):
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: pytest.fail("NNPACK used"))
    layer = layer.to(dtype)
    image = torch.randn(1, 4, 12, 12, dtype=dtype)
    assert torch.equal(winograd.conv3x3(layer, image), layer(image))


def test_an_nnpack_failure_falls_back(monkeypatch):
    def refuse(*args):
        raise RuntimeError("NNPACK refused")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    monkeypatch.setattr(winograd, "nnpack_available", lambda: True)
    layer = nn.Conv2d(4, 4, 3)
    image = torch.randn(1, 4, 12, 12)
    assert torch.equal(winograd.conv3x3(layer, image), layer(image))


def test_decoder_with_winograd_matches_the_ordinary_decoder(small_model, monkeypatch):
    features = torch.randn(1, small_model.config.d_model, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast = small_model.decode(features)
        monkeypatch.setattr("mambast.model.nnpack_available", lambda: False)
        ordinary = small_model.decode(features)
    assert (fast - ordinary).abs().max() <= 1e-4 * ordinary.abs().max()


def test_heavy_convolutions_go_in_bands_of_bounded_work_with_cancel_checks_between(monkeypatch):
    if not winograd.nnpack_available():
        pytest.skip("this PyTorch build has no NNPACK")
    from mambast.progress import progress_callback

    layer = nn.Conv2d(16, 8, 3)
    image = torch.randn(1, 16, 21, 34, generator=torch.Generator().manual_seed(2))
    # 16 * 9 * 8 multiply-accumulates per output pixel; a cap of 3 rows of 32 pixels: 7 bands of the 19 rows.
    monkeypatch.setattr(winograd, "BAND_MACS", 3 * 32 * 16 * 9 * 8)
    checks = []
    with torch.inference_mode(), progress_callback(None, None, lambda: checks.append(1)):
        got = winograd.conv3x3(layer, image)
    assert len(checks) == 7
    expected = F.conv2d(image, layer.weight, layer.bias)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
