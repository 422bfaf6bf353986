"""The Mamba-ST architecture as a dataclass, read off a checkpoint's tensors."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MambaSTConfig:
    """Sizes of a Mamba-ST network. The defaults are the released model's."""

    d_model: int = 512  # token channels (patch embedding output)
    patch_size: int = 8
    d_state: int = 16  # N, the selective scan's state size per channel
    d_inner: int = 1024  # channels inside each VSS block (expand 2)
    dt_rank: int = 32
    conv_kernel: int = 3  # the depthwise conv inside each VSS block
    directions: int = 4  # K: row-major, column-major and both reversed
    encoder_layers: int = 3
    decoder_layers: int = 3
    decoder_channels: tuple[int, ...] = (512, 256, 256, 256, 256, 128, 128, 64, 64, 3)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "MambaSTConfig":
        """Read the sizes from a state dict with ``embedding.``/``mamba.``/``decoder.`` prefixes.

        Raises KeyError naming a tensor the sizes are read from when it is absent.
        """
        def need(key: str) -> torch.Tensor:
            if key not in state:
                raise KeyError(key)
            return state[key]

        patch = need("embedding.proj.weight")
        block = "mamba.encoder_c.layers.0.self_attention."
        in_proj = need(block + "in_proj.weight")
        a_logs = need(block + "A_logs")
        dt_weight = need(block + "dt_projs_weight")
        conv = need(block + "conv2d.weight")

        def count_layers(stack: str) -> int:
            pattern = re.compile(rf"^mamba\.{stack}\.layers\.(\d+)\.")
            indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
            return max(indices) + 1 if indices else 0

        decoder_convs = sorted((int(key.split(".")[1]), tensor) for key, tensor in state.items()
                               if re.fullmatch(r"decoder\.\d+\.weight", key))
        channels = tuple([decoder_convs[0][1].shape[1]] + [t.shape[0] for _, t in decoder_convs]) \
            if decoder_convs else cls.decoder_channels
        return cls(
            d_model=patch.shape[0],
            patch_size=patch.shape[-1],
            d_state=a_logs.shape[1],
            d_inner=in_proj.shape[0] // 2,
            dt_rank=dt_weight.shape[2],
            conv_kernel=conv.shape[-1],
            directions=dt_weight.shape[0],
            encoder_layers=count_layers("encoder_c"),
            decoder_layers=count_layers("decoder"),
            decoder_channels=channels,
        )
