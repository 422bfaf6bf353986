"""The chunk loop of the chunked scan, shared by its forward pass and its recomputing backward.

For each chunk of T tokens the discretised transition ``exp(delta * A)`` and input
``delta * u * B`` are built at once as (B*G, D/G, T, N) buffers; the state then advances token
by token with one fused multiply-add over a (B*G, D/G, N) slice per token, written in place of
the input so the buffer ends up holding every state of the chunk, which C reads out in one go.
Bias, softplus and the skip term D also run once per chunk. A Python-level loop over tokens
costs microseconds per token; the work that grows with N runs in large vectorised operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...utils.progress import tick

DEFAULT_CHUNK = 24  # measured fastest of 8..64 on a 2-core CPU (bench/scan.py)
LOG2_E = 1.0 / math.log(2.0)


@dataclass
class ChunkLayout:
    """The scan's operands laid out for the chunk loop, in the compute dtype.

    Channel d of the contract layout is member d % (D/G) of group d // (D/G); the loop works on
    (B*G, D/G, ...) views so that each group's B and C broadcast over its channels.
    """

    u: torch.Tensor  # (BG, Dg, L)
    delta: torch.Tensor  # (BG, Dg, L), raw: before bias and softplus
    A: torch.Tensor  # (BG, Dg, 1, N), broadcast over the batch
    rate: torch.Tensor  # A * log2(e), (BG, Dg, 1, N)
    bias: torch.Tensor | None  # delta_bias (BG, Dg, 1)
    skip: torch.Tensor | None  # D (BG, Dg, 1)
    B: torch.Tensor  # token-major (BG, 1, L, N)
    C: torch.Tensor  # token-major (BG, 1, L, N)
    batch: int
    groups: int

    @classmethod
    def of(cls, u, delta, A, B, C, D, delta_bias, dtype: torch.dtype = torch.float32) -> "ChunkLayout":
        """Lay out contract-shaped operands (see :func:`mambast.kernels.scan.selective_scan`); computing
        in ``dtype`` (float32 by the contract; float64 lets tests check gradients tightly)."""
        batch, channels, length = u.shape
        groups, state_size = B.shape[1], A.shape[1]
        per_group, flat = channels // groups, batch * groups

        def per_channel(vector: torch.Tensor) -> torch.Tensor:
            """(D,) or (D, N) parameters -> (B*G, D/G, 1, ...) aligned with the token-major buffers."""
            grouped = vector.to(dtype).reshape(1, groups, per_group, 1, *vector.shape[1:])
            return grouped.expand(batch, *grouped.shape[1:]).reshape(flat, per_group, 1, *vector.shape[1:])

        A_channels = per_channel(A)
        return cls(
            u=u.reshape(flat, per_group, length),
            delta=delta.reshape(flat, per_group, length),
            A=A_channels,
            # exp(delta * A) is computed as exp2(delta * A * log2(e)): the same value to a few ulp,
            # and exp2 is over twice as fast as exp on CPUs.
            rate=A_channels * LOG2_E,
            bias=per_channel(delta_bias) if delta_bias is not None else None,
            skip=per_channel(D) if D is not None else None,
            # Token-major B and C (small: they have no channel dimension).
            B=B.to(dtype).reshape(flat, state_size, length).transpose(1, 2).contiguous().unsqueeze(1),
            C=C.to(dtype).reshape(flat, state_size, length).transpose(1, 2).contiguous().unsqueeze(1),
            batch=batch,
            groups=groups,
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.rate.dtype

    def steps(self, start: int, stop: int, softplus: bool) -> torch.Tensor:
        """delta of tokens start..stop-1 after its bias and softplus: (BG, Dg, T)."""
        return delta_steps(self.delta[..., start:stop], self.bias, softplus, self.dtype)


def scan_chunks(layout: ChunkLayout, softplus: bool, chunk: int, inplace: bool = True,
                boundaries: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The chunk loop: y (B, D, L) in the layout's dtype.

    ``inplace`` reuses two chunk-sized buffers (no autograd through them); without it every
    chunk allocates its own, so that autograd can record them. ``boundaries``, when given,
    receives the (BG, Dg, N) state before each chunk.
    """
    flat, per_group, length = layout.u.shape
    state_size = layout.A.shape[-1]
    buffers = [layout.u.new_empty((flat, per_group, chunk, state_size), dtype=layout.dtype) for _ in range(2)] \
        if inplace else None
    state = layout.u.new_zeros(flat, per_group, state_size, dtype=layout.dtype)
    y = layout.u.new_empty((flat, per_group, length), dtype=layout.dtype)
    for start in range(0, length, chunk):
        tick()
        stop = min(start + chunk, length)
        if boundaries is not None:
            boundaries.append(state)
        inputs = layout.u[..., start:stop].to(layout.dtype)
        y_chunk, state = _scan_chunk(layout.steps(start, stop, softplus), inputs, layout.rate,
                                     layout.B[:, :, start:stop], layout.C[:, :, start:stop],
                                     state, buffers and [b[:, :, : stop - start] for b in buffers])
        if layout.skip is not None:
            y_chunk = torch.addcmul(y_chunk, inputs, layout.skip, out=y_chunk if inplace else None)
        y[..., start:stop] = y_chunk
    return y.reshape(layout.batch, -1, length)


