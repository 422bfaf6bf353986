"""Artist controls: strength, colour, mask, style blend, style scale, temporal smoothing."""

from __future__ import annotations

import pytest
import torch

from mambast.controls.colour import keep_content_colour, match_colour, to_ycbcr
from mambast.controls.masking import composite, prepare_mask
from mambast.controls.strength import fuse_with_strength, identity_features
from mambast.controls.styles import fit_style_image
from mambast.controls.temporal import smooth_over_time
from mambast.network.encodings import StyleEncoding, StyleMix
from mambast.run.pipeline import Controls, stylize_images


def images(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pictures():
    return images(1, 40, 48), images(1, 32, 32, seed=1), images(1, 56, 40, seed=2)


def test_strength_zero_is_the_identity_path_and_needs_no_style(small_model, pictures):
    content, _, _ = pictures
    with torch.inference_mode():
        encoding = small_model.encode_content(content)
        expected = identity_features(small_model, encoding, content, 4, True)
        assert torch.equal(fuse_with_strength(small_model, encoding, content, None, 0.0, 4), expected)
        out = stylize_images(small_model, content, None, Controls(seed=4, strength=0.0))
        assert torch.equal(out, small_model.decode(expected, encoding.image_size))


def test_strength_one_is_plain_stylization_and_half_lies_between(small_model, pictures):
    content, style, _ = pictures
    with torch.inference_mode():
        full = stylize_images(small_model, content, style, Controls(seed=3))
        assert torch.equal(full, small_model.stylize(content, style, seed=3))
        encoding = small_model.encode_content(content)
        style_encoding = small_model.encode_style(style, encoding.padded_size)
        stylized = small_model.fuse(encoding, style_encoding, seed=3)
        identity = identity_features(small_model, encoding, content, 3, True)
        half = fuse_with_strength(small_model, encoding, content, style_encoding, 0.5, 3)
    assert torch.allclose(half, (identity + stylized) / 2, atol=1e-6)
    assert not torch.allclose(half, stylized) and not torch.allclose(half, identity)


def test_masked_out_pixels_are_exactly_the_content(small_model, pictures):
    content, style, _ = pictures
    mask = torch.zeros(1, 20, 24)
    mask[:, 5:15, 6:18] = 1.0  # half resolution: resized to the content
    with torch.inference_mode():
        plain = stylize_images(small_model, content, style, Controls(seed=1))
        for feather in (0, 6):
            out = stylize_images(small_model, content, style, Controls(seed=1, mask=mask, feather=feather))
            outside = prepare_mask(mask, (40, 48)) == 0
            assert torch.equal(out[outside.expand_as(out)], content[outside.expand_as(content)])
        inside = torch.zeros(40, 48, dtype=torch.bool)
        inside[14:26, 16:32] = True
        sharp = stylize_images(small_model, content, style, Controls(seed=1, mask=mask))
        assert torch.allclose(sharp[..., inside], plain.clamp(0, 1)[..., inside])
        inverted = stylize_images(small_model, content, style, Controls(seed=1, mask=mask, invert_mask=True))
        assert torch.equal(inverted[..., inside], content[..., inside])


def test_feathering_softens_the_edge_inwards_only():
    mask = torch.zeros(1, 30, 30)
    mask[:, 10:20, 10:20] = 1.0
    soft = prepare_mask(mask, (30, 30), feather=4)
    assert torch.all(soft <= prepare_mask(mask, (30, 30)))
    assert 0 < soft[0, 0, 10, 15] < 1 and soft[0, 0, 15, 15] > 0.9
    assert torch.equal(composite(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2), torch.ones(1, 1, 2, 2)),
                       torch.ones(1, 3, 2, 2))


def test_blend_weight_zero_and_one_equal_the_single_styles(small_model, pictures):
    content, style_a, style_b = pictures
    with torch.inference_mode():
        encoding = small_model.encode_content(content)
        first, second = small_model.encode_style(style_a), small_model.encode_style(style_b)
        only_a = small_model.fuse(encoding, first, seed=2)
        only_b = small_model.fuse(encoding, second, seed=2)
        assert torch.equal(small_model.fuse(encoding, StyleMix(first, second, 0.0, 9), seed=2), only_a)
        assert torch.equal(small_model.fuse(encoding, StyleMix(first, second, 1.0, 9), seed=2), only_b)
        mixed = small_model.fuse(encoding, StyleMix(first, second, 0.5, 9), seed=2)
        again = small_model.fuse(encoding, StyleMix(first, second, 0.5, 9), seed=2)
        other = small_model.fuse(encoding, StyleMix(first, second, 0.5, 10), seed=2)
    assert torch.equal(mixed, again) and not torch.equal(mixed, other)
    assert not torch.allclose(mixed, only_a) and not torch.allclose(mixed, only_b)


