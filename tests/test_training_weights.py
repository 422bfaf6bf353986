"""Training helpers that need no reference fixture: drop path, the reference's initialisation,
checkpoints in both layouts, the VGG loader and the losses' plumbing on a small random model."""

from __future__ import annotations

import math
import os

import pytest
import torch

import mambast
from mambast.network.blocks import VSSBlock, drop_path
from mambast.network.checkpoint import CheckpointError
from mambast.network.random_weights import SMALL_CONFIG, unused_official_tensors, random_official_tensors
from mambast.training import (VGGEncoder, VGGWeightsNotFound, compute_losses, extra_tensors_of,
                              initialise_like_reference, load_vgg, official_gradients, save_official,
                              save_safetensors)
from mambast.training.weights import official_state



def images(batch, size, seed):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def fresh_small_model(seed: int = 1) -> mambast.MambaST:
    return mambast.build(mambast.Checkpoint(random_official_tensors(SMALL_CONFIG, seed=seed)), device="cpu")


def cross_blocks(model):
    return [m for m in model.modules() if isinstance(m, VSSBlock) and m.self_attention.cross]


# -- drop path ---------------------------------------------------------------------------------
def test_cross_blocks_drop_paths_at_the_reference_rate_and_self_blocks_never():
    model = fresh_small_model()
    blocks = [m for m in model.modules() if isinstance(m, VSSBlock)]
    assert {b.drop_path for b in blocks if b.self_attention.cross} == {0.1}
    assert {b.drop_path for b in blocks if not b.self_attention.cross} == {0.0}


def test_eval_mode_output_is_exactly_the_output_without_drop_path():
    model = fresh_small_model()
    content, style = images(4, 32, 0), images(4, 32, 1)
    with torch.inference_mode():
        with_drop_path = model.eval().stylize(content, style, seed=2)
        for block in cross_blocks(model):
            block.drop_path = 0.0
        model.train()  # training mode with nothing to drop runs the same arithmetic
        without = model.stylize(content, style, seed=2)
    assert torch.equal(with_drop_path, without)


def test_training_mode_drops_paths_by_the_global_generator():
    model = fresh_small_model().train()
    for block in cross_blocks(model):
        block.drop_path = 0.5  # so that two seeds surely draw different masks
    content, style = images(4, 32, 0), images(4, 32, 1)

    def run(global_seed):
        torch.manual_seed(global_seed)
        with torch.no_grad():
            return model.stylize(content, style, seed=2)

    first, other, again = run(0), run(1), run(0)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    with torch.no_grad():
        assert not torch.allclose(first, model.eval().stylize(content, style, seed=2))


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    branch = torch.randn(20000, 3, 4) + 2.0
    dropped = drop_path(branch, 0.1)
    ratio = dropped / branch
    per_sample = ratio.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))  # one decision per sample
    kept = per_sample[:, 0]
    dropped_samples, kept_samples = kept == 0, torch.isclose(kept, torch.tensor(1 / 0.9))
    assert (dropped_samples | kept_samples).all() and dropped_samples.any() and kept_samples.any()
    # 20000 samples: the mean of the scaled mask has standard deviation 0.0024 around 1.
    assert abs(float(kept.mean()) - 1.0) < 0.01
    assert drop_path(branch, 0.0) is branch


# -- the reference's initialisation ------------------------------------------------------------
@pytest.fixture(scope="module")
def initialised():
    model = mambast.MambaST(SMALL_CONFIG)
    extra = initialise_like_reference(model, torch.Generator().manual_seed(5))
    return model, extra


def test_initialisation_is_deterministic_under_a_seed(initialised):
    model, extra = initialised
    again = mambast.MambaST(SMALL_CONFIG)
    extra_again = initialise_like_reference(again, torch.Generator().manual_seed(5))
    other = mambast.MambaST(SMALL_CONFIG)
    initialise_like_reference(other, torch.Generator().manual_seed(6))
    state, state_again, state_other = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert all(torch.equal(extra[k], extra_again[k]) for k in extra)
    assert not torch.equal(state["mamba.decoder.layers.0.self_attention.A_logs"],
                           state_other["mamba.decoder.layers.0.self_attention.A_logs"])


