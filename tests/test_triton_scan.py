"""The Triton scan kernel equals the sequential reference.

Without a GPU the kernel runs in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``
when CUDA is absent), on small problems and small tiles so that several chunks and channel
blocks are crossed. With a GPU the compiled kernel runs on the released sizes.
"""

from __future__ import annotations

import pytest
import torch

from mambast.kernels import scan
from mambast.kernels.scan import selective_scan_reference
from test_scan import direction_inputs, relative_error, scan_inputs

pytest.importorskip("triton", reason="Triton is not installed")
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
if not ON_GPU and not scan.triton_available():
    pytest.skip("Triton does not import here", allow_module_level=True)

from mambast.kernels.scan.chunked import selective_scan_chunked_directions  # noqa: E402
from mambast.kernels.scan.triton_kernel import scan_triton  # noqa: E402
from mambast.kernels.scan.triton_scan import selective_scan_triton, selective_scan_triton_directions  # noqa: E402

# Small tiles in the interpreter: 4 tokens x 8 channels, so a 13-token, 12-channel problem crosses
# 4 chunks and 2 channel blocks. On a GPU the shipped tile shape runs.
TILES = {} if ON_GPU else dict(block_l=4, block_d=8)
# On a GPU exp2 is the hardware's approximate one (2 ulp); over a 4096-token recurrence that
# reaches a few 1e-5 of the largest output (4.1e-5 seen on an H200).
TOLERANCE = 1e-4 if ON_GPU else 1e-5


def on_device(inputs: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else
                [t.to(DEVICE) for t in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v)
            for k, v in inputs.items()}


CASES = {
    "several chunks and channel blocks, batch 2": dict(batch=2, channels=12, length=13, state=4, groups=2),
    "state size not a power of two": dict(channels=12, length=9, state=3, groups=1),
    "one token": dict(channels=8, length=1, state=4, groups=1),
    "huge delta and large |A|": dict(channels=8, length=10, state=4, groups=1, bias=30.0, a_scale=500.0),
    "tiny delta": dict(channels=8, length=10, state=4, groups=2, bias=-20.0),
}
if ON_GPU:
    CASES["released sizes"] = dict(batch=2, channels=4 * 1024, length=4096, state=16, groups=4)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_triton_scan_matches_reference(case):
    inputs = on_device(scan_inputs(**case))
    expected = selective_scan_reference(**{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                            for k, v in inputs.items()}).float()
    got = selective_scan_triton(**inputs, **TILES)
    assert torch.isfinite(got).all()
    assert relative_error(got, expected) <= TOLERANCE


@pytest.mark.parametrize("tiles", [dict(block_l=2, block_d=4, num_warps=1), dict(block_l=8, block_d=16)])
def test_other_tile_shapes_compute_the_same_scan(tiles):
    """The shapes the GPU benchmark sweeps all compute the same scan."""
    inputs = on_device(scan_inputs(batch=2, channels=12, length=13, state=6, groups=2))
    got = selective_scan_triton(**inputs, **tiles)
    assert relative_error(got, selective_scan_reference(**inputs)) <= TOLERANCE


def test_triton_scan_without_optional_terms_matches_reference():
    inputs = scan_inputs(channels=8, length=11, state=4, groups=1)
    inputs.update(D=None, delta_bias=None, delta_softplus=False)
    inputs["delta"] = inputs["delta"].abs()
    got = selective_scan_triton(**on_device(inputs), **TILES).cpu()
    assert relative_error(got, selective_scan_reference(**inputs)) <= 1e-5


@pytest.mark.parametrize("reverse", [(False, False, True, True), (True, False, False, True)])
def test_triton_direction_scan_equals_reference_on_flipped_inputs(reverse):
    length, channels = (4096, 1024) if ON_GPU else (11, 12)
    fused, stacked = direction_inputs(channels=channels, length=length, state=4 if not ON_GPU else 16,
                                      reverse=reverse)
    rows_sum, columns_sum = selective_scan_triton_directions(**on_device(fused), combine=(0, 1, 0, 1), **TILES)
    y = selective_scan_reference(**on_device(stacked)).view(2, 4, channels, length)
    flipped = [y[:, k].flip(-1) if r else y[:, k] for k, r in enumerate(reverse)]
    assert relative_error(rows_sum.transpose(1, 2), flipped[0] + flipped[2]) <= TOLERANCE
    assert relative_error(columns_sum.transpose(1, 2), flipped[1] + flipped[3]) <= TOLERANCE


# Strides under 2^31 reach the kernel as int32, so only an index times a stride can pass 2^31
# elements: with 4 directions x 1024 channels, any image from about 6.7k px square on. The views
# below put the last index along one axis of every operand just past 2^31 elements from the
# operand's start, in one storage that stays virtual memory except for the few pages written.
FAR = 2**31
SLOT = 4096  # elements between the operands' starts: room for each one's compact dimensions
FAR_AXES = {"sequences and directions": 1, "tokens": 2, "channels and states": 3}


