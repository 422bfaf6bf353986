"""The selective scan as one Triton kernel, for CUDA and ROCm GPUs: the forward kernel and its launch.

A token-by-token loop on a GPU is one launch per token; this kernel does a whole scan in one.
Each program owns ``BLOCK_D`` channels of one direction of one image and walks the sequence in
chunks of ``BLOCK_L`` tokens. A chunk's transitions ``exp(delta * A)`` and inputs
``delta * u * B`` live only in registers, as (BLOCK_L, BLOCK_D, N) tiles; a parallel prefix scan
composes them, the state carried in from the previous chunk is applied, C reads the states out
and only y is written. Nothing of size N ever reaches memory.

Directions are addressed by index arithmetic: direction k reads sequence ``source[k]`` of u and
walks it backwards when ``reverse[k]`` is set, so neither flipped nor stacked copies of the
sequences exist. The same kernel serves the contract layout of :func:`mambast.kernels.scan.selective_scan`
(one group per "direction", nothing reversed).

Measured on an H200 while choosing this design (bench/gpu.py, 512 px block): issuing the next
chunk's loads before computing the current one took 655 us to 438 us at the same tiles; tiles
with the channels across threads and the states in registers, and the states split over several
programs (each writing a partial y), were 1.6x to 8x slower than states across threads.

The arithmetic is the reference's update ``h = exp(delta * A) * h + delta * u * B`` in float32;
the prefix scan only changes the order of the products (rounding-level differences). With
``boundaries`` the kernel also keeps the state before each chunk, for the backward kernel
(:mod:`mambast.kernels.scan.triton_backward`); the entry points are in
:mod:`mambast.kernels.scan.triton_scan`. Triton is imported lazily by the dispatcher, so the package works without it;
``TRITON_INTERPRET=1`` runs these kernels on a CPU (slowly), which is how the tests check them
without a GPU.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from .chunk_loop import LOG2_E

# The fastest tile shape of those bench/gpu.py sweeps, on an H200: 357 us for the four directions
# of a 512 px block (4096 tokens x 1024 channels x 16 states), 254x the chunked scan's launches.
# Shapes from 8 to 64 tokens and 8 to 32 channels stay within 1.4x of it.
BLOCK_L = 32
BLOCK_D = 16
NUM_WARPS = 4


@triton.jit
def compose(a_first, x_first, a_then, x_then):
    """Two steps h -> a*h + x applied one after the other, as one step."""
    return a_first * a_then, a_then * x_first + x_then


@triton.jit
def load_chunk(start, rows, length, backwards, d, d_ok, n, n_ok, delta_base, sd_l, sd_d, u_base, su_l, su_d,
                b_base, sb_l, sb_n, c_base, sc_l, sc_n):
    """One chunk's raw delta and u (BLOCK_L, BLOCK_D) and B and C (BLOCK_L, STATE), as float32;
    zeros past the end of the sequence."""
    step = start + rows  # position in scan order
    step_ok = step < length
    token = tl.where(backwards, length - 1 - step, step)  # position in the sequence
    # Widened for the offsets only (d and n come in as int64; see _scan_kernel), the masks keep
    # the 32-bit positions.
    step_at = step.to(tl.int64)[:, None]
    token_at = token.to(tl.int64)[:, None]
    tile_ok = step_ok[:, None] & d_ok[None, :]
    dt = tl.load(delta_base + step_at * sd_l + d[None, :] * sd_d, mask=tile_ok, other=0.0).to(tl.float32)
    u = tl.load(u_base + token_at * su_l + d[None, :] * su_d, mask=tile_ok, other=0.0).to(tl.float32)
    state_ok = step_ok[:, None] & n_ok[None, :]
    B = tl.load(b_base + token_at * sb_l + n[None, :] * sb_n, mask=state_ok, other=0.0).to(tl.float32)
    C = tl.load(c_base + token_at * sc_l + n[None, :] * sc_n, mask=state_ok, other=0.0).to(tl.float32)
    return dt, u, B, C


@triton.jit
def delta_steps(raw, bias, SOFTPLUS: tl.constexpr):
    """delta after its bias and softplus, (BLOCK_L, BLOCK_D): torch's softplus, identity above 20."""
    steps = raw + bias[None, :]
    if SOFTPLUS:
        # log(1 + e) as log(w) * e / (w - 1), w = 1 + e rounded: accurate where 1 + e loses e's
        # digits (log(1 + e) alone gives 0 instead of e ~ 2e-9 at a step's bias of -20).
        # (Clamped and guarded so that the branch tl.where drops holds no inf or NaN either.)
        grown = tl.exp(tl.minimum(steps, 20.0))
        whole = 1.0 + grown
        kept = whole - 1.0
        small = tl.where(kept == 0.0, grown, tl.log(whole) * (grown / tl.where(kept == 0.0, 1.0, kept)))
        steps = tl.where(steps > 20.0, steps, small)
    return steps


