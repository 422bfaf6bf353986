"""The selective-scan contract shared by every backend (mamba_ssm's ``selective_scan_fn``).

Shapes: ``u``, ``delta`` (B, D, L); ``A`` (D, N); ``B``, ``C`` (B, G, N, L) where channel ``d``
reads group ``d // (D / G)``; ``D`` (D,); ``delta_bias`` (D,). Everything is computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_scan_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                      B: torch.Tensor, C: torch.Tensor) -> None:
    """Raise a ValueError naming the tensor whose shape breaks the contract."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective scan: u and delta must both be (B, D, L); got u {tuple(u.shape)}, "
                         f"delta {tuple(delta.shape)}")
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective scan: A must be (D={channels}, N); got {tuple(A.shape)}")
    for name, tensor in (("B", B), ("C", C)):
        if (tensor.dim() != 4 or tensor.shape[0] != batch or tensor.shape[2] != A.shape[1]
                or tensor.shape[3] != length or channels % tensor.shape[1] != 0):
            raise ValueError(f"selective scan: {name} must be (B={batch}, G, N={A.shape[1]}, L={length}) "
                             f"with G dividing D={channels}; got {tuple(tensor.shape)}")


def records_gradients(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd is recording and any of ``tensors`` (None ones skipped) requires grad:
    then the inference-only paths (in-place updates, the Triton kernel) must not run."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def prepare_scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus):
    """Check shapes, cast to float32 and apply the bias and softplus to delta."""
    check_scan_shapes(u, delta, A, B, C)
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float().unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B, C


def check_direction_shapes(u, delta, A, B, C, reverse=None, combine=None,
                           delta_projection=None) -> tuple[list[bool], list[int]]:
    """Check the operands of a direction-fused scan (see
    :func:`mambast.kernels.scan.chunked.selective_scan_chunked_directions`); raise a ValueError naming the
    misshapen one. Returns ``reverse`` and ``combine`` as lists, defaults filled in."""
    directions = len(u)
    reverse = list(reverse) if reverse is not None else [False] * directions
    combine = list(combine) if combine is not None else list(range(directions))
    batch, length, channels = u[0].shape
    state_size = A.shape[1]
    for name, tensors, width in (("u", u, channels), ("B", B, state_size), ("C", C, state_size)):
        if len(tensors) != directions or any(t.shape != (batch, length, width) for t in tensors):
            raise ValueError(f"selective scan (directions): {name} must be {directions} tensors of "
                             f"{(batch, length, width)}; got {[tuple(t.shape) for t in tensors]}")
    delta_width = channels
    if delta_projection is not None:
        delta_width = delta_projection.shape[-1]
        if delta_projection.shape != (directions, channels, delta_width):
            raise ValueError(f"selective scan (directions): delta_projection must be (K={directions}, "
                             f"Dk={channels}, R); got {tuple(delta_projection.shape)}")
    if delta.shape != (batch, directions, length, delta_width) or A.shape != (directions * channels, state_size) \
            or len(reverse) != directions or len(combine) != directions:
        raise ValueError(f"selective scan (directions): delta must be {(batch, directions, length, delta_width)}, "
                         f"A {(directions * channels, state_size)}, reverse and combine {directions} long; got "
                         f"{tuple(delta.shape)}, {tuple(A.shape)}, {len(reverse)}, {len(combine)}")
    return reverse, combine