def _scan_chunk(steps, inputs, rate, B_tokens, C_tokens, state, buffers):
    """Advance one chunk of T tokens.

    steps (delta after bias and softplus), inputs (u): (BG, Dg, T); rate (A * log2(e)): (BG, Dg, 1, N);
    B_tokens, C_tokens: (BG, 1, T, N); state: (BG, Dg, N); buffers: two (BG, Dg, T, N) tensors
    to compute in, or None under autograd. Returns y (BG, Dg, T) and the state after the chunk.
    """
    transition, drive = discretise(steps.unsqueeze(-1), inputs.unsqueeze(-1), rate, B_tokens, buffers)
    states, state = advance(transition, drive, state, inplace=buffers is not None)
    readout = states.mul_(C_tokens) if buffers is not None else states * C_tokens
    return readout.sum(-1), state


def delta_steps(raw: torch.Tensor, bias: torch.Tensor | None, softplus: bool,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """delta for a chunk in ``dtype``, plus its bias, through softplus when asked."""
    steps = raw.to(dtype)
    if bias is not None:
        steps = steps + bias
    return F.softplus(steps) if softplus else steps


def discretise(steps, inputs, rate, B, buffers):
    """The chunk's transitions ``exp(delta * A)`` and inputs ``delta * u * B``, broadcast from
    operands already shaped for the layout (``rate`` is A * log2(e): exp2 is over twice as fast
    as exp on CPUs, for the same value to a few ulp); written into ``buffers`` when given."""
    transition_out, drive_out = buffers or (None, None)
    transition = torch.mul(steps, rate, out=transition_out)
    transition = torch.exp2(transition, out=transition_out)  # in [0, 1]
    drive = torch.mul(steps * inputs, B, out=drive_out)
    return transition, drive


def advance(transition, drive, state, inplace):
    """h_t = transition_t * h_{t-1} + drive_t over the chunk's tokens (dim 2).

    Returns every state of the chunk (along dim 2) and the last one. For inference ``drive`` is
    overwritten with the states, one fused multiply-add per token; under autograd they are
    stacked anew.
    """
    if inplace:
        for t in range(drive.shape[2]):
            state = drive[:, :, t].addcmul_(transition[:, :, t], state)
        return drive, state.clone()
    history = []
    for t in range(drive.shape[2]):
        state = torch.addcmul(drive[:, :, t], transition[:, :, t], state)
        history.append(state)
    return torch.stack(history, dim=2), state
