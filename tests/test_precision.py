"""What "auto" precision means: bfloat16 only on a CPU with native bfloat16 where it measured faster."""

from __future__ import annotations

import pytest
import torch

from mambast.run import precision


@pytest.fixture()
def decide(monkeypatch):
    """automatic_dtype with the CPU's flags and the measured speed-up given by the test."""
    monkeypatch.delenv("MAMBAST_AUTO_DTYPE", raising=False)
    precision._bfloat16_pays.cache_clear()
    measured = []

    def with_cpu(flags: set[str], speedup: float | None):
        monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))

        def measure(*args, **kwargs):
            if speedup is None:
                pytest.fail("measured although the CPU has no native bfloat16")
            measured.append(1)
            return speedup

        monkeypatch.setattr(precision, "bfloat16_speedup", measure)
        precision._bfloat16_pays.cache_clear()
        return precision.automatic_dtype

    yield with_cpu, measured
    precision._bfloat16_pays.cache_clear()


def test_without_native_bfloat16_auto_is_float32_and_nothing_is_measured(decide):
    with_cpu, measured = decide
    automatic = with_cpu({"avx2", "fma", "avx512f", "avx512bw"}, None)  # AVX-512 alone only emulates bfloat16
    assert automatic("cpu") == torch.float32 and not measured


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16", "bf16"])
def test_native_bfloat16_is_chosen_only_where_it_measured_faster(decide, flag):
    with_cpu, measured = decide
    assert with_cpu({"avx2", flag}, 2.0)("cpu") == torch.bfloat16
    assert with_cpu({"avx2", flag}, 1.1)("cpu") == torch.float32  # faster, but not by enough
    assert with_cpu({"avx2", flag}, 0.5)("cpu") == torch.float32


def test_the_measurement_runs_once_per_process(decide):
    with_cpu, measured = decide
    automatic = with_cpu({"amx_bf16"}, 3.0)
    assert [automatic("cpu") for _ in range(3)] == [torch.bfloat16] * 3
    assert len(measured) == 1


def test_gpus_keep_float32(decide):
    with_cpu, measured = decide
    assert with_cpu({"amx_bf16"}, 3.0)(torch.device("meta")) == torch.float32 and not measured


def test_the_environment_fixes_what_auto_means(decide, monkeypatch):
    with_cpu, measured = decide
    automatic = with_cpu(set(), None)
    monkeypatch.setenv("MAMBAST_AUTO_DTYPE", "bfloat16")
    assert automatic("cpu") == torch.bfloat16 and automatic("cuda") == torch.bfloat16
    monkeypatch.setenv("MAMBAST_AUTO_DTYPE", "half")
    with pytest.raises(ValueError, match="MAMBAST_AUTO_DTYPE='half'.*float32"):
        automatic("cpu")


def test_cpu_flags_are_read_as_linux_lists_them(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n")
    assert precision.cpu_flags(str(x86)) == {"fpu", "avx2", "avx512_bf16", "amx_bf16"}
    assert precision.cpu_flags(str(arm)) == {"fp", "asimd", "bf16", "i8mm"}
    assert precision.cpu_flags(str(tmp_path / "absent")) == set()  # not Linux: no flags, float32


def test_loader_auto_follows_the_choice(comfy, monkeypatch):
    monkeypatch.setenv("MAMBAST_AUTO_DTYPE", "bfloat16")
    assert comfy.stages.load_model("small.safetensors", "auto").model.dtype == torch.bfloat16
    monkeypatch.setenv("MAMBAST_AUTO_DTYPE", "float32")
    assert comfy.stages.load_model("small.safetensors", "auto").model.dtype == torch.float32


def test_the_speed_measurement_runs_both_precisions_of_the_release_widths():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    speedup = precision.bfloat16_speedup(side=16, repeats=1)
    assert 0 < speedup < float("inf")
    assert torch.equal(torch.rand(3), expected)  # the caller's random numbers are untouched
