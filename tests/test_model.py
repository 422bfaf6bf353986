"""MambaST stages: sizes, batches, seeds, dtypes and the released architecture."""

from __future__ import annotations

import pytest
import torch

import mambast
from mambast.network.random_weights import random_official_tensors, write_official_folder


def images(batch, height, width, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mamba_name", ["mamba_iter_160000.pth", "transformer_iter_160000.pth"])
def test_official_folder_loads_with_either_mamba_file_name(tmp_path, mamba_name):
    tensors = random_official_tensors(seed=3)
    write_official_folder(tensors, tmp_path, mamba_name=mamba_name)
    torch.save({"0.weight": torch.zeros(3, 3, 1, 1), "0.bias": torch.zeros(3)}, tmp_path / "vgg_normalised.pth")
    model = mambast.load(tmp_path, device="cpu")
    assert (model.config.encoder_layers, model.config.decoder_layers) == (3, 3)
    assert (model.config.d_model, model.config.d_state, model.config.d_inner) == (512, 16, 1024)
    loaded = model.state_dict()
    key = "mamba.decoder.layers.2.self_attention.style_proj_weight"
    assert torch.equal(loaded[key], tensors[key])


@pytest.mark.parametrize("size", [(200, 328), (37, 91), (8, 8), (128, 128)])
def test_any_size_stylizes_to_the_same_size(full_model, size):
    content = images(1, *size)
    with torch.inference_mode():
        out = full_model.stylize(content, images(1, 64, 48, seed=1), seed=0)
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


def test_batch_of_two_equals_two_single_runs(full_model):
    content, style = images(2, 64, 96), images(2, 80, 80, seed=1)
    with torch.inference_mode():
        batched = full_model.stylize(content, style, seed=5)
        singles = torch.cat([full_model.stylize(content[i:i + 1], style[i:i + 1], seed=5) for i in range(2)])
    assert (batched - singles).abs().max() <= 1e-4


def test_images_smaller_than_a_patch_are_refused_with_the_input_named(small_model):
    with pytest.raises(ValueError, match="content image is 7x20"):
        small_model.stylize(images(1, 20, 7), images(1, 16, 16))


def test_wrong_layout_is_refused_with_the_input_named(small_model):
    with pytest.raises(ValueError, match=r"style image must be a \(B, 3, H, W\)"):
        small_model.stylize(images(1, 16, 16), torch.rand(1, 16, 16, 3))


def test_same_seed_same_image_and_other_seed_other_image(small_model):
    content, style = images(1, 48, 40), images(1, 40, 48, seed=1)
    with torch.inference_mode():
        first = small_model.stylize(content, style, seed=11)
        again = small_model.stylize(content, style, seed=11)
        other = small_model.stylize(content, style, seed=12)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-4


def test_without_shuffle_the_seed_does_not_matter(small_model):
    content, style = images(1, 32, 32), images(1, 32, 32, seed=1)
    with torch.inference_mode():
        a = small_model.stylize(content, style, seed=1, shuffle=False)
        b = small_model.stylize(content, style, seed=2, shuffle=False)
    assert torch.equal(a, b)


def test_no_seed_draws_a_fresh_one_and_records_it(small_model):
    content, style = images(1, 32, 32), images(1, 32, 32, seed=1)
    with torch.inference_mode():
        out = small_model.stylize(content, style)
        seed = small_model.last_seed
        again = small_model.stylize(content, style, seed=seed)
    assert seed is not None and torch.equal(out, again)


def test_staged_calls_equal_stylize(small_model):
    content, style = images(1, 45, 61), images(1, 30, 30, seed=1)
    with torch.inference_mode():
        encoded = small_model.encode_content(content)
        features = small_model.fuse(encoded, small_model.encode_style(style, encoded.padded_size), seed=3)
        staged = small_model.decode(features, encoded.image_size)
        direct = small_model.stylize(content, style, seed=3)
    assert features.shape == (1, 64, 6, 8)
    assert torch.equal(staged, direct)


def test_style_encoded_at_its_own_size_is_re_encoded_on_the_content_grid(small_model):
    content, style = images(1, 48, 64), images(1, 100, 70, seed=1)
    with torch.inference_mode():
        encoded = small_model.encode_content(content)
        own_size = small_model.encode_style(style)
        assert own_size.grid == (13, 9)
        features = small_model.fuse(encoded, own_size, seed=4)
        expected = small_model.fuse(encoded, small_model.encode_style(style, encoded.padded_size), seed=4)
    assert torch.equal(features, expected)
    assert encoded.grid in own_size.by_grid


def test_one_style_serves_a_batch_of_contents_with_one_permutation(small_model):
    contents, style = images(3, 32, 40), images(1, 32, 40, seed=1)
    with torch.inference_mode():
        batched = small_model.stylize(contents, style, seed=9)
        each = torch.cat([small_model.stylize(contents[i:i + 1], style, seed=9) for i in range(3)])
    # float rounding only (a batch runs other kernel blockings); another permutation would move it by O(1)
    assert (batched - each).abs().max() <= 5e-5


def test_unpairable_batches_name_both_sizes(small_model):
    with pytest.raises(ValueError, match="3 content image.*2 style image"):
        small_model.stylize(images(3, 16, 16), images(2, 16, 16))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_dense_layers_keep_the_scan_in_float32(small_tensors, dtype):
    reference = mambast.build(mambast.Checkpoint(small_tensors), device="cpu")
    model = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", dtype=dtype)
    assert model.dtype == getattr(torch, dtype)
    assert model.mamba.decoder.layers[0].self_attention.A_logs.dtype == torch.float32
    assert model.mamba.decoder.layers[0].self_attention.in_proj.weight.dtype == getattr(torch, dtype)
    content, style = images(1, 32, 32), images(1, 32, 32, seed=1)
    with torch.inference_mode():
        low = model.stylize(content, style, seed=1)
        full = reference.stylize(content, style, seed=1)
    assert low.dtype == torch.float32
    assert (low - full).abs().mean() < 0.05 * full.abs().mean()


def test_model_is_differentiable_end_to_end(small_tensors):
    model = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", scan="chunked").requires_grad_(True)
    content = images(1, 24, 24).requires_grad_(True)
    model.stylize(content, images(1, 24, 24, seed=1), seed=0).mean().backward()
    assert content.grad is not None and content.grad.abs().sum() > 0
    assert model.mamba.decoder.layers[0].self_attention.A_logs.grad.abs().sum() > 0


def test_a_seed_drawn_at_inference_serves_a_later_differentiable_run(small_tensors):
    """The permutations are cached by seed: drawn in inference mode, they must still be usable
    where autograd saves them (optimising an image through stylize after a preview)."""
    model = mambast.build(mambast.Checkpoint(small_tensors)).requires_grad_(True)
    content, style = torch.rand(1, 3, 24, 40), torch.rand(1, 3, 24, 40)
    with torch.inference_mode():
        preview = model.stylize(content, style, seed=911)
    content.requires_grad_(True)
    out = model.stylize(content, style, seed=911)
    out.sum().backward()
    assert content.grad is not None and torch.allclose(out.detach(), preview, atol=1e-5)


def test_scan_backend_choice_reaches_every_block(small_tensors):
    model = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", scan="reference")
    assert model.scan_backend == "reference"
    with torch.inference_mode():
        a = model.stylize(images(1, 24, 24), images(1, 24, 24, seed=1), seed=0)
        model.set_scan_backend("chunked")
        b = model.stylize(images(1, 24, 24), images(1, 24, 24, seed=1), seed=0)
    assert (a - b).abs().max() <= 1e-4


def test_grid_linear_equals_linear():
    from mambast.network.blocks import grid_linear

    g = torch.Generator().manual_seed(0)
    tokens, weight = torch.randn(2, 5, 7, 24, generator=g), torch.randn(40, 24, generator=g)
    got = grid_linear(tokens, weight)
    assert got.shape == (2, 5, 7, 40)
    assert torch.allclose(got, torch.nn.functional.linear(tokens, weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("band_macs", [None, 2 * 7 * 40 * 24])
def test_grid_linear_into_given_memory_equals_linear(band_macs, monkeypatch):
    from mambast.network import blocks

    if band_macs is not None:
        monkeypatch.setattr(blocks, "BAND_MACS", band_macs)  # bands of 2 rows
    g = torch.Generator().manual_seed(0)
    tokens, weight = torch.randn(2, 5, 7, 24, generator=g), torch.randn(40, 24, generator=g)
    out = torch.full((2, 5, 7, 40), float("nan"))
    got = blocks.grid_linear(tokens, weight, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.allclose(got, torch.nn.functional.linear(tokens, weight), atol=1e-5, rtol=1e-5)
    banded = blocks.grid_linear(tokens, weight)  # batches and bands into fresh memory
    assert torch.allclose(banded, got, atol=1e-5, rtol=1e-5)


def test_spare_memory_is_lent_only_at_inference_and_only_when_it_fits():
    from mambast.network.blocks import _spare_memory

    spent = torch.randn(2, 3, 8)
    with torch.inference_mode():
        view = _spare_memory(spent, (2, 3, 4), torch.float32)
        assert view.shape == (2, 3, 4) and view.data_ptr() == spent.data_ptr()
        assert _spare_memory(spent, (2, 3, 9), torch.float32) is None  # too small
        assert _spare_memory(spent, (2, 3, 4), torch.float64) is None
        assert _spare_memory(spent.transpose(0, 1), (2, 3, 4), torch.float32) is None  # not contiguous
    assert _spare_memory(spent, (2, 3, 4), torch.float32) is None  # autograd may need it


def test_workspace_lends_the_same_memory_block_after_block_and_only_where_it_pays():
    from mambast.network.blocks import Workspace

    like = torch.zeros(1)
    workspace = Workspace()
    with torch.inference_mode():
        first = workspace.take("x", (4, 4, 2**20), like)  # 64 MiB of float32
        again = workspace.take("x", (4, 4, 2**20), like)
        other = workspace.take("gate", (4, 4, 2**20), like)
        assert first.shape == (4, 4, 2**20) and first.data_ptr() == again.data_ptr() != other.data_ptr()
        assert workspace.take("x", (2, 4, 2**20), like).data_ptr() == first.data_ptr()  # a smaller grid fits
        assert workspace.take("small", (1, 2**20), like) is None  # 4 MiB: the allocator reuses memory itself
    assert Workspace().take("x", (2, 4, 2**20), like) is None  # autograd may keep results alive


def test_stacks_writing_into_a_workspace_give_the_same_image(small_model, monkeypatch):
    from mambast.network.blocks import Workspace

    content, style = images(1, 40, 48), images(1, 32, 32, seed=1)
    with torch.inference_mode():
        fresh = small_model.stylize(content, style, seed=2)
        monkeypatch.setattr(Workspace, "MIN_BYTES", 0)  # every in_proj result into the workspace
        lent = []
        original = Workspace.take
        monkeypatch.setattr(Workspace, "take", lambda self, *a: lent.append(1) or original(self, *a))
        reused = small_model.stylize(content, style, seed=2)
    assert lent and torch.allclose(reused, fresh, atol=1e-5, rtol=1e-5)


def test_inference_reuses_buffers_and_matches_the_autograd_path(small_model):
    """In-place reuse of temporaries (no autograd) gives the image the differentiable path gives."""
    g = torch.Generator().manual_seed(3)
    content, style = torch.rand(1, 3, 40, 48, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    with torch.inference_mode():
        fast = small_model.stylize(content, style, seed=1)
    with torch.enable_grad():
        content.requires_grad_(True)
        traced = small_model.stylize(content, style, seed=1)
        traced.mean().backward()
    assert content.grad is not None and torch.isfinite(content.grad).all()
    assert (fast - traced.detach()).abs().max() <= 1e-4 * fast.abs().max()


def test_dense_layers_in_bands_equal_the_whole_layer_and_check_cancel_between_bands(monkeypatch):
    from mambast.network import blocks
    from mambast.utils.progress import progress_callback

    g = torch.Generator().manual_seed(1)
    tokens, weight = torch.randn(1, 13, 6, 24, generator=g), torch.randn(40, 24, generator=g)
    whole = blocks.grid_linear(tokens, weight)
    monkeypatch.setattr(blocks, "BAND_MACS", 4 * 6 * weight.numel())  # bands of 4 rows
    checks = []
    with progress_callback(None, None, lambda: checks.append(1)):
        banded = blocks.grid_linear(tokens, weight)
    assert len(checks) == 4  # rows 0-3, 4-7, 8-11, 12
    assert torch.allclose(banded, whole, atol=1e-5, rtol=1e-5) and banded.shape == whole.shape


def test_cancel_points_stop_a_run_inside_long_layers_without_moving_the_progress(small_model, monkeypatch):
    from mambast.network import blocks
    from mambast.utils.progress import progress_callback

    class Cancelled(Exception):
        pass

    monkeypatch.setattr(blocks, "BAND_MACS", 1)  # every row of the dense layers is a band
    ticks, checks = [], []

    def check():
        checks.append(len(ticks))
        if len(checks) == 30:
            raise Cancelled()

    content, style = images(1, 32, 40), images(1, 32, 32, seed=1)
    with progress_callback(lambda: ticks.append(1), None, check), torch.inference_mode():
        with pytest.raises(Cancelled):
            small_model.stylize(content, style, seed=0)
    assert len(checks) == 30 and len(ticks) < 30  # stopped between ticks, at a cancel point
