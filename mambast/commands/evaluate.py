"""``python -m mambast evaluate``: stylize every content x style pair (or take another method's
images) and measure them with the paper's protocol, side by side with the paper's figures.

The protocol around the metrics is the reference's (``eval.py``, ``eval_time.py``,
``evaluation/eval_artfid.py``): outputs saved as JPEG at quality 75 and measured from those files,
with ``--crop`` the inputs resized to 512 on the shorter side and centre-cropped to 512 x 512, and
the time of the whole loop. The settings a run was made with are written beside its images, so
that a rerun with others is refused instead of measuring stale images; each pair's measurement is
kept, so that an interrupted measurement continues.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..evaluation.pair_log import PairLog
from ..evaluation.protocol import (PAPER, PAPER_PEAK_MIB, PAPER_SECONDS_FOR_800, Evaluation, picture,
                                   resize_shorter_side)
from ..evaluation.weights import METRICS_ENV, MetricWeightsMissing, find_metric_files, load_metric_networks
from ..kernels.scan import CHOICES as SCAN_CHOICES
from ..network.checkpoint import DTYPES, WEIGHTS_SUFFIXES, CheckpointError, dtype_name
from ..network.loading import default_device, load
from ..utils.files import sha256_of, write_atomically
from ..utils.imaging import IMAGE_SUFFIXES, read_image, write_image
from ..utils.measure import peak_mib, reset_peak, resident_mib
from .console import StylizeRun
from .inputs import add_seam_smoothing_argument, collect_images, find_checkpoint
from .stylize import read_content

METRICS_FILE = "metrics.json"
SETTINGS_FILE = "evaluation_settings.json"
PAIRS_FILE = "pair_measurements.jsonl"
DEFAULT_OUT = "evaluation"
# The reference saves with torchvision's save_image to .jpg: Pillow's JPEG at its default quality.
FORMATS = {"jpg": 75, "png": None}
OFFICIAL_SIZE = 512


def add_parser(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="measure ArtFID, FID, LPIPS, CFSD, time and memory the paper's way",
        description="Stylize every content x style pair at --size and save them as the reference does (JPEG, "
                    "quality 75: the paper's metrics were computed on such files; --format png for lossless), then "
                    "measure them: FID of the stylized images against their style images on ArtFID's Inception, "
                    "LPIPS (AlexNet) and LPIPS gray against their content images, ArtFID = (1 + LPIPS)(1 + FID), "
                    "CFSD on VGG-19 relu3_1, the time of the loop the reference times and of the model alone, "
                    "and the peak memory. Prints a table beside the paper's figures and writes "
                    f"{METRICS_FILE} into --out. Pairs already in --out are kept (an interrupted run continues), "
                    f"if they were made with the same settings ({SETTINGS_FILE}); else the run is refused, "
                    "naming the setting, and --overwrite makes them again. With --stylized, another method's "
                    "images (<content>_stylized_<style>.<ext>) are measured instead and Mamba-ST is not loaded. "
                    "The metric weights are never downloaded: a missing file is named with where to get it.")
    evaluate.add_argument("--content-dir", required=True,
                          help="folder of content images (the paper: the reference's data/cnt, 20 images)")
    evaluate.add_argument("--style-dir", required=True,
                          help="folder of style images (the paper: the reference's data/sty, 40 images)")
    evaluate.add_argument("--checkpoint", help="Mamba-ST weights folder or .safetensors (default: as stylize)")
    evaluate.add_argument("--size", type=int, default=OFFICIAL_SIZE,
                          help="stylize with the content's shorter side at this many pixels (the paper: 512)")
    evaluate.add_argument("--crop", action="store_true",
                          help="the reference's preprocessing: content and style resized to --size on the shorter "
                               "side and centre-cropped to --size x --size (default: the content keeps its aspect "
                               "ratio and the style is resized to it)")
    evaluate.add_argument("--format", choices=list(FORMATS), default="jpg",
                          help="the stylized images' files: jpg (quality 75, as the reference saves them and the "
                               "paper measured them; default) or png (lossless)")
    evaluate.add_argument("--out", default=DEFAULT_OUT,
                          help=f"folder for the stylized images and {METRICS_FILE} (default: ./{DEFAULT_OUT})")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="make the stylized images (and their measurements) again, whatever --out holds")
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
        metric_files = find_metric_files(args.metrics_dir)  # before hours of stylizing, not after
    except MetricWeightsMissing as error:
        raise SystemExit(f"error: {error}") from None
    check_images_open(contents + styles)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: cannot make the output folder {out}: {error.strerror or error}.") from None

    checkpoint, settings = None, {}
    if args.stylized:
        stylized_dir, stylization = Path(args.stylized), None
        stylized = find_stylized(stylized_dir, contents, styles)
        check_images_open(stylized)
    else:
        stylized_dir = out
        checkpoint = find_checkpoint(args.checkpoint)
        settings = image_settings(args, checkpoint)
        targets = [out / output_name(c, s, args.format) for c in contents for s in styles]
        claim_output_folder(out, settings, targets, args.overwrite)
        stylization = stylize_pairs(args, checkpoint, contents, styles, out)
        if stylization is None:
            return 130
        stylized = targets
        absent = [p for p in stylized if not p.is_file()]
        if absent:
            raise SystemExit(f"error: {len(absent)} pair(s) could not be stylized (said above), e.g. {absent[0].name}; "
                             "the protocol needs every pair.")
    measured = measure(args, stylized, contents, styles, out, metric_files)
    if measured is None:
        return 130
    scores, per_pair, networks = measured
    report = {
        "scores": scores.as_dict(),
        "paper": paper_figures(),
        "stylization": stylization,
        "settings": {"content_dir": str(args.content_dir), "style_dir": str(args.style_dir),
                     "stylized_dir": str(stylized_dir), "method": "other" if args.stylized else "mambast",
                     "checkpoint": None if checkpoint is None else str(checkpoint),
                     **({} if args.stylized else settings),
                     "content_images": len(contents), "style_images": len(styles)},
        "metric_weights": networks,
        "pairs": per_pair,
    }
    text = json.dumps(report, indent=1) + "\n"
    write_atomically(out / METRICS_FILE, lambda temporary: Path(temporary).write_text(text))
    print(format_table(scores.as_dict(), stylization))
    print(f"Wrote {out / METRICS_FILE}")
    return 0


def output_name(content: Path, style: Path, file_format: str = "jpg") -> str:
    """The file name of the stylization of ``content`` with ``style`` (the reference's names)."""
    return f"{content.stem}_stylized_{style.stem}.{file_format}"


def check_images_open(paths: list[Path]) -> None:
    """Every image opens, checked before the long part starts; all that do not are named at once."""
    from PIL import Image

    unreadable = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                opened.load()
        except Exception as error:  # noqa: BLE001 - any reason a file cannot be read is said
            unreadable.append(f"{path} ({type(error).__name__}: {error})")
    if unreadable:
        raise SystemExit(f"error: {len(unreadable)} image(s) cannot be read: {'; '.join(unreadable[:5])}"
                         + ("; ..." if len(unreadable) > 5 else "") + ". Replace or remove them, then run again.")


def checkpoint_fingerprint(checkpoint: Path) -> str:
    """The SHA-256 of a weights file, or of the weights files of a folder (names and bytes)."""
    if checkpoint.is_dir():
        files = sorted(p for p in checkpoint.iterdir() if p.is_file() and p.suffix.lower() in WEIGHTS_SUFFIXES)
        return sha256_of(files)
    return sha256_of(checkpoint)


def image_settings(args: argparse.Namespace, checkpoint: Path) -> dict:
    """What the stylized images depend on; a different value makes them other images."""
    return {"checkpoint_sha256": checkpoint_fingerprint(checkpoint), "size": args.size, "crop": args.crop,
            "format": args.format, "seed": args.seed, "dtype": args.dtype, "seam_smoothing": args.seam_smoothing}


def claim_output_folder(out: Path, settings: dict, targets: list[Path], overwrite: bool) -> None:
    """Make ``out`` hold images of ``settings``: kept when they match, removed with ``overwrite``,
    else the run is refused, naming what differs (the images there stay as they are)."""
    recorded_path = out / SETTINGS_FILE
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    ours = sorted({p for p in out.glob("*_stylized_*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES})
    if overwrite:
        for path in ours + [out / PAIRS_FILE, out / METRICS_FILE]:
            path.unlink(missing_ok=True)
    elif recorded is not None:
        differ = [f"--{name.replace('_', '-')}: {recorded.get(name)!r} there, {value!r} now"
                  if name != "checkpoint_sha256" else "the checkpoint: other weights than those it was made with"
                  for name, value in settings.items() if recorded.get(name) != value]
        if differ:
            raise SystemExit(f"error: {out} holds stylized images made with other settings ({'; '.join(differ)}). "
                             "Measuring them would report the new settings for the old images: give another --out, "
                             "or --overwrite to make them again.")
    elif ours:
        raise SystemExit(f"error: {out} holds {len(ours)} stylized image(s) but no record of the settings they were "
                         f"made with ({SETTINGS_FILE}); give another --out, or --overwrite to make them again.")
    text = json.dumps(settings, indent=1) + "\n"
    write_atomically(recorded_path, lambda temporary: Path(temporary).write_text(text))


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


def read_cropped(path: Path, size: int) -> torch.Tensor:
    """The reference's test transform: torchvision's ``Resize(size)`` (the shorter side to ``size``,
    bilinear, the longer truncated) then ``CenterCrop(size)``; (1, 3, size, size) in 0..1."""
    import numpy as np

    resized = resize_shorter_side(picture(path), size)
    width, height = resized.size
    # torchvision's centre crop: Python's round (halves to even) of the margins.
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    cropped = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(cropped.copy()).permute(2, 0, 1)[None].float() / 255


@dataclass
class PairTimes:
    """The seconds of one pair of content ``content_index``, as the reference's ``eval_time.py``
    counts them: ``inputs`` reading and transforming both images, ``content`` encoding the content,
    ``rest`` the style's encoding, the MSTD and the CNN decoder."""

    inputs: float
    content: float
    rest: float
    content_index: int


@dataclass
class Timing:
    pairs: list[PairTimes] = field(default_factory=list)

    def figures(self) -> dict:
        """The two times over the pairs after the first (a warm-up: kernels compile, graphs record):
        the reference's loop (every pair read, transformed, its content encoded again) and the model
        alone with each content encoded once (its encoding counted at its first timed pair)."""
        timed = self.pairs[1:]
        if not timed:
            return {}
        end_to_end = sum(p.inputs + p.content + p.rest for p in timed)
        encodings: dict[int, float] = {}
        for pair in timed:
            encodings.setdefault(pair.content_index, pair.content)
        model_only = sum(p.rest for p in timed) + sum(encodings.values())
        return {"pairs_timed": len(timed), "warm_up_pairs_excluded": 1,
                "end_to_end_seconds": end_to_end, "end_to_end_seconds_per_pair": end_to_end / len(timed),
                "model_seconds": model_only, "model_seconds_per_pair": model_only / len(timed)}


def stylize_pairs(args: argparse.Namespace, checkpoint: Path, contents: list[Path], styles: list[Path],
                  out: Path) -> dict | None:
    """Stylize the pairs not yet in ``out`` the way the reference's time loop does, timing it and the
    model's share, and the peak memory; the stylization's figures as a dict, or None when interrupted."""
    try:
        model = load(checkpoint, device=args.device, dtype=args.dtype, scan=args.scan)
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    device = model.device
    run = StylizeRun(len(contents) * len(styles))
    preparation = f"--crop {args.size}" if args.crop else f"shorter side {args.size}"
    run.say(f"Stylizing {len(contents)} content x {len(styles)} style image(s) into {out} on {device} "
            f"({model.dtype}, {model.scan_backend} scan, {preparation}, {args.format}), seed {args.seed}; pairs "
            "already there are kept")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = resident_mib()
    reset_peak()
    timing = Timing()
    try:
        with torch.inference_mode():
            for content_index, content_path in enumerate(contents):
                for style_path in styles:
                    target = out / output_name(content_path, style_path, args.format)
                    pair = f"{content_path.name} x {style_path.name}"
                    if target.exists():
                        run.keep_existing(target)
                    else:
                        times = stylize_one(model, args, content_path, style_path, target, pair, run)
                        if times is not None:
                            timing.pairs.append(PairTimes(*times, content_index=content_index))
                    run.advance(pair)
    except KeyboardInterrupt:
        run.say(f"Interrupted. {run.summary()} Run the same command again to continue.")
        return None
    run.say(run.summary())
    if not run.written:
        return {"images_timed": 0, "note": "every pair was already on disk; nothing was timed"}
    figures = {"images_timed": run.written, **timing.figures(), "device": str(device),
               "dtype": dtype_name(model.dtype), "scan": model.scan_backend, "size": args.size, "crop": args.crop}
    if device.type == "cuda":
        figures["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        figures["memory_kind"] = "CUDA memory allocated by PyTorch (weights included)"
    elif peak_mib():
        figures["peak_memory_mib"] = peak_mib()
        figures["memory_above_loaded_model_mib"] = peak_mib() - baseline
        figures["memory_kind"] = "process peak resident memory (runtime and weights included)"
    return figures


def stylize_one(model, args: argparse.Namespace, content_path: Path, style_path: Path, target: Path, pair: str,
                run: StylizeRun) -> tuple[float, float, float] | None:
    """One pair as the reference's time loop runs it, written to ``target`` (not timed); its
    (inputs, content, rest) seconds, or None when it failed (said, and counted in ``run``)."""
    device = model.device
    try:
        started = time.perf_counter()
        if args.crop:
            content, style = read_cropped(content_path, args.size), read_cropped(style_path, args.size)
        else:
            content, style = read_content(content_path, args.size), read_image(style_path)
        read = time.perf_counter()
        if args.seam_smoothing > 1:  # the grids' encodings cannot be told apart: all of it is the rest
            encoded = read
            stylized = model.stylize(content, style, seed=args.seed, seam_smoothing=args.seam_smoothing)
        else:
            encoding = model.encode_content(content)
            _synchronize(device)
            encoded = time.perf_counter()
            features = model.fuse(encoding, model.encode_style(style, encoding.padded_size), seed=args.seed)
            stylized = model.decode(features, encoding.image_size)
        _synchronize(device)
        done = time.perf_counter()
        write_image(stylized, target, overwrite=False, quality=FORMATS[args.format])
    except FileExistsError:  # made by someone else while this pair ran
        run.keep_existing(target)
        return None
    except Exception as error:  # noqa: BLE001 - said with its reason; the other pairs still run
        run.fail_pair(pair, error)
        return None
    run.written += 1
    return read - started, encoded - read, done - encoded


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(args: argparse.Namespace, stylized: list[Path], contents: list[Path], styles: list[Path], out: Path,
            metric_files: dict[str, Path]):
    """(scores, per-pair values, the metric weights' names and hashes), each pair measured once
    (kept in ``out``, so an interrupted measurement continues); None when interrupted."""
    device = torch.device(args.device) if args.device else default_device()
    try:
        networks = load_metric_networks(args.metrics_dir, device)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    weights = {key: {"file": path.name, "sha256": sha256_of(path)} for key, path in metric_files.items()}
    log = PairLog(out / PAIRS_FILE, sha256_of_text(json.dumps(weights, sort_keys=True)))
    pairs = [(s, c, st) for s, (c, st) in zip(stylized, [(c, s) for c in contents for s in styles])]
    bar = StylizeRun(len(pairs))
    kept = sum(log.get(*pair) is not None for pair in pairs)
    bar.say(f"Measuring {len(pairs)} pairs on {device}" + (f" ({kept} measured before, kept)" if kept else ""))
    started = time.perf_counter()
    evaluation = Evaluation(networks, device)
    per_pair = []
    try:
        for path, content, style in pairs:
            measurement = log.get(path, content, style)
            if measurement is None:
                measurement = evaluation.measure(path, content, style)
                log.add(path, content, style, measurement)
            evaluation.include(measurement)
            per_pair.append({"stylized": path.name, "content": content.name, "style": style.name,
                             "lpips": measurement.lpips, "lpips_gray": measurement.lpips_gray,
                             "cfsd": measurement.cfsd})
            bar.advance(f"{content.name} x {style.name}")
        scores = evaluation.scores()
    except KeyboardInterrupt:
        bar.say("Interrupted while measuring; the pairs measured are kept, run the same command again.")
        return None
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    bar.say(f"Measured in {time.perf_counter() - started:.1f} s")
    return scores, per_pair, weights


def sha256_of_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def paper_figures() -> dict:
    return dict(PAPER, seconds_per_image=PAPER_SECONDS_FOR_800 / 800, seconds_for_800=PAPER_SECONDS_FOR_800,
                peak_memory_mib=PAPER_PEAK_MIB)


def format_table(scores: dict, stylization: dict | None) -> str:
    """The metrics beside the paper's (lower is better throughout)."""
    paper = paper_figures()
    rows = [("ArtFID", scores["art_fid"], paper["art_fid"], ".2f"), ("FID", scores["fid"], paper["fid"], ".2f"),
            ("LPIPS", scores["lpips"], paper["lpips"], ".3f"), ("LPIPS gray", scores["lpips_gray"], None, ".3f"),
            ("CFSD", scores["cfsd"], paper["cfsd"], ".3f")]
    timed = stylization and "end_to_end_seconds_per_pair" in stylization
    if timed:
        rows.append(("s / 800 pairs, loop", stylization["end_to_end_seconds_per_pair"] * 800,
                     paper["seconds_for_800"], ".2f"))
        rows.append(("s / 800 pairs, model", stylization["model_seconds_per_pair"] * 800, None, ".2f"))
        if "peak_memory_mib" in stylization:
            rows.append(("peak MiB", stylization["peak_memory_mib"], paper["peak_memory_mib"], ".0f"))
    lines = [f"{'metric (lower is better)':<26}{'measured':>12}{'paper':>12}"]
    for name, value, reference, style in rows:
        lines.append(f"{name:<26}{format(value, style):>12}{format(reference, style) if reference else '-':>12}")
    lines.append(f"{scores['pairs']} pairs.")
    if timed:
        lines.append(f"Time: {stylization['pairs_timed']} pair(s) stylized in this run on {stylization['device']} "
                     f"({stylization['dtype']}) at batch 1, the first pair excluded (warm-up). 'loop' times what "
                     "the reference's eval_time.py times (reading and transforming both images, the content encoded "
                     "for every pair, the network call); 'model' the model's calls alone with each content encoded "
                     "once. Memory: " + stylization.get("memory_kind", "not measured on this device") + ". The "
                     "paper's: one GPU.")
    return "\n".join(lines)
