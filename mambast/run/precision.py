"""The dense layers' dtype when the caller leaves it to us ("auto").

bfloat16 halves the dense layers' memory traffic and, on CPUs with native bfloat16 arithmetic
(AVX512-BF16 or AMX on x86, the BF16 extension on Arm), lets oneDNN run them up to several times
faster; elsewhere oneDNN converts to float32 and back and bfloat16 is slower. It also changes the
picture (docs/performance.md, "bfloat16 on CPUs"), and the CNN decoder loses NNPACK's float32
Winograd kernels. So "auto" is bfloat16 only on a CPU that has the instructions *and* where a short
measurement on the model's own layer shapes finds it at least ``MIN_SPEEDUP`` times faster; float32
otherwise, and on GPUs (where half precision was not faster for single images). The measurement
runs once per process, the first time it is asked for. ``MAMBAST_AUTO_DTYPE`` (float32, bfloat16,
float16) fixes what "auto" means instead.
"""

from __future__ import annotations

import functools
import os
import time

import torch

# bfloat16 must save at least this share of the time to be worth its change of the picture.
MIN_SPEEDUP = 1.25
_NATIVE_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16, AMX-BF16 or Arm BF16)."""
    return bool(_NATIVE_FLAGS & cpu_flags())


def _probe_model(dtype: torch.dtype):
    """The release's layer widths with one block per stack, random weights (no file is read)."""
    from ..network.config import MambaSTConfig
    from ..network.model import MambaST

    with torch.random.fork_rng(devices=[]):  # the host's random numbers stay as they were
        torch.manual_seed(0)
        model = MambaST(MambaSTConfig(encoder_layers=1, decoder_layers=1)).eval().requires_grad_(False)
    for name, parameter in model.named_parameters():
        if name.endswith("A_logs"):
            parameter.copy_(torch.log(torch.arange(1, parameter.shape[1] + 1, dtype=torch.float32)).expand_as(parameter))
        elif name.endswith("dt_projs_bias"):
            parameter.fill_(-4.0)
    return model.to(dtype)


def bfloat16_speedup(side: int = 128, repeats: int = 2) -> float:
    """float32 time over bfloat16 time of a stylization at ``side`` px by :func:`_probe_model`
    on this CPU (best of ``repeats`` after a warm-up each): above 1 when bfloat16 is faster."""
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _probe_model(dtype)
        with torch.inference_mode():
            model.stylize(image, image, seed=0)
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                model.stylize(image, image, seed=0)
                best = min(best, time.perf_counter() - started)
        seconds[dtype] = best
    return seconds[torch.float32] / seconds[torch.bfloat16]


@functools.lru_cache(maxsize=None)
def _bfloat16_pays(threads: int) -> bool:
    return bfloat16_speedup() >= MIN_SPEEDUP


def automatic_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on a CPU with native bfloat16 where it measured at least ``MIN_SPEEDUP`` times
    faster (measured once per process and thread count), float32 everywhere else; what
    ``MAMBAST_AUTO_DTYPE`` names when it is set."""
    from ..network.checkpoint import DTYPES

    chosen = os.environ.get("MAMBAST_AUTO_DTYPE", "").strip()
    if chosen:
        if chosen not in DTYPES:
            raise ValueError(f"MAMBAST_AUTO_DTYPE={chosen!r} is not a dtype of the dense layers; set it to one of "
                             f"{', '.join(DTYPES)}, or unset it to let the speed of this machine decide.")
        return DTYPES[chosen]
    if torch.device(device).type != "cpu" or not native_bfloat16():
        return torch.float32
    return torch.bfloat16 if _bfloat16_pays(torch.get_num_threads()) else torch.float32