def test_xavier_pass_overwrites_every_tensor_of_more_than_one_dimension_in_the_body(initialised):
    model, _ = initialised
    state = model.state_dict()
    config = SMALL_CONFIG
    block = "mamba.encoder_c.layers.1.self_attention."
    a_logs, dt_bias = state[block + "A_logs"], state[block + "dt_projs_bias"]
    # Not the S4D init log(1..N) nor an inverse softplus any more: xavier-uniform with the
    # bound sqrt(6 / (fan_in + fan_out)) of the 2-D shapes (K*d_inner, N) and (K, d_inner).
    assert not torch.allclose(a_logs, torch.log(torch.arange(1, config.d_state + 1.0)).expand_as(a_logs))
    a_bound = math.sqrt(6 / (config.d_state + config.directions * config.d_inner))
    assert a_logs.abs().max() <= a_bound and a_logs.abs().max() > 0.9 * a_bound
    bias_bound = math.sqrt(6 / (config.d_inner + config.directions))
    assert dt_bias.abs().max() <= bias_bound and (dt_bias > 0).any()  # an inverse softplus is < 0
    x_proj = state[block + "x_proj_weight"]  # (K, R + 2N, d_inner): fans count the trailing dims
    x_bound = math.sqrt(6 / ((x_proj.shape[1] + x_proj.shape[0]) * x_proj.shape[2]))
    assert x_proj.abs().max() <= x_bound and x_proj.abs().max() > 0.9 * x_bound


def test_one_dimensional_body_tensors_keep_the_constructor_values(initialised):
    model, extra = initialised
    state = model.state_dict()
    ones = [k for k in state if k.endswith(("skip_scale", ".Ds", "ln_1.weight", "norm.weight"))]
    assert ones and all(torch.equal(state[k], torch.ones_like(state[k])) for k in ones)
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in extra.items() if k.endswith("skip_scale2"))
    # Every encoder layer is a deep copy of one block: the conv bias (1-D, not redrawn) is shared.
    biases = [state[f"mamba.{s}.layers.{i}.self_attention.conv2d.bias"] for s in ("encoder_c", "encoder_s")
              for i in range(SMALL_CONFIG.encoder_layers)]
    assert all(torch.equal(biases[0], b) for b in biases)
    decoder_bias = state["mamba.decoder.layers.0.self_attention.conv2d.bias"]
    assert not torch.equal(biases[0], decoder_bias)
    assert torch.equal(decoder_bias, state["mamba.decoder.layers.1.self_attention.conv2d.bias"])


def test_extra_tensors_are_the_official_ones_the_model_lacks_with_default_conv_init(initialised):
    _, extra = initialised
    assert set(extra) == set(unused_official_tensors(SMALL_CONFIG))
    # new_ps is created after the xavier pass: PyTorch's default bound 1/sqrt(fan_in), smaller
    # than the xavier bound sqrt(6 / (2 * d_model)) it would have had otherwise.
    bound = 1 / math.sqrt(SMALL_CONFIG.d_model)
    assert 0.9 * bound < extra["mamba.new_ps.weight"].abs().max() <= bound


# -- checkpoints -------------------------------------------------------------------------------
def stylize(model, seed=4):
    with torch.inference_mode():
        return model.stylize(images(1, 32, 10), images(1, 32, 11), seed=seed)


def official_keys(tensors: dict[str, torch.Tensor], part: str) -> set[str]:
    return {k[len(part) + 1:] for k in tensors if k.startswith(part + ".")}


@pytest.fixture(scope="module")
def released_layout():
    """A small checkpoint in the full official layout and the model built from it."""
    tensors = random_official_tensors(SMALL_CONFIG, seed=8)
    checkpoint = mambast.Checkpoint(tensors)
    return tensors, checkpoint, mambast.build(checkpoint, device="cpu")


def test_save_official_writes_the_three_official_files_that_load_back_identically(tmp_path, released_layout):
    tensors, checkpoint, model = released_layout
    paths = save_official(model, tmp_path, 1200, extra_tensors_of(checkpoint))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder_iter_1200.pth", "embedding_iter_1200.pth",
                                                           "mamba_iter_1200.pth"]
    for part, path in paths.items():
        state = torch.load(path, weights_only=True)
        assert set(state) == official_keys(tensors, part)
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    assert torch.equal(stylize(mambast.load(tmp_path, device="cpu")), stylize(model))


def test_save_safetensors_writes_every_official_tensor_and_loads_back_identically(tmp_path, released_layout):
    from safetensors.torch import load_file

    tensors, checkpoint, model = released_layout
    path = save_safetensors(model, tmp_path / "model.safetensors", extra_tensors_of(checkpoint))
    saved = load_file(str(path))
    assert set(saved) == set(tensors)
    assert all(torch.equal(saved[k], tensors[k]) for k in tensors)
    assert torch.equal(stylize(mambast.load(path, device="cpu")), stylize(model))


def test_fine_tuned_model_saves_its_new_weights_and_the_init_checkpoints_extra_tensors(tmp_path, released_layout):
    tensors, checkpoint, _ = released_layout
    model = mambast.build(checkpoint, device="cpu")
    with torch.no_grad():
        model.mamba.decoder.layers[0].skip_scale.add_(0.5)
    save_official(model, tmp_path, 7, extra_tensors_of(checkpoint))
    reread = mambast.read_checkpoint(tmp_path).tensors
    for key in unused_official_tensors(SMALL_CONFIG):
        assert torch.equal(reread[key], tensors[key])
    key = "mamba.decoder.layers.0.skip_scale"
    assert torch.equal(reread[key], tensors[key] + 0.5)


