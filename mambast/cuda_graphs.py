"""``stylize`` replayed from CUDA graphs: the same kernels without the per-launch CPU cost.

At 512 px one stylization is about a thousand small kernel launches. On a fast GPU the CPU
issuing them takes longer than the GPU running them, so a plain call waits on Python. A CUDA
graph records the launches once per input shape and replays them with one call.

What stays fixed in a graph: the shapes, dtypes and device of the inputs, and where the model's
weights live (a graph reads them in place). The runner checks the weights' addresses on every
call and captures anew when the model was moved or reloaded. What does not: the pixels, and the
seed. The style permutations are drawn on the CPU as usual (same
draw as :meth:`MambaST.stylize`) and copied into the graph's own buffers before each replay, so
any seed gives the image the plain call gives. Each captured shape keeps its activations in
its own memory pool; ``max_graphs`` bounds how many are kept.

Off CUDA (CPU, MPS) the runner simply calls :meth:`MambaST.stylize`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .imaging import padded_size
from .model import MambaST


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    content: torch.Tensor
    style: torch.Tensor
    permutations: list[torch.Tensor]
    output: torch.Tensor


class GraphedStylize:
    """``GraphedStylize(model)(content, style, seed)`` == ``model.stylize(content, style, seed)``.

    Inference only (the replay records no autograd). Not thread-safe: one runner per thread.
    """

    def __init__(self, model: MambaST, max_graphs: int = 4, warmup: int = 2):
        self.model = model
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._weights: tuple[int, ...] = ()

    def __call__(self, content: torch.Tensor, style: torch.Tensor, seed: int | None = None,
                 shuffle: bool = True) -> torch.Tensor:
        model = self.model
        with torch.inference_mode():
            if model.device.type != "cuda":
                return model.stylize(content, style, seed=seed, shuffle=shuffle)
            return self._replay(content, style, seed, shuffle)

    def _replay(self, content: torch.Tensor, style: torch.Tensor, seed: int | None, shuffle: bool) -> torch.Tensor:
        model = self.model
        weights = tuple(parameter.data_ptr() for parameter in model.parameters())
        if weights != self._weights:  # moved or reloaded: every graph would read stale memory
            self._graphs.clear()
            self._weights = weights
        content, style = content.to(model.device), style.to(model.device)
        key = (tuple(content.shape), tuple(style.shape), content.dtype, style.dtype, shuffle)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(content, style, shuffle)
            self._graphs[key] = captured
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        captured.content.copy_(content)
        captured.style.copy_(style)
        if shuffle:
            tokens = captured.permutations[0].shape[0]
            for buffer, permutation in zip(captured.permutations, model.permutations(tokens, seed, True)):
                buffer.copy_(permutation)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, content: torch.Tensor, style: torch.Tensor, shuffle: bool) -> _Captured:
        model = self.model
        with torch.inference_mode(False):  # buffers refilled before every replay: ordinary tensors
            static_content, static_style = content.clone(), style.clone()
            patch = model.config.patch_size
            height, width = padded_size(content.shape[2], content.shape[3], patch)
            permutations = ([p.clone() for p in model.permutations((height // patch) * (width // patch), 0, True)]
                            if shuffle else [None] * model.config.decoder_layers)

        def run() -> torch.Tensor:
            encoded = model.encode_content(static_content)
            style_encoding = model.encode_style(static_style, encoded.padded_size)
            features = model.fuse(encoded, style_encoding, permutations=permutations)
            return model.decode(features, encoded.image_size)

        # Warm up on a side stream (as CUDA graphs require): kernels compiled, caches filled.
        side = torch.cuda.Stream(model.device)
        side.wait_stream(torch.cuda.current_stream(model.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream(model.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = run()
        return _Captured(graph, static_content, static_style, permutations if shuffle else [], output)
