"""One GPU check in one run: the CUDA tests and self-checks, then one table of figures and targets.

Made for a GPU machine lent for a few minutes: it installs nothing (what the README's test
command installs, or a machine's own PyTorch and Triton, is enough), stays within ``--budget``
seconds (sections that would not fit are listed as skipped), and writes the table to ``--out``
(Markdown, and the same rows as JSON beside it) so that it can be brought back:

    python bench/gpu_check.py --out gpu_check.md

Sections, in order (``--sections`` picks some):

- ``tests``: ``tests/test_cuda_graphs.py`` and ``tests/test_triton_scan.py`` in a pytest
  subprocess, and the Triton backward's self-check against the chunked scan.
- ``plain``: one plain ``stylize`` call at 512 and 1024 px in float32, float32 with TF32
  products, and bfloat16 dense layers (CUDA-event medians, peak allocated memory).
- ``graphs``: the same call with its stages replayed from CUDA graphs, the graphs' self-check.
- ``frames``: 16 frames of 512 px through the MambaST Stylize node's path (``run_stage``), plain
  and replayed: frames per second, peak memory, the largest difference.
- ``training``: a training step at batch 8, 256 px, bfloat16 autocast, with the Triton and the
  chunked backward.
- ``memory``: the working memory the nodes ask ComfyUI to free against the measured peak, at
  512, 1024 and 2048 px.
- ``pairs``: 20 content x 40 style images of 512 x 512 (the official set's size; random
  pictures do for time), stylized and timed as ``python -m mambast evaluate --crop`` times them.

Targets: the plain float32 call at 512 px in at most 8 ms and 700 MiB; 16 frames through the
node path at 250 frames/s or more; the memory estimate 1.0-1.5 times the measured peak; 800
pairs faster than the paper's 24.70 s and its 1414 MiB; every test passing; replays equal to
plain runs. ``--quick`` shrinks every size (for a smoke run, e.g. ``--device cpu`` in the tests).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CUDA_TESTS = ("tests/test_cuda_graphs.py", "tests/test_triton_scan.py")
PLAIN_MS_TARGET = 8.0  # float32, 512 px, one plain call
PLAIN_MIB_TARGET = 700.0
FRAMES_PER_SECOND_TARGET = 250.0
ESTIMATE_RANGE = (1.0, 1.5)  # the memory estimate against the measured peak


@dataclasses.dataclass
class Row:
    """One line of the table. ``met``: True/False against ``target``, None where there is none;
    ``status``: "ok", "failed" (the section raised) or "skipped" (the budget ran out)."""

    section: str
    what: str
    value: str
    target: str = ""
    met: bool | None = None
    status: str = "ok"

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return self.status
        return "" if self.met is None else "met" if self.met else "MISSED"


def at_most(value: float, limit: float) -> bool:
    return value <= limit  # False for NaN


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_table(rows: list[Row], header: list[str]) -> str:
    """The rows as a Markdown table under ``header`` lines."""
    lines = ["# GPU check", "", *header, "", "| section | measured | value | target | verdict |",
             "|---|---|---|---|---|"]
    lines += [f"| {_cell(r.section)} | {_cell(r.what)} | {_cell(r.value)} | {_cell(r.target)} | {r.verdict} |"
              for r in rows]
    missed = [r for r in rows if r.verdict in ("MISSED", "failed")]
    skipped = [r for r in rows if r.status == "skipped"]
    lines += ["", f"{len(rows)} rows: {len(missed)} missed or failed, {len(skipped)} skipped."]
    return "\n".join(lines) + "\n"


def write_report(path: Path, rows: list[Row], header: list[str]) -> Path:
    """The table to ``path`` (Markdown) and its rows to ``path`` with ``.json``; the JSON's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_table(rows, header))
    data = {"header": header, "rows": [{**dataclasses.asdict(r), "verdict": r.verdict} for r in rows]}
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=1))
    return json_path


@dataclasses.dataclass
class Sizes:
    """What each section runs at: the issue's sizes, or ``--quick``'s small ones."""

    plain: tuple[int, ...] = (512, 1024)
    repeats: int = 20
    frames: int = 16
    frame_size: int = 512
    train_batch: int = 8
    train_size: int = 256
    train_steps: int = 3
    memory: tuple[int, ...] = (512, 1024, 2048)
    contents: int = 20
    styles: int = 40
    pair_size: int = 512

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(plain=(64,), repeats=2, frames=3, frame_size=64, train_batch=2, train_size=64, train_steps=1,
                   memory=(64,), contents=2, styles=2, pair_size=64)


