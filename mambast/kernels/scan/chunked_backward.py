"""The chunked scan under autograd with a memory-bounded backward pass.

Letting autograd record the chunk loop keeps every chunk's transitions and states: O(B*D*L*N)
for the sequence (2 GiB per scan at 256 px, batch 8). Here forward runs the inference loop of
:mod:`mambast.kernels.scan.chunk_loop` and keeps only the (B, D, N) state before each chunk; backward walks
the chunks from the last, recomputes one chunk's transitions and states from its boundary state
and back-propagates through the recurrence in closed form. Kept between forward and backward:
the inputs and O(B*D*N*L/T) of boundary states; working memory O(B*D*N*T) for chunks of T.

The adjoint, per channel (Δ_t the step after bias and softplus, a_t = exp(Δ_t A),
h_t = a_t h_{t-1} + Δ_t u_t B_t, y_t = C_t·h_t + D u_t, dy_t the incoming gradient):

    g_t = dy_t C_t + a_{t+1} g_{t+1}         (dL/dh_t, run from the last token back; (N,))
    dC_t = Σ_channels dy_t h_t               dB_t = Σ_channels g_t Δ_t u_t
    du_t = Δ_t (g_t·B_t) + D dy_t            dD = Σ_{batch,t} dy_t u_t
    dΔ_t = u_t (g_t·B_t) + (g_t a_t h_{t-1})·A    dA = Σ_{batch,t} Δ_t g_t a_t h_{t-1}

and dΔ goes back through the bias and softplus by autograd on the chunk's few (B, D, T) values,
so the step rule has one home (:func:`mambast.kernels.scan.chunk_loop.delta_steps`). The carry from one chunk to
the one before is a_s g_s at the chunk's first token s.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ...utils.progress import cancel_point
from .chunk_loop import DEFAULT_CHUNK, ChunkLayout, advance, delta_steps, discretise, scan_chunks
from .contract import check_scan_shapes


def selective_scan_chunked_recomputing(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk: int = DEFAULT_CHUNK,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The chunked scan with the memory-bounded backward; shapes as in
    :func:`mambast.kernels.scan.selective_scan`, (B, D, L) out in ``dtype``.

    ``dtype`` is the compute precision: float32 by the scan's contract; float64 lets a gradient
    check by finite differences (``torch.autograd.gradcheck``) hold the backward to ~1e-10.
    Once differentiable: second derivatives need ``selective_scan_chunked(..., recompute=False)``.
    """
    check_scan_shapes(u, delta, A, B, C)
    return _RecomputingChunkedScan.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), chunk, dtype)


