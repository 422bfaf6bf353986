"""The chunked scan's recomputing backward gives autograd's gradients and keeps only chunk boundaries.

Float64 checks the adjoint against finite differences (``torch.autograd.gradcheck``) tightly;
float32 checks it against autograd through the sequential reference, as training runs it.
"""

from __future__ import annotations

import pytest
import torch

from mambast.kernels import scan
from mambast.kernels.scan.chunked import selective_scan_chunked
from mambast.kernels.scan.chunked_backward import selective_scan_chunked_recomputing
from test_scan import CASES, relative_error, scan_inputs

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")

# Small enough for finite differences (two scans per input element), long enough to cross
# chunks of 4 with a partial one at the end. The check's atol of 1e-6 is the finite differences'
# own noise where outputs reach the hundreds (huge delta): float64 rounding / eps ~ 1e-8 per entry.
GRADCHECK_CASES = {
    "D, bias and softplus, two groups": dict(channels=4, length=11, state=3, groups=2),
    "without D, bias or softplus": dict(channels=4, length=11, state=3, groups=2, optional=False),
    "one group, batch 2": dict(batch=2, channels=4, length=9, state=2, groups=1),
    "four groups": dict(channels=8, length=7, state=2, groups=4),
    "length a multiple of the chunk": dict(channels=4, length=8, state=3, groups=2),
    "one token": dict(channels=4, length=1, state=3, groups=2),
    "tiny delta": dict(channels=4, length=11, state=3, groups=2, bias=-20.0),
    "huge delta": dict(channels=4, length=11, state=3, groups=2, bias=20.0, delta_scale=10.0),
    "large |A|": dict(channels=4, length=11, state=3, groups=2, a_scale=1000.0),
    "huge delta and large |A|": dict(channels=4, length=11, state=3, groups=2, bias=30.0, a_scale=500.0),
}


