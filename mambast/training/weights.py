"""Weights for training: the reference's initialisation, and checkpoints in both layouts.

The official layout holds a few tensors our model does not (``mamba.new_ps.*``, ``*.skip_scale2``
and the encoders' ``in_style_proj``): the reference builds them and saves them, but the
stylized image never depends on them. They travel beside the model as an "extra" dict with
official prefixed keys, so that the checkpoints we write load strictly into the reference.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from ..network.checkpoint import PARTS, Checkpoint, usable_tensors
from ..network.config import MambaSTConfig
from ..network.model import MambaST
from ..network.random_weights import unused_official_tensors
from ..utils.files import write_atomically
from .vgg import VGGEncoder

# The reference's SS2D step-size initialisation (mamba_ssm's dt_init "random").
_DT_MIN, _DT_MAX, _DT_FLOOR = 1e-3, 1e-1, 1e-4


def _empty(*shape: int) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32, device="cpu")


class _Draws:
    """Random tensors drawn as ``nn.init`` and PyTorch's default layer init draw them, in call order."""

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator

    def default_weight(self, *shape: int) -> torch.Tensor:
        """An nn.Linear / nn.Conv2d weight as its reset_parameters draws it."""
        return nn.init.kaiming_uniform_(_empty(*shape), a=math.sqrt(5), generator=self.generator)

    def default_bias(self, size: int, fan_in: int) -> torch.Tensor:
        bound = 1 / math.sqrt(fan_in)
        return nn.init.uniform_(_empty(size), -bound, bound, generator=self.generator)

    def uniform(self, shape: tuple[int, ...], bound: float) -> torch.Tensor:
        return nn.init.uniform_(_empty(*shape), -bound, bound, generator=self.generator)

    def rand(self, size: int) -> torch.Tensor:
        return torch.rand(size, dtype=torch.float32, device="cpu", generator=self.generator)

    def xavier(self, tensor: torch.Tensor) -> torch.Tensor:
        return nn.init.xavier_uniform_(tensor, generator=self.generator)


