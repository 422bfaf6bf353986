"""The Triton scan under autograd: a backward kernel that walks each chunk in reverse.

Forward runs :mod:`mambast.kernels.scan.triton_kernel`'s kernel, which then also stores the (Dk, N) state
before each chunk of BLOCK_L tokens: (batch, K, L / BLOCK_L, Dk, N) float32 kept for backward,
1/BLOCK_L of the states. Backward has the forward's tiling (a program per BLOCK_D channels of
one direction of one image) and visits the chunks from the last. For each it recomputes the
chunk's states from the stored one with the forward's own code (:func:`chunk_states`), then
runs the adjoint recurrence (the math of :mod:`mambast.kernels.scan.chunked_backward`)

    g_t = dy_t C_t + a_{t+1} g_{t+1}

as a reverse parallel scan over the chunk, carrying g at the chunk's first token to the chunk
before. a_{t+1} is recomputed from delta one token on rather than shifted across threads. The
gradient of a_t needs a_t h_{t-1}, taken as h_t - Δ_t u_t B_t as mamba_ssm's CUDA backward does
(no shifted states either). Per-token gradients (du, ddelta) are stored; sums over channels (dB,
dC) and over tokens and images (dA, dD, ddelta_bias) are added atomically, so their rounding
order (not their value) varies from run to run.

Tested in Triton's interpreter against autograd through the reference scan; its speed and tile
shape on a GPU (BLOCK_D halved against the forward for the backward's larger set of live tiles)
are not measured yet. Before training uses it on a GPU, :func:`disagreement_with_chunked` runs a
small scan there against the chunked scan's backward (see :func:`mambast.kernels.scan.triton_trains_on`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .contract import check_scan_shapes
from .triton_kernel import (BLOCK_L, NUM_WARPS, channel_parameters, chunk_states, compose, delta_steps,
                            from_token_major, load_chunk, scan_triton, small_index, token_major, tokens_of)

BACKWARD_BLOCK_D = 8


def selective_scan_triton_trainable(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    block_l: int | None = None,
    block_d: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """:func:`mambast.kernels.scan.triton_scan.selective_scan_triton` with a backward pass: (B, D, L)
    float32 out. ``block_d`` and ``num_warps`` tune the backward kernel; ``block_l`` is the chunk
    of both kernels (the stored states are at its boundaries)."""
    check_scan_shapes(u, delta, A, B, C)
    return _TritonScan.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), block_l or BLOCK_L,
                             block_d, num_warps)


class _TritonScan(torch.autograd.Function):
    """The contract layout on the kernels: one direction per group, nothing reversed."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, block_l, block_d, num_warps):
        batch, channels, length = u.shape
        groups, state_size = B.shape[1], A.shape[1]
        boundaries = u.new_empty((batch, groups, triton.cdiv(length, block_l), channels // groups, state_size),
                                 dtype=torch.float32)
        y = scan_triton(*token_major(u, delta, groups), A, B.transpose(2, 3), C.transpose(2, 3), D, delta_bias,
                        softplus, [False] * groups, block_l=block_l, boundaries=boundaries)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, boundaries)
        ctx.tiles = dict(softplus=softplus, block_l=block_l, block_d=block_d, num_warps=num_warps)
        return from_token_major(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, boundaries = ctx.saved_tensors
        groups = B.shape[1]
        u_tokens, source, delta_tokens = token_major(u, delta, groups)
        du, ddelta, dA, dB, dC, dD, dbias = scan_triton_backward(
            tokens_of(dy, groups), u_tokens, source, delta_tokens, A, B.transpose(2, 3), C.transpose(2, 3), D,
            delta_bias, [False] * groups, boundaries, **ctx.tiles)
        grads = (from_token_major(du), from_token_major(ddelta), dA, dB.transpose(2, 3), dC.transpose(2, 3), dD, dbias)
        inputs = (u, delta, A, B, C, D, delta_bias)
        return (*(g.to(t.dtype) if wanted else None for g, t, wanted in zip(grads, inputs, ctx.needs_input_grad)),
                None, None, None, None)


def scan_triton_backward(dy: torch.Tensor, u: torch.Tensor, source, delta: torch.Tensor, A: torch.Tensor,
                         B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None,
                         reverse, boundaries: torch.Tensor, softplus: bool, block_l: int, block_d: int | None = None,
                         num_warps: int | None = None) -> tuple:
    """Gradients of :func:`mambast.kernels.scan.triton_kernel.scan_triton` (same operands and layouts) for
    dy (batch, K, L, Dk) in token order, from the ``boundaries`` its forward stored with the same
    ``block_l``. Returns du (batch, S, L, Dk), ddelta (batch, K, L, Dk) in scan order, dA (K*Dk, N),
    dB and dC (batch, K, L, N) in token order, dD and ddelta_bias (K*Dk,) (None when absent);
    all float32."""
    batch, sequences, length, channels = u.shape
    directions, state_size = delta.shape[1], A.shape[1]
    block_d = block_d or BACKWARD_BLOCK_D
    device = u.device
    rate, bias, skip = channel_parameters(A, D, delta_bias)
    A_values = A.float().contiguous()
    dy = dy.float().contiguous()
    per_direction = torch.empty((batch, directions, length, channels), dtype=torch.float32, device=device)
    ddelta = torch.empty_like(per_direction)
    # Sums over channels, tokens or images: added to atomically by the programs.
    dA = torch.zeros((directions * channels, state_size), dtype=torch.float32, device=device)
    dB = torch.zeros((batch, directions, length, state_size), dtype=torch.float32, device=device)
    dC = torch.zeros_like(dB)
    dD = torch.zeros((directions * channels,), dtype=torch.float32, device=device)
    dbias = torch.zeros_like(dD)
    grid = (triton.cdiv(channels, block_d), directions, batch)
    _scan_backward_kernel[grid](
        u, delta, rate, A_values, bias, skip, B, C, dy, boundaries,
        small_index(tuple(source), device), small_index(tuple(int(r) for r in reverse), device),
        per_direction, ddelta, dA, dB, dC, dD, dbias,
        length, channels, directions, state_size,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(),
        HAS_BIAS=delta_bias is not None, HAS_SKIP=D is not None, SOFTPLUS=bool(softplus),
        STATE=triton.next_power_of_2(state_size), BLOCK_L=block_l, BLOCK_D=block_d,
        num_warps=num_warps or NUM_WARPS,
    )
    # Directions that read the same sequence add their gradients of it.
    du = per_direction.new_zeros((batch, sequences, length, channels))
    du.index_add_(1, torch.tensor(list(source), device=device), per_direction)
    return du, ddelta, dA, dB, dC, dD if D is not None else None, dbias if delta_bias is not None else None


@triton.jit
def _scan_backward_kernel(
    u_ptr, delta_ptr, rate_ptr, a_ptr, bias_ptr, skip_ptr, b_ptr, c_ptr, dy_ptr, boundaries_ptr, source_ptr,
    reverse_ptr, du_ptr, ddelta_ptr, da_ptr, db_ptr, dc_ptr, dskip_ptr, dbias_ptr,
    length, channels, directions, state_size,
    su_b, su_s, su_l, su_d,
    sd_b, sd_k, sd_l, sd_d,
    sb_b, sb_k, sb_l, sb_n,
    sc_b, sc_k, sc_l, sc_n,
    HAS_BIAS: tl.constexpr, HAS_SKIP: tl.constexpr, SOFTPLUS: tl.constexpr,
    STATE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # int64 offsets as in the forward kernel (see _scan_kernel).
    block = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    source = tl.load(source_ptr + k).to(tl.int64)
    backwards = tl.load(reverse_ptr + k) != 0

    d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < channels
    n = tl.arange(0, STATE).to(tl.int64)
    n_ok = n < state_size
    state_ok = d_ok[:, None] & n_ok[None, :]
    parameter_at = (k * channels + d)[:, None] * state_size + n[None, :]
    rate = tl.load(rate_ptr + parameter_at, mask=state_ok, other=0.0)  # (BLOCK_D, STATE)
    A = tl.load(a_ptr + parameter_at, mask=state_ok, other=0.0)
    bias = tl.load(bias_ptr + k * channels + d, mask=d_ok & HAS_BIAS, other=0.0)
    skip = tl.load(skip_ptr + k * channels + d, mask=d_ok & HAS_SKIP, other=0.0)

    u_base = u_ptr + b * su_b + source * su_s
    delta_base = delta_ptr + b * sd_b + k * sd_k
    b_base = b_ptr + b * sb_b + k * sb_k
    c_base = c_ptr + b * sc_b + k * sc_k
    # dy, du, ddelta: contiguous (batch, K, L, Dk); dB, dC: contiguous (batch, K, L, N).
    sequence_base = (b * directions + k) * length * channels
    state_base = (b * directions + k) * length * state_size
    chunks = tl.cdiv(length, BLOCK_L)
    boundaries_base = boundaries_ptr + (b * directions + k) * chunks * channels * state_size
    state_at = d[:, None] * state_size + n[None, :]

    rows = tl.arange(0, BLOCK_L)
    carry = tl.zeros((BLOCK_D, STATE), dtype=tl.float32)  # g at the first token after the chunk
    dA = tl.zeros((BLOCK_D, STATE), dtype=tl.float32)
    dskip = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for back in range(0, chunks):
        chunk = chunks - 1 - back
        start = chunk * BLOCK_L
        raw, u, B, C = load_chunk(start, rows, length, backwards, d, d_ok, n, n_ok, delta_base, sd_l, sd_d,
                                   u_base, su_l, su_d, b_base, sb_l, sb_n, c_base, sc_l, sc_n)
        step = start + rows
        step_ok = step < length
        token = tl.where(backwards, length - 1 - step, step).to(tl.int64)
        tile_ok = step_ok[:, None] & d_ok[None, :]
        sequence_at = sequence_base + token[:, None] * channels + d[None, :]
        dy = tl.load(dy_ptr + sequence_at, mask=tile_ok, other=0.0)

        steps = delta_steps(raw, bias, SOFTPLUS)
        state = tl.load(boundaries_base + chunk * channels * state_size + state_at, mask=state_ok, other=0.0)
        states, drive = chunk_states(steps, u, B, rate, state, step_ok)

        # a_{t+1}: the next token's transition, from its delta (zero past the end: g is zero there).
        next_ok = (step + 1) < length
        raw_next = tl.load(delta_base + (step + 1).to(tl.int64)[:, None] * sd_l + d[None, :] * sd_d,
                           mask=next_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        following = tl.exp2(delta_steps(raw_next, bias, SOFTPLUS)[:, :, None] * rate[None, :, :])
        following = tl.where(next_ok[:, None, None], following, 0.0)
        # g_t = dy_t C_t + a_{t+1} g_{t+1}, from the chunk's last token back; the carry enters there.
        readout = dy[:, :, None] * C[:, None, :]
        to_end, summed = tl.associative_scan((following, readout), 0, compose, reverse=True)
        adjoint = summed + to_end * carry[None, :, :]
        carry = tl.sum(tl.where((rows == 0)[:, None, None], adjoint, 0.0), axis=0)

        decayed = adjoint * (states - drive)  # g_t a_t h_{t-1}
        through_drive = tl.sum(adjoint * B[:, None, :], axis=2)  # g_t·B_t (BLOCK_L, BLOCK_D)
        tl.store(du_ptr + sequence_at, steps * through_drive + skip[None, :] * dy, mask=tile_ok)
        dsteps = u * through_drive + tl.sum(decayed * A[None, :, :], axis=2)
        if SOFTPLUS:  # softplus' derivative: sigmoid, 1 where torch's softplus is the identity
            z = raw + bias[None, :]
            dsteps = dsteps * tl.where(z > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-z)))
        dsteps = tl.where(tile_ok, dsteps, 0.0)
        tl.store(ddelta_ptr + sequence_base + step.to(tl.int64)[:, None] * channels + d[None, :], dsteps,
                 mask=tile_ok)
        dA += tl.sum(steps[:, :, None] * decayed, axis=0)
        dskip += tl.sum(dy * u, axis=0)
        dbias += tl.sum(dsteps, axis=0)

        rows_ok = step_ok[:, None] & n_ok[None, :]
        state_rows_at = state_base + token[:, None] * state_size + n[None, :]
        tl.atomic_add(db_ptr + state_rows_at, tl.sum(adjoint * (steps * u)[:, :, None], axis=1), mask=rows_ok)
        tl.atomic_add(dc_ptr + state_rows_at, tl.sum(states * dy[:, :, None], axis=1), mask=rows_ok)

    tl.atomic_add(da_ptr + parameter_at, dA, mask=state_ok)
    if HAS_SKIP:
        tl.atomic_add(dskip_ptr + k * channels + d, dskip, mask=d_ok)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + k * channels + d, dbias, mask=d_ok)


