"""The Triton scan's entry points: the contract layout (with a backward pass under autograd)
and the four SS2D directions at once (inference).

The kernels are in :mod:`mambast.kernels.scan.triton_kernel` (forward) and
:mod:`mambast.kernels.scan.triton_backward`. Importing this module imports Triton: the dispatcher
does it only when this backend runs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .contract import check_direction_shapes, check_scan_shapes, records_gradients
from .triton_backward import selective_scan_triton_trainable
from .triton_kernel import from_token_major, scan_triton, token_major


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    **tuning,
) -> torch.Tensor:
    """The contract of :func:`mambast.kernels.scan.selective_scan` on the kernel: (B, D, L) float32 out.

    ``tuning``: the tile-shape overrides of :func:`scan_triton` (block_l, block_d, num_warps)."""
    check_scan_shapes(u, delta, A, B, C)
    if records_gradients(u, delta, A, B, C, D, delta_bias):
        return selective_scan_triton_trainable(u, delta, A, B, C, D, delta_bias, delta_softplus, **tuning)
    groups = B.shape[1]
    y = scan_triton(*token_major(u, delta, groups), A, B.transpose(2, 3), C.transpose(2, 3), D, delta_bias,
                    delta_softplus, [False] * groups, **tuning)
    return from_token_major(y)


def selective_scan_triton_directions(
    u: Sequence[torch.Tensor],
    delta: torch.Tensor,
    A: torch.Tensor,
    B: Sequence[torch.Tensor],
    C: Sequence[torch.Tensor],
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: Sequence[bool] | None = None,
    combine: Sequence[int] | None = None,
    **tuning,
) -> list[torch.Tensor]:
    """:func:`mambast.kernels.scan.chunked.selective_scan_chunked_directions` on the kernel (same arguments)."""
    reverse, combine = check_direction_shapes(u, delta, A, B, C, reverse, combine)
    sequences: list[torch.Tensor] = []
    source = []
    for tensor in u:  # the same tensor given for several directions is passed once
        index = next((i for i, seen in enumerate(sequences) if seen is tensor), None)
        if index is None:
            index = len(sequences)
            sequences.append(tensor)
        source.append(index)
    u_stacked = torch.stack(sequences, dim=1)
    y = scan_triton(u_stacked, source, delta, A, torch.stack(list(B), dim=1), torch.stack(list(C), dim=1), D,
                    delta_bias, delta_softplus, reverse, **tuning)
    outputs: list[torch.Tensor | None] = [None] * (max(combine) + 1)
    for k, index in enumerate(combine):
        outputs[index] = y[:, k] if outputs[index] is None else outputs[index] + y[:, k]
    return [output if output is not None else torch.zeros_like(y[:, 0]) for output in outputs]