def test_blend_draws_tokens_in_proportion_and_chains(small_model, pictures):
    content, style_a, style_b = pictures
    with torch.inference_mode():
        encoding = small_model.encode_content(content)
        first, second = small_model.encode_style(style_a), small_model.encode_style(style_b)
        tokens_a, tokens_b = (small_model.style_on_grid(s, encoding) for s in (first, second))
        mixed = small_model.style_on_grid(StyleMix(first, second, 0.25, 1), encoding)
        from_b = (mixed == tokens_b).all(-1) & ~(mixed == tokens_a).all(-1)
        assert from_b.sum().item() == round(0.25 * encoding.tokens.shape[1])
        third = small_model.encode_style(images(1, 24, 24, seed=5))
        chained = StyleMix(StyleMix(first, second, 0.5, 1), third, 1 / 3, 2)
        assert small_model.fuse(encoding, chained, seed=0).shape == (1, 64, 5, 6)


def test_style_scale_changes_what_fills_the_grid(small_model, pictures):
    content, style, _ = pictures
    assert torch.equal(fit_style_image(style, (40, 48)), fit_style_image(style, (40, 48), 1.0))
    zoomed = fit_style_image(style, (40, 48), 2.0)
    repeated = fit_style_image(style, (40, 48), 0.5)
    assert zoomed.shape == repeated.shape == (1, 3, 40, 48)
    assert torch.allclose(repeated[..., 20:39, :23], repeated[..., :20, :24].flip(-2)[..., 1:, :23], atol=1e-6)
    with torch.inference_mode():
        encoding = small_model.encode_content(content)
        plain = small_model.encode_style(style, encoding.padded_size).tokens
        scaled = small_model.encode_style(style, encoding.padded_size, scale=2.0).tokens
        assert plain.shape == scaled.shape and not torch.allclose(plain, scaled)
        lazy = StyleEncoding(small_model.encode_style(style).tokens, (4, 4), style, scale=2.0)
        assert torch.equal(small_model.style_on_grid(lazy, encoding), scaled)
    with pytest.raises(ValueError, match="style scale"):
        fit_style_image(style, (40, 48), 20.0)


def test_keep_content_colour_takes_luma_from_the_stylization_and_chroma_from_the_content(pictures):
    content, stylized, _ = pictures[0], images(1, 40, 48, seed=7), None
    mixed = to_ycbcr(keep_content_colour(content, stylized))
    assert torch.allclose(mixed[:, 0], to_ycbcr(stylized)[:, 0], atol=1e-5)
    assert torch.allclose(mixed[:, 1:], to_ycbcr(content)[:, 1:], atol=1e-5)


def test_match_colour_gives_the_style_the_content_palette():
    style = 0.3 + 0.2 * images(1, 32, 32, seed=3) * torch.tensor([1.0, 0.2, 0.5]).view(1, 3, 1, 1)
    content = 0.4 + 0.1 * images(2, 16, 16, seed=4)
    matched = match_colour(style, content)
    pooled = content.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(matched.reshape(3, -1).mean(1), pooled.mean(1), atol=1e-4)
    assert torch.allclose(torch.cov(matched.reshape(3, -1)), torch.cov(pooled), atol=1e-4)


def moving_square(frames=6, size=32):
    generator = torch.Generator().manual_seed(0)
    background = torch.rand(3, size, size, generator=generator) * 0.3
    sequence = []
    for t in range(frames):
        frame = background.clone()
        frame[:, 8:20, 4 + 2 * t:16 + 2 * t] = torch.tensor([0.9, 0.6, 0.2]).view(3, 1, 1)
        sequence.append(frame)
    return torch.stack(sequence)


def flicker(video: torch.Tensor) -> float:
    return float((video[1:] - video[:-1]).abs().mean())


def test_temporal_smoothing_reduces_flicker(small_model, pictures):
    frames = moving_square()
    with torch.inference_mode():
        plain = stylize_images(small_model, frames, pictures[1], Controls(seed=1))
        steady = stylize_images(small_model, frames, pictures[1], Controls(seed=1, temporal_smoothing=0.6))
    assert flicker(steady) < 0.8 * flicker(plain)
    features = torch.randn(4, 2, 3, 3)
    assert torch.equal(smooth_over_time(features, 0.0), features)
    smoothed = smooth_over_time(features, 0.5)
    assert torch.allclose(smoothed[1], 0.5 * features[1] + 0.5 * features[0])
