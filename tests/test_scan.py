"""The selective-scan backends agree with the sequential reference and follow its contract."""

from __future__ import annotations

import pytest
import torch

from mambast.kernels import scan
from mambast.kernels.scan import selective_scan_chunked, selective_scan_reference


def scan_inputs(batch=1, channels=16, length=37, state=8, groups=4, delta_scale=1.0, a_scale=1.0,
                bias=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, channels, length, generator=g),
        delta=torch.randn(batch, channels, length, generator=g) * delta_scale,
        A=-torch.rand(channels, state, generator=g) * a_scale,
        B=torch.randn(batch, groups, state, length, generator=g),
        C=torch.randn(batch, groups, state, length, generator=g),
        D=torch.randn(channels, generator=g),
        delta_bias=torch.full((channels,), bias),
        delta_softplus=True,
    )


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


CASES = {
    "one token": dict(length=1),
    "length not a multiple of the chunk": dict(length=37),
    "several chunks, batch 2": dict(batch=2, length=100),
    "one group": dict(groups=1),
    "four groups": dict(groups=4, channels=32),
    "tiny delta": dict(bias=-20.0),
    "huge delta": dict(bias=20.0, delta_scale=10.0),
    "large |A|": dict(a_scale=1000.0, length=64),
    "huge delta and large |A|": dict(bias=30.0, a_scale=500.0, length=50),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_chunked_scan_matches_reference(case):
    inputs = scan_inputs(**case)
    expected = selective_scan_reference(**inputs)
    got = selective_scan_chunked(**inputs)
    assert torch.isfinite(got).all()
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_chunked_scan_is_exact_for_any_chunk_length(chunk):
    inputs = scan_inputs(length=40)
    assert relative_error(selective_scan_chunked(**inputs, chunk=chunk), selective_scan_reference(**inputs)) <= 1e-5


def test_scan_without_optional_terms_matches_reference():
    inputs = scan_inputs(length=20)
    for name in ("D", "delta_bias"):
        inputs[name] = None
    inputs["delta_softplus"] = False
    inputs["delta"] = inputs["delta"].abs()
    assert relative_error(selective_scan_chunked(**inputs), selective_scan_reference(**inputs)) <= 1e-5


def test_reference_scan_equals_a_hand_written_recurrence():
    inputs = scan_inputs(batch=1, channels=4, length=5, state=3, groups=2)
    delta = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    u, A, B, C, D = inputs["u"], inputs["A"], inputs["B"], inputs["C"], inputs["D"]
    expected = torch.zeros_like(u)
    for d in range(4):
        group = d // 2
        h = torch.zeros(3)
        for t in range(5):
            h = torch.exp(delta[0, d, t] * A[d]) * h + delta[0, d, t] * B[0, group, :, t] * u[0, d, t]
            expected[0, d, t] = (h * C[0, group, :, t]).sum() + D[d] * u[0, d, t]
    assert relative_error(selective_scan_reference(**inputs), expected) <= 1e-6


def test_chunked_scan_gradients_match_reference():
    base = scan_inputs(length=23, channels=8, groups=2, state=4)
    grads = []
    for backend in (selective_scan_reference, selective_scan_chunked):
        inputs = {k: (v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in base.items()}
        backend(**inputs).square().sum().backward()
        grads.append([inputs[k].grad for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")])
    for got, expected in zip(grads[1], grads[0]):
        assert relative_error(got, expected) <= 1e-4


def test_chunked_scan_never_builds_a_whole_sequence_state_tensor():
    batch, channels, length, state = 1, 64, 2048, 16
    inputs = scan_inputs(batch=batch, channels=channels, length=length, state=state, groups=4)
    whole_sequence_bytes = batch * channels * length * state * 4
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        selective_scan_chunked(**inputs)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest < whole_sequence_bytes / 8
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        selective_scan_reference(**inputs)
    assert max(event.cpu_memory_usage for event in prof.events()) >= whole_sequence_bytes


def test_dispatcher_follows_environment_variable(monkeypatch):
    inputs = scan_inputs(length=9)
    calls = []
    monkeypatch.setitem(scan.BACKENDS, "reference", lambda *a, **k: calls.append("reference") or torch.zeros(1))
    monkeypatch.setenv(scan.ENV_VARIABLE, "reference")
    scan.selective_scan(*inputs.values())
    assert calls == ["reference"]
    monkeypatch.setenv(scan.ENV_VARIABLE, "chunked")
    assert scan.resolve_backend(None, torch.device("cpu")) == "chunked"
    assert scan.resolve_backend("reference", torch.device("cpu")) == "reference"


def test_automatic_backend_is_chunked_without_cuda_kernel_or_numba(monkeypatch):
    monkeypatch.delenv(scan.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(scan, "numba_available", lambda: False)
    assert scan.resolve_backend(None, torch.device("cpu")) == "chunked"
    assert scan.resolve_backend("auto", torch.device("cpu")) == "chunked"


def test_unknown_backend_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="chunked"):
        scan.validate_backend_name("fast")


@pytest.mark.skipif(scan.mamba_ssm_available(), reason="mamba_ssm is installed here")
def test_requesting_mamba_ssm_without_it_says_what_to_do():
    with pytest.raises(ValueError, match="mamba_ssm.*chunked"):
        scan.validate_backend_name("mamba_ssm")


def test_mismatched_scan_shapes_name_the_tensor():
    inputs = scan_inputs()
    inputs["B"] = inputs["B"][..., :-1]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_chunked(**inputs)


def direction_inputs(batch=2, channels=16, length=37, state=8, reverse=(False, False, True, True), bias=0.0,
                     seed=0):
    """Inputs of the direction-fused scan (two token sequences shared by four directions) and the
    same problem stacked as the reference takes it: reversed directions flipped along L."""
    g = torch.Generator().manual_seed(seed)
    directions = len(reverse)
    rows, columns = (torch.randn(batch, length, channels, generator=g) for _ in range(2))
    u = [rows, columns] * (directions // 2)
    delta_natural = [torch.randn(batch, length, channels, generator=g) for _ in range(directions)]
    B = [torch.randn(batch, length, state, generator=g) for _ in range(directions)]
    C = [torch.randn(batch, length, state, generator=g) for _ in range(directions)]
    common = dict(A=-torch.rand(directions * channels, state, generator=g) * 2,
                  D=torch.randn(directions * channels, generator=g),
                  delta_bias=torch.full((directions * channels,), bias), delta_softplus=True)

    def scan_order(t, r):
        return t.flip(1) if r else t

    fused = dict(u=u, delta=torch.stack([scan_order(d, r) for d, r in zip(delta_natural, reverse)], dim=1),
                 B=B, C=C, reverse=reverse, **common)
    stacked = dict(u=torch.cat([scan_order(t, r).transpose(1, 2) for t, r in zip(u, reverse)], dim=1),
                   delta=torch.cat([scan_order(t, r).transpose(1, 2) for t, r in zip(delta_natural, reverse)], dim=1),
                   B=torch.stack([scan_order(t, r).transpose(1, 2) for t, r in zip(B, reverse)], dim=1),
                   C=torch.stack([scan_order(t, r).transpose(1, 2) for t, r in zip(C, reverse)], dim=1), **common)
    return fused, stacked


@pytest.mark.parametrize("reverse", [(False, False, True, True), (True, False, False, True), (False, False)])
@pytest.mark.parametrize("length, chunk", [(37, 24), (5, 24), (48, 8), (1, 24)])
def test_direction_scan_equals_reference_on_flipped_inputs(reverse, length, chunk):
    fused, stacked = direction_inputs(length=length, reverse=reverse)
    got = scan.selective_scan_chunked_directions(**fused, chunk=chunk)
    expected = selective_scan_reference(**stacked).view(2, len(reverse), 16, length)
    for k, r in enumerate(reverse):
        back = expected[:, k].flip(-1) if r else expected[:, k]
        assert relative_error(got[k].transpose(1, 2), back) <= 1e-5


def test_direction_scan_sums_combined_directions_as_the_reference_merge():
    fused, stacked = direction_inputs(length=30, bias=-1.0)
    rows_sum, columns_sum = scan.selective_scan_chunked_directions(**fused, combine=(0, 1, 0, 1))
    y = selective_scan_reference(**stacked).view(2, 4, 16, 30)
    assert relative_error(rows_sum.transpose(1, 2), y[:, 0] + y[:, 2].flip(-1)) <= 1e-5
    assert relative_error(columns_sum.transpose(1, 2), y[:, 1] + y[:, 3].flip(-1)) <= 1e-5


def test_direction_scan_names_the_misshapen_input():
    fused, _ = direction_inputs()
    fused["B"] = fused["B"][:3]
    with pytest.raises(ValueError, match="B must be 4 tensors"):
        scan.selective_scan_chunked_directions(**fused)


def test_token_major_blocks_equal_the_stacked_directions(small_model, monkeypatch):
    from mambast.network.blocks import SS2D

    content = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    style = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    taken = []
    token_major = SS2D._scan_token_major
    monkeypatch.setattr(SS2D, "_scan_token_major", lambda self, *a: taken.append(1) or token_major(self, *a))
    with torch.inference_mode():
        fused = small_model.stylize(content, style, seed=2)
        assert len(taken) == 6  # every block of the 2 + 2 + 2 layer model took the fused path
        monkeypatch.setattr(SS2D, "_token_major_backend", lambda self, *a: None)
        stacked = small_model.stylize(content, style, seed=2)
    assert len(taken) == 6
    assert (fused - stacked).abs().max() <= 1e-4 * stacked.abs().max()


def test_low_rank_delta_projected_in_the_scan_equals_the_full_delta():
    fused, _ = direction_inputs(length=30, bias=-1.0)
    g = torch.Generator().manual_seed(5)
    rank = 3
    low = torch.randn(2, 4, 30, rank, generator=g)
    weight = torch.randn(4, 16, rank, generator=g)
    full = dict(fused, delta=torch.einsum("bklr,kdr->bkld", low, weight))
    expected = scan.selective_scan_chunked_directions(**full, combine=(0, 1, 0, 1), chunk=8)
    got = scan.selective_scan_chunked_directions(**dict(fused, delta=low), delta_projection=weight,
                                                 combine=(0, 1, 0, 1), chunk=8)
    for g_, e in zip(got, expected):
        assert relative_error(g_, e) <= 1e-5
    with pytest.raises(ValueError, match="delta_projection must be"):
        scan.selective_scan_chunked_directions(**dict(fused, delta=low), delta_projection=weight[:, :8])
