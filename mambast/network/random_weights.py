"""Random weights in the official checkpoint layout, for tests and benchmarks.

The released weights are never downloaded in tests; these stand in for them. Initialisation
follows the reference's constructors where it matters for the scan (A = -(1..N), D = 1, a
softplus bias giving steps in 0.001..0.1) and gives the CNN decoder a He-normal init so that
random outputs have a real dynamic range.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .config import MambaSTConfig
from .model import MambaST

SMALL_CONFIG = MambaSTConfig(d_model=64, d_state=8, d_inner=128, dt_rank=4, encoder_layers=2, decoder_layers=2,
                             decoder_channels=(64, 32, 32, 32, 32, 16, 16, 8, 8, 3))


def unused_official_tensors(config: MambaSTConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors the official files carry but inference never reads."""
    shapes: dict[str, tuple[int, ...]] = {
        "mamba.new_ps.weight": (config.d_model, config.d_model, 1, 1),
        "mamba.new_ps.bias": (config.d_model,),
    }
    for stack, layers in (("encoder_c", config.encoder_layers), ("encoder_s", config.encoder_layers),
                          ("decoder", config.decoder_layers)):
        for index in range(layers):
            shapes[f"mamba.{stack}.layers.{index}.skip_scale2"] = (config.d_model,)
            if stack != "decoder":
                shapes[f"mamba.{stack}.layers.{index}.self_attention.in_style_proj.weight"] = (config.d_inner,
                                                                                              config.d_model)
    return shapes


def random_official_tensors(config: MambaSTConfig | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """All tensors of an official checkpoint (prefixed ``decoder.``/``embedding.``/``mamba.``), float32."""
    config = config or MambaSTConfig()
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MambaST(config).state_dict().items()}
    shapes.update(unused_official_tensors(config))
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in sorted(shapes.items()):
        name = key.rsplit(".", 1)[-1]
        if name == "A_logs":
            tensor = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).repeat(shape[0], 1)
        elif name in ("Ds", "skip_scale", "skip_scale2"):
            tensor = torch.ones(shape)
        elif name == "dt_projs_bias":
            low, high = math.log(1e-3), math.log(1e-1)
            step = torch.exp(torch.rand(shape, generator=generator) * (high - low) + low)
            tensor = step + torch.log(-torch.expm1(-step))  # inverse softplus
        elif key.endswith(("ln_1.weight", "norm.weight", "out_norm.weight")):
            tensor = torch.ones(shape)
        elif len(shape) == 1:
            tensor = torch.randn(shape, generator=generator) * 0.01
        else:
            fan_in = shape[-1] if len(shape) in (2, 3) else math.prod(shape[1:])
            gain = math.sqrt(2.0) if key.startswith("decoder.") else 1.0
            tensor = torch.randn(shape, generator=generator) * (gain / math.sqrt(fan_in))
        tensors[key] = tensor.float()
    return tensors


def write_official_folder(tensors: dict[str, torch.Tensor], folder: str | Path,
                          mamba_name: str = "mamba_iter_160000.pth") -> Path:
    """Save prefixed tensors as the three official ``.pth`` files in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"decoder": "decoder_iter_160000.pth", "embedding": "embedding_iter_160000.pth", "mamba": mamba_name}
    for part, file_name in names.items():
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == part}
        torch.save(state, folder / file_name)
    return folder
