"""Repeated stages replayed from CUDA graphs: the same kernels without the per-launch CPU cost.

At 512 px one stylization is about a thousand small kernel launches. On a fast GPU the CPU
issuing them takes longer than the GPU running them, so a plain call waits on Python. A CUDA
graph records the launches of one call and replays them with one call.

:class:`StageGraphs` does that for the model's four stages (content encoder, style encoder, MSTD,
CNN decoder), each keyed by its inputs' shapes, strides and dtypes: a stage is run plainly the
first time a shape comes (``captures_after``), and from the next time its launches are recorded
once and replayed. Batches and video frames, which repeat one shape, replay; a one-off call costs
nothing extra. Everything between the stages (padding, the style permutations drawn on the CPU
from the seed, strength and temporal smoothing) runs as usual, so a replay gives the plain call's
output to the last bit: the same kernels read the same values (each call's inputs are copied
into the graph's own input buffers; its output is copied out).

What a graph fixes: the shapes and where the model's weights live (a graph reads them in
place). The weights' addresses are checked on every call and the graphs recorded anew when the
model was moved. All graphs of one :class:`StageGraphs` share one memory pool; they are dropped
with it (the nodes keep one per run), or on running out of memory, after which the stage runs
again plainly. Where recording fails, that stage runs plainly from then on, with a warning.
Off CUDA, and wherever gradients are recorded, every stage runs plainly.

A graph checks itself, as the Triton backward does before training: the first replay of each
stage (per dtype and device) in a process is compared with a plain run of the same inputs
(:class:`ReplayCheck`). Where they differ beyond rounding, the plain result is used, one warning
names the stage and the difference, and no stage replays for the rest of the process.

The model's stages call :func:`replay_stage`; a :class:`StageGraphs` takes effect inside its
:meth:`~StageGraphs.active` block (this thread only).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import weakref
from collections import Counter
from typing import Any, Callable, Iterator, Optional

import torch

from ..utils.progress import cancel_point, counting_ticks, tick

log = logging.getLogger(__name__)

ENV_VARIABLE = "MAMBAST_CUDA_GRAPHS"  # "0" keeps every stage plain (the nodes' switch)

_active: contextvars.ContextVar[Optional["StageGraphs"]] = contextvars.ContextVar("mambast_graphs", default=None)


_side_streams: dict[torch.device, "torch.cuda.Stream"] = {}


def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    """One warm-up stream per device, for the process: PyTorch caches freed memory per stream, so
    a new stream for every recording would keep each warm-up's activations cached apart."""
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device)
    return _side_streams[device]


class CudaGraphs:
    """torch.cuda's graphs: what :class:`StageGraphs` records with (tests give a stand-in)."""

    def applies(self, device: torch.device) -> bool:
        return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()

    def new_pool(self, device: torch.device) -> Any:
        return torch.cuda.graph_pool_handle()

    def warm_up(self, device: torch.device, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``run()`` on a side stream, as recording requires (lazy initialisation, kernel
        compilation done outside the recording); its output, copied on the current stream."""
        current = torch.cuda.current_stream(device)
        side = _side_stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            output = run()
        current.wait_stream(side)
        return output.clone()  # memory of the current stream: the side stream's is free again

    def capture(self, device: torch.device, run: Callable[[], torch.Tensor], pool: Any) -> tuple[Any, torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread of the host (a ComfyUI server) using CUDA meanwhile is not an error
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            output = run()
        return graph, output

    def replay(self, graph: Any) -> None:
        graph.replay()

    def release(self, device: torch.device) -> None:
        """Give the memory of dropped graphs (and cached blocks) back to the driver."""
        torch.cuda.empty_cache()


#: Largest difference a first replay may show against a plain run, relative to the plain output's
#: largest value. The same kernels read the same values, so it should be zero; a library choosing
#: another algorithm on the recording stream rounds differently, by far less than this. A wrong
#: replay (a buffer not refilled, memory read after it was reused) is off by the values themselves.
REPLAY_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |got - expected| / max |expected|``, in float32; NaN where only one of them holds a NaN
    (NaN in both at the same place is agreement)."""
    if got.shape != expected.shape:
        return float("inf")
    if expected.numel() == 0:
        return 0.0
    got, expected = got.float(), expected.float()
    difference = (got - expected).abs().masked_fill(got.isnan() & expected.isnan(), 0)
    largest = float(expected.abs().nan_to_num(0, posinf=0, neginf=0).max())
    return float(difference.max()) / max(largest, 1e-12)


class ReplayCheck:
    """What the replays of a process have shown: which stages were checked, and whether graphs
    are off (:attr:`off`, the reason) after a replay that differed from the plain run.

    :data:`PROCESS_CHECK` is the one the nodes use; tests give their own.
    """

    def __init__(self) -> None:
        self.differences: dict[tuple, float] = {}  # (stage, dtype, device) -> what its first replay showed
        self.off: str | None = None

    @property
    def checked(self) -> set[tuple]:
        return set(self.differences)

    def wants(self, key: tuple) -> bool:
        return key not in self.differences

    def compare(self, key: tuple, name: str, replayed: torch.Tensor, plain: torch.Tensor) -> bool:
        """Record the first replay of ``key`` against its plain run; False (graphs now off, one
        warning) where they differ beyond :data:`REPLAY_TOLERANCE`."""
        difference = self.differences[key] = relative_difference(replayed, plain)
        if difference <= REPLAY_TOLERANCE.get(plain.dtype, 1e-3):  # also False for NaN
            return True
        self.off = (f"the {name} replayed from a CUDA graph differed from a plain run by {difference:.3g} of its "
                    "largest value")
        log.warning("MambaST: %s; CUDA graphs are off for the rest of this process (the plain result is used; "
                    "nothing else changes). Please report it with your GPU, driver and PyTorch versions.", self.off)
        return False


PROCESS_CHECK = ReplayCheck()


@dataclasses.dataclass
class _Recorded:
    graph: Any
    inputs: list[torch.Tensor | None]  # the graph's input buffers, refilled before each replay
    output: torch.Tensor  # the graph's output buffer, overwritten by each replay
    ticks: int  # progress ticks one plain run of the stage makes
    weights: tuple[int, ...]


def _layout(tensor: torch.Tensor | None) -> tuple | None:
    if tensor is None:
        return None
    return tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device


def _dense(tensor: torch.Tensor | None) -> bool:
    """Whether a buffer of exactly ``tensor``'s strides can hold it (no broadcast or gaps)."""
    return tensor is None or tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)


