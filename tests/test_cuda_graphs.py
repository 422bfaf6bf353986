"""Repeated stages replayed from CUDA graphs give the plain calls' outputs, progress and Cancel checks.

The CPU tests record with a stand-in for torch.cuda's graphs: its "replay" runs the recorded
call again, silently, from the graph's input buffers into its output buffer, which is what a
CUDA graph does with the recorded kernels. So they check what :class:`StageGraphs` must get
right on any device (which inputs are refilled, outputs copied out before the next replay,
keys, progress, stale weights, failures); the CUDA tests check the real graphs on a GPU.
"""

from __future__ import annotations

import logging

import pytest
import torch

from mambast.kernels import cuda_graphs
from mambast.kernels.cuda_graphs import CudaGraphs, GraphedStylize, ReplayCheck, StageGraphs, replaying_repeats
from mambast.run.pipeline import Controls, batch_ticks, stylize_images
from mambast.utils.progress import ProgressTracker, counting_ticks, progress_callback


class _Recording:
    def __init__(self, run, output):
        self.run, self.output = run, output


class ReplayingStandIn(CudaGraphs):
    """torch.cuda's graphs played on the CPU: a replay reruns the recorded call without Python's progress."""

    def __init__(self, fail: bool = False, silently=counting_ticks, out_of_memory_at_replay: int = 0,
                 off_by: float = 0.0, off_from_replay: int = 1):
        self.fail = fail
        self.off_by, self.off_from_replay = off_by, off_from_replay  # replays from the n-th on add off_by
        self.out_of_memory_at_replay = out_of_memory_at_replay  # the n-th replay fails as on a full card
        self.released = 0
        self.silently = silently  # the progress module's, of the package the model comes from
        self.captures = 0
        self.replays = 0

    def applies(self, device):
        return True

    def release(self, device):
        self.released += 1

    def new_pool(self, device):
        return object()

    def warm_up(self, device, run):
        return run().clone()

    def capture(self, device, run, pool):
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        output = run()
        return _Recording(run, output), output

    def replay(self, graph):
        self.replays += 1
        if self.replays == self.out_of_memory_at_replay:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
        with self.silently(forward=False):  # a graph replays kernels, not Python
            output = graph.run()
        if self.off_by and self.replays >= self.off_from_replay:
            output = output + self.off_by * output.abs().max()  # as a graph reading stale or reused memory
        graph.output.copy_(output)


def images(height, width, seed, batch=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator), torch.rand(1, 3, 32, 24, generator=generator)


def frames(batch=4):
    content, style = images(40, 48, 0)
    shifted = [torch.roll(content, shifts=2 * i, dims=-1) for i in range(batch)]  # a pan: same size, new pixels
    return torch.cat(shifted), style


def run_with_progress(model, content, style, controls, graphs=None):
    """stylize_images with a tracker; returns (images, ticks made, ticks planned, Cancel checks)."""
    planned = batch_ticks(model, tuple(content.shape[-2:]), content.shape[0], controls, style)
    checks = []
    tracker = ProgressTracker(planned, lambda done, total: None)
    with torch.inference_mode(), progress_callback(tracker.tick, tracker.replan, lambda: checks.append(1)):
        if graphs is None:
            out = stylize_images(model, content, style, controls, image_done=lambda i: tracker.image_done())
        else:
            with graphs.active():
                out = stylize_images(model, content, style, controls, image_done=lambda i: tracker.image_done())
    return out, tracker.done, sum(planned), len(checks)


@pytest.mark.parametrize("controls", [Controls(seed=3), Controls(seed=4, strength=0.6, temporal_smoothing=0.4),
                                      Controls(seed=5, shuffle=False, seam_smoothing=2)],
                         ids=["plain", "strength-smoothing", "no-shuffle-seams"])
def test_frames_replayed_equal_plain_calls_with_the_same_progress(small_model, controls):
    content, style = frames()
    expected, ticks, planned, _ = run_with_progress(small_model, content, style, controls)
    stand_in = ReplayingStandIn()
    graphs = StageGraphs(graphs=stand_in)
    got, graphed_ticks, _, checks = run_with_progress(small_model, content, style, controls, graphs)
    assert torch.equal(got, expected)
    assert graphed_ticks == ticks == planned
    assert checks > 0  # Cancel is still checked between stages
    assert graphs.recorded >= 3 and stand_in.replays == graphs.replays > 0
    assert stand_in.captures == graphs.recorded