@dataclasses.dataclass
class Context:
    """What the sections share: the device, the sizes, random weights of the released architecture
    (of the small test configuration with ``--quick``), and a clock that waits for the device."""

    device: Any
    sizes: Sizes
    quick: bool = False

    def __post_init__(self) -> None:
        from mambast.network.config import MambaSTConfig
        from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors

        self.cuda = self.device.type == "cuda"
        self.config = SMALL_CONFIG if self.quick else MambaSTConfig()
        self.tensors = random_official_tensors(self.config, seed=0)

    def judged(self, met: bool) -> bool | None:
        """A speed or memory target's verdict: only on a GPU (a smoke run on the CPU judges nothing)."""
        return met if self.cuda else None

    def build(self, dtype=None, scan: str | None = None):
        import mambast

        return mambast.build(mambast.Checkpoint(self.tensors), device=self.device, dtype=dtype, scan=scan)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def median_ms(self, run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            self.synchronize()
            started = time.perf_counter()
            run()
            self.synchronize()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    @contextlib.contextmanager
    def peak(self) -> Iterator[dict]:
        """``{"mib": peak allocated in the block, "before": allocated at its start}`` (CUDA; NaN elsewhere)."""
        found = {"mib": float("nan"), "before": float("nan")}
        if self.cuda:
            self.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            found["before"] = torch.cuda.memory_allocated(self.device) / 2**20
        yield found
        if self.cuda:
            self.synchronize()
            found["mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20

    def inputs(self, size: int, batch: int = 1):
        from stylize import bench_inputs

        content, style = bench_inputs(size, size)
        return content.expand(batch, -1, -1, -1).contiguous().to(self.device), style.to(self.device)


def mib(value: float) -> str:
    return "n/a" if value != value else f"{value:.0f} MiB"


# -- the sections ---------------------------------------------------------------------------------


def tests_section(context: Context) -> list[Row]:
    """The CUDA tests in a pytest subprocess, and the Triton backward's own self-check."""
    rows = []
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *CUDA_TESTS]
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
        output = result.stdout + result.stderr
        summary = pytest_summary(output)
        failures = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
        ok = result.returncode == 0 and summary.get("failed", 0) == 0 and summary.get("error", 0) == 0
        value = ", ".join(f"{count} {kind}" for kind, count in summary.items()) or f"exit {result.returncode}"
        if failures:
            value += "; " + "; ".join(f[:160] for f in failures[:5])
    except subprocess.TimeoutExpired:
        ok, value = False, "did not finish in 240 s"
    rows.append(Row("tests", f"{', '.join(CUDA_TESTS)} ({time.perf_counter() - started:.0f} s)", value,
                    "all pass, none skipped for want of a GPU", ok))

    from mambast.kernels.scan.triton_backward import disagreement_with_chunked

    try:
        problem = disagreement_with_chunked(context.device)
    except Exception as error:  # noqa: BLE001 - a compiler failure is a finding
        problem = f"failed: {type(error).__name__}: {error}"[:300]
    rows.append(Row("tests", "Triton backward's self-check (gradients against the chunked scan)",
                    problem or "agrees", "agrees", problem is None))
    return rows


def pytest_summary(output: str) -> dict[str, int]:
    """``{"passed": 12, "skipped": 2, ...}`` from pytest's last summary line."""
    for line in reversed(output.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line)
        if found:
            return {("error" if kind.startswith("error") else kind): int(count) for count, kind in found}
    return {}


PRECISIONS = (("float32", "float32", False), ("TF32", "float32", True), ("bfloat16", "bfloat16", False))


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    backends = torch.backends
    before = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = before


def plain_section(context: Context) -> list[Row]:
    """One plain call per precision and size: milliseconds and peak allocated memory."""
    rows = []
    for label, dtype_name, use_tf32 in PRECISIONS:
        model = context.build(dtype=getattr(torch, dtype_name))
        for size in context.sizes.plain:
            content, style = context.inputs(size)
            with torch.inference_mode(), tf32(use_tf32):
                run = lambda: model.stylize(content, style, seed=0)  # noqa: E731
                repeats = context.sizes.repeats if size <= 512 else max(2, context.sizes.repeats // 2)
                ms = context.median_ms(run, repeats)
                with context.peak() as peak:
                    run()
            official = label == "float32" and size == 512
            target = f"<= {PLAIN_MS_TARGET:g} ms, <= {PLAIN_MIB_TARGET:g} MiB" if official else ""
            met = None
            if official:
                met = context.judged(at_most(ms, PLAIN_MS_TARGET) and at_most(peak["mib"], PLAIN_MIB_TARGET))
            rows.append(Row("plain call", f"{size} px, {label}, {model.scan_backend} scan",
                            f"{ms:.2f} ms, {mib(peak['mib'])}", target, met))
        model = None  # its memory back before the next precision's model
    return rows


def graphs_section(context: Context) -> list[Row]:
    """``GraphedStylize`` (stages recorded once, then replayed) against the plain call, and the
    graphs' self-check on their first replays."""
    import mambast
    from mambast.kernels.cuda_graphs import ReplayCheck

    rows = []
    for dtype_name in ("float32", "bfloat16"):
        model = context.build(dtype=getattr(torch, dtype_name))
        size = context.sizes.plain[0]
        content, style = context.inputs(size)
        check = ReplayCheck()
        graphed = mambast.GraphedStylize(model, check=check)
        with torch.inference_mode():
            plain_ms = context.median_ms(lambda: model.stylize(content, style, seed=0), context.sizes.repeats)
        graphed(content, style, seed=0)  # recorded
        ms = context.median_ms(lambda: graphed(content, style, seed=1), context.sizes.repeats)
        other = content.flip(-1).contiguous()
        with torch.inference_mode():
            difference = max(float((graphed(other, style, seed=s) - model.stylize(other, style, seed=s)).abs().max())
                             for s in (5, 6))
        checked = max(check.differences.values(), default=None)
        replays = graphed.stages.replays
        rows.append(Row("replayed stages", f"{size} px, {dtype_name}, 4 stages from CUDA graphs",
                        f"{ms:.2f} ms ({plain_ms / ms:.2f}x the plain call's {plain_ms:.2f} ms), {replays} replays",
                        "faster than plain", context.judged(ms < plain_ms)))
        rows.append(Row("replayed stages", f"{size} px, {dtype_name}: replay against plain, new pixels and seeds",
                        f"max abs {difference:.2g}; self-check "
                        f"{'not run (no replay)' if checked is None else f'{checked:.2g} of the largest value'}"
                        f"{'; graphs OFF: ' + check.off if check.off else ''}",
                        "0, graphs on", context.judged(difference == 0 and check.off is None and replays > 0)))
        graphed = model = None
        if context.cuda:
            torch.cuda.empty_cache()
    return rows


def frames_section(context: Context) -> list[Row]:
    """Frames of one size through the node path, plain and with the stages replayed."""
    from mambast import Controls
    from mambast.kernels import cuda_graphs
    from mambast.run.staged import StylizeBatch, run_stage

    sizes = context.sizes
    rows = []
    for dtype_name in ("float32", "bfloat16"):  # float32: what the nodes' "auto" runs on a GPU
        model = context.build(dtype=getattr(torch, dtype_name))
        content, style = context.inputs(sizes.frame_size)
        frames = torch.cat([torch.roll(content, shifts=4 * i, dims=-1) for i in range(sizes.frames)])  # a pan
        controls = Controls(seed=0, temporal_smoothing=0.3)
        outputs, figures = {}, {}
        for replayed in (False, True):
            with switched_graphs(replayed):
                if replayed and context.cuda:
                    assert cuda_graphs.enabled_on(context.device), cuda_graphs.PROCESS_CHECK.off
                run = lambda: run_stage(StylizeBatch(model, frames, style, controls))  # noqa: E731
                outputs[replayed] = run()
                seconds = context.median_ms(run, 3, warmup=0) / 1000
                with context.peak() as peak:
                    run()
            figures[replayed] = (sizes.frames / seconds, peak["mib"])
        difference = float((outputs[True] - outputs[False]).abs().max())
        for replayed, (per_second, peak_mib) in figures.items():
            target = f">= {FRAMES_PER_SECOND_TARGET:g} frames/s" if dtype_name == "float32" and replayed else ""
            met = context.judged(per_second >= FRAMES_PER_SECOND_TARGET) if target else None
            rows.append(Row("frames (node path)", f"{sizes.frames} x {sizes.frame_size} px, {dtype_name}, "
                            f"{'replayed' if replayed else 'plain'}", f"{per_second:.1f} frames/s, {mib(peak_mib)}",
                            target, met))
        rows.append(Row("frames (node path)", f"{dtype_name}: replayed against plain frames",
                        f"max abs {difference:.2g}", "0", difference == 0))
        model = None
    return rows


@contextlib.contextmanager
def switched_graphs(on: bool) -> Iterator[None]:
    from mambast.kernels.cuda_graphs import ENV_VARIABLE

    before = os.environ.get(ENV_VARIABLE)
    os.environ[ENV_VARIABLE] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VARIABLE, None)
        else:
            os.environ[ENV_VARIABLE] = before


def training_section(context: Context) -> list[Row]:
    """Seconds per training step (the reference's losses, backward, Adam) in bfloat16 autocast,
    with the Triton backward and the chunked one, as the trainer runs them."""
    from train import random_vgg, training_batch

    from mambast.kernels.scan import triton_trains_on
    from mambast.training import LossWeights, compute_losses

    sizes = context.sizes
    rows = []
    scans = ("triton", "chunked") if context.cuda else ("chunked",)
    for scan in scans:
        if scan == "triton" and not triton_trains_on(context.device):
            rows.append(Row("training step", "Triton backward", "not used: its self-check failed (see tests)",
                            "used", False))
            continue
        model = context.build(scan=scan).requires_grad_(True).train()
        vgg = random_vgg().to(context.device)
        content = training_batch(sizes.train_batch, sizes.train_size, sizes.train_size, seed=0).to(context.device)
        style = training_batch(sizes.train_batch, sizes.train_size, sizes.train_size, seed=1).to(context.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        weights = LossWeights()
        step_seed = iter(range(10**6))

        def step() -> float:
            seed = next(step_seed)
            torch.manual_seed(seed)
            with torch.autocast(context.device.type, dtype=torch.bfloat16):
                losses = compute_losses(model, vgg, content, style, seed=seed, weights=weights)
            losses["total"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(losses["total"].detach())

        ms = context.median_ms(step, sizes.train_steps, warmup=1)
        with context.peak() as peak:
            loss = step()
        rows.append(Row("training step", f"batch {sizes.train_batch}, {sizes.train_size} px, bfloat16, {scan} backward",
                        f"{ms / 1000:.3f} s/step, {mib(peak['mib'])}, loss {loss:.3g}", "finite loss",
                        loss == loss and abs(loss) != float("inf")))
        model = optimizer = vgg = None
        if context.cuda:
            torch.cuda.empty_cache()
    return rows


def memory_section(context: Context) -> list[Row]:
    """The working memory the nodes ask the host to free (``working_memory``) against the peak
    allocated above what was allocated before the call, float32."""
    from mambast import Controls
    from mambast.run.staged import StylizeBatch, run_stage, working_memory

    model = context.build(dtype=torch.float32)
    rows = []
    for size in context.sizes.memory:
        content, style = context.inputs(size)
        stage = StylizeBatch(model, content, style, Controls(seed=0))
        estimate = working_memory(stage, context.device.type) / 2**20
        with switched_graphs(False):
            run_stage(stage)  # warm-up: kernels compiled, workspaces made
            with context.peak() as peak:
                run_stage(stage)
        measured = peak["mib"] - peak["before"]
        ratio = estimate / measured if measured == measured and measured > 0 else float("nan")
        low, high = ESTIMATE_RANGE
        rows.append(Row("memory estimate", f"{size} px, float32: estimate given to ComfyUI / measured peak",
                        f"{estimate:.0f} / {mib(measured)} = {ratio:.2f}", f"{low:g}-{high:g}x",
                        context.judged(low <= ratio <= high)))
        del content, style, stage
    return rows


def pairs_section(context: Context) -> list[Row]:
    """The official set's number of pairs, stylized and timed by ``evaluate``'s own loop."""
    from train import photo_like_jpegs

    from mambast.commands.evaluate import stylize_pairs
    from mambast.evaluation.protocol import PAPER_PEAK_MIB, PAPER_SECONDS_FOR_800
    from mambast.network.random_weights import write_official_folder

    sizes = context.sizes
    with tempfile.TemporaryDirectory(prefix="mambast-gpu-check-") as temporary:
        folder = Path(temporary)
        checkpoint = write_official_folder(context.tensors, folder / "weights")
        paths = {}
        for kind, count in (("cnt", sizes.contents), ("sty", sizes.styles)):
            (folder / kind).mkdir()
            photo_like_jpegs(folder / kind, count, sizes.pair_size, sizes.pair_size)
            paths[kind] = sorted((folder / kind).glob("*.jpg"))
        (folder / "out").mkdir()
        args = argparse.Namespace(device=str(context.device), dtype="float32", scan="auto", size=sizes.pair_size,
                                  crop=True, format="jpg", seed=0, seam_smoothing=0)
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines; the table comes at the end
            figures = stylize_pairs(args, checkpoint, paths["cnt"], paths["sty"], folder / "out")
    pairs = sizes.contents * sizes.styles
    if not figures or "end_to_end_seconds_per_pair" not in figures:
        raise RuntimeError(f"the pairs were not timed: {figures}")
    per_pair = figures["end_to_end_seconds_per_pair"]
    model_per_pair = figures["model_seconds_per_pair"]
    official = pairs == 800
    peak_mib = figures.get("peak_memory_mib", float("nan"))
    return [
        Row("800 pairs" if official else f"{pairs} pairs", f"{sizes.pair_size} px, float32, {figures['scan']} scan: "
            "the reference's timed loop (read, crop, encode, stylize), first pair excluded",
            f"{per_pair * 800:.2f} s per 800 pairs ({per_pair * 1000:.1f} ms/pair)",
            f"< {PAPER_SECONDS_FOR_800} s (the paper)",
            context.judged(per_pair * 800 < PAPER_SECONDS_FOR_800) if official else None),
        Row("800 pairs" if official else f"{pairs} pairs", "the model alone (each content encoded once)",
            f"{model_per_pair * 800:.2f} s per 800 pairs, peak {mib(peak_mib) if context.cuda else 'n/a'}",
            f"< {PAPER_PEAK_MIB} MiB (the paper)",
            context.judged(at_most(peak_mib, PAPER_PEAK_MIB)) if official else None),
    ]


SECTIONS: dict[str, tuple[Callable[[Context], list[Row]], float]] = {
    # name: (section, seconds it is given at most on an H100-class GPU, compiling included)
    "tests": (tests_section, 270),
    "plain": (plain_section, 60),
    "graphs": (graphs_section, 30),
    "frames": (frames_section, 30),
    "training": (training_section, 90),
    "memory": (memory_section, 30),
    "pairs": (pairs_section, 60),
}


def run_sections(names: list[str], context: Context, budget: float, sections=None,
                 clock: Callable[[], float] = time.perf_counter, report: Callable[[Row], None] = print) -> list[Row]:
    """Each section's rows, in order; a section that raises gives one failed row (the rest still
    run), one that would not fit in what is left of ``budget`` seconds a skipped row."""
    sections = sections or SECTIONS
    started = clock()
    rows: list[Row] = []
    for name in names:
        section, needs = sections[name]
        left = budget - (clock() - started)
        if needs > left:
            found = [Row(name, "not run", f"{left:.0f} s of the {budget:.0f} s budget left; it needs up to "
                                          f"{needs:.0f} s", status="skipped")]
        else:
            began = clock()
            try:
                found = section(context)
            except Exception as error:  # noqa: BLE001 - reported in the table; the other sections run
                found = [Row(name, "error", f"{type(error).__name__}: {error}"[:400], status="failed")]
            print(f"[{name}: {clock() - began:.0f} s]", file=sys.stderr)
        for row in found:
            report(row)
        rows += found
    return rows


def header_lines(context: Context, seconds: float) -> list[str]:
    from mambast import mamba_ssm_available

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if context.cuda:
        name = torch.cuda.get_device_name(context.device)
        driver = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) or "unknown"
        where = f"{name}, driver {driver.splitlines()[0]}, CUDA {torch.version.cuda}"
    else:
        where = f"{context.device} (no GPU: a smoke run, figures not comparable)"
    commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"- device: {where}", f"- torch {torch.__version__}, triton {triton_version}, "
            f"mamba-ssm {'usable' if mamba_ssm_available() else 'not usable (not installed or no CUDA build)'}",
            f"- commit {commit}, {date}, {seconds:.0f} s in all{' (--quick sizes)' if context.quick else ''}"]


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.md", help="the table (Markdown; the rows as JSON beside it)")
    parser.add_argument("--budget", type=float, default=470.0,
                        help="seconds the whole run may take; a section that would not fit is skipped (default 470)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, in order (default: all: {','.join(SECTIONS)})")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1; cpu only for a --quick smoke run")
    parser.add_argument("--quick", action="store_true", help="small sizes and the small test configuration")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.budget <= 0:
        parser.error("--budget must be a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_check.py needs a CUDA GPU (this PyTorch sees none); --device cpu --quick is a smoke run.",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    context = Context(device, Sizes.quick() if args.quick else Sizes(), quick=args.quick)
    rows = run_sections(args.sections, context, args.budget,
                        report=lambda row: print(f"{row.section}: {row.what}: {row.value} {row.verdict}".rstrip(),
                                                 flush=True))
    header = header_lines(context, time.perf_counter() - started)
    out = Path(args.out)
    json_path = write_report(out, rows, header)
    print(format_table(rows, header))
    print(f"written: {out}, {json_path}")
    return 1 if any(r.verdict in ("MISSED", "failed") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
