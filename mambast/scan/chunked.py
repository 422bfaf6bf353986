"""Chunked selective scan: exact closed form inside chunks, the state carried between them.

Inside a chunk of T tokens the decay from token s to token t is ``exp(S_t - S_s)`` with
``S_t = A * cumsum(delta)_t`` (A does not depend on t, so the cumulative sum runs over (B, D, T)
only). Factorising it as ``exp(S_t) * exp(-S_s)`` turns the chunk into small batched matmuls:

    y_t = sum_{s<=t} [sum_n C_tn e^{S_tn} B_sn e^{-S_sn}] delta_s u_s + sum_n C_tn e^{S_tn} h_n

Peak memory is O(B * D * T * N) for one chunk; no (B, D, L, N) tensor is ever built.
``e^{-S}`` grows with the chunk's total decay; a chunk whose decay would leave float32's range
is split in halves (down to single tokens, where the recurrence needs no rescaling at all), so
the result stays exact for any delta and A.
"""

from __future__ import annotations

import torch

from .contract import prepare_scan_inputs

DEFAULT_CHUNK = 16
# exp(60) ~ 1e26: products of two such factors stay well inside float32 (max ~3e38).
_MAX_CHUNK_DECAY = 60.0


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
    u, delta, A, B, C = prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    per_group = channels // groups

    shape = (batch, groups, per_group, length)
    delta_g = delta.reshape(shape)
    drive = (delta * u).reshape(shape)
    decay_rate = A.reshape(1, groups, per_group, 1, state_size)
    steepest = A.abs().amax(dim=1).reshape(1, groups, per_group)
    B_tokens = B.transpose(2, 3).unsqueeze(2)  # (B, G, 1, L, N)
    C_tokens = C.transpose(2, 3).unsqueeze(2)

    cumulative = torch.cumsum(delta_g, dim=-1)
    ends = list(range(chunk, length, chunk)) + [length]
    starts = [0] + ends[:-1]
    # Each chunk's largest total decay over all channels, read in one transfer.
    # (the decay of a chunk's first token is applied to the state separately, see _scan_chunk)
    end_values = cumulative[..., [e - 1 for e in ends]]
    start_values = cumulative[..., starts]
    chunk_decay = ((end_values - start_values) * steepest.unsqueeze(-1)).amax(dim=(0, 1, 2)).tolist()
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=u.device).tril()

    state = u.new_zeros(batch, groups, per_group, state_size, 1)
    y = torch.empty_like(delta_g)
    spans = [(a, b, d) for a, b, d in zip(starts, ends, chunk_decay)]
    spans.reverse()
    while spans:
        start, stop, decay = spans.pop()
        if decay > _MAX_CHUNK_DECAY and stop - start > 1:
            # Too steep to factorise in float32: split the span in halves.
            middle = (start + stop) // 2
            for a, b in ((middle, stop), (start, middle)):
                totals = delta_g[..., a + 1:b].sum(-1) * steepest
                spans.append((a, b, float(totals.amax())))
            continue
        size = stop - start
        y[..., start:stop], state = _scan_chunk(
            delta_g[..., start:stop], drive[..., start:stop], decay_rate,
            B_tokens[..., start:stop, :], C_tokens[..., start:stop, :], state, causal[:size, :size])
    y = y.reshape(batch, channels, length)
    if D is not None:
        y = y + u * D.float().unsqueeze(-1)
    return y


def _scan_chunk(delta, drive, decay_rate, B_tokens, C_tokens, state, causal):
    """Advance one chunk of T tokens.

    delta, drive (= delta * u): (B, G, Dg, T); decay_rate (A): (1, G, Dg, 1, N); B_tokens,
    C_tokens: (B, G, 1, T, N); state: (B, G, Dg, N, 1). Returns y (B, G, Dg, T) and the state
    after the last token.
    """
    # Log-decays are taken relative to the chunk's first token, so a one-token chunk needs no
    # factorisation at all and the first token's own decay never limits the chunk length.
    cumulative = torch.cumsum(delta, dim=-1)
    relative = (cumulative - delta[..., :1]).unsqueeze(-1) * decay_rate  # (B, G, Dg, T, N), <= 0
    decay = torch.exp(relative)
    read = C_tokens * decay  # C_t e^{S_t - S_0}
    write = B_tokens / decay  # B_s e^{S_0 - S_s}
    mixing = torch.matmul(read, write.transpose(-1, -2)).masked_fill_(~causal, 0.0)  # (.., T, T)
    drive = drive.unsqueeze(-1)  # (B, G, Dg, T, 1)
    entering = torch.exp(delta[..., :1].unsqueeze(-1) * decay_rate).transpose(-1, -2) * state
    y = torch.matmul(mixing, drive) + torch.matmul(read, entering)
    state = decay[..., -1, :].unsqueeze(-1) * (entering + torch.matmul(write.transpose(-1, -2), drive))
    return y.squeeze(-1), state
