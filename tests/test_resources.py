"""The memory estimate handed to ComfyUI, against peaks measured on the released architecture."""

from __future__ import annotations

import pytest
import torch

from mambast.network.config import MambaSTConfig
from mambast.run.resources import activation_bytes, tile_to_fit

MIB = 2**20
# Peak working memory of one stylization (model weights excluded), MiB, random weights of the
# released architecture, float32 unless said:
# - CPU: `python bench/memory.py` (peak resident memory above what was resident before the run;
#   2 threads, the nodes' stylize_images path), 2026-12-01 and -02. The allocator's peak varies from
#   run to run; the highest of the runs counts: 512 px 205, 221, 237, 268, 301, 301, 309, 333, 328
#   (eight runs of bench/memory.py and bench/stylize.py); 1024 px 748, 748, 772, 804, 848 (the last
#   with the fused passes of mambast.kernels.fused); 2048 px 3028.
# - CUDA: the H200 figures of `python bench/gpu.py` in docs/gpu.md (peak allocated, triton scan)
#   less the weights (90 MiB in float32, 46 MiB in bfloat16), 2026-11-27.
MEASURED = {
    ("cpu", torch.float32): {512: 333, 1024: 848, 2048: 3028},
    ("cuda", torch.float32): {512: 485 - 90, 1024: 1569 - 90},
    ("cuda", torch.bfloat16): {512: 317 - 46, 1024: 1018 - 46, 2048: 3766 - 46},
}
CASES = [(device, dtype, side, peak) for (device, dtype), table in MEASURED.items() for side, peak in table.items()]


@pytest.mark.parametrize("device, dtype, side, peak", CASES,
                         ids=[f"{d}-{str(t)[6:]}-{s}" for d, t, s, _ in CASES])
def test_the_memory_estimate_covers_the_measured_peak_by_at_most_half_again(device, dtype, side, peak):
    estimate = activation_bytes(MambaSTConfig(), side, side, device_type=device, dtype=dtype) / MIB
    assert peak <= estimate <= 1.5 * peak, (estimate, peak)


def test_the_estimate_grows_with_the_batch_and_the_pixels():
    config = MambaSTConfig()
    one = activation_bytes(config, 512, 512)
    assert activation_bytes(config, 512, 512, batch=2) > one
    assert activation_bytes(config, 1024, 512) > one


def test_a_run_that_fits_is_not_tiled_and_one_that_does_not_gets_the_largest_tile_that_fits():
    config = MambaSTConfig()
    assert tile_to_fit(config, 1024, 768, activation_bytes(config, 1024, 768)) == 0
    tile = tile_to_fit(config, 4096, 3072, activation_bytes(config, 1024, 1024))
    assert tile == 1024
    assert tile_to_fit(config, 4096, 3072, 1) == 64  # nothing fits: the smallest tile