def _reference_block(config: MambaSTConfig, cross: bool, draw: _Draws) -> dict[str, torch.Tensor]:
    """One reference VSSBlock as its constructor draws it; keys in the reference's parameter order.

    Every block carries ``in_style_proj`` and ``skip_scale2`` (self blocks never use them).
    """
    inner, state, rank, directions = config.d_inner, config.d_state, config.dt_rank, config.directions
    kernel = config.conv_kernel
    in_proj = draw.default_weight(2 * inner, config.d_model)
    in_style_proj = draw.default_weight(inner, config.d_model)
    conv_weight = draw.default_weight(inner, 1, kernel, kernel)
    conv_bias = draw.default_bias(inner, kernel * kernel)
    projections: dict[str, torch.Tensor] = {}
    if cross:
        projections["style_proj_weight"] = torch.stack([draw.default_weight(rank + state, inner)
                                                        for _ in range(directions)])
        projections["x_proj_weight"] = torch.stack([draw.default_weight(state, inner) for _ in range(directions)])
    else:
        projections["x_proj_weight"] = torch.stack([draw.default_weight(rank + 2 * state, inner)
                                                    for _ in range(directions)])
    dt_weights, dt_biases = [], []
    for _ in range(directions):
        draw.default_weight(inner, rank)  # the nn.Linear's own init, overwritten below
        draw.default_bias(inner, rank)
        dt_weights.append(draw.uniform((inner, rank), rank ** -0.5))
        low, high = math.log(_DT_MIN), math.log(_DT_MAX)
        step = torch.exp(draw.rand(inner) * (high - low) + low).clamp(min=_DT_FLOOR)
        dt_biases.append(step + torch.log(-torch.expm1(-step)))  # inverse softplus
    width = config.d_model
    block = {"skip_scale": torch.ones(width), "skip_scale2": torch.ones(width),
             "ln_1.weight": torch.ones(width), "ln_1.bias": torch.zeros(width)}
    attention = dict(projections)
    attention["dt_projs_weight"] = torch.stack(dt_weights)
    attention["dt_projs_bias"] = torch.stack(dt_biases)
    attention["A_logs"] = torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(directions * inner, 1)
    attention["Ds"] = torch.ones(directions * inner)
    attention["in_proj.weight"] = in_proj
    attention["in_style_proj.weight"] = in_style_proj
    attention["conv2d.weight"] = conv_weight
    attention["conv2d.bias"] = conv_bias
    attention["out_norm.weight"] = torch.ones(inner)
    attention["out_norm.bias"] = torch.zeros(inner)
    attention["out_proj.weight"] = draw.default_weight(config.d_model, inner)  # drawn last, as constructed
    block.update({f"self_attention.{key}": value for key, value in attention.items()})
    block.update({"norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)})
    return block


def _reference_body(config: MambaSTConfig, draw: _Draws) -> dict[str, torch.Tensor]:
    """The reference's ``Mamba`` module as its constructor leaves it, official keys prefixed ``mamba.``."""
    # The reference builds one encoder block and one decoder block and deep-copies each into its
    # layers: before the xavier pass below, every layer of a kind holds the same values, and the
    # 1-D tensors it does not touch (the depthwise conv's bias among them) stay shared copies.
    self_block = _reference_block(config, cross=False, draw=draw)
    cross_block = _reference_block(config, cross=True, draw=draw)
    body: dict[str, torch.Tensor] = {}
    for stack, layers, block in (("encoder_c", config.encoder_layers, self_block),
                                 ("encoder_s", config.encoder_layers, self_block),
                                 ("decoder", config.decoder_layers, cross_block)):
        for index in range(layers):
            body.update({f"mamba.{stack}.layers.{index}.{key}": value.clone() for key, value in block.items()})
    body["mamba.decoder.norm.weight"] = torch.ones(config.d_model)
    body["mamba.decoder.norm.bias"] = torch.zeros(config.d_model)
    # Mamba._reset_parameters: xavier on every parameter of more than one dimension, which also
    # overwrites A_logs (no longer log(1..N)), dt_projs_bias (no longer an inverse softplus) and
    # the stacked projections and conv weights. It runs before new_ps exists.
    for tensor in body.values():
        if tensor.dim() > 1:
            draw.xavier(tensor)
    body["mamba.new_ps.weight"] = draw.default_weight(config.d_model, config.d_model, 1, 1)
    body["mamba.new_ps.bias"] = draw.default_bias(config.d_model, config.d_model)
    return body


def _default_convolutions(layers: nn.Sequential, draw: _Draws, prefix: str) -> dict[str, torch.Tensor]:
    """The convolutions of ``layers`` with PyTorch's default init, keys ``<prefix><index>.weight/bias``."""
    tensors: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            tensors[f"{prefix}{index}.weight"] = draw.default_weight(*layer.weight.shape)
            tensors[f"{prefix}{index}.bias"] = draw.default_bias(layer.out_channels, layer.weight[0].numel())
    return tensors


def reference_initial_tensors(config: MambaSTConfig,
                              generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Every official tensor (prefixed keys, float32, CPU) as the reference initialises a new model.

    The draws follow the reference's own order, so that with ``generator`` seeded with s the
    result equals the reference's tensors after ``torch.manual_seed(s)`` (checked against the
    parity fixture): importing its models_helper builds two CNN decoders (the unused
    ``decoder_sota``, then ``decoder``) and the VGG (later overwritten by vgg_normalised.pth),
    then train.py builds the patch embedding and the Mamba body. ``generator`` None draws from
    PyTorch's global generator.
    """
    draw = _Draws(generator)
    with torch.device("meta"):
        cnn_decoder, vgg = MambaST(config).decoder, VGGEncoder()
    _default_convolutions(cnn_decoder, draw, "")  # decoder_sota: drawn, never used
    tensors = _default_convolutions(cnn_decoder, draw, "decoder.")
    _default_convolutions(vgg, draw, "")  # the VGG's random init, replaced by its file
    patch = config.patch_size
    tensors["embedding.proj.weight"] = draw.default_weight(config.d_model, 3, patch, patch)
    tensors["embedding.proj.bias"] = draw.default_bias(config.d_model, 3 * patch * patch)
    tensors.update(_reference_body(config, draw))
    return tensors


def split_extra(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official tensors -> (those our model holds, the extra ones it does not)."""
    usable = usable_tensors(Checkpoint(tensors))
    return usable, {key: value for key, value in tensors.items() if key not in usable}


def initialise_like_reference(model: MambaST, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Initialise ``model`` in place as the reference initialises a new network; returns the extra tensors.

    Patch embedding and CNN decoder: PyTorch's default init. Mamba body: the SS2D constructor's
    inits, then xavier-uniform on every tensor of more than one dimension (the reference's
    ``Mamba._reset_parameters``). The returned dict holds the official tensors the model lacks
    (``mamba.new_ps.*``, ``*.skip_scale2``, the encoders' ``in_style_proj``), drawn in the same
    stream, for :func:`save_official`. ``generator`` makes it deterministic.
    """
    usable, extra = split_extra(reference_initial_tensors(model.config, generator))
    with torch.no_grad():
        model.load_state_dict(usable, strict=True)
    return extra


def extra_tensors_of(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The official tensors of a read checkpoint that our model does not hold (to save them back)."""
    return split_extra(checkpoint.tensors)[1]


def official_state(model: MambaST, extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every official tensor, prefixed, as CPU float32: the model's and the extra ones.

    Extra tensors not given are made as the reference would make them for a new model (seeded,
    so saving twice writes the same files): the stylized image never depends on them, but the
    reference's strict loading needs them present.
    """
    state = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in model.state_dict().items()}
    given = dict(extra or {})
    shapes = unused_official_tensors(model.config)
    unknown = sorted(set(given) - set(shapes))
    if unknown:
        raise ValueError(f"extra tensors {unknown[:3]} are not official tensors missing from the model; pass the "
                         "extra tensors of a checkpoint of this architecture (extra_tensors_of).")
    if set(given) != set(shapes):
        defaults = split_extra(reference_initial_tensors(model.config, torch.Generator().manual_seed(0)))[1]
        given = {**defaults, **given}
    for key, shape in shapes.items():
        if tuple(given[key].shape) != tuple(shape):
            raise ValueError(f"extra tensor {key!r} has shape {tuple(given[key].shape)}, expected {tuple(shape)} "
                             "for this model.")
        state[key] = given[key].detach().to("cpu", torch.float32).contiguous()
    return state


def save_official(model: MambaST, folder: str | os.PathLike, iteration: int,
                  extra: dict[str, torch.Tensor] | None = None) -> dict[str, Path]:
    """Write the official three files ``{decoder,embedding,mamba}_iter_<iteration>.pth`` into ``folder``.

    Plain state dicts of CPU float32 tensors with the official keys, extra tensors included (see
    :func:`official_state`), as the reference's train.py saves them: its strict
    ``load_state_dict`` and :func:`mambast.load` both read them. Returns the path of each part.
    """
    state = official_state(model, extra)
    paths = {}
    for part in PARTS:
        prefix = part + "."
        tensors = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        path = Path(folder) / f"{part}_iter_{int(iteration)}.pth"
        write_atomically(path, lambda temporary, tensors=tensors: torch.save(tensors, temporary))
        paths[part] = path
    return paths


def save_safetensors(model: MambaST, path: str | os.PathLike, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write every official tensor, prefixed, into one ``.safetensors`` file (what :func:`mambast.load` reads)."""
    from safetensors.torch import save_file

    state = dict(sorted(official_state(model, extra).items()))
    path = Path(path)
    write_atomically(path, lambda temporary: save_file(state, temporary, metadata={"format": "pt"}))
    return path