#: Largest gradient difference :func:`disagreement_with_chunked` accepts, relative to the
#: gradient's largest value (float32 sums in another order differ by ~1e-6 of it).
SELF_CHECK_TOLERANCE = 1e-3


def disagreement_with_chunked(device: torch.device, block_l: int | None = None,
                              block_d: int | None = None) -> str | None:
    """Run a small scan through this module's kernels and the chunked scan on ``device``; None
    when their gradients agree, else which gradient differs and by how much.

    The shapes cross several chunks (a partial one last), two channel blocks and two groups, with
    D, the delta bias and softplus, as the model's scans have them. Random draws come from a
    private generator: the global ones are left as they were. ``block_l``, ``block_d``: other
    tiles than the shipped ones (smaller tiles keep the check quick in Triton's interpreter).
    """
    from .chunked_backward import selective_scan_chunked_recomputing

    generator = torch.Generator().manual_seed(0)
    block_l, block_d = block_l or BLOCK_L, block_d or BACKWARD_BLOCK_D
    batch, groups, per_group, length, state = 2, 2, 2 * block_d, 2 * block_l + 5, 16
    channels = groups * per_group
    inputs = dict(
        u=torch.randn(batch, channels, length, generator=generator),
        delta=torch.randn(batch, channels, length, generator=generator) * 0.5,
        A=-torch.rand(channels, state, generator=generator) * 4 - 0.1,
        B=torch.randn(batch, groups, state, length, generator=generator),
        C=torch.randn(batch, groups, state, length, generator=generator),
        D=torch.randn(channels, generator=generator),
        delta_bias=torch.randn(channels, generator=generator) - 2,
    )
    weights = torch.randn(batch, channels, length, generator=generator).to(device)
    found = []
    tiles = dict(block_l=block_l, block_d=block_d)
    for scan, options in ((selective_scan_triton_trainable, tiles), (selective_scan_chunked_recomputing, {})):
        leaves = {name: value.to(device).requires_grad_(True) for name, value in inputs.items()}
        with torch.enable_grad():
            y = scan(**leaves, delta_softplus=True, **options)
            gradients = torch.autograd.grad((y * weights).sum(), list(leaves.values()))
        found.append([y.detach(), *gradients])
    for name, got, expected in zip(("y", *inputs), *found):
        error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        if not error <= SELF_CHECK_TOLERANCE:  # also catches NaN
            return f"its gradient of {name} differs from the chunked scan's by {error:.2g} of the largest value"
    return None