def test_each_replay_returns_its_own_tensor(small_model):
    graphs = StageGraphs(captures_after=0, graphs=ReplayingStandIn())
    contents = [images(40, 48, seed)[0] for seed in range(3)]
    with torch.inference_mode():
        expected = [small_model.encode_content(c).tokens for c in contents]
        with graphs.active():
            got = [small_model.encode_content(c).tokens for c in contents]  # recorded, then two replays
    assert graphs.replays == 2
    for one, plain in zip(got, expected):
        assert torch.equal(one, plain)


def test_another_grid_with_as_many_tokens_is_another_graph(small_model):
    """A 40x48 and a 48x40 image have as many tokens: the MSTD's graph must not be shared."""
    graphs = StageGraphs(captures_after=0, graphs=ReplayingStandIn())
    with torch.inference_mode():
        for height, width in ((40, 48), (48, 40), (40, 48), (48, 40)):
            content, style = images(height, width, height)
            expected = small_model.stylize(content, style, seed=1)
            with graphs.active():
                assert torch.equal(small_model.stylize(content, style, seed=1), expected)
    assert graphs.recorded == 8  # four stages on each grid


def test_moved_weights_are_recorded_again(small_tensors):
    import mambast

    model = mambast.build(mambast.Checkpoint(small_tensors))
    stand_in = ReplayingStandIn()
    graphs = StageGraphs(captures_after=0, graphs=stand_in)
    content, style = images(40, 48, 0)
    with torch.inference_mode(), graphs.active():
        model.stylize(content, style, seed=1)
        assert stand_in.captures == 4
        model.to(torch.float64).to(torch.float32)  # new weight tensors: the graphs would read freed memory
        got = model.stylize(content, style, seed=1)
    assert stand_in.captures == 8
    with torch.inference_mode():
        assert torch.equal(got, model.stylize(content, style, seed=1))


def test_a_stage_that_cannot_be_recorded_runs_plainly_with_one_warning(small_model, caplog):
    content, style = frames(3)
    expected, *_ = run_with_progress(small_model, content, style, Controls(seed=2))
    stand_in = ReplayingStandIn(fail=True)
    graphs = StageGraphs(graphs=stand_in)
    with caplog.at_level(logging.WARNING, logger="mambast.kernels.cuda_graphs"):
        got, *_ = run_with_progress(small_model, content, style, Controls(seed=2), graphs)
    assert torch.equal(got, expected)
    assert graphs.recorded == 0 and stand_in.captures == 3  # content encoder, MSTD, CNN decoder; tried once each
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and "could not be recorded as a CUDA graph" in warnings[0]


@pytest.mark.parametrize("off_by", [0.5, float("nan")], ids=["wrong-values", "nan"])
def test_a_first_replay_that_differs_turns_graphs_off_for_the_process(small_model, caplog, monkeypatch, off_by):
    content, style = frames(5)
    expected, ticks, _, _ = run_with_progress(small_model, content, style, Controls(seed=2))
    check = ReplayCheck()
    stand_in = ReplayingStandIn(off_by=off_by)
    graphs = StageGraphs(graphs=stand_in, check=check)
    with caplog.at_level(logging.WARNING, logger="mambast.kernels.cuda_graphs"):
        got, graphed_ticks, _, _ = run_with_progress(small_model, content, style, Controls(seed=2), graphs)
    assert torch.equal(got, expected) and graphed_ticks == ticks  # the plain result, the same progress
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "the content encoder replayed from a CUDA graph differed" in messages[0]
    assert ("nan" if off_by != off_by else "0.5 of its largest value") in messages[0]
    assert stand_in.replays == 1 and stand_in.captures == 3 and graphs.recorded == 0  # recorded on frame 2 only
    assert check.off is not None

    later = StageGraphs(graphs=stand_in, check=check)  # another run of the same process: all plain
    again, *_ = run_with_progress(small_model, content, style, Controls(seed=2), later)
    assert torch.equal(again, expected) and stand_in.captures == 3 and len(caplog.records) == 1
    monkeypatch.setattr(cuda_graphs, "PROCESS_CHECK", check)
    monkeypatch.delenv("MAMBAST_CUDA_GRAPHS", raising=False)
    assert not cuda_graphs.enabled_on(torch.device("cuda"))  # the nodes open no graphs any more


