"""bench/gpu_check.py's CPU-safe parts: its arguments, the table it writes, how sections that fail
or do not fit the budget are reported, and a smoke run of every figure section on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    saved = list(sys.path)  # the script puts bench/ on the path for its own imports
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    yield module
    sys.modules.pop("gpu_check", None)


def test_arguments_default_to_every_section_within_eight_minutes(gpu_check):
    args = gpu_check.parse_args([])
    assert args.sections == ["tests", "plain", "graphs", "frames", "training", "memory", "pairs"]
    assert args.budget <= 480 and args.out == "gpu_check.md" and args.device == "cuda" and not args.quick
    assert gpu_check.parse_args(["--sections", "pairs, plain"]).sections == ["pairs", "plain"]


@pytest.mark.parametrize("argv, named", [(["--sections", "plain,speed"], "unknown section(s) speed"),
                                         (["--budget", "0"], "--budget must be a positive")])
def test_bad_arguments_are_named(gpu_check, capsys, argv, named):
    with pytest.raises(SystemExit) as stopped:
        gpu_check.parse_args(argv)
    assert stopped.value.code == 2 and named in capsys.readouterr().err


def test_the_table_has_a_line_per_row_with_its_verdict_and_the_same_rows_as_json(gpu_check, tmp_path):
    Row = gpu_check.Row
    rows = [Row("plain call", "512 px, float32", "7.10 ms, 480 MiB", "<= 8 ms", True),
            Row("plain call", "512 px, TF32", "5.00 ms | fast", ""),
            Row("frames (node path)", "16 x 512 px", "120.0 frames/s", ">= 250 frames/s", False),
            Row("training", "error", "RuntimeError: boom", status="failed"),
            Row("pairs", "not run", "10 s left", status="skipped")]
    header = ["- device: NVIDIA test card"]
    table = gpu_check.format_table(rows, header)
    lines = table.splitlines()
    assert "- device: NVIDIA test card" in lines
    body = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [line.rsplit("|", 2)[1].strip() for line in body] == ["met", "", "MISSED", "failed", "skipped"]
    assert "5.00 ms \\| fast" in body[1]  # a value's own bar does not split the cells
    assert lines[-1] == "5 rows: 2 missed or failed, 1 skipped."

    json_path = gpu_check.write_report(tmp_path / "sub" / "check.md", rows, header)
    assert (tmp_path / "sub" / "check.md").read_text() == table
    written = json.loads(json_path.read_text())
    assert written["header"] == header
    assert [(r["section"], r["verdict"]) for r in written["rows"]] == [(r.section, r.verdict) for r in rows]


def test_a_failing_section_is_reported_and_the_budget_skips_what_would_not_fit(gpu_check):
    Row = gpu_check.Row
    now = [0.0]
    ran = []

    def fine(context):
        ran.append("fine")
        now[0] += 100
        return [Row("fine", "x", "1", "", None)]

    def broken(context):
        ran.append("broken")
        now[0] += 10
        raise ValueError("the kernel did not compile")

    sections = {"fine": (fine, 150), "broken": (broken, 50), "big": (fine, 100), "small": (fine, 20)}
    reported = []
    rows = gpu_check.run_sections(["fine", "broken", "big", "small"], context=None, budget=200, sections=sections,
                                  clock=lambda: now[0], report=reported.append)
    assert ran == ["fine", "broken", "fine"]  # "big" needs 100 s with 90 left; "small" still fits
    assert [(r.section, r.status) for r in rows] == [("fine", "ok"), ("broken", "failed"), ("big", "skipped"),
                                                     ("fine", "ok")]
    assert "ValueError: the kernel did not compile" in rows[1].value
    assert "90 s of the 200 s budget left" in rows[2].value
    assert reported == rows


@pytest.mark.parametrize("output, expected", [
    ("..s\n=== 3 passed, 2 skipped in 2.10s ===\n", {"passed": 3, "skipped": 2}),
    ("F.\nFAILED tests/x.py::test_y\n1 failed, 1 passed, 1 error in 0.5s\n", {"failed": 1, "passed": 1, "error": 1}),
    ("ImportError while loading conftest\n", {}),
])
def test_pytest_summaries_are_read(gpu_check, output, expected):
    assert gpu_check.pytest_summary(output) == expected


def run_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)


def test_every_figure_section_runs_on_the_cpu_at_small_sizes(tmp_path):
    """The smoke run: the sections' code paths (the node path, graphs, training, evaluate's timed
    loop) run to the end; the speed and memory targets are judged on a GPU only."""
    out = tmp_path / "check.md"
    result = run_script("--device", "cpu", "--quick", "--out", str(out),
                        "--sections", "plain,graphs,frames,training,memory,pairs", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {r["section"] for r in rows} == {"plain call", "replayed stages", "frames (node path)", "training step",
                                            "memory estimate", "4 pairs"}
    assert not [r for r in rows if r["status"] != "ok" or r["verdict"] == "MISSED"]
    assert all(r["verdict"] == "met" for r in rows if "against plain" in r["what"] and "frames" in r["section"])
    assert "no GPU: a smoke run" in out.read_text() and out.read_text() in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_a_gpu_the_full_check_says_so(tmp_path):
    result = run_script("--out", str(tmp_path / "check.md"), tmp_path=tmp_path)
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr
    assert not (tmp_path / "check.md").exists()
