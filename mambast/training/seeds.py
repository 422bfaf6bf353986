"""Seeds derived from the run's seed: every random draw of training is a pure function of where it is.

A draw keyed by (run seed, rank, purpose, iteration) instead of taken from a generator that
runs along with training needs no state to resume: iteration k of a resumed run draws what
iteration k of an uninterrupted run drew, on every rank, whatever happened before it.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every one of ``parts`` (ints and strings), and on nothing else.

    A hash rather than arithmetic (seed + rank * 1000 + ...) so that different keys never
    collide into one stream: rank 1 at iteration 0 is unrelated to rank 0 at iteration 1000.
    """
    key = "/".join(f"{type(part).__name__}:{part}" for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator("cpu").manual_seed(derive_seed(*parts))