def gradient_inputs(dtype=torch.float32, optional=True, **case) -> dict:
    """scan_inputs in ``dtype``, every tensor a leaf that requires grad; without the optional
    terms (D, bias, softplus) when ``optional`` is False (delta then kept positive)."""
    inputs = scan_inputs(**case)
    if not optional:
        inputs.update(D=None, delta_bias=None, delta_softplus=False, delta=inputs["delta"].abs())
    return {k: (v.to(dtype).requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def gradients(scan_function, inputs: dict, **options) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """y and the gradients of a fixed random weighting of y, for each of NAMES (None if absent)."""
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            value.grad = None
    y = scan_function(**inputs, **options)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.dtype)  # same in any dtype
    (y * weights).sum().backward()
    return y.detach(), [inputs[k].grad if inputs[k] is not None else None for k in NAMES]


@pytest.mark.parametrize("case", GRADCHECK_CASES.values(), ids=GRADCHECK_CASES.keys())
def test_recomputing_backward_passes_float64_gradcheck(case):
    inputs = gradient_inputs(torch.float64, **case)
    tensors = [inputs[k] for k in NAMES]

    def scanned(*tensors):
        return selective_scan_chunked_recomputing(*tensors, inputs["delta_softplus"], chunk=4, dtype=torch.float64)

    assert torch.autograd.gradcheck(scanned, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_recomputing_backward_matches_reference_autograd_in_float32(case):
    expected_y, expected = gradients(scan.selective_scan_reference, gradient_inputs(**case))
    got_y, got = gradients(selective_scan_chunked_recomputing, gradient_inputs(**case), chunk=8)
    assert relative_error(got_y, expected_y) <= 1e-5
    for name, g, e in zip(NAMES, got, expected):
        assert g.dtype == torch.float32 and g.shape == e.shape, name
        assert relative_error(g, e) <= 1e-5, name


def test_recomputing_backward_without_optional_terms_matches_reference_autograd():
    case = dict(batch=2, length=30, channels=8, groups=2, optional=False)
    _, expected = gradients(scan.selective_scan_reference, gradient_inputs(**case))
    _, got = gradients(selective_scan_chunked_recomputing, gradient_inputs(**case), chunk=8)
    for name, g, e in zip(NAMES, got, expected):
        assert (g is None) == (e is None), name
        assert g is None or relative_error(g, e) <= 1e-5, name


def test_inputs_that_need_no_gradient_get_none_and_the_others_are_unchanged():
    _, full = gradients(selective_scan_chunked_recomputing, gradient_inputs(length=30), chunk=8)
    inputs = gradient_inputs(length=30)
    for name in ("delta", "B", "D"):
        inputs[name] = inputs[name].detach()
    _, partial = gradients(selective_scan_chunked_recomputing, inputs, chunk=8)
    for name, g, f in zip(NAMES, partial, full):
        if name in ("delta", "B", "D"):
            assert g is None, name
        else:
            assert torch.equal(g, f), name


def test_float64_inputs_through_the_contract_still_give_float32_out():
    inputs = gradient_inputs(torch.float64, length=10)
    y = selective_scan_chunked(**inputs)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert inputs["u"].grad.dtype == torch.float64


def saved_bytes(run) -> int:
    """Bytes autograd keeps for backward while ``run()`` builds its graph: each storage that a
    saved tensor views counted once (the recorded loop saves many slices of one buffer)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def test_chunked_scan_under_autograd_keeps_only_chunk_boundary_states():
    batch, channels, length, state = 1, 256, 480, 16
    inputs = gradient_inputs(batch=batch, channels=channels, length=length, state=state, groups=4)
    whole_sequence_states = batch * channels * length * state * 4
    input_bytes = sum(v.numel() * 4 for v in inputs.values() if isinstance(v, torch.Tensor))
    boundary_states = batch * channels * state * 4 * (length // 24)

    kept = saved_bytes(lambda: scan.selective_scan(**inputs, backend="chunked"))
    assert kept <= input_bytes + boundary_states
    assert kept < whole_sequence_states / 4
    recorded = saved_bytes(lambda: selective_scan_chunked(**inputs, recompute=False))
    assert recorded >= whole_sequence_states


def test_selective_scan_takes_the_recomputing_path_only_under_autograd(monkeypatch):
    from mambast.kernels.scan import chunked_backward

    calls = []
    recomputing = chunked_backward.selective_scan_chunked_recomputing
    monkeypatch.setattr(chunked_backward, "selective_scan_chunked_recomputing",
                        lambda *args: calls.append(1) or recomputing(*args))
    inputs = gradient_inputs(length=10)
    scan.selective_scan(**inputs, backend="chunked").sum().backward()
    assert calls == [1] and inputs["u"].grad is not None
    with torch.no_grad():  # inference keeps the in-place loop
        scan.selective_scan(**inputs, backend="chunked")
    assert calls == [1]


# The Triton kernel's backward: in Triton's interpreter without a GPU (conftest sets
# TRITON_INTERPRET=1), on small problems and 4-token, 4-channel tiles so that several chunks and
# channel blocks are crossed; with a GPU the shipped tiles run.
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
triton_kernel = pytest.mark.skipif(not scan.triton_available() or not (ON_GPU or scan.triton_interpreted()),
                                   reason="Triton does not import here, or neither a GPU nor its interpreter")
TILES = {} if ON_GPU else dict(block_l=4, block_d=4)
TRITON_TOLERANCE = 1e-4 if ON_GPU else 1e-5  # a GPU's exp2 is approximate (see test_triton_scan.py)
TRITON_CASES = {
    "several chunks and channel blocks, batch 2": dict(batch=2, channels=16, length=13, state=4, groups=2),
    "state size not a power of two": dict(channels=8, length=9, state=3, groups=1),
    "one token": dict(channels=8, length=1, state=4, groups=1),
    "without D, bias or softplus": dict(channels=8, length=10, state=4, groups=2, optional=False),
    "tiny delta": dict(channels=8, length=10, state=4, groups=2, bias=-20.0),
    "huge delta and large |A|": dict(channels=8, length=10, state=4, groups=1, bias=30.0, a_scale=500.0),
}


def on_device(inputs: dict) -> dict:
    return {k: (v.detach().to(DEVICE).requires_grad_(True) if isinstance(v, torch.Tensor) else v)
            for k, v in inputs.items()}


@triton_kernel
@pytest.mark.parametrize("case", TRITON_CASES.values(), ids=TRITON_CASES.keys())
def test_triton_scan_gradients_match_reference_autograd(case):
    from mambast.kernels.scan.triton_scan import selective_scan_triton

    _, expected = gradients(scan.selective_scan_reference, gradient_inputs(**case))
    _, got = gradients(selective_scan_triton, on_device(gradient_inputs(**case)), **TILES)
    for name, g, e in zip(NAMES, got, expected):
        assert (g is None) == (e is None), name
        assert g is None or relative_error(g.cpu(), e) <= TRITON_TOLERANCE, name


@triton_kernel
def test_triton_backward_of_reversed_directions_sharing_a_sequence_matches_reference_autograd():
    """Directions read one sequence, the second backwards: the kernel's gradients are the stacked
    reference's with the reversed direction flipped back, the two directions' du summed."""
    from mambast.kernels.scan.triton_backward import scan_triton_backward
    from mambast.kernels.scan.triton_kernel import scan_triton

    batch, length, channels, state, block_l = 2, 11, 4, 3, 4
    g = torch.Generator().manual_seed(3)
    sequence = torch.randn(batch, length, channels, generator=g)  # token order
    delta = torch.randn(batch, 2, length, channels, generator=g)  # scan order
    B, C = (torch.randn(batch, 2, length, state, generator=g) for _ in range(2))  # token order
    A = -torch.rand(2 * channels, state, generator=g) * 2
    D, bias = torch.randn(2 * channels, generator=g), torch.randn(2 * channels, generator=g)
    leaves = [t.clone().requires_grad_(True) for t in (sequence, delta, A, B, C, D, bias)]
    sequence_, delta_, A_, B_, C_, D_, bias_ = leaves

    def turned(t, k):  # (batch, L, X): direction k's order from token order and back
        return t.flip(1) if k == 1 else t

    y = scan.selective_scan_reference(
        torch.cat([turned(sequence_, k).transpose(1, 2) for k in range(2)], dim=1),
        delta_.transpose(2, 3).flatten(1, 2), A_,
        torch.stack([turned(B_[:, k], k).transpose(1, 2) for k in range(2)], dim=1),
        torch.stack([turned(C_[:, k], k).transpose(1, 2) for k in range(2)], dim=1), D_, bias_, delta_softplus=True)
    weights = torch.randn(y.shape, generator=g)
    (y * weights).sum().backward()
    dy = torch.stack([turned(weights[:, k * channels:(k + 1) * channels].transpose(1, 2), k) for k in range(2)],
                     dim=1)  # token order

    operands = dict(u=sequence.unsqueeze(1).to(DEVICE), source=(0, 0), delta=delta.to(DEVICE), A=A.to(DEVICE),
                    B=B.to(DEVICE), C=C.to(DEVICE), D=D.to(DEVICE), delta_bias=bias.to(DEVICE), reverse=(False, True))
    boundaries = torch.empty(batch, 2, -(-length // block_l), channels, state, device=DEVICE)
    scan_triton(**operands, delta_softplus=True, block_l=block_l, boundaries=boundaries)
    got = scan_triton_backward(dy.to(DEVICE), **operands, boundaries=boundaries, softplus=True, block_l=block_l,
                               block_d=TILES.get("block_d"))
    expected = [leaf.grad for leaf in leaves]
    expected[0] = expected[0].unsqueeze(1)
    for name, gradient, e in zip(NAMES, got, expected):
        assert relative_error(gradient.cpu(), e) <= TRITON_TOLERANCE, name


# Before training uses the Triton kernel on a GPU, a small scan on that GPU must show its
# backward gives the chunked scan's gradients; otherwise training keeps to the chunked scan.

@triton_kernel
def test_the_self_check_passes_for_the_kernel_as_shipped():
    from mambast.kernels.scan.triton_backward import disagreement_with_chunked

    before = torch.get_rng_state()
    assert disagreement_with_chunked(DEVICE, **TILES) is None
    assert torch.equal(torch.get_rng_state(), before)


@triton_kernel
def test_the_self_check_names_a_wrong_gradient(monkeypatch):
    from mambast.kernels.scan import triton_backward

    shipped = triton_backward.scan_triton_backward

    def wrong_dA(*args, **kwargs):
        du, ddelta, dA, *rest = shipped(*args, **kwargs)
        return (du, ddelta, dA * 1.01, *rest)

    monkeypatch.setattr(triton_backward, "scan_triton_backward", wrong_dA)
    problem = triton_backward.disagreement_with_chunked(DEVICE, **TILES)
    assert problem is not None and "gradient of A" in problem


def test_training_on_a_gpu_uses_the_kernel_only_where_its_backward_passed_the_check(monkeypatch):
    cuda = torch.device("cuda", 0)  # only its type is read: no GPU needed
    for verdict in (True, False):
        monkeypatch.setattr(scan, "triton_trains_on", lambda device, verdict=verdict: verdict)
        assert scan.runnable_backend("triton", cuda, needs_grad=True) == ("triton" if verdict else "chunked")
        assert scan.runnable_backend("triton", cuda, needs_grad=False) == "triton"
    monkeypatch.setattr(scan, "triton_trains_on", lambda device: pytest.fail("checked off the GPU"))
    assert scan.runnable_backend("triton", torch.device("cpu"), needs_grad=True) == "chunked"


@triton_kernel
def test_a_kernel_that_fails_its_check_warns_once_and_is_not_used(monkeypatch):
    from mambast.kernels.scan import triton_backward

    def failing(device):
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(triton_backward, "disagreement_with_chunked", failing, raising=False)
    scan.triton_trains_on.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="PassManager::run failed.*chunked scan instead"):
            assert scan.triton_trains_on(torch.device("cpu")) is False
        assert scan.triton_trains_on(torch.device("cpu")) is False  # cached: no second check, no second warning
    finally:
        scan.triton_trains_on.cache_clear()
