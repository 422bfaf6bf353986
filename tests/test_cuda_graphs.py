"""The CUDA-graph runner gives the plain ``stylize`` image; its permutation buffers follow the seed."""

from __future__ import annotations

import pytest
import torch

from mambast.cuda_graphs import GraphedStylize


def images(height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=generator), torch.rand(1, 3, 32, 24, generator=generator)


def test_explicit_permutations_equal_the_seeded_draw(small_model):
    content, style = images(40, 48, 0)
    with torch.inference_mode():
        encoded = small_model.encode_content(content)
        styled = small_model.encode_style(style, encoded.padded_size)
        drawn = small_model.fuse(encoded, styled, seed=7)
        given = small_model.fuse(encoded, styled, permutations=small_model.permutations(encoded.tokens.shape[1], 7,
                                                                                        True))
        other = small_model.fuse(encoded, styled, permutations=small_model.permutations(encoded.tokens.shape[1], 8,
                                                                                        True))
    assert torch.equal(drawn, given)
    assert not torch.allclose(drawn, other)


def test_off_cuda_the_runner_is_the_plain_call(small_model):
    content, style = images(40, 48, 1)
    with torch.inference_mode():
        expected = small_model.stylize(content, style, seed=3)
    assert torch.equal(GraphedStylize(small_model)(content, style, seed=3), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replays_equal_plain_calls_for_new_pixels_seeds_and_shapes(small_tensors):
    import mambast

    model = mambast.build(mambast.Checkpoint(small_tensors), device="cuda")
    runner = GraphedStylize(model, max_graphs=1)
    for height, width in ((40, 48), (64, 32), (40, 48)):  # the third recaptures (max_graphs=1)
        for seed in (1, 2):
            content, style = (t.cuda() for t in images(height, width, seed))
            with torch.inference_mode():
                expected = model.stylize(content, style, seed=seed)
            got = runner(content, style, seed=seed)
            assert model.last_seed == seed
            assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert len(runner._graphs) == 1
    model.to(torch.float16).to(torch.float32)  # new weight tensors: the old graph must not replay
    content, style = (t.cuda() for t in images(40, 48, 1))
    with torch.inference_mode():
        expected = model.stylize(content, style, seed=1)
    assert (runner(content, style, seed=1) - expected).abs().max() <= 1e-5 * expected.abs().max()
