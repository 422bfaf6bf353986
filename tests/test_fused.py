"""The passes fused by Numba equal the PyTorch operations they stand in for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mambast.kernels import fused, winograd
from mambast.kernels.scan import numba_available

needs_numba = pytest.mark.skipif(not numba_available(), reason="Numba is not installed here")


def random_norm(channels: int, generator: torch.Generator) -> nn.LayerNorm:
    norm = nn.LayerNorm(channels, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
    return norm


@needs_numba
@pytest.mark.parametrize("shape", [(2, 5, 7, 64), (1, 3, 3, 1000), (4, 1)])
def test_gated_norm_equals_norm_times_silu(shape):
    g = torch.Generator().manual_seed(0)
    norm = random_norm(shape[-1], g)
    y = torch.randn(shape, generator=g) * 3 + 5  # an offset and a scale for the statistics to remove
    gate = torch.randn(shape, generator=g) * 8
    gate.view(-1)[:4] = torch.tensor([0.0, -100.0, 100.0, -1e-3])
    with torch.inference_mode():
        expected = norm(y) * F.silu(gate)
        got = fused.norm_times_silu_(y, gate, norm)
    assert got is gate  # written into the gate's memory
    assert (got - expected).abs().max() <= 2e-5 * expected.abs().max()


@needs_numba
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", [(2, 35, 64), (1, 3, 512), (5, 1)])
def test_skip_normequals_the_block_output_and_residual(shape, residual):
    g = torch.Generator().manual_seed(2)
    norm = random_norm(shape[-1], g)
    mixed, tokens = torch.randn(shape, generator=g) * 4 + 1, torch.randn(shape, generator=g)
    skip = torch.randn(shape[-1], generator=g)
    with torch.inference_mode():
        expected = norm(mixed + tokens * skip) + (tokens if residual else 0)
        got = fused.skip_norm(mixed, tokens, skip, norm, residual)
    assert got.data_ptr() != mixed.data_ptr()  # a fresh tensor
    assert (got - expected).abs().max() <= 2e-5 * expected.abs().max()


def test_skip_normdeclines_what_it_does_not_cover(monkeypatch):
    g = torch.Generator().manual_seed(1)
    norm = random_norm(16, g)
    mixed, tokens, skip = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g), torch.ones(16)
    assert fused.skip_norm(mixed, tokens, skip, norm, True) is None  # autograd records the norm's parameters
    with torch.inference_mode():
        assert fused.skip_norm(mixed, tokens[:2], skip, norm, True) is None
        assert fused.skip_norm(mixed, tokens, skip[:8], norm, True) is None
        assert fused.skip_norm(mixed.double(), tokens.double(), skip.double(), norm, True) is None
        assert fused.skip_norm(mixed, tokens, skip, nn.LayerNorm(16, elementwise_affine=False), True) is None
        monkeypatch.setattr(fused, "numba_available", lambda: False)
        assert fused.skip_norm(mixed, tokens, skip, norm, True) is None


def test_gated_norm_declines_what_it_does_not_cover(monkeypatch):
    g = torch.Generator().manual_seed(1)
    norm = random_norm(16, g)
    y, gate = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    assert fused.norm_times_silu_(y, gate, norm) is None  # autograd records the norm's parameters
    with torch.inference_mode():
        assert fused.norm_times_silu_(y.bfloat16(), gate.bfloat16(), norm) is None
        assert fused.norm_times_silu_(y, gate[:, :8], norm) is None
        assert fused.norm_times_silu_(y.t().contiguous().t(), gate, norm) is None
        monkeypatch.setattr(fused, "numba_available", lambda: False)
        untouched = gate.clone()
        assert fused.norm_times_silu_(y, gate, norm) is None
        assert torch.equal(gate, untouched)


@needs_numba
@pytest.mark.parametrize("size, shape", [(3, (2, 5, 7, 64)), (3, (1, 1, 2, 1000)), (5, (1, 6, 4, 24)), (1, (1, 3, 3, 8))])
def test_depthwise_convolution_with_silu_equals_pytorch(size, shape):
    g = torch.Generator().manual_seed(5)
    channels = shape[-1]
    conv = nn.Conv2d(channels, channels, size, padding=size // 2, groups=channels)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(channels, generator=g))
    tokens = torch.randn(shape, generator=g) * 2
    with torch.inference_mode():
        expected = F.silu(conv(tokens.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        got = fused.depthwise_silu(tokens, conv)
    assert got.shape == tokens.shape and got.is_contiguous()
    assert (got - expected).abs().max() <= 2e-5 * expected.abs().max()


def test_depthwise_convolution_declines_what_it_does_not_cover(monkeypatch):
    tokens = torch.randn(1, 4, 4, 8)
    plain = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    others = [nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 8, 3, padding=1, groups=4),
              nn.Conv2d(8, 8, 2, padding=1, groups=8), nn.Conv2d(8, 8, 3, padding=0, groups=8),
              nn.Conv2d(8, 8, 3, padding=1, groups=8, stride=2),
              nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect")]
    assert fused.depthwise_silu(tokens, plain) is None  # autograd records the weights
    with torch.inference_mode():
        for conv in others:
            assert fused.depthwise_silu(tokens, conv) is None
        assert fused.depthwise_silu(tokens.double(), plain.double()) is None
        assert fused.depthwise_silu(tokens.transpose(1, 2), plain) is None  # not contiguous
        monkeypatch.setattr(fused, "numba_available", lambda: False)
        assert fused.depthwise_silu(tokens, plain) is None


@needs_numba
def test_gathering_checks_its_rows_and_declines_what_it_does_not_cover():
    image = torch.randn(1, 2, 4, 5)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="row indices"):
            fused.gather_band(image, torch.tensor([0, 4]), 1)
        assert fused.gather_band(image.double(), torch.tensor([0, 1]), 1) is None
        assert fused.gather_band(image[..., :1].contiguous(), torch.tensor([0, 1]), 1) is None  # too narrow
        assert fused.gather_band(image.transpose(2, 3), torch.tensor([0, 1]), 1) is None  # not contiguous
    assert fused.gather_band(image.requires_grad_(), torch.tensor([0, 1]), 2) is None


@needs_numba
def test_the_numba_path_of_the_model_runs_the_fused_passes(small_tensors, monkeypatch):
    """Every VSS block's depthwise convolutions and norms and every CNN decoder band go through
    the fused passes, and the image is the one PyTorch's operations give."""
    import mambast

    model = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", scan="numba")
    content = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    style = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    calls = {"norm_times_silu_": 0, "gather_band": 0, "depthwise_silu": 0, "skip_norm": 0}

    def counted(name, function):
        def run(*arguments):
            result = function(*arguments)
            calls[name] += result is not None
            return result
        return run

    monkeypatch.setattr(fused, "norm_times_silu_", counted("norm_times_silu_", fused.norm_times_silu_))
    monkeypatch.setattr(fused, "depthwise_silu", counted("depthwise_silu", fused.depthwise_silu))
    monkeypatch.setattr(fused, "skip_norm", counted("skip_norm", fused.skip_norm))
    monkeypatch.setattr(winograd, "gather_band", counted("gather_band", fused.gather_band))
    with torch.inference_mode():
        got = model.stylize(content, style, seed=4)
        monkeypatch.setattr(fused, "numba_available", lambda: False)
        expected = model.stylize(content, style, seed=4)
    config = model.config
    assert calls["norm_times_silu_"] == calls["skip_norm"] == config.encoder_layers * 2 + config.decoder_layers
    assert calls["depthwise_silu"] == (config.encoder_layers + config.decoder_layers) * 2  # cross: content, style
    assert calls["gather_band"] >= len(winograd.decoder_stages(model.decoder))
    assert (got - expected).abs().max() <= 1e-4
