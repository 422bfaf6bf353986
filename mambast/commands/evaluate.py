"""``python -m mambast evaluate``: stylize every content x style pair (or take another method's
images) and measure them with the paper's protocol, side by side with the paper's figures."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..evaluation.protocol import PAPER, PAPER_PEAK_MIB, PAPER_SECONDS_FOR_800, evaluate_images
from ..evaluation.weights import METRICS_ENV, MetricWeightsMissing, find_metric_files, load_metric_networks
from ..kernels.scan import CHOICES as SCAN_CHOICES
from ..network.checkpoint import DTYPES, CheckpointError, dtype_name
from ..network.loading import default_device, load
from ..utils.files import write_atomically
from ..utils.imaging import IMAGE_SUFFIXES
from ..utils.measure import peak_mib, reset_peak, resident_mib
from .console import StylizeRun
from .inputs import add_seam_smoothing_argument, collect_images, find_checkpoint, output_name
from .stylize import stylize_content

METRICS_FILE = "metrics.json"
DEFAULT_OUT = "evaluation"


def add_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="measure ArtFID, FID, LPIPS, CFSD, time and memory the paper's way",
        description="Stylize every content x style pair at --size (pairs already in --out are kept, so an "
                    "interrupted run continues), then measure them as the paper does: FID of the stylized images "
                    "against their style images on ArtFID's Inception, LPIPS (AlexNet) and LPIPS gray against their "
                    "content images, ArtFID = (1 + LPIPS)(1 + FID), CFSD on VGG-19 relu3_1, and seconds per image "
                    "and peak memory of the stylization at batch 1. Prints a table beside the paper's figures and "
                    f"writes {METRICS_FILE} into --out. With --stylized, another method's images "
                    "(<content>_stylized_<style>.<ext>) are measured instead and Mamba-ST is not loaded. The metric "
                    "weights are never downloaded: a missing file is named with where to get it.")
    evaluate.add_argument("--content-dir", required=True, help="folder of content images (the paper: 20)")
    evaluate.add_argument("--style-dir", required=True, help="folder of style images (the paper: 40)")
    evaluate.add_argument("--checkpoint", help="Mamba-ST weights folder or .safetensors (default: as stylize)")
    evaluate.add_argument("--size", type=int, default=512,
                          help="stylize with the content's shorter side at this many pixels (the paper: 512)")
    evaluate.add_argument("--out", default=DEFAULT_OUT,
                          help=f"folder for the stylized images and {METRICS_FILE} (default: ./{DEFAULT_OUT})")
    evaluate.add_argument("--stylized", help="folder of images made by another method, named "
                                             "<content>_stylized_<style>.<ext>: measured without stylizing")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the style shuffle (default: 0)")
    evaluate.add_argument("--metrics-dir", help=f"folder of the metric weights (default: ${METRICS_ENV}, then the "
                                                "caches of torchvision, lpips and ArtFID)")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    evaluate.add_argument("--dtype", choices=list(DTYPES), default="float32",
                          help="dtype of Mamba-ST's dense layers (the metrics run in float32)")
    evaluate.add_argument("--scan", choices=list(SCAN_CHOICES), default="auto", help="selective-scan backend")
    add_seam_smoothing_argument(evaluate)
    evaluate.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    contents = collect_images([args.content_dir], "content")
    styles = collect_images([args.style_dir], "style")
    if len(contents) * len(styles) < 2:
        raise SystemExit("error: FID needs at least 2 pairs; give more content or style images.")
    try:
        find_metric_files(args.metrics_dir)  # before hours of stylizing, not after
    except MetricWeightsMissing as error:
        raise SystemExit(f"error: {error}") from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: cannot make the output folder {out}: {error.strerror or error}.") from None

    checkpoint = None
    if args.stylized:
        stylized_dir, stylization = Path(args.stylized), None
        stylized = find_stylized(stylized_dir, contents, styles)
    else:
        stylized_dir = out
        checkpoint = find_checkpoint(args.checkpoint)
        stylization = stylize_pairs(args, checkpoint, contents, styles, out)
        if stylization is None:
            return 130
        stylized = [out / output_name(c, s) for c in contents for s in styles]
        absent = [p for p in stylized if not p.is_file()]
        if absent:
            raise SystemExit(f"error: {len(absent)} pair(s) could not be stylized (said above), e.g. {absent[0].name}; "
                             "the protocol needs every pair.")
    scores = measure(args, stylized, contents, styles)
    if scores is None:
        return 130
    report = {
        "scores": scores.as_dict(),
        "paper": paper_figures(),
        "stylization": stylization,
        "settings": {"content_dir": str(args.content_dir), "style_dir": str(args.style_dir),
                     "stylized_dir": str(stylized_dir), "method": "other" if args.stylized else "mambast",
                     "checkpoint": None if checkpoint is None else str(checkpoint),
                     "size": None if args.stylized else args.size, "seed": None if args.stylized else args.seed,
                     "seam_smoothing": None if args.stylized else args.seam_smoothing,
                     "content_images": len(contents), "style_images": len(styles)},
    }

    text = json.dumps(report, indent=2) + "\n"
    write_atomically(out / METRICS_FILE, lambda temporary: Path(temporary).write_text(text))
    print(format_table(scores.as_dict(), stylization))
    print(f"Wrote {out / METRICS_FILE}")
    return 0


def find_stylized(folder: Path, contents: list[Path], styles: list[Path]) -> list[Path]:
    """Each pair's image in ``folder`` (``<content>_stylized_<style>`` with an image suffix), in
    content-major order; all absent ones are named at once."""
    if not folder.is_dir():
        raise SystemExit(f"error: --stylized {folder} is not a folder.")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            by_stem.setdefault(path.stem, path)
    found, absent = [], []
    for content in contents:
        for style in styles:
            stem = f"{content.stem}_stylized_{style.stem}"
            (found if stem in by_stem else absent).append(by_stem.get(stem, stem))
    if absent:
        raise SystemExit(f"error: {len(absent)} of {len(found) + len(absent)} stylized images are not in {folder}, "
                         f"e.g. {', '.join(absent[:3])}; name each <content>_stylized_<style> with an image suffix "
                         f"({', '.join(IMAGE_SUFFIXES)}).")
    return found


def stylize_pairs(args: argparse.Namespace, checkpoint: Path, contents: list[Path], styles: list[Path],
                  out: Path) -> dict | None:
    """Stylize the pairs not yet in ``out``, timing the model's calls and the peak memory; the
    stylization's figures as a dict, or None when interrupted."""

    try:
        model = load(checkpoint, device=args.device, dtype=args.dtype, scan=args.scan)
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    device = model.device
    options = argparse.Namespace(overwrite=False, tile=0, size=args.size, no_shuffle=False,
                                 seam_smoothing=args.seam_smoothing)
    run = StylizeRun(len(contents) * len(styles))
    run.say(f"Stylizing {len(contents)} content x {len(styles)} style image(s) into {out} on {device} "
            f"({model.dtype}, {model.scan_backend} scan), seed {args.seed}; pairs already there are kept")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = resident_mib()
    reset_peak()
    try:
        with torch.inference_mode():
            for content in contents:
                stylize_content(model, options, content, styles, out, args.seed, run)
    except KeyboardInterrupt:
        run.say(f"Interrupted. {run.summary()} Run the same command again to continue.")
        return None
    run.say(run.summary())
    if not run.written:
        return {"images_timed": 0, "note": "every pair was already on disk; nothing was timed"}
    figures = {"images_timed": run.written, "seconds_per_image": run.model_seconds / run.written,
               "device": str(device), "dtype": dtype_name(model.dtype), "size": args.size}
    if device.type == "cuda":
        figures["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        figures["memory_kind"] = "CUDA memory allocated by PyTorch (weights included)"
    elif peak_mib():
        figures["peak_memory_mib"] = peak_mib()
        figures["memory_above_loaded_model_mib"] = peak_mib() - baseline
        figures["memory_kind"] = "process peak resident memory (runtime and weights included)"
    return figures


def measure(args: argparse.Namespace, stylized: list[Path], contents: list[Path], styles: list[Path]):
    """The protocol's scores with a progress bar; None when interrupted."""
    device = torch.device(args.device) if args.device else default_device()
    try:
        networks = load_metric_networks(args.metrics_dir, device)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    pairs = [(c, s) for c in contents for s in styles]
    bar = StylizeRun(len(pairs))
    bar.say(f"Measuring {len(pairs)} pairs on {device}")
    started = time.perf_counter()

    def advance(done: int) -> None:
        content, style = pairs[done - 1]
        bar.advance(f"{content.name} x {style.name}")

    try:
        scores = evaluate_images(stylized, [c for c, _ in pairs], [s for _, s in pairs], networks, device,
                                 on_pair=advance)
    except KeyboardInterrupt:
        bar.say("Interrupted while measuring; the stylized images are kept, run the same command again.")
        return None
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    bar.say(f"Measured in {time.perf_counter() - started:.1f} s")
    return scores


def paper_figures() -> dict:
    return dict(PAPER, seconds_per_image=PAPER_SECONDS_FOR_800 / 800, seconds_for_800=PAPER_SECONDS_FOR_800,
                peak_memory_mib=PAPER_PEAK_MIB)


def format_table(scores: dict, stylization: dict | None) -> str:
    """The metrics beside the paper's (lower is better throughout)."""
    paper = paper_figures()
    rows = [("ArtFID", scores["art_fid"], paper["art_fid"], ".2f"), ("FID", scores["fid"], paper["fid"], ".2f"),
            ("LPIPS", scores["lpips"], paper["lpips"], ".3f"), ("LPIPS gray", scores["lpips_gray"], None, ".3f"),
            ("CFSD", scores["cfsd"], paper["cfsd"], ".3f")]
    if stylization and "seconds_per_image" in stylization:
        per_image = stylization["seconds_per_image"]
        rows.append(("s / image", per_image, paper["seconds_per_image"], ".4f"))
        rows.append(("s / 800 images", per_image * 800, paper["seconds_for_800"], ".2f"))
        if "peak_memory_mib" in stylization:
            rows.append(("peak MiB", stylization["peak_memory_mib"], paper["peak_memory_mib"], ".0f"))
    lines = [f"{'metric (lower is better)':<26}{'measured':>12}{'paper':>12}"]
    for name, value, reference, style in rows:
        lines.append(f"{name:<26}{format(value, style):>12}{format(reference, style) if reference else '-':>12}")
    lines.append(f"{scores['pairs']} pairs.")
    if stylization and "seconds_per_image" in stylization:
        lines.append(f"Time and memory: {stylization['images_timed']} image(s) stylized in this run on "
                     f"{stylization['device']} ({stylization['dtype']}) at batch 1, model calls only; "
                     f"memory: {stylization.get('memory_kind', 'not measured on this device')}. The paper's: "
                     "one GPU.")
    return "\n".join(lines)
