"""The Numba scan kernel gives the reference's and the chunked scan's results, and is chosen only
where it can run (Numba present, CPU tensors, no autograd)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import mambast
from mambast.kernels import scan
from mambast.kernels.scan import selective_scan_chunked_directions, selective_scan_reference
from mambast.kernels.scan.numba_scan import (selective_scan_numba, selective_scan_numba_directions,
                                     selective_scan_numba_orders)
from mambast.network.blocks import merge_sequences, scan_orders, scan_sequences
from mambast.run.resources import stylize_ticks
from mambast.utils.progress import progress_callback
from test_scan import CASES, direction_inputs, relative_error, scan_inputs

needs_numba = pytest.mark.skipif(not scan.numba_available(), reason="Numba is not installed here")


@needs_numba
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_numba_scan_matches_reference(case):
    inputs = scan_inputs(**case)
    got = selective_scan_numba(**inputs)
    assert torch.isfinite(got).all()
    assert relative_error(got, selective_scan_reference(**inputs)) <= 1e-5


@needs_numba
@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("channels, groups", [(16, 4), (130, 2), (200, 1)])
def test_numba_scan_is_exact_for_any_chunk_and_channel_count(chunk, channels, groups):
    """Channel counts that are not a multiple of the kernel's 64-channel block, and chunks from
    one token to longer than the sequence."""
    inputs = scan_inputs(channels=channels, groups=groups, length=40, batch=2)
    got = selective_scan_numba(**inputs, chunk=chunk)
    assert relative_error(got, selective_scan_reference(**inputs)) <= 1e-5


@needs_numba
def test_numba_scan_without_optional_terms_matches_reference():
    inputs = scan_inputs(length=20)
    inputs.update(D=None, delta_bias=None, delta_softplus=False)
    inputs["delta"] = inputs["delta"].abs()
    assert relative_error(selective_scan_numba(**inputs), selective_scan_reference(**inputs)) <= 1e-5


@needs_numba
@pytest.mark.parametrize("reverse", [(False, False, True, True), (True, False, False, True), (False, False)])
@pytest.mark.parametrize("length, chunk", [(37, 24), (48, 8), (1, 256)])
def test_numba_direction_scan_equals_chunked(reverse, length, chunk):
    fused, _ = direction_inputs(length=length, reverse=reverse, bias=-1.0)
    combine = [k % 2 for k in range(len(reverse))]
    expected = selective_scan_chunked_directions(**fused, combine=combine)
    got = selective_scan_numba_directions(**fused, combine=combine, chunk=chunk)
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert relative_error(g, e) <= 1e-5


@needs_numba
def test_numba_direction_scan_projects_low_rank_delta_like_chunked():
    generator = torch.Generator().manual_seed(3)
    fused, _ = direction_inputs(channels=72, length=30)
    rank = 6
    low = torch.randn(2, 4, 30, rank, generator=generator)
    projection = torch.randn(4, 72, rank, generator=generator) * 0.3
    fused["delta"] = low
    expected = selective_scan_chunked_directions(**fused, delta_projection=projection)
    got = selective_scan_numba_directions(**fused, delta_projection=projection, chunk=7)
    for g, e in zip(got, expected):
        assert relative_error(g, e) <= 1e-5


@needs_numba
@pytest.mark.parametrize("height, width", [(5, 7), (8, 8), (1, 9)])
def test_scan_in_orders_equals_reference_on_the_four_direction_copies(height, width):
    """SS2D's four scans of one token grid, read in place in their orders and summed where
    each token sits: the reference's stacked, flipped and transposed copies, scanned and merged."""
    generator = torch.Generator().manual_seed(5)
    batch, channels, state, length = 2, 24, 8, height * width
    grid = torch.randn(batch, channels, height, width, generator=generator)
    delta_grid = torch.randn(batch, 4, channels, length, generator=generator)
    B = torch.randn(batch, 4, state, length, generator=generator)
    C = torch.randn(batch, 4, state, length, generator=generator)
    A = -torch.rand(4 * channels, state, generator=generator) * 2
    D, bias = torch.randn(4 * channels, generator=generator), torch.randn(4 * channels, generator=generator)
    stacked = scan_sequences(grid)  # (B, K, D, L), each direction in its scan order
    expected = selective_scan_reference(stacked.reshape(batch, -1, length), delta_grid.reshape(batch, -1, length),
                                        A, B, C, D, bias, True).view(batch, 4, channels, length)
    expected = merge_sequences(expected, height, width)  # (B, D, L) row-major
    sequence = grid.flatten(2).transpose(1, 2)  # (B, L, D) row-major tokens
    got = selective_scan_numba_orders(sequence, scan_orders(height, width), delta_grid.transpose(2, 3), A,
                                      B.transpose(2, 3), C.transpose(2, 3), D, bias, True)
    assert relative_error(got.transpose(1, 2), expected) <= 1e-5
    # into memory given for it: whatever it held is overwritten, the result is the same
    out = torch.full((batch, length, channels), float("nan"))
    into = selective_scan_numba_orders(sequence, scan_orders(height, width), delta_grid.transpose(2, 3), A,
                                       B.transpose(2, 3), C.transpose(2, 3), D, bias, True, out=out)
    assert into.data_ptr() == out.data_ptr() and torch.equal(into, got)
    with pytest.raises(ValueError, match="out must be a contiguous float32"):
        selective_scan_numba_orders(sequence, scan_orders(height, width), delta_grid.transpose(2, 3), A,
                                    B.transpose(2, 3), C.transpose(2, 3), D, bias, True, out=out[:, :, :-1])


