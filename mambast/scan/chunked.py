"""Chunked selective scan: the sequence in chunks, the state carried from chunk to chunk.

For each chunk of T tokens the discretised transition ``exp(delta * A)`` and input
``delta * u * B`` are built at once as (B*G, D/G, T, N) buffers; the state then advances token
by token with one fused multiply-add over a (B*G, D/G, N) slice per token, written in place of
the input so the buffer ends up holding every state of the chunk, which C reads out in one go.
Bias, softplus and the skip term D also run once per chunk. A Python-level loop over tokens
costs microseconds per token; the work that grows with N runs in large vectorised operations.

Peak memory is O(B * D * N * T), never a (B, D, L, N) tensor for the whole sequence. The update
``h = exp(delta * A) * h + delta * u * B`` is the reference's own, so no rescaling is needed
whatever delta and A: every factor ``exp(delta * A)`` lies in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..progress import tick
from .contract import check_scan_shapes

DEFAULT_CHUNK = 24  # measured fastest of 8..64 on a 2-core CPU (bench/scan.py)
_LOG2_E = 1.0 / math.log(2.0)


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Chunked selective scan; shapes as in :func:`mambast.scan.selective_scan`."""
    check_scan_shapes(u, delta, A, B, C)
    batch, channels, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    per_group, flat = channels // groups, batch * groups

    def per_channel(vector: torch.Tensor) -> torch.Tensor:
        """(D,) or (D, N) parameters -> (B*G, 1, D/G, ...) aligned with the token-major buffers."""
        grouped = vector.float().reshape(1, groups, 1, per_group, *vector.shape[1:])
        return grouped.expand(batch, *grouped.shape[1:]).reshape(flat, 1, per_group, *vector.shape[1:])

    u_g = u.reshape(flat, per_group, length)
    delta_g = delta.reshape(flat, per_group, length)
    # exp(delta * A) is computed as exp2(delta * A * log2(e)): the same value to a few ulp, and
    # exp2 is over twice as fast as exp on CPUs.
    rate = per_channel(A).transpose(1, 2) * _LOG2_E  # (BG, Dg, 1, N)
    bias = per_channel(delta_bias).transpose(1, 2) if delta_bias is not None else None  # (BG, Dg, 1)
    skip = per_channel(D).transpose(1, 2) if D is not None else None
    # Token-major B and C (small: they have no channel dimension).
    B_tokens = B.float().reshape(flat, state_size, length).transpose(1, 2).contiguous().unsqueeze(1)  # (BG, 1, L, N)
    C_tokens = C.float().reshape(flat, state_size, length).transpose(1, 2).contiguous().unsqueeze(1)

    inplace = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)))
    # Inference reuses two chunk-sized buffers; under autograd every chunk allocates its own.
    buffers = [u.new_empty((flat, per_group, chunk, state_size), dtype=torch.float32) for _ in range(2)] \
        if inplace else None
    state = u.new_zeros(flat, per_group, state_size, dtype=torch.float32)
    y = u.new_empty((flat, per_group, length), dtype=torch.float32)
    for start in range(0, length, chunk):
        tick()
        stop = min(start + chunk, length)
        steps = delta_g[..., start:stop].float()  # (BG, Dg, T)
        if bias is not None:
            steps = steps + bias
        if delta_softplus:
            steps = F.softplus(steps)
        inputs = u_g[..., start:stop].float()
        y_chunk, state = _scan_chunk(steps, inputs, rate, B_tokens[:, :, start:stop], C_tokens[:, :, start:stop],
                                     state, buffers and [b[:, :, : stop - start] for b in buffers])
        if skip is not None:
            y_chunk = torch.addcmul(y_chunk, inputs, skip, out=y_chunk if inplace else None)
        y[..., start:stop] = y_chunk
    return y.reshape(batch, channels, length)


def _scan_chunk(steps, inputs, rate, B_tokens, C_tokens, state, buffers):
    """Advance one chunk of T tokens.

    steps (delta after bias and softplus), inputs (u): (BG, Dg, T); rate (A * log2(e)): (BG, Dg, 1, N);
    B_tokens, C_tokens: (BG, 1, T, N); state: (BG, Dg, N); buffers: two (BG, Dg, T, N) tensors
    to compute in, or None under autograd. Returns y (BG, Dg, T) and the state after the chunk.
    """
    transition_out, drive_out = buffers or (None, None)
    steps = steps.unsqueeze(-1)
    transition = torch.mul(steps, rate, out=transition_out)
    transition = torch.exp2(transition, out=transition_out)  # exp(delta * A), in [0, 1]
    drive = torch.mul(steps * inputs.unsqueeze(-1), B_tokens, out=drive_out)
    if buffers is not None:
        # drive[:, :, t] becomes the state after token t, in place.
        for t in range(drive.shape[2]):
            state = drive[:, :, t].addcmul_(transition[:, :, t], state)
        state = state.clone()
        readout = drive.mul_(C_tokens)
    else:
        history = []
        for t in range(drive.shape[2]):
            state = torch.addcmul(drive[:, :, t], transition[:, :, t], state)
            history.append(state)
        readout = torch.stack(history, dim=2) * C_tokens
    return readout.sum(-1), state