class _RecomputingChunkedScan(torch.autograd.Function):
    """Forward: the chunk loop, keeping the state before each chunk. Backward: see the module."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, chunk, dtype):
        boundaries: list[torch.Tensor] = []
        y = scan_chunks(ChunkLayout.of(u, delta, A, B, C, D, delta_bias, dtype), softplus, chunk,
                        boundaries=boundaries)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, torch.stack(boundaries))
        ctx.softplus, ctx.chunk, ctx.dtype = softplus, chunk, dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        *inputs, boundaries = ctx.saved_tensors
        grads = _backward(inputs, ctx.needs_input_grad[:7], boundaries, dy, ctx.softplus, ctx.chunk, ctx.dtype)
        return (*(g.to(t.dtype) if g is not None else None for g, t in zip(grads, inputs)), None, None, None)


def _backward(inputs, wanted, boundaries, dy, softplus, chunk, dtype):
    """Gradients of the contract's (u, delta, A, B, C, D, delta_bias), None where not ``wanted``;
    ``boundaries`` (chunks, BG, Dg, N) holds the state before each chunk, ``dy`` is (B, D, L)."""
    u, delta, A, B, C, D, delta_bias = inputs
    # The bias is a leaf of the small graph through which each chunk's dΔ reaches delta and bias;
    # everything else is detached, as the chunk buffers are written with out=, outside any graph.
    bias_leaf = delta_bias.detach().to(dtype).requires_grad_(wanted[6]) if delta_bias is not None else None
    with torch.enable_grad():
        layout = ChunkLayout.of(*(t.detach() if t is not None else None for t in (u, delta, A, B, C, D)),
                                bias_leaf, dtype)
    flat, per_group, length = layout.u.shape
    dy = dy.to(dtype).reshape(flat, per_group, length)
    grads = _Gradients(layout, bias_leaf, wanted)
    # Three chunk buffers: transitions (then a*g, then g*a*h_prev), states (then scratch), adjoints g.
    buffers = [dy.new_empty((flat, per_group, chunk, layout.A.shape[-1])) for _ in range(3)]
    carry = dy.new_zeros(boundaries.shape[1:])
    for index in reversed(range(boundaries.shape[0])):
        cancel_point()
        start = index * chunk
        carry = _backward_chunk(layout, grads, boundaries[index], dy, carry, start, min(start + chunk, length),
                                softplus, buffers)
    # The skip term D u is outside the recurrence: its gradient needs no chunk.
    dD = (dy * layout.u.to(dtype)).sum(-1).reshape(layout.batch, -1).sum(0) if wanted[5] else None
    return grads.in_contract_shapes(layout.batch, layout.groups, dD)


def _backward_chunk(layout, grads, boundary, dy, carry, start, stop, softplus, buffers):
    """Back-propagate through tokens start..stop-1, adding their contributions to ``grads``.

    ``boundary`` (BG, Dg, N): the state before the chunk; ``carry``: a g at the first token after
    it (dL/dh at the chunk's last token through later tokens). Returns the carry for the chunk
    before: a g at this chunk's first token.
    """
    transition, states, adjoint = (b[:, :, : stop - start] for b in buffers)
    with torch.enable_grad():
        raw = layout.delta[..., start:stop].to(layout.dtype).requires_grad_(grads.of_steps)
        steps_graph = delta_steps(raw, layout.bias, softplus, layout.dtype)
    steps = steps_graph.detach()
    inputs = layout.u[..., start:stop].to(layout.dtype)
    dy = dy[..., start:stop]
    B, C = layout.B[:, :, start:stop], layout.C[:, :, start:stop]

    # The chunk's transitions and states from its boundary state: exactly the forward's arithmetic.
    discretise(steps.unsqueeze(-1), inputs.unsqueeze(-1), layout.rate, B, (transition, states))
    advance(transition, states, boundary, inplace=True)

    torch.mul(dy.unsqueeze(-1), C, out=adjoint)
    adjoint[:, :, -1].add_(carry)
    for t in range(stop - start - 1, 0, -1):
        adjoint[:, :, t - 1].addcmul_(transition[:, :, t], adjoint[:, :, t])
    decayed = transition.mul_(adjoint)  # a_t g_t
    carry = decayed[:, :, 0].clone()
    # g_t a_t h_{t-1}: the gradient of a_t times a_t, what dΔ and dA read.
    decayed[:, :, 1:].mul_(states[:, :, :-1])
    decayed[:, :, 0].mul_(boundary)

    if grads.C is not None:
        grads.C[:, start:stop] = states.mul_(dy.unsqueeze(-1)).sum(1)
    through_drive = torch.mul(adjoint, B, out=states).sum(-1)  # g_t·B_t (BG, Dg, T)
    if grads.B is not None:
        grads.B[:, start:stop] = adjoint.mul_((steps * inputs).unsqueeze(-1)).sum(1)
    if grads.u is not None:
        grads.u[..., start:stop] = through_drive * steps
        if layout.skip is not None:
            grads.u[..., start:stop].addcmul_(dy, layout.skip)
    if grads.A is not None:
        grads.A += torch.matmul(steps.unsqueeze(-2), decayed).reshape(layout.batch, -1, grads.A.shape[1]).sum(0)
    if grads.of_steps:
        dsteps = torch.matmul(decayed, layout.A.transpose(-1, -2)).squeeze(-1).addcmul_(through_drive, inputs)
        grads.add_step_gradient(steps_graph, raw, dsteps, start, stop)
    return carry


class _Gradients:
    """The gradients being accumulated, in the chunk loop's layout; None where not wanted."""

    def __init__(self, layout: ChunkLayout, bias_leaf: torch.Tensor | None, wanted: tuple[bool, ...]):
        flat, per_group, length = layout.u.shape
        state_size = layout.A.shape[-1]
        new = layout.rate.new_zeros
        self.u = new((flat, per_group, length)) if wanted[0] else None
        self.delta = new((flat, per_group, length)) if wanted[1] else None
        self.A = new((layout.groups * per_group, state_size)) if wanted[2] else None
        self.B = new((flat, length, state_size)) if wanted[3] else None  # token-major, as layout.B
        self.C = new((flat, length, state_size)) if wanted[4] else None
        self.bias = new(bias_leaf.shape) if wanted[6] else None
        self.bias_leaf = bias_leaf
        self.of_steps = wanted[1] or wanted[6]  # whether dΔ is needed at all

    def add_step_gradient(self, steps: torch.Tensor, raw: torch.Tensor, dsteps: torch.Tensor, start: int,
                          stop: int) -> None:
        """Take a chunk's dΔ (BG, Dg, T) back through the bias and softplus to delta and the bias."""
        wrt = [t for t in (raw, self.bias_leaf) if t is not None and t.requires_grad]
        found = dict(zip(map(id, wrt), torch.autograd.grad(steps, wrt, dsteps)))
        if self.delta is not None:
            self.delta[..., start:stop] = found[id(raw)]
        if self.bias is not None:
            self.bias += found[id(self.bias_leaf)]

    def in_contract_shapes(self, batch: int, groups: int, dD: torch.Tensor | None) -> tuple:
        """(du, ddelta, dA, dB, dC, dD, ddelta_bias) shaped as the contract's inputs."""

        def sequence(t):
            return t.reshape(batch, -1, t.shape[-1]) if t is not None else None

        def token_major(t):
            return t.transpose(1, 2).reshape(batch, groups, t.shape[2], t.shape[1]) if t is not None else None

        return sequence(self.u), sequence(self.delta), self.A, token_major(self.B), token_major(self.C), dD, self.bias
