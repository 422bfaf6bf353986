"""The CNN decoder's 3x3 convolutions through NNPACK's Winograd kernels equal oneDNN's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mambast.kernels import fused, winograd
from mambast.kernels.scan import numba_available


def padded_convolution(layer: nn.Conv2d, image: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="reflect"), layer.weight, layer.bias)


@pytest.mark.parametrize("band_pixels, calls_expected", [(65536, 1), (64, 11)])
def test_winograd_stage_equals_the_ordinary_convolution(band_pixels, calls_expected, monkeypatch):
    if not winograd.nnpack_available():
        pytest.skip("this PyTorch build has no NNPACK")
    monkeypatch.setattr(winograd, "BAND_PIXELS", band_pixels)  # 64 px: bands of 2 of the 21 rows
    g = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(16, 64, 3)
    image = torch.randn(2, 16, 21, 32, generator=g)
    expected = padded_convolution(layer, image)
    calls = []
    original = torch._nnpack_spatial_convolution

    def counted(*args):
        calls.append(1)
        return original(*args)

    with torch.inference_mode():
        torch._nnpack_spatial_convolution = counted
        try:
            got = winograd.run_stages([winograd.Stage(layer)], image.contiguous(memory_format=torch.channels_last))
        finally:
            torch._nnpack_spatial_convolution = original
    assert len(calls) == calls_expected
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("layer, dtype", [(nn.Conv2d(4, 4, 3, padding=1), torch.float32),
                                          (nn.Conv2d(4, 32, 3), torch.float32),  # few outputs: oneDNN
                                          (nn.Conv2d(4, 4, 3, stride=2), torch.float32),
                                          (nn.Conv2d(4, 4, 5), torch.float32),
                                          (nn.Conv2d(4, 4, 3), torch.float64)])
def test_other_convolutions_take_the_ordinary_path(layer, dtype, monkeypatch):
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: pytest.fail("NNPACK used"))
    layer = layer.to(dtype)
    image = torch.randn(1, 4, 12, 12, dtype=dtype)
    assert torch.equal(winograd._convolve(layer, image), layer(image))


def test_an_nnpack_failure_falls_back(monkeypatch):
    def refuse(*args):
        raise RuntimeError("NNPACK refused")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    monkeypatch.setattr(winograd, "nnpack_available", lambda: True)
    layer = nn.Conv2d(4, 64, 3)
    image = torch.randn(1, 4, 12, 12)
    assert torch.equal(winograd._convolve(layer, image), layer(image))


def test_decoder_with_winograd_matches_the_ordinary_decoder(small_model, monkeypatch):
    features = torch.randn(1, small_model.config.d_model, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast = small_model.decode(features)
        monkeypatch.setattr("mambast.network.model.nnpack_available", lambda: False)
        ordinary = small_model.decode(features)
    assert (fast - ordinary).abs().max() <= 1e-4 * ordinary.abs().max()


def test_heavy_convolutions_go_in_bands_of_bounded_work_with_cancel_checks_between(monkeypatch):
    if not winograd.nnpack_available():
        pytest.skip("this PyTorch build has no NNPACK")
    from mambast.utils.progress import progress_callback

    layer = nn.Conv2d(16, 64, 3)
    image = torch.randn(1, 16, 19, 32, generator=torch.Generator().manual_seed(2))
    # 16 * 9 * 64 multiply-accumulates per output pixel; a cap of 3 rows of 32 pixels: 7 bands of the 19 rows.
    monkeypatch.setattr(winograd, "BAND_MACS", 3 * 32 * 16 * 9 * 64)
    checks = []
    with torch.inference_mode(), progress_callback(None, None, lambda: checks.append(1)):
        got = winograd.run_stages([winograd.Stage(layer)], image)
    assert len(checks) == 7
    expected = padded_convolution(layer, image)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("path", ["pytorch", "numba"])
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("height, width", [(1, 2), (2, 1), (2, 2), (5, 7), (8, 3), (1, 9)])
def test_band_inputs_are_rows_of_the_upsampled_padded_image(path, scale, height, width, monkeypatch):
    """Through PyTorch's operations, and gathered in one compiled pass where Numba is installed."""
    if path == "numba" and not numba_available():
        pytest.skip("Numba is not installed here")
    if path == "pytorch":
        monkeypatch.setattr(fused, "numba_available", lambda: False)
    image = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(3))
    upsampled = F.interpolate(image, scale_factor=scale, mode="nearest")
    if min(upsampled.shape[2:]) < 2:
        return  # reflection padding needs two pixels a side
    padded = F.pad(upsampled, (1, 1, 1, 1), mode="reflect")
    rows_of = winograd._source_indices(height, scale, image.device)
    assert rows_of.numel() == padded.shape[2]
    gather = fused.gather_band if path == "numba" else winograd.band_input
    with torch.inference_mode():
        for top, bottom in [(0, padded.shape[2]), (0, 2), (1, padded.shape[2]), (padded.shape[2] - 2, padded.shape[2])]:
            band = gather(image, rows_of[top:bottom], scale)
            assert band is not None and band.is_contiguous()
            assert torch.equal(band, padded[:, :, top:bottom])
    if path == "pytorch":
        channels_last = image.contiguous(memory_format=torch.channels_last)
        assert torch.equal(winograd.band_input(channels_last, rows_of, scale), padded)


def test_the_release_decoder_is_read_as_fused_stages():
    from mambast.network.blocks import build_cnn_decoder
    from mambast.network.config import MambaSTConfig

    decoder = build_cnn_decoder(MambaSTConfig())
    stages = winograd.decoder_stages(decoder)
    convolutions = [layer for layer in decoder if isinstance(layer, nn.Conv2d)]
    assert [stage.conv for stage in stages] == convolutions
    assert [stage.scale for stage in stages] == [1, 2, 1, 1, 1, 2, 1, 2, 1]
    assert [stage.relu for stage in stages] == [True] * 8 + [False]
    # anything else is left to the layers themselves
    assert winograd.decoder_stages(nn.Sequential(nn.Conv2d(3, 3, 3))) is None
    assert winograd.decoder_stages(nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(3, 3, 3))) is None
    assert winograd.decoder_stages(nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, 3, 3),
                                                 nn.Upsample(scale_factor=2))) is None
    assert winograd.decoder_stages(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                                                 nn.ReflectionPad2d(1), nn.Conv2d(3, 3, 3))) is None


@pytest.mark.parametrize("band_pixels", [65536, 40])
def test_fused_stages_equal_the_layers(band_pixels, monkeypatch):
    """Upsampling, padding, convolution and ReLU fused in bands give the layers' result."""
    monkeypatch.setattr(winograd, "BAND_PIXELS", band_pixels)
    g = torch.Generator().manual_seed(4)
    layers = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(8, 64, 3), nn.ReLU(), nn.Upsample(scale_factor=2),
                           nn.ReflectionPad2d(1), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Upsample(scale_factor=2),
                           nn.ReflectionPad2d(1), nn.Conv2d(64, 3, 3))
    image = torch.randn(2, 8, 3, 5, generator=g)
    ticks = []
    with torch.inference_mode():
        expected = layers(image)
        got = winograd.run_stages(winograd.decoder_stages(layers), image, after_each=lambda: ticks.append(1))
    assert len(ticks) == 3
    assert got.shape == expected.shape
    tolerance = 1e-4 * expected.abs().max() if winograd.nnpack_available() else 1e-6 * expected.abs().max()
    assert (got - expected).abs().max() <= tolerance