def test_missing_extra_tensors_are_filled_so_the_layout_stays_complete(released_layout):
    tensors, _, model = released_layout
    assert set(official_state(model)) == set(tensors)
    with pytest.raises(ValueError, match="not official tensors"):
        official_state(model, {"mamba.something_else": torch.zeros(1)})


def test_an_interrupted_save_leaves_the_previous_file_and_no_temporary(tmp_path, released_layout, monkeypatch):
    _, checkpoint, model = released_layout
    save_official(model, tmp_path, 3, extra_tensors_of(checkpoint))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_official(model, tmp_path, 3)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# -- VGG ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_vgg_state():
    torch.manual_seed(12)
    return {k: v.clone() for k, v in VGGEncoder().state_dict().items()}


def test_vgg_layout_is_the_reference_file_and_features_are_relu1_1_to_relu5_1(tmp_path, random_vgg_state):
    assert len(VGGEncoder()) == 53
    assert set(random_vgg_state) == {f"{i}.{p}" for i in (0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48,
                                                          51) for p in ("weight", "bias")}
    torch.save(random_vgg_state, tmp_path / "vgg_normalised.pth")
    vgg = load_vgg(tmp_path / "vgg_normalised.pth")
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    assert all(torch.equal(vgg.state_dict()[k], v) for k, v in random_vgg_state.items())
    maps = vgg.features(images(2, 32, 0))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4),
                                              (2, 512, 2, 2)]
    assert torch.equal(maps[3], vgg[:31](images(2, 32, 0)))


def test_half_precision_safetensors_vgg_loads_as_float32(tmp_path, random_vgg_state):
    from safetensors.torch import save_file

    save_file({k: v.half() for k, v in random_vgg_state.items()}, str(tmp_path / "vgg.safetensors"))
    vgg = load_vgg(tmp_path / "vgg.safetensors")
    assert all(p.dtype == torch.float32 for p in vgg.parameters())
    assert torch.equal(vgg.state_dict()["51.weight"], random_vgg_state["51.weight"].half().float())


def test_missing_vgg_says_which_file_to_get_from_where_and_where_to_put_it(tmp_path):
    path = tmp_path / "models" / "vgg_normalised.pth"
    with pytest.raises(VGGWeightsNotFound) as error:
        load_vgg(path)
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    assert str(path) in message and mambast.WEIGHTS_URL in message and "vgg_normalised.pth" in message


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_vgg_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, random_vgg_state):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "vgg_normalised.pth"
    torch.save({**random_vgg_state, "0.weight": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_vgg(path)
    assert not marker.exists()


def test_vgg_with_wrong_shapes_is_refused_with_file_and_key_named(tmp_path, random_vgg_state):
    path = tmp_path / "vgg_normalised.pth"
    torch.save({**random_vgg_state, "9.weight": torch.zeros(128, 64, 1, 1)}, path)
    with pytest.raises(CheckpointError) as error:
        load_vgg(path)
    assert str(path) in str(error.value) and "'9.weight'" in str(error.value)


# -- losses on a small random model -------------------------------------------------------------
def test_losses_reach_every_parameter_and_gradients_use_the_official_keys(random_vgg_state):
    model = fresh_small_model().requires_grad_(True)
    vgg = VGGEncoder()
    vgg.load_state_dict(random_vgg_state)
    vgg.requires_grad_(False)
    losses = compute_losses(model, vgg, images(2, 32, 0), images(2, 32, 1), seed=1)
    assert set(losses) == {"content", "style", "identity1", "identity2", "total"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    gradients = official_gradients(model)
    assert set(gradients) == set(random_official_tensors(SMALL_CONFIG))
    unused = set(unused_official_tensors(SMALL_CONFIG))
    assert all((gradients[k] is None) == (k in unused) for k in gradients)
    assert all(torch.isfinite(g).all() for g in gradients.values() if g is not None)


def test_loss_inputs_that_are_not_whole_patches_are_refused_with_the_input_named(random_vgg_state):
    model = fresh_small_model()
    with pytest.raises(ValueError, match="style batch is 36x32"):
        compute_losses(model, VGGEncoder(), images(1, 32, 0), torch.rand(1, 3, 32, 36), seed=0)
    with pytest.raises(ValueError, match="content batch is 16x16"):
        compute_losses(model, VGGEncoder(), images(1, 16, 0), images(1, 32, 0), seed=0)