@triton.jit
def chunk_states(steps, u, B, rate, state, step_ok):
    """Every state of one chunk, (BLOCK_L, BLOCK_D, STATE), from the state before it (BLOCK_D,
    STATE); also the chunk's inputs ``delta * u * B``. Tokens past the end keep the state."""
    transition = tl.exp2(steps[:, :, None] * rate[None, :, :])  # (BLOCK_L, BLOCK_D, STATE)
    transition = tl.where(step_ok[:, None, None], transition, 1.0)
    drive = (steps * u)[:, :, None] * B[:, None, :]  # zero past the end (u is)
    to_here, driven = tl.associative_scan((transition, drive), 0, compose)
    return to_here * state[None, :, :] + driven, drive


@triton.jit
def _scan_kernel(
    u_ptr, delta_ptr, rate_ptr, bias_ptr, skip_ptr, b_ptr, c_ptr, y_ptr, source_ptr, reverse_ptr, boundaries_ptr,
    length, channels, directions, state_size,
    su_b, su_s, su_l, su_d,
    sd_b, sd_k, sd_l, sd_d,
    sb_b, sb_k, sb_l, sb_n,
    sc_b, sc_k, sc_l, sc_n,
    HAS_BIAS: tl.constexpr, HAS_SKIP: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE_BOUNDARIES: tl.constexpr,
    STATE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Every index that multiplies a stride is int64: at 4 directions x 1024 channels the products
    # pass 2^31 elements from about 6.7k px squares on (L = (side / 8)^2 tokens), and 32-bit ones
    # would wrap silently. Tile positions in the loop stay 32-bit; they are widened where an
    # offset is formed.
    block = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    source = tl.load(source_ptr + k).to(tl.int64)
    backwards = tl.load(reverse_ptr + k) != 0

    d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < channels
    n = tl.arange(0, STATE).to(tl.int64)
    n_ok = n < state_size
    # A * log2(e), so that exp(delta * A) = exp2(delta * rate); padding gives exp2(0) = 1.
    rate = tl.load(rate_ptr + (k * channels + d)[:, None] * state_size + n[None, :],
                   mask=d_ok[:, None] & n_ok[None, :], other=0.0)  # (BLOCK_D, STATE)
    bias = tl.load(bias_ptr + k * channels + d, mask=d_ok & HAS_BIAS, other=0.0)
    skip = tl.load(skip_ptr + k * channels + d, mask=d_ok & HAS_SKIP, other=0.0)

    u_base = u_ptr + b * su_b + source * su_s
    delta_base = delta_ptr + b * sd_b + k * sd_k
    b_base = b_ptr + b * sb_b + k * sb_k
    c_base = c_ptr + b * sc_b + k * sc_k
    y_base = y_ptr + (b * directions + k) * length * channels
    # (batch, K, chunks, Dk, N): the state before each chunk, for the backward pass.
    boundaries_base = boundaries_ptr + (b * directions + k) * tl.cdiv(length, BLOCK_L) * channels * state_size
    state_at = d[:, None] * state_size + n[None, :]
    state_ok = d_ok[:, None] & n_ok[None, :]

    rows = tl.arange(0, BLOCK_L)
    state = tl.zeros((BLOCK_D, STATE), dtype=tl.float32)
    dt_next, u_next, B_next, C_next = load_chunk(0, rows, length, backwards, d, d_ok, n, n_ok,
                                                  delta_base, sd_l, sd_d, u_base, su_l, su_d,
                                                  b_base, sb_l, sb_n, c_base, sc_l, sc_n)
    for start in range(0, length, BLOCK_L):
        # The next chunk's loads are issued before this one is computed, so they are in flight
        # meanwhile (past the end they are masked out).
        dt, u, B, C = dt_next, u_next, B_next, C_next
        dt_next, u_next, B_next, C_next = load_chunk(start + BLOCK_L, rows, length, backwards, d, d_ok, n, n_ok,
                                                      delta_base, sd_l, sd_d, u_base, su_l, su_d,
                                                      b_base, sb_l, sb_n, c_base, sc_l, sc_n)
        step = start + rows
        step_ok = step < length
        token = tl.where(backwards, length - 1 - step, step)
        if SAVE_BOUNDARIES:
            tl.store(boundaries_base + (start // BLOCK_L) * channels * state_size + state_at, state, mask=state_ok)
        states, _ = chunk_states(delta_steps(dt, bias, SOFTPLUS), u, B, rate, state, step_ok)
        y = tl.sum(states * C[:, None, :], axis=2) + skip[None, :] * u
        tl.store(y_base + token.to(tl.int64)[:, None] * channels + d[None, :], y,
                 mask=step_ok[:, None] & d_ok[None, :])
        state = tl.sum(tl.where((rows == BLOCK_L - 1)[:, None, None], states, 0.0), axis=0)


@functools.lru_cache(maxsize=64)
def small_index(values: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A tiny int32 tensor on ``device``, made once: no host-to-device copy per scan (which would
    also stop the scan from being captured in a CUDA graph)."""
    return torch.tensor(values, dtype=torch.int32, device=device)


def channel_parameters(A: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None):
    """The kernels' per-channel operands, float32 and contiguous: A * log2(e) (K*Dk, N), delta_bias
    and D (K*Dk,); an absent one is replaced by the rate tensor, which the kernel then never reads."""
    rate = (A.float() * LOG2_E).contiguous()
    bias = delta_bias.float().contiguous() if delta_bias is not None else rate
    skip = D.float().contiguous() if D is not None else rate
    return rate, bias, skip


def scan_triton(u: torch.Tensor, source: Sequence[int], delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None, delta_softplus: bool,
                reverse: Sequence[bool], block_l: int | None = None, block_d: int | None = None,
                num_warps: int | None = None, boundaries: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel on token-major operands, K directions: y (batch, K, L, Dk) float32 in token order.

    u: (batch, S, L, Dk), direction k reads u[:, source[k]]; delta: (batch, K, L, Dk) in scan order;
    A: (K*Dk, N); B, C: (batch, K, L, N) in token order; D, delta_bias: (K*Dk,). Any strides.
    block_l, block_d, num_warps (powers of two) override the shipped tile shape, for tuning and tests.
    ``boundaries``: a contiguous float32 (batch, K, ceil(L / block_l), Dk, N) tensor that receives
    the state before each chunk of block_l tokens (for :mod:`mambast.kernels.scan.triton_backward`).
    """
    batch, _, length, channels = u.shape
    directions, state_size = delta.shape[1], A.shape[1]
    block_l, block_d = block_l or BLOCK_L, block_d or BLOCK_D
    device = u.device
    rate, bias, skip = channel_parameters(A, D, delta_bias)
    y = torch.empty((batch, directions, length, channels), dtype=torch.float32, device=device)
    source_t = small_index(tuple(source), device)
    reverse_t = small_index(tuple(int(r) for r in reverse), device)
    grid = (triton.cdiv(channels, block_d), directions, batch)
    _scan_kernel[grid](
        u, delta, rate, bias, skip, B, C, y, source_t, reverse_t, boundaries if boundaries is not None else y,
        length, channels, directions, state_size,
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(),
        HAS_BIAS=delta_bias is not None, HAS_SKIP=D is not None, SOFTPLUS=bool(delta_softplus),
        SAVE_BOUNDARIES=boundaries is not None,
        STATE=triton.next_power_of_2(state_size), BLOCK_L=block_l, BLOCK_D=block_d,
        num_warps=num_warps or NUM_WARPS,
    )
    return y


def token_major(u: torch.Tensor, delta: torch.Tensor, groups: int) -> tuple:
    """Contract-layout u, delta (B, D, L) as :func:`scan_triton` takes them, one direction per
    group: (u (B, G, L, D/G), source, delta (B, G, L, D/G))."""
    return tokens_of(u, groups), range(groups), tokens_of(delta, groups)


def tokens_of(sequence: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, D, L) -> (B, G, L, D/G), the channels contiguous, as the kernels read them in blocks."""
    batch, channels, length = sequence.shape
    return sequence.reshape(batch, groups, channels // groups, length).transpose(2, 3).contiguous()


def from_token_major(y: torch.Tensor) -> torch.Tensor:
    """(B, G, L, D/G) -> the contract's (B, D, L)."""
    batch, groups, length, per_group = y.shape
    return y.transpose(2, 3).reshape(batch, groups * per_group, length)