@needs_numba
def test_kernel_exponential_and_softplus_are_accurate():
    """The kernel's own 2**x and softplus (vectorisable polynomials) against PyTorch's."""
    from mambast.kernels.scan.numba_kernel import exp2_nonpositive, softplus

    # a fine sweep of several whole exponents covers the polynomial's interval [-0.5, 0.5] densely
    xs = torch.cat([-torch.logspace(-8, 2.09, 400), torch.linspace(-3.0, 0.0, 3001),
                    torch.tensor([0.0, -0.5, -1.0, -1.5, -125.9])])
    got = torch.tensor([exp2_nonpositive(float(x)) for x in xs])
    assert ((got - torch.exp2(xs)).abs() / torch.exp2(xs)).max() <= 3e-7
    zs = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([1e-6, -1e-6, 25.0, 80.0])])
    got = torch.tensor([softplus(float(z)) for z in zs])
    expected = torch.nn.functional.softplus(zs.double()).float()
    assert ((got - expected).abs() / expected).max() <= 1e-6


@needs_numba
def test_model_with_the_numba_scan_equals_the_chunked_scan(small_tensors):
    """Every SS2D block, self and cross, on a grid that is not square: the same image."""
    content = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    style = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    chunked = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", scan="chunked")
    compiled = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", scan="numba")
    assert compiled.scan_backend == "numba"
    with torch.inference_mode():
        expected = chunked.stylize(content, style, seed=4)
        got = compiled.stylize(content, style, seed=4)
    assert (got - expected).abs().max() <= 1e-4