def _buffer(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A copy of ``tensor`` with its strides, as an ordinary tensor (refillable in and out of
    inference mode)."""
    if tensor is None:
        return None
    with torch.inference_mode(False):
        return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype,
                                   device=tensor.device).copy_(tensor)


class StageGraphs:
    """Records a stage's launches the ``captures_after + 1``-th time its shapes come, and replays them.

    ``max_graphs`` bounds the graphs kept (each holds its activations); once reached, new shapes
    run plainly rather than evict a graph that may come again (seam smoothing and tiles cycle
    through more shapes than that). Out of memory while graphs hold some, they are dropped, the
    stage runs again plainly and nothing more is recorded (:attr:`stopped`). ``check``: where the
    first replays are checked (:data:`PROCESS_CHECK` by default). Not thread-safe: one per thread.
    """

    def __init__(self, captures_after: int = 1, max_graphs: int = 16, graphs: CudaGraphs | None = None,
                 check: ReplayCheck | None = None):
        self.captures_after = captures_after
        self.max_graphs = max_graphs
        self.graphs = graphs or CudaGraphs()
        self.check = check or PROCESS_CHECK
        self._recorded: dict[tuple, _Recorded] = {}
        self._calls: Counter = Counter()
        self._failed: set[tuple] = set()
        self._pool: Any = None
        self._parameters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its parameters
        self.replays = 0
        self.stopped = False  # set on running out of memory: nothing more is recorded

    @contextlib.contextmanager
    def active(self) -> Iterator["StageGraphs"]:
        """The model's stages replay from these graphs inside the block (this thread)."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)

    @property
    def recorded(self) -> int:
        return len(self._recorded)

    def clear(self) -> None:
        """Drop every graph (their memory goes back to PyTorch's cache)."""
        self._recorded.clear()
        self._calls.clear()
        self._pool = None

    def run(self, model: torch.nn.Module, name: str, stage: Callable[..., torch.Tensor], inputs: tuple, key: Any = None
            ) -> torch.Tensor:
        """``stage(*inputs)`` (tensors or None on the model's device; ``key``: what else fixes the
        launches, e.g. the token grid), replayed when these inputs' layout came before."""
        device = model.device
        if (torch.is_grad_enabled() or self.check.off is not None or not self.graphs.applies(device)
                or not all(map(_dense, inputs))):
            return stage(*inputs)
        try:
            return self._run(model, device, name, stage, inputs, key)
        except torch.cuda.OutOfMemoryError:
            if self._pool is None:  # no graph held memory: a plain run fails alike (the caller tiles)
                raise
        # The graphs' memory may be what was missing: dropped, and no more recorded in this run.
        self._out_of_memory(device)
        return stage(*inputs)

    def _out_of_memory(self, device: torch.device) -> None:
        self.clear()
        self.stopped = True
        self.graphs.release(device)
        log.warning("MambaST: out of GPU memory with CUDA graphs; this run goes on without them.")

    def _run(self, model: torch.nn.Module, device: torch.device, name: str, stage: Callable[..., torch.Tensor],
             inputs: tuple, key: Any) -> torch.Tensor:
        signature = (id(model), name, key, tuple(_layout(t) for t in inputs))
        weights = self._weights(model)
        recorded = self._recorded.get(signature)
        if recorded is not None and recorded.weights != weights:  # moved or reloaded: every graph is stale
            self.clear()
            recorded = None
        if recorded is not None:
            return self._replay(recorded, name, stage, inputs)
        self._calls[signature] += 1
        if (self.stopped or signature in self._failed or self._calls[signature] <= self.captures_after
                or len(self._recorded) >= self.max_graphs):
            return stage(*inputs)
        return self._record(signature, device, stage, inputs, weights, name)

    def _weights(self, model: torch.nn.Module) -> tuple[int, ...]:
        # Moving a module swaps its parameters' data, not the Parameter objects: listed once.
        parameters = self._parameters.get(model)
        if parameters is None:
            parameters = self._parameters[model] = list(model.parameters())
        return tuple(parameter.data_ptr() for parameter in parameters)

    def _replay(self, recorded: _Recorded, name: str, stage: Callable[..., torch.Tensor], inputs: tuple
                ) -> torch.Tensor:
        cancel_point()
        for buffer, tensor in zip(recorded.inputs, inputs):
            if buffer is not None:
                buffer.copy_(tensor)
        self.graphs.replay(recorded.graph)
        self.replays += 1
        output = recorded.output.clone()
        key = (name, output.dtype, output.device)
        if self.check.wants(key):  # the first replay of this stage in the process: against a plain run
            with counting_ticks(forward=False):  # silent: the progress is reported once, below
                plain = stage(*inputs)
            if not self.check.compare(key, name, output, plain):
                self.clear()
                output = plain
        for _ in range(recorded.ticks):  # the progress the plain run would have made
            tick()
        return output

    def _record(self, signature: tuple, device: torch.device, stage: Callable[..., torch.Tensor], inputs: tuple,
                weights: tuple[int, ...], name: str) -> torch.Tensor:
        buffers = [_buffer(t) for t in inputs]
        with counting_ticks(forward=True) as plain:  # this call's own progress and Cancel checks
            output = self.graphs.warm_up(device, lambda: stage(*buffers))
        if self._pool is None:
            self._pool = self.graphs.new_pool(device)
        try:
            with counting_ticks(forward=False):
                graph, graph_output = self.graphs.capture(device, lambda: stage(*buffers), self._pool)
        except Exception as error:  # noqa: BLE001 - any failure to record leaves the plain path
            if isinstance(error, torch.cuda.OutOfMemoryError):
                self._out_of_memory(device)
                return output
            self._failed.add(signature)
            log.warning("MambaST: the %s could not be recorded as a CUDA graph (%s: %s); it runs without one.",
                        name, type(error).__name__, error)
            return output
        self._recorded[signature] = _Recorded(graph, buffers, graph_output, plain.ticks, weights)
        return output


def replay_stage(model: torch.nn.Module, name: str, stage: Callable[..., torch.Tensor], *inputs: torch.Tensor | None,
                 key: Any = None) -> torch.Tensor:
    """``stage(*inputs)``, through the :class:`StageGraphs` active in this thread if any."""
    graphs = _active.get()
    if graphs is None:
        return stage(*inputs)
    return graphs.run(model, name, stage, inputs, key)


def enabled_on(device: torch.device) -> bool:
    """Whether runs on ``device`` replay repeated stages: CUDA devices, unless ``MAMBAST_CUDA_GRAPHS=0``
    or a replay in this process differed from its plain run."""
    return device.type == "cuda" and os.environ.get(ENV_VARIABLE, "1").strip() != "0" and PROCESS_CHECK.off is None


@contextlib.contextmanager
def replaying_repeats(device: torch.device) -> Iterator[StageGraphs | None]:
    """Repeated stages replay from graphs inside the block when :func:`enabled_on` ``device``;
    the graphs are dropped at its end."""
    if not enabled_on(device):
        yield None
        return
    graphs = StageGraphs()
    try:
        with graphs.active():
            yield graphs
    finally:
        graphs.clear()


class GraphedStylize:
    """``GraphedStylize(model)(content, style, seed)`` == ``model.stylize(content, style, seed)``,
    its stages recorded the first time a shape comes and replayed after (CUDA only; elsewhere
    the plain call). Keeps its graphs between calls. Inference only; one per thread.
    """

    def __init__(self, model: torch.nn.Module, max_graphs: int = 16, check: ReplayCheck | None = None):
        self.model = model
        self.stages = StageGraphs(captures_after=0, max_graphs=max_graphs, check=check)

    def __call__(self, content: torch.Tensor, style: torch.Tensor, seed: int | None = None,
                 shuffle: bool = True) -> torch.Tensor:
        with torch.inference_mode(), self.stages.active():
            return self.model.stylize(content, style, seed=seed, shuffle=shuffle)
