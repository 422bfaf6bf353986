"""The plain sequential selective scan: the oracle every faster backend is tested against.

It follows mamba_ssm's ``selective_scan_ref`` step by step and favours clarity over speed: the
discretised transition ``exp(delta * A)`` and input ``delta * B * u`` are built for the whole
sequence, then the state is advanced one token at a time.
"""

from __future__ import annotations

import torch

from .contract import prepare_scan_inputs


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Sequential selective scan; shapes as in :func:`mambast.kernels.scan.selective_scan`."""
    u, transition, drive, C_t = token_major_terms(u, delta, A, B, C, delta_bias, delta_softplus)
    state = u.new_zeros(transition.shape[1:])
    y = u.new_empty(transition.shape[:-1])
    for t in range(transition.shape[0]):
        state = transition[t] * state + drive[t]
        y[t] = torch.matmul(state, C_t[t]).squeeze(-1)
    return channel_major_output(y, u, D)


def token_major_terms(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      delta_bias: torch.Tensor | None = None, delta_softplus: bool = False):
    """The prepared ``u`` and the scan's terms for the whole sequence, token-major so that each
    step reads contiguous slices: the transition ``exp(delta * A)`` and the input
    ``delta * u * B``, (L, B, G, D/G, N), and C, (L, B, G, N, 1). Channel d of the flat layout is
    (group d // (D/G), member d % (D/G))."""
    u, delta, A, B, C = prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    groups, state_size = B.shape[1], A.shape[1]
    per_group = channels // groups
    delta_t = delta.view(batch, groups, per_group, length).permute(3, 0, 1, 2)
    u_t = u.view(batch, groups, per_group, length).permute(3, 0, 1, 2)
    B_t = B.permute(3, 0, 1, 2).unsqueeze(3)  # (L, B, G, 1, N)
    C_t = C.permute(3, 0, 1, 2).unsqueeze(-1).contiguous()  # (L, B, G, N, 1)
    transition = torch.exp(delta_t.unsqueeze(-1) * A.view(groups, per_group, state_size))
    drive = (delta_t * u_t).unsqueeze(-1) * B_t
    return u, transition, drive, C_t


def channel_major_output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """The per-token outputs (L, B, G, D/G) back to (B, D, L), plus the skip ``D * u``."""
    y = y.permute(1, 2, 3, 0).reshape(u.shape)
    if D is not None:
        y = y + u * D.float().unsqueeze(-1)
    return y
