"""The Numba kernel behind :mod:`mambast.kernels.scan.numba_scan` (imported only when Numba is present).

Module-level functions, so that Numba can cache the compiled code on disk between processes.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# A (N=16, 64) float32 state block is 4 KiB, in L1 with its decay rates; measured fastest of
# 16..128 channels on a 2-core AVX2 CPU.
CHANNEL_BLOCK = 64
# A block's slice of a token's row (256 bytes) lies a whole row (4 KiB at 1024 channels) away from
# the previous token's, further in the column-major orders: no hardware prefetcher follows that
# (with the state updates removed the kernel still took about 40% of its time). The rows are
# requested this many tokens ahead (1, 4 and 8 measured: 4 best, 30-40% less time per state update
# on one core).
PREFETCH_DISTANCE = 4

_ZERO, _ONE, _TWO = np.float32(0.0), np.float32(1.0), np.float32(2.0)
_LOWEST_EXPONENT, _LOG2_E = np.float32(-126.0), np.float32(1.4426950408889634)
# 2 atanh(t) = 2t (1 + t^2/3 + t^4/5 + ...)
_S3, _S5, _S7, _S9, _S11, _S13 = (np.float32(1.0 / n) for n in (3, 5, 7, 9, 11, 13))
# 2**x = 1 + x (c0 + c1 x + ... + c4 x^4) on [-0.5, 0.5], fitted for the least largest relative
# error (Lawson's iteration): 9.1e-8 exactly, below 2e-7 in float32. One term fewer than Cephes'
# exp2f (degree 6): the kernel ran 10-20% faster, and its outputs moved by about 3e-7 of their size.
_C4, _C3, _C2 = np.float32(1.326472720708176e-03), np.float32(9.671512706923843e-03), np.float32(5.550733743854425e-02)
_C1, _C0 = np.float32(2.402224208432727e-01), np.float32(6.931469775984559e-01)


def _njit(**options):
    """numba.njit with an on-disk cache where Numba finds a writable place for one (beside this
    file, else its user cache folder), compiled once per process otherwise."""
    def decorate(function):
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(**options)(function)

    return decorate


@intrinsic
def _float_from_bits(typing_context, bits):
    """Reinterpret an int32 as the float32 with the same bits (an LLVM bitcast: it vectorises)."""
    def codegen(context, builder, signature, arguments):
        return builder.bitcast(arguments[0], ir.FloatType())

    return types.float32(types.int32), codegen


# The intrinsic's name carries its pointer type: opaque ("p0") from LLVM 17 on, "p0i8" before.
_PREFETCH_INTRINSIC = "llvm.prefetch.p0" if llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typing_context, array, row, column):
    """Ask the CPU to start loading ``array[row, column]`` into its caches (``llvm.prefetch``: it
    changes no value and cannot fault)."""
    def codegen(context, builder, signature, arguments):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, arguments[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, [arguments[1], arguments[2]],
                                           wraparound=False)
        int32 = ir.IntType(32)
        byte_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer.type, int32, int32, int32]),
            _PREFETCH_INTRINSIC)
        builder.call(function, [byte_pointer, int32(0), int32(3), int32(1)])  # read, keep, data cache
        return context.get_dummy_value()

    return types.void(array, row, column), codegen


@_njit(inline="always", fastmath=True)
def exp2_nonpositive(x):
    """2**x for x <= 0 (delta * A always is): 2**round(x) from its exponent bits times a
    polynomial of the rest. Below 2**-126 (a transition that has forgotten its state) it gives
    2**-126 instead of a smaller or zero factor. ``rint`` is one instruction (``floor(x + 0.5)``
    was two)."""
    x = max(x, _LOWEST_EXPONENT)
    whole = np.rint(x)
    part = x - whole
    poly = (((_C4 * part + _C3) * part + _C2) * part + _C1) * part + _C0
    return (poly * part + _ONE) * _float_from_bits((np.int32(whole) + np.int32(127)) << 23)


@_njit(inline="always", fastmath=True)
def softplus(x):
    """log(1 + e**x) as max(x, 0) + log1p(e**-|x|), log1p(z) = 2 atanh(z / (2 + z)) by its series
    (z / (2 + z) <= 1/3: seven terms leave a relative error near 1e-8)."""
    z = exp2_nonpositive(-abs(x) * _LOG2_E)
    t = z / (_TWO + z)
    t2 = t * t
    series = (((((_S13 * t2 + _S11) * t2 + _S9) * t2 + _S7) * t2 + _S5) * t2 + _S3) * t2 + _ONE
    return max(x, _ZERO) + _TWO * t * series


@_njit(parallel=True, fastmath=True)
def advance_chunk(source, read_at, write_at, delta, delta_bias, apply_softplus, rate, B_scan, C_scan, skip, state, output,
                  start, stop):
    """Advance scan steps start..stop-1 of every direction, adding each direction's y into ``output``.

    source (batch, P, Dk): the rows the directions read, step s of direction k at row
    ``read_at[k, s]``; its y goes to row ``write_at[k, s]`` of output (batch, Q, Dk). delta
    (batch, K, T, Dk): raw delta of steps start..stop-1, plus delta_bias (K, Dk), through softplus
    here when ``apply_softplus``; rate = A * log2(e) (K, N, Dk); B_scan, C_scan (batch, K, L, N) in scan
    order; skip (K, Dk); state (batch, K, N, Dk), carried from call to call. Blocks of channels
    run in parallel; each walks every direction in turn, so directions that write the same rows
    never do so at the same time.
    """
    block = CHANNEL_BLOCK
    channels = source.shape[2]
    batch, directions, state_size = delta.shape[0], delta.shape[1], rate.shape[1]
    blocks = (channels + block - 1) // block
    for task in numba.prange(batch * blocks):
        b = task // blocks
        first = (task % blocks) * block
        width = min(block, channels - first)
        # Lanes past ``width`` (the last block of a width that is not a multiple of 64) stay zero:
        # the hot loops then run over whole blocks, a trip count LLVM knows.
        h = np.zeros((state_size, block), np.float32)
        decay = np.zeros((state_size, block), np.float32)
        step = np.zeros(block, np.float32)
        drive = np.zeros(block, np.float32)
        inputs = np.zeros(block, np.float32)
        y = np.zeros(block, np.float32)
        skip_block = np.zeros(block, np.float32)
        bias_block = np.zeros(block, np.float32)
        sequence, result = source[b], output[b]
        for k in range(directions):
            steps_k, B_k, C_k = delta[b, k], B_scan[b, k], C_scan[b, k]
            for n in range(state_size):
                for j in range(width):
                    h[n, j] = state[b, k, n, first + j]
                    decay[n, j] = rate[k, n, first + j]
            for j in range(width):
                skip_block[j] = skip[k, first + j]
                bias_block[j] = delta_bias[k, first + j]
            for t in range(stop - start):
                token = start + t
                ahead = min(token + PREFETCH_DISTANCE, stop - 1)
                for line in range(0, width, 16):  # 16 floats: one 64-byte cache line
                    _prefetch(sequence, read_at[k, ahead], first + line)
                    _prefetch(result, write_at[k, ahead], first + line)
                    _prefetch(steps_k, ahead - start, first + line)
                # Row views, copied into the local arrays: the hot loop then indexes only those.
                u_row = sequence[read_at[k, token], first:first + width]
                step_row = steps_k[t, first:first + width]
                for j in range(width):
                    inputs[j] = u_row[j]
                    step[j] = step_row[j] + bias_block[j]
                if apply_softplus:
                    for j in range(block):
                        step[j] = softplus(step[j])
                for j in range(block):
                    drive[j] = step[j] * inputs[j]
                    y[j] = skip_block[j] * inputs[j]
                for n in range(state_size):
                    b_n, c_n = B_k[token, n], C_k[token, n]
                    for j in range(block):
                        h_n = exp2_nonpositive(step[j] * decay[n, j]) * h[n, j] + drive[j] * b_n
                        h[n, j] = h_n
                        y[j] += c_n * h_n
                out_row = result[write_at[k, token], first:first + width]
                for j in range(width):
                    out_row[j] += y[j]
            for n in range(state_size):
                for j in range(width):
                    state[b, k, n, first + j] = h[n, j]