def far_apart_view(memory: torch.Tensor, shape: tuple[int, ...], axis: int, slot: int) -> torch.Tensor:
    """A ``shape`` view of ``memory`` whose last index along ``axis`` starts 2^31 elements (or a
    few more) past the view's start, its other dimensions compact; filled with random values.

    Views start 2^31 elements into ``memory``, so that a kernel whose offsets wrap to about -2^31
    reads wrong values inside ``memory`` instead of crashing the test run."""
    strides = list(torch.empty(shape[:axis] + shape[axis + 1:]).stride())
    far_stride = -(-FAR // (shape[axis] - 1))
    assert far_stride < FAR and torch.Size(shape).numel() // shape[axis] <= SLOT
    strides.insert(axis, far_stride)
    view = memory.as_strided(shape, strides, FAR + slot * SLOT)
    view.copy_(torch.randn(shape, generator=torch.Generator().manual_seed(slot)))
    return view


@pytest.mark.parametrize("axis", FAR_AXES.values(), ids=FAR_AXES.keys())
def test_triton_scan_reads_elements_more_than_2_31_apart(axis):
    """Offsets are formed in 64 bits: a sequence, direction, token, step, channel or state index
    times its stride reaches past 2^31 elements, and the kernel still reads the right ones."""
    batch, sequences, directions, length, channels, state = 1, 3, 4, 5, 3, 3
    source, reverse = (0, 1, 2, 1), (False, True, True, False)
    # float16: 8 GiB of address space; next to nothing resident on a CPU, but real memory on a GPU.
    if ON_GPU and torch.cuda.mem_get_info(DEVICE)[0] < 9 * 2**30:
        pytest.skip("needs 9 GiB of free GPU memory for operands 2^31 elements long")
    memory = torch.empty(2 * FAR + 5 * SLOT, dtype=torch.float16, device=DEVICE)
    u = far_apart_view(memory, (batch, sequences, length, channels), axis, 0)
    delta = far_apart_view(memory, (batch, directions, length, channels), axis, 1)
    B = far_apart_view(memory, (batch, directions, length, state), axis, 2)
    C = far_apart_view(memory, (batch, directions, length, state), axis, 3)
    common = {name: value.to(DEVICE) for name, value in scan_inputs(channels=directions * channels, state=state).items()
              if name in ("A", "D", "delta_bias")}
    got = scan_triton(u, source, delta, B=B, C=C, delta_softplus=True, reverse=reverse, **common, **TILES)
    u, delta, B, C = (t.contiguous().float() for t in (u, delta, B, C))
    expected = selective_scan_chunked_directions([u[:, s] for s in source], delta, B=list(B.unbind(1)),
                                                 C=list(C.unbind(1)), delta_softplus=True, reverse=reverse, **common)
    assert relative_error(got, torch.stack(expected, dim=1)) <= TOLERANCE


def test_triton_direction_scan_names_the_misshapen_input():
    fused, _ = direction_inputs(channels=8, length=5, state=4)
    fused["C"] = fused["C"][:2]
    with pytest.raises(ValueError, match="C must be 4 tensors"):
        selective_scan_triton_directions(**fused)


def test_triton_backend_falls_back_to_chunked_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    assert scan.runnable_backend("triton", cpu, needs_grad=False) == "chunked"  # no GPU, no interpreter
    # Training on a GPU whose self-check of the backward kernel failed (see test_scan_backward.py).
    monkeypatch.setattr(scan, "triton_trains_on", lambda device: False)
    assert scan.runnable_backend("triton", torch.device("cuda"), needs_grad=True) == "chunked"
    assert scan.runnable_backend("triton", torch.device("cuda"), needs_grad=False) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert scan.runnable_backend("triton", cpu, needs_grad=False) == "triton"
    inputs = scan_inputs(channels=8, length=6, state=4, groups=1)
    inputs["u"].requires_grad_(True)
    y = scan.selective_scan(**inputs, backend="triton")  # autograd off a GPU: the chunked scan runs instead
    y.sum().backward()
    assert inputs["u"].grad is not None


def test_automatic_choice_prefers_the_kernel_on_cuda_only(monkeypatch):
    monkeypatch.delenv(scan.ENV_VARIABLE, raising=False)
    assert scan.resolve_backend(None, torch.device("cpu")) == ("numba" if scan.numba_available() else "chunked")
    if ON_GPU and not scan.mamba_ssm_available() and scan.triton_compiles_for(DEVICE):
        assert scan.resolve_backend(None, DEVICE) == "triton"


TINY = dict(d_model=16, d_state=4, d_inner=16, dt_rank=2, encoder_layers=1, decoder_layers=1,
            decoder_channels=(16, 8, 8, 8, 8, 8, 8, 4, 4, 3))


def test_model_with_the_triton_scan_equals_the_chunked_scan(small_tensors):
    """Every SS2D block, self and cross, through the kernel: same image as the chunked scan."""
    import mambast
    from mambast.network.config import MambaSTConfig
    from mambast.network.random_weights import random_official_tensors

    tensors = small_tensors if ON_GPU else random_official_tensors(MambaSTConfig(**TINY), seed=3)
    generator = torch.Generator().manual_seed(0)
    # 7 x 6 tokens: two chunks of the kernel's 32 tokens.
    content, style = torch.rand(1, 3, 56, 48, generator=generator), torch.rand(1, 3, 24, 24, generator=generator)
    # Both on the same device, so that only the scan differs (a GPU convolves in TF32).
    chunked = mambast.build(mambast.Checkpoint(tensors), device=DEVICE, scan="chunked")
    kernel = mambast.build(mambast.Checkpoint(tensors), device=DEVICE, scan="triton")
    assert kernel.scan_backend == "triton"
    with torch.inference_mode():
        content, style = content.to(DEVICE), style.to(DEVICE)
        expected = chunked.stylize(content, style, seed=4)
        got = kernel.stylize(content, style, seed=4)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_the_model_reports_the_scan_that_actually_runs(small_tensors, monkeypatch):
    import mambast

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = mambast.build(mambast.Checkpoint(small_tensors), device="cpu", scan="triton")
    assert model.scan_backend == "chunked"  # no GPU and no interpreter: the chunked scan runs
