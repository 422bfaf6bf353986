"""The MSTD's style shuffle, drawn exactly as the reference draws it under a seed."""

from __future__ import annotations

import functools
import secrets

import torch


def new_seed() -> int:
    """A fresh random seed for callers that asked for none."""
    return secrets.randbits(63)


# A few entries: a batch, its tiles and a re-run share one seed. Each holds layers x tokens int64s
# (50 MB at 4096 px), so the cache stays small.
@functools.lru_cache(maxsize=4)
def style_permutations(seed: int, tokens: int, layers: int) -> tuple[torch.Tensor, ...]:
    """One permutation of ``tokens`` style positions per MSTD layer, on the CPU.

    Layer k uses the k-th draw of ``argsort(rand(tokens))`` from a CPU generator seeded with
    ``seed``: what the reference computes after ``torch.manual_seed(seed)``. The default (not
    stable) argsort is kept on purpose: ``rand`` has 2^24 levels, ties are common at large token
    counts, and the reference's order among ties is that of the unstable sort.

    Cached: a batch of frames fused one by one with one seed draws the permutations once.
    The returned tensors are shared; do not modify them. They are ordinary tensors even when
    first drawn in inference mode, so that a later call recording gradients may index with them.
    """
    generator = torch.Generator("cpu").manual_seed(int(seed))
    with torch.inference_mode(False):
        return tuple(torch.argsort(torch.rand(tokens, generator=generator)) for _ in range(layers))