def test_rounding_passes_the_check_and_each_stage_is_checked_once(small_model, caplog):
    content, style = frames(5)
    expected, *_ = run_with_progress(small_model, content, style, Controls(seed=2))
    check = ReplayCheck()
    stand_in = ReplayingStandIn(off_by=1e-6)  # another algorithm's rounding, not a wrong replay
    graphs = StageGraphs(graphs=stand_in, check=check)
    with caplog.at_level(logging.WARNING, logger="mambast.kernels.cuda_graphs"):
        got, *_ = run_with_progress(small_model, content, style, Controls(seed=2), graphs)
    assert torch.allclose(got, expected, atol=1e-4) and not caplog.records and check.off is None
    assert {name for name, *_ in check.checked} == {"content encoder", "MSTD", "CNN decoder"}
    assert stand_in.replays == graphs.replays == 9  # frames 3 to 5, three stages each

    # Once checked, a stage's replays are trusted in this process: a later wrong one is not caught
    # (the check costs one plain run per stage and process, not one per replay).
    stand_in = ReplayingStandIn(off_by=0.5, off_from_replay=1)
    later = StageGraphs(graphs=stand_in, check=check)
    got, *_ = run_with_progress(small_model, content, style, Controls(seed=2), later)
    assert stand_in.replays == 9 and not torch.allclose(got, expected, atol=1e-2) and check.off is None


def test_out_of_memory_with_graphs_drops_them_and_goes_on_without(small_model, caplog):
    content, style = frames(5)
    expected, ticks, _, _ = run_with_progress(small_model, content, style, Controls(seed=2))
    stand_in = ReplayingStandIn(out_of_memory_at_replay=2)
    graphs = StageGraphs(graphs=stand_in)
    with caplog.at_level(logging.WARNING, logger="mambast.kernels.cuda_graphs"):
        got, graphed_ticks, _, _ = run_with_progress(small_model, content, style, Controls(seed=2), graphs)
    assert torch.equal(got, expected) and graphed_ticks >= ticks
    assert graphs.stopped and graphs.recorded == 0 and stand_in.released == 1
    assert stand_in.captures == 3  # recorded once each on the second frame; nothing after the error
    assert ["out of GPU memory" in r.getMessage() for r in caplog.records] == [True]


