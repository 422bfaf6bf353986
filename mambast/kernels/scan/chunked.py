"""Chunked selective scan: the sequence in chunks, the state carried from chunk to chunk.

The chunk loop itself is in :mod:`mambast.kernels.scan.chunk_loop`.

Under autograd the same loop runs inside :mod:`mambast.kernels.scan.chunked_backward`'s function, which
keeps only the state at each chunk boundary and recomputes a chunk at a time in backward.

SS2D calls :func:`selective_scan_chunked_directions` instead: the same recurrence on its
token-major tensors, the four directions at once in state-major (N, D) buffers, the reversed
directions walked backwards by index arithmetic, so that the stacked, flipped and transposed
copies of the sequences and of the outputs are never built.

Peak memory is O(B * D * N * T), never a (B, D, L, N) tensor for the whole sequence. The update
``h = exp(delta * A) * h + delta * u * B`` is the reference's own, so no rescaling is needed
whatever delta and A: every factor ``exp(delta * A)`` lies in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...utils.progress import tick
from . import chunked_backward
from .chunk_loop import DEFAULT_CHUNK, LOG2_E, ChunkLayout, advance, delta_steps, discretise, scan_chunks
from .contract import check_direction_shapes, check_scan_shapes, records_gradients


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
    recompute: bool = True,
) -> torch.Tensor:
    """Chunked selective scan; shapes as in :func:`mambast.kernels.scan.selective_scan`.

    Under autograd, ``recompute`` (the default) keeps only the (B, D, N) state at each chunk
    boundary for backward and recomputes the chunks there (:mod:`mambast.kernels.scan.chunked_backward`):
    O(B*D*N*L/chunk) kept instead of O(B*D*N*L). ``recompute=False`` lets autograd record every
    chunk's temporaries: the baseline bench/scan_backward.py measures against, and the path to
    take for second derivatives (the recomputing backward is not itself differentiable).
    """
    check_scan_shapes(u, delta, A, B, C)
    needs_grad = records_gradients(u, delta, A, B, C, D, delta_bias)
    if needs_grad and recompute:
        return chunked_backward.selective_scan_chunked_recomputing(u, delta, A, B, C, D, delta_bias, delta_softplus,
                                                                   chunk)
    return scan_chunks(ChunkLayout.of(u, delta, A, B, C, D, delta_bias), delta_softplus, chunk, inplace=not needs_grad)


def selective_scan_chunked_directions(
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
    chunk: int = DEFAULT_CHUNK,
    delta_projection: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """K scan directions at once, token-major, the reversed ones scanned from the last token.

    This is the layout SS2D has anyway, so neither the four direction copies nor their flips are
    built. Direction k reads u[k] (batch, L, Dk) and B[k], C[k] (batch, L, N), token-major in the
    tokens' own order (several u[k] may be the same tensor), and delta[:, k] of a (batch, K, L, Dk)
    tensor given in *scan* order (a reversed direction's delta flipped along L: it is computed per
    direction anyway, and flipping its low-rank input is cheaper than flipping it). A is
    (K*Dk, N), D and delta_bias (K*Dk,) as in :func:`mambast.kernels.scan.selective_scan` with one group
    per direction. ``reverse[k]``: direction k runs from token L-1 down to token 0.

    Returns y[k] (batch, L, Dk) float32 in the tokens' own order: the ``selective_scan`` of the
    stacked directions, reversed ones flipped along L before and after the scan. With
    ``combine`` (K output indices), directions with the same index are summed into one output
    (float addition is commutative, so a sum of two is exactly the reference's). Inference only:
    the state is updated in place (no autograd).

    ``delta_projection`` (K, Dk, R): delta is then given low-rank, (batch, K, L, R) in scan order,
    and projected chunk by chunk (``delta[:, k] @ delta_projection[k].T``, the bias added in the
    same product), so the full (batch, K, L, Dk) delta is never built: a quarter of a VSS block's
    largest temporary at 512 px, and one memory pass less.
    """
    reverse, combine = check_direction_shapes(u, delta, A, B, C, reverse, combine, delta_projection)
    batch, length, channels = u[0].shape
    directions, state_size = len(u), A.shape[1]

    def per_direction(vector: torch.Tensor) -> torch.Tensor:
        """(K*Dk,) -> (1, K, 1, Dk), broadcasting over batch and the chunk's tokens."""
        return vector.float().reshape(1, directions, 1, channels)

    # State-major buffers (batch, K, T, N, Dk): the channels are the contiguous, vectorised axis of
    # every operation, and the readout over N is one batched row-vector-times-matrix product
    # (six times faster here than a multiply and a sum over a trailing N axis).
    # Contiguous: a transposed view here makes every transition multiply read A with a stride.
    rate = (A.float().reshape(directions, channels, state_size).transpose(1, 2) * LOG2_E).contiguous()[None, :, None]
    bias = per_direction(delta_bias) if delta_bias is not None else None
    skip = per_direction(D) if D is not None else None
    # B and C are small (no channel dimension): put them in scan order once.
    B_scan = torch.stack([b.float().flip(1) if r else b.float() for b, r in zip(B, reverse)], dim=1)
    C_scan = torch.stack([c.float().flip(1) if r else c.float() for c, r in zip(C, reverse)], dim=1)
    B_scan, C_scan = B_scan.unsqueeze(-1), C_scan.unsqueeze(-2)  # (batch, K, L, N, 1), (batch, K, L, 1, N)

    if delta_projection is not None:
        delta_of = LowRankDelta(delta.float(), delta_projection.float(), bias)
        bias = None  # added by the projection
    else:
        def delta_of(start: int, stop: int) -> torch.Tensor:
            return delta[:, :, start:stop]
    outputs = [u[0].new_zeros((batch, length, channels), dtype=torch.float32) for _ in range(max(combine) + 1)]
    return _scan_chunks(u, delta_of, rate, bias, skip, B_scan, C_scan, delta_softplus, reverse, combine, chunk,
                        outputs)


class LowRankDelta:
    """delta of a chunk from its low-rank input: one batched ``bias + low @ W.T`` product."""

    def __init__(self, low: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        batch, directions, _, rank = low.shape
        channels = weight.shape[1]
        self.low = low.reshape(batch * directions, -1, rank)
        self.weight = weight.transpose(1, 2).expand(batch, -1, -1, -1).reshape(batch * directions, rank, channels)
        bias = bias if bias is not None else low.new_zeros(1, directions, 1, channels)
        self.bias = bias.expand(batch, -1, -1, -1).reshape(batch * directions, 1, channels)
        self.shape = (batch, directions)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        raw = torch.baddbmm(self.bias, self.low[:, start:stop], self.weight)
        return raw.view(*self.shape, stop - start, -1)


def _scan_chunks(u, delta_of, rate, bias, skip, B_scan, C_scan, delta_softplus, reverse, combine, chunk, outputs):
    """The chunk loop of :func:`selective_scan_chunked_directions`, writing into ``outputs``;
    ``delta_of(start, stop)`` gives the raw delta of tokens start..stop-1 (batch, K, T, Dk)."""
    batch, length, channels = u[0].shape
    directions, state_size = len(u), rate.shape[-2]
    transition_buffer = u[0].new_empty((batch, directions, chunk, state_size, channels), dtype=torch.float32)
    drive_buffer = torch.empty_like(transition_buffer)
    state = u[0].new_zeros((batch, directions, state_size, channels), dtype=torch.float32)
    for start in range(0, length, chunk):
        tick()
        stop = min(start + chunk, length)
        # Tokens start..stop-1 of each direction in scan order.
        inputs = torch.stack([s[:, length - stop: length - start].flip(1) if r else s[:, start:stop]
                              for s, r in zip(u, reverse)], dim=1).float()  # (batch, K, T, Dk)
        steps = delta_steps(delta_of(start, stop), bias, delta_softplus)
        transition, drive = discretise(steps.unsqueeze(-2), inputs.unsqueeze(-2), rate, B_scan[:, :, start:stop],
                                        (transition_buffer[:, :, : stop - start], drive_buffer[:, :, : stop - start]))
        states, state = advance(transition, drive, state, inplace=True)
        y_chunk = torch.matmul(C_scan[:, :, start:stop], states).squeeze(-2)  # (batch, K, T, Dk)
        if skip is not None:
            y_chunk.addcmul_(inputs, skip)
        for k, output in enumerate(combine):
            if reverse[k]:
                outputs[output][:, length - stop: length - start] += y_chunk[:, k].flip(1)
            else:
                outputs[output][:, start:stop] += y_chunk[:, k]
    return outputs
