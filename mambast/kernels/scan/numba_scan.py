"""Selective scan compiled for the CPU by Numba: the state of a block of channels stays in L1 cache.

The chunked scan builds each chunk's transitions ``exp(delta * A)`` and inputs ``delta * u * B``
as (T, N, channels) buffers, walks them token by token and reads the states out with C: five
passes over buffers larger than the core's cache. Here one compiled loop does it all per block
of 64 channels: for each token it computes the 16 transitions of each channel, advances the
(16, 64) state held in a local array (4 KiB, in L1) and accumulates the readout, so memory sees
only the operands and the output. The loops are written so that LLVM vectorises them across the
block's channels (AVX2 or AVX-512, whatever the CPU has); ``2**x`` is our own Cephes-style
polynomial, because a call to the C library's ``exp`` would not vectorise.

Numba is optional (``pip install numba``): it compiles the kernel on the first call (seconds;
cached on disk afterwards when the package folder or Numba's user cache is writable). Inference
only: under autograd the chunked scan runs instead. Blocks of channels run in parallel on
``torch.get_num_threads()`` threads; calls are serialised by a lock, because some of Numba's
threading layers abort the process when two threads launch parallel kernels at once.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Callable, Sequence

import torch

from ...utils.progress import notice_if_slow, tick
from .chunked import LowRankDelta
from .contract import check_direction_shapes, check_scan_shapes

# Tokens per kernel call: one progress tick (and chance to cancel) each, and the size of the
# delta buffer built between calls (K x 256 x Dk floats: 4 MiB for a VSS block).
DEFAULT_CHUNK = 256
_LOG2_E = 1.0 / math.log(2.0)
_launch_lock = threading.Lock()
_launched: set = set()  # kernels called at least once in this process (their first call may compile them)
COMPILING_NOTICE = ("compiling the CPU kernels with Numba: once per install, about 20 s on a 2-core CPU; later "
                    "runs load them from Numba's cache")


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    """True when Numba imports (it needs a NumPy it supports) on a CPU it can compile for."""
    try:
        import numba  # noqa: F401
        from numba.extending import intrinsic  # noqa: F401
    except Exception:  # ImportError, or a Numba built for another NumPy
        return False
    return True


def selective_scan_numba(
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
    """The contract's scan (shapes as in :func:`mambast.kernels.scan.selective_scan`) through the
    compiled kernel: each of the G groups of B and C is one direction, scanned forwards."""
    check_scan_shapes(u, delta, A, B, C)
    batch, channels, length = u.shape
    groups = B.shape[1]
    per_group = channels // groups

    def token_major(tensor: torch.Tensor) -> torch.Tensor:
        """(B, D, L) -> (B, G, L, D/G) float32."""
        return tensor.detach().float().reshape(batch, groups, per_group, length).transpose(2, 3)

    rows = torch.arange(groups * length).view(groups, length)  # group k reads and writes its own rows
    output = _scan(token_major(u).reshape(batch, groups * length, per_group), rows, rows, groups * length,
                   _delta_in_chunks(token_major(delta), None), delta_bias, delta_softplus, A, B.transpose(2, 3),
                   C.transpose(2, 3), D, chunk)
    return output.view(batch, groups, length, per_group).transpose(2, 3).reshape(batch, channels, length)


def selective_scan_numba_directions(
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
    """K scan directions at once, token-major: the arguments and result of
    :func:`mambast.kernels.scan.chunked.selective_scan_chunked_directions`, computed by the compiled
    kernel (the distinct sequences of ``u`` are stacked once; SS2D calls
    :func:`selective_scan_numba_orders` instead, which reads one sequence in four orders)."""
    reverse, combine = check_direction_shapes(u, delta, A, B, C, reverse, combine, delta_projection)
    distinct: list[torch.Tensor] = []
    source_of = []
    for sequence in u:
        match = next((i for i, seen in enumerate(distinct) if seen is sequence), None)
        if match is None:
            distinct.append(sequence.detach().float())
            match = len(distinct) - 1
        source_of.append(match)
    batch, length, channels = u[0].shape
    steps = torch.arange(length)
    in_order = [steps.flip(0) if r else steps for r in reverse]
    read_at = torch.stack([s * length + order for s, order in zip(source_of, in_order)])
    write_at = torch.stack([o * length + order for o, order in zip(combine, in_order)])
    outputs = max(combine) + 1
    B_scan = torch.stack([b.flip(1) if r else b for b, r in zip(B, reverse)], dim=1)
    C_scan = torch.stack([c.flip(1) if r else c for c, r in zip(C, reverse)], dim=1)
    output = _scan(torch.cat(distinct, dim=1), read_at, write_at, outputs * length,
                   _delta_in_chunks(delta, delta_projection), delta_bias, delta_softplus, A, B_scan, C_scan, D, chunk)
    return list(output.view(batch, outputs, length, channels).unbind(1))


def selective_scan_numba_orders(
    sequence: torch.Tensor,
    orders: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    delta_projection: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """K directions that scan one token sequence in K orders, summed: SS2D's four scans of a
    token grid without the column-major copy, the flips or the merge.

    sequence (batch, L, Dk); ``orders`` (K, L) int64: step s of direction k reads token
    ``orders[k, s]`` and adds its output there; delta (batch, K, L, Dk), or (batch, K, L, R)
    with ``delta_projection`` (K, Dk, R), and B, C (batch, K, L, N), all in scan order; A
    (K*Dk, N), D and delta_bias (K*Dk,). Returns (batch, L, Dk) float32: the sum over directions
    of each one's y, in the sequence's token order, written into ``out`` when given (a contiguous
    float32 tensor of that shape, overwritten; it must not overlap the inputs).
    """
    batch, length, channels = sequence.shape
    directions = orders.shape[0]
    if orders.shape != (directions, length) or B.shape[:3] != (batch, directions, length) or C.shape != B.shape:
        raise ValueError(f"selective scan (orders): orders must be (K, L={length}) and B, C (batch={batch}, K, "
                         f"L={length}, N); got {tuple(orders.shape)}, {tuple(B.shape)}, {tuple(C.shape)}")
    if out is not None and (out.shape != (batch, length, channels) or out.dtype != torch.float32
                            or not out.is_contiguous() or out.device.type != "cpu"):
        raise ValueError(f"selective scan (orders): out must be a contiguous float32 CPU tensor "
                         f"({batch}, {length}, {channels}); got {out.dtype} {tuple(out.shape)}")
    return _scan(sequence.detach().float(), orders, orders, length,
                 _delta_in_chunks(delta, delta_projection), delta_bias, delta_softplus, A, B, C, D, chunk, out)


def _delta_in_chunks(delta, delta_projection) -> Callable[[int, int], torch.Tensor]:
    """``delta_of(start, stop)``: raw delta of scan steps start..stop-1, (batch, K, T, Dk), without
    its bias (the kernel adds it), projected from its low-rank input chunk by chunk when
    ``delta_projection`` is given."""
    if delta_projection is not None:
        return _LowRankSteps(delta.detach().float(), delta_projection.detach().float())

    def delta_of(start: int, stop: int) -> torch.Tensor:
        return delta[:, :, start:stop].detach().float()

    return delta_of


class _LowRankSteps(LowRankDelta):
    """:class:`LowRankDelta` without the bias (the kernel adds it), written into one buffer chunk
    after chunk (the kernel has read the previous chunk by then): no fresh memory per chunk."""

    def __init__(self, low: torch.Tensor, weight: torch.Tensor):
        super().__init__(low, weight, None)
        self.buffer: torch.Tensor | None = None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        steps = stop - start
        if self.buffer is None or self.buffer.shape[1] != steps:
            self.buffer = self.low.new_empty((self.low.shape[0], steps, self.weight.shape[2]))
        torch.bmm(self.low[:, start:stop], self.weight, out=self.buffer)
        return self.buffer.view(*self.shape, steps, -1)


def _scan(source, read_at, write_at, output_rows, delta_of, delta_bias, softplus, A, B_scan, C_scan, D, chunk,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """Run the kernel over the scan steps a chunk at a time; (batch, output_rows, Dk) float32,
    into ``out`` (zeroed first) when given.

    source (batch, P, Dk); read_at, write_at (K, L): the source row each step reads and the
    output row it adds to; B_scan, C_scan (batch, K, L, N) in scan order; A (K*Dk, N);
    ``delta_of(start, stop)``: raw delta of steps start..stop-1, (batch, K, T, Dk); delta_bias
    (K*Dk,) or None.
    """
    kernel = _compiled_kernel()
    batch, _, channels = source.shape
    directions, length = read_at.shape
    state_size = A.shape[1]
    as_array = lambda tensor: tensor.detach().float().contiguous().numpy()  # noqa: E731
    rate = as_array(A.detach().float().reshape(directions, channels, state_size).transpose(1, 2) * _LOG2_E)
    skip = as_array(D.reshape(directions, channels) if D is not None else torch.zeros(directions, channels))
    bias = as_array(delta_bias.reshape(directions, channels) if delta_bias is not None
                    else torch.zeros(directions, channels))
    # The kernel does not check its indices: an index out of range would read or write past the arrays.
    for name, index, limit in (("read", read_at, source.shape[1]), ("write", write_at, output_rows)):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= limit):
            raise ValueError(f"selective scan (Numba): a {name} index lies outside 0..{limit - 1}")
    rows = [index.detach().to(torch.int64).contiguous().numpy() for index in (read_at, write_at)]
    B_array, C_array, source_array = as_array(B_scan), as_array(C_scan), as_array(source)
    state = torch.zeros(batch, directions, state_size, channels).numpy()
    output = out.detach().zero_() if out is not None else torch.zeros(batch, output_rows, channels)
    output_array = output.numpy()
    for start in range(0, length, chunk):
        tick()
        stop = min(start + chunk, length)
        steps = as_array(delta_of(start, stop))
        launch(kernel, source_array, *rows, steps, bias, softplus, rate, B_array, C_array, skip, state, output_array,
               start, stop)
    return output


def launch(kernel: Callable, *arguments) -> None:
    """Call a parallel Numba kernel on PyTorch's thread count, one launch at a time in the process
    (some of Numba's threading layers abort when two threads launch parallel kernels at once).

    Numba's cache beside the package names the module that compiled each kernel, as it was
    imported: ``mambast.kernels.scan.numba_kernel`` from the command line or the tests, something like
    ``ComfyUI-MambaST.mambast.scan.numba_kernel`` in ComfyUI. A process that imported the package
    under another name cannot load that entry (an ImportError); the kernels are then compiled
    again and cached under this process's name."""
    import numba

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    with _launch_lock:
        numba.set_num_threads(threads)
        first = kernel not in _launched
        with notice_if_slow(COMPILING_NOTICE) if first else contextlib.nullcontext():
            try:
                kernel(*arguments)
            except ImportError:
                if not _drop_caches_of(kernel):
                    raise
                kernel(*arguments)
        _launched.add(kernel)


def _drop_caches_of(kernel: Callable) -> bool:
    """Empty the on-disk cache entries of the compiled functions of ``kernel``'s module and of the
    scan kernel's module (the functions it may call); False when there were none to empty."""
    import sys

    from numba.core.dispatcher import Dispatcher

    from . import numba_kernel

    modules = {id(module): module for module in (sys.modules.get(getattr(kernel, "__module__", "")), numba_kernel)
               if module is not None}
    dropped = False
    for module in modules.values():
        for value in vars(module).values():
            cache = getattr(value, "_cache", None) if isinstance(value, Dispatcher) else None
            if cache is not None and hasattr(cache, "flush"):
                cache.flush()
                dropped = True
    return dropped


def _compiled_kernel():
    """The kernel, compiled on first use (or loaded from Numba's cache): importing this package
    never needs Numba."""
    from .numba_kernel import advance_chunk

    return advance_chunk