def test_out_of_memory_without_graphs_is_the_callers_to_handle(small_model, monkeypatch):
    graphs = StageGraphs(graphs=ReplayingStandIn())
    content, _ = images(40, 48, 0)

    def full(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(small_model.mamba.encoder_c, "forward", full)
    with torch.inference_mode(), graphs.active(), pytest.raises(torch.cuda.OutOfMemoryError):
        small_model.encode_content(content)


def test_at_most_max_graphs_are_kept_and_none_is_evicted(small_model):
    content, style = frames(4)
    expected, *_ = run_with_progress(small_model, content, style, Controls(seed=2))
    stand_in = ReplayingStandIn()
    graphs = StageGraphs(max_graphs=1, graphs=stand_in)
    got, *_ = run_with_progress(small_model, content, style, Controls(seed=2), graphs)
    assert torch.equal(got, expected)
    assert graphs.recorded == 1 and stand_in.captures == 1


def test_nothing_is_recorded_while_gradients_are(small_tensors):
    import mambast

    model = mambast.build(mambast.Checkpoint(small_tensors)).requires_grad_(True)
    stand_in = ReplayingStandIn()
    content, style = images(40, 48, 0)
    with StageGraphs(captures_after=0, graphs=stand_in).active():
        model.stylize(content, style, seed=1).sum().backward()
    assert stand_in.captures == 0
    assert model.decoder[1].weight.grad is not None


def test_replaying_repeats_only_on_cuda_and_unless_switched_off(monkeypatch):
    with replaying_repeats(torch.device("cpu")) as graphs:
        assert graphs is None
    monkeypatch.delenv("MAMBAST_CUDA_GRAPHS", raising=False)
    with replaying_repeats(torch.device("cuda")) as graphs:
        assert isinstance(graphs, StageGraphs)
    monkeypatch.setenv("MAMBAST_CUDA_GRAPHS", "0")
    with replaying_repeats(torch.device("cuda")) as graphs:
        assert graphs is None


def test_nodes_replay_repeated_stages_within_a_run(comfy, monkeypatch):
    """The staged nodes and MambaST Stylize give the same images when their stages replay."""
    import contextlib
    import importlib

    stages = comfy.stages
    # the pack's own modules (ComfyUI imports it under its folder's name), not the test's mambast
    pack_graphs = importlib.import_module(comfy.pack.__name__ + ".mambast.kernels.cuda_graphs")
    pack_progress = importlib.import_module(comfy.pack.__name__ + ".mambast.utils.progress")
    pack_staged = importlib.import_module(comfy.pack.__name__ + ".mambast.run.staged")
    loaded = stages.load_model("small.safetensors", "auto", "auto")
    generator = torch.Generator().manual_seed(0)
    contents, style = torch.rand(3, 40, 48, 3, generator=generator), torch.rand(1, 32, 24, 3, generator=generator)

    def run_all():
        staged = stages.decode(loaded, stages.fuse(loaded, stages.encode_content(loaded, contents),
                                                   stages.encode_style(loaded, style), seed=7, strength=0.8))
        return staged, stages.stylize(loaded, contents, style, seed=7, strength=0.8, temporal_smoothing=0.5)

    plain = run_all()
    stand_ins = []

    @contextlib.contextmanager
    def replaying(device):
        stand_ins.append(ReplayingStandIn(silently=pack_progress.counting_ticks))
        graphs = pack_graphs.StageGraphs(graphs=stand_ins[-1])
        with graphs.active():
            yield graphs

    monkeypatch.setattr(pack_staged, "replaying_repeats", replaying)
    replayed = run_all()
    assert all(torch.equal(a, b) for a, b in zip(replayed, plain))
    assert all(s.replays > 0 for s in stand_ins) and len(stand_ins) == 4  # three staged runs and one all-in-one


def test_explicit_permutations_equal_the_seeded_draw(small_model):
    content, style = images(40, 48, 0)
    with torch.inference_mode():
        encoded = small_model.encode_content(content)
        styled = small_model.encode_style(style, encoded.padded_size)
        drawn = small_model.fuse(encoded, styled, seed=7)
        given = small_model.fuse(encoded, styled, permutations=small_model.permutations(encoded.tokens.shape[1], 7,
                                                                                        True))
        other = small_model.fuse(encoded, styled, permutations=small_model.permutations(encoded.tokens.shape[1], 8,
                                                                                        True))
    assert torch.equal(drawn, given)
    assert not torch.allclose(drawn, other)


def test_off_cuda_the_runner_is_the_plain_call(small_model):
    content, style = images(40, 48, 1)
    with torch.inference_mode():
        expected = small_model.stylize(content, style, seed=3)
    assert torch.equal(GraphedStylize(small_model)(content, style, seed=3), expected)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_replays_equal_plain_calls_to_the_last_bit_for_new_pixels_seeds_and_shapes(small_tensors):
    import mambast

    model = mambast.build(mambast.Checkpoint(small_tensors), device="cuda")
    check = ReplayCheck()  # a first replay that differed would hand back the plain result: seen here
    runner = GraphedStylize(model, check=check)
    for height, width in ((40, 48), (64, 32), (40, 48)):
        for seed in (1, 2):
            content, style = (t.cuda() for t in images(height, width, seed))
            with torch.inference_mode():
                expected = model.stylize(content, style, seed=seed)
            got = runner(content, style, seed=seed)
            assert model.last_seed == seed
            assert torch.equal(got, expected)
    assert runner.stages.recorded == 8 and runner.stages.replays > 0
    assert check.off is None and len(check.checked) == 4 and max(check.differences.values()) == 0
    model.to(torch.float16).to(torch.float32)  # new weight tensors: the old graphs must not replay
    content, style = (t.cuda() for t in images(40, 48, 1))
    with torch.inference_mode():
        expected = model.stylize(content, style, seed=1)
    assert torch.equal(runner(content, style, seed=1), expected)


@needs_cuda
def test_frames_on_cuda_replay_to_the_last_bit(small_tensors):
    import mambast

    model = mambast.build(mambast.Checkpoint(small_tensors), device="cuda")
    content, style = frames(5)
    controls = Controls(seed=4, strength=0.6, temporal_smoothing=0.4)
    expected, ticks, planned, _ = run_with_progress(model, content.cuda(), style.cuda(), controls)
    check = ReplayCheck()
    graphs = StageGraphs(check=check)
    got, graphed_ticks, _, _ = run_with_progress(model, content.cuda(), style.cuda(), controls, graphs)
    assert graphs.replays > 0 and check.off is None and max(check.differences.values()) == 0
    assert torch.equal(got, expected) and graphed_ticks == ticks == planned