@needs_numba
def test_numba_scans_from_two_threads_at_once_give_each_its_own_result():
    inputs = [scan_inputs(channels=64, length=300, seed=seed) for seed in (1, 2)]
    expected = [selective_scan_numba(**i) for i in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(index):
        for _ in range(3):
            results[index] = selective_scan_numba(**inputs[index], chunk=16)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index in range(2):
        assert torch.equal(results[index], expected[index])


@needs_numba
def test_numba_ticks_once_per_chunk_as_the_progress_plan_says(small_tensors):
    model = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", scan="numba")
    ticks = []
    content = torch.rand(1, 3, 48, 64)
    with progress_callback(lambda: ticks.append(1)), torch.inference_mode():
        model.stylize(content, content, seed=0)
    assert len(ticks) == stylize_ticks(model.config, 48, 64, "numba", style_images=1)
    assert scan.scan_ticks("numba", 48 * 64 // 64) == 1 and scan.scan_ticks("chunked", 48) == 2


def test_automatic_backend_on_cpu_is_numba_exactly_when_it_imports(monkeypatch):
    monkeypatch.delenv(scan.ENV_VARIABLE, raising=False)
    cpu = torch.device("cpu")
    assert scan.resolve_backend(None, cpu) == ("numba" if scan.numba_available() else "chunked")
    monkeypatch.setattr(scan, "numba_available", lambda: False)
    assert scan.resolve_backend(None, cpu) == "chunked"
    with pytest.raises(ValueError, match="pip install numba.*chunked"):
        scan.validate_backend_name("numba")


def test_numba_backend_gives_way_to_chunked_for_gradients_and_other_devices():
    assert scan.runnable_backend("numba", torch.device("cpu"), needs_grad=True) == "chunked"
    assert scan.runnable_backend("numba", torch.device("cuda"), needs_grad=False) == "chunked"
    assert scan.runnable_backend("numba", torch.device("mps"), needs_grad=False) == "chunked"
    assert scan.runnable_backend("numba", torch.device("cpu"), needs_grad=False) == "numba"


@needs_numba
def test_numba_backend_under_autograd_returns_the_chunked_scans_gradients():
    inputs = scan_inputs(length=12)
    inputs["u"].requires_grad_(True)
    scan.selective_scan(**inputs, backend="chunked").sum().backward()
    expected = inputs["u"].grad.clone()
    inputs["u"].grad = None
    scan.selective_scan(**inputs, backend="numba").sum().backward()
    assert torch.allclose(inputs["u"].grad, expected)


_CACHED_RUN = """
import importlib, sys, torch
sys.path.insert(0, sys.argv[1])
scan = importlib.import_module(sys.argv[2] + ".kernels.scan.numba_scan")
fused = importlib.import_module(sys.argv[2] + ".kernels.fused")
torch.manual_seed(0)
u = torch.rand(1, 8, 16)
y = scan.selective_scan_numba(u, u, -torch.rand(8, 4), torch.rand(1, 1, 4, 16), torch.rand(1, 1, 4, 16))
with torch.inference_mode():
    gated = fused.norm_times_silu_(torch.rand(4, 8), torch.rand(4, 8), torch.nn.LayerNorm(8))
print(float(y.sum()), float(gated.sum()))
"""


@needs_numba
def test_kernels_cached_under_one_import_name_run_under_another(tmp_path):
    """The command line and the tests import the package as ``mambast``, ComfyUI as a sub-package
    of the pack's folder (``ComfyUI-MambaST.mambast``); both share Numba's cache beside the code.
    A cache entry written under the other name is compiled again, not a failed stylization."""
    pack = tmp_path / "Pack"
    shutil.copytree(Path(mambast.__file__).parent, pack / "mambast", ignore=shutil.ignore_patterns("__pycache__"))
    (pack / "__init__.py").write_text("")
    # nothing else importable as ``mambast`` (the working directory, PYTHONPATH), and the cache beside the code
    environment = {name: value for name, value in os.environ.items() if name not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}

    def run(path: Path, package: str) -> str:
        done = subprocess.run([sys.executable, "-c", _CACHED_RUN, str(path), package], capture_output=True,
                              text=True, env=environment, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    first = run(pack, "mambast")
    assert list((pack / "mambast" / "kernels" / "scan" / "__pycache__").glob("numba_kernel.advance_chunk-*.nbi"))
    assert run(tmp_path, "Pack.mambast") == first  # the entries name the module "mambast"
    assert run(tmp_path, "Pack.mambast") == first  # now cached under this name


@needs_numba
def test_a_slow_first_kernel_call_is_announced_once_and_a_fast_one_not_at_all(monkeypatch):
    """Compiling the kernels keeps the first run waiting: the user is told, through the host's notice."""
    import time

    from mambast.kernels.scan import numba_scan
    from mambast.utils import progress

    told = []
    monkeypatch.setattr(numba_scan, "_launched", set())

    def slow(seconds: float) -> None:
        time.sleep(seconds)

    def fast() -> None:
        pass

    original = progress.notice_if_slow
    monkeypatch.setattr(numba_scan, "notice_if_slow", lambda text: original(text, after=0.05))
    with progress.progress_callback(None, None, None, told.append):
        numba_scan.launch(slow, 0.3)
        numba_scan.launch(slow, 0.3)  # called before: not announced again
        numba_scan.launch(fast)
        time.sleep(0.1)
    assert told == [numba_scan.COMPILING_NOTICE]


def test_a_notice_without_a_host_goes_to_the_log(caplog):
    import time

    from mambast.utils.progress import notice_if_slow

    with caplog.at_level("WARNING"), notice_if_slow("compiling", after=0.01):
        time.sleep(0.2)
    assert "compiling" in caplog.text
