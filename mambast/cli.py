"""``python -m mambast``: stylize image files and convert official weights."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from .checkpoint import DTYPES, PICKLE_SUFFIXES, CheckpointError, convert_to_safetensors, missing_weights_message
from .imaging import IMAGE_SUFFIXES, read_image, resize_shorter_side, write_image
from .shuffle import new_seed

CHECKPOINT_ENV = "MAMBAST_CHECKPOINT"
DEFAULT_FOLDER = Path("models") / "mambast"


def collect_images(paths: list[str], role: str) -> list[Path]:
    """Image files named directly or found (non-recursively) in the named folders."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"error: {role} {name!r} is neither an image file nor a folder.")
    if not found:
        raise SystemExit(f"error: no {role} images found in {', '.join(paths)}.")
    return found


def find_checkpoint(explicit: str | None) -> Path:
    """--checkpoint, else $MAMBAST_CHECKPOINT, else ./models/mambast (a weights file or folder in it)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CHECKPOINT_ENV):
        return Path(os.environ[CHECKPOINT_ENV])
    folder = DEFAULT_FOLDER.resolve()
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
        if files:
            return files[0]
        if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
            return folder
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if any(p.suffix in PICKLE_SUFFIXES for p in sub.iterdir()):
                return sub
    raise SystemExit("error: " + missing_weights_message([f"--checkpoint, ${CHECKPOINT_ENV}", str(folder)]))


def _progress(done: int, total: int, started: float, label: str) -> None:
    width = 24
    filled = width * done // total
    elapsed = time.perf_counter() - started
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:6.1f}s {label[:40]:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _say_retry(tile: int) -> None:
    sys.stderr.write(f"\nOut of memory; retrying with {tile}x{tile} pixel tiles.\n")


def run_stylize(args: argparse.Namespace) -> int:
    from . import load
    from .tiling import stylize_with_fallback

    if args.tile and (args.tile < 16 or args.tile % 8):
        raise SystemExit(f"error: --tile {args.tile} must be 0 (off) or a multiple of 8 of at least 16.")

    contents = collect_images(args.content, "content")
    styles = collect_images(args.style, "style")
    try:
        model = load(find_checkpoint(args.checkpoint), device=args.device, dtype=args.dtype, scan=args.scan)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    seed = None if args.no_shuffle else (args.seed if args.seed is not None else new_seed())
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    total, done, started = len(contents) * len(styles), 0, time.perf_counter()
    print(f"Stylizing {len(contents)} content x {len(styles)} style image(s) on {model.device} "
          f"({model.dtype}, {model.scan_backend} scan), seed {seed if seed is not None else 'none (no shuffle)'}",
          file=sys.stderr)
    with torch.inference_mode():
        for content_path in contents:
            content = resize_shorter_side(read_image(content_path), args.size)
            content_encoding = None if args.tile else model.encode_content(content)
            for style_path in styles:
                style = read_image(style_path)
                if args.tile:
                    image = stylize_with_fallback(model, content, style, tile=args.tile, seed=seed,
                                                  shuffle=not args.no_shuffle, on_retry=_say_retry)
                else:
                    style_encoding = model.encode_style(style, content_encoding.padded_size)
                    features = model.fuse(content_encoding, style_encoding, seed=seed,
                                          shuffle=not args.no_shuffle)
                    image = model.decode(features, content_encoding.image_size)
                write_image(image, output / f"{content_path.stem}_stylized_{style_path.stem}.png")
                done += 1
                _progress(done, total, started, f"{content_path.name} x {style_path.name}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    try:
        count = convert_to_safetensors(args.source, args.destination, args.dtype)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Wrote {count} tensors ({args.dtype}) to {args.destination}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mambast", description="Mamba-ST style transfer.")
    commands = parser.add_subparsers(dest="command", required=True)

    stylize = commands.add_parser("stylize", help="stylize every content image with every style image")
    stylize.add_argument("content", nargs="+", help="content image files or folders")
    stylize.add_argument("--style", nargs="+", required=True, help="style image files or folders")
    stylize.add_argument("--checkpoint", help=f"weights folder or .safetensors (default: ${CHECKPOINT_ENV}, "
                                              f"then ./{DEFAULT_FOLDER})")
    stylize.add_argument("-o", "--output", required=True, help="output folder")
    stylize.add_argument("--size", type=int, default=512,
                         help="resize the content's shorter side to this many pixels (0 keeps the input size)")
    stylize.add_argument("--seed", type=int, help="seed of the style shuffle (default: a fresh one, printed)")
    stylize.add_argument("--no-shuffle", action="store_true", help="do not shuffle the style tokens")
    stylize.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    stylize.add_argument("--dtype", choices=list(DTYPES), default="float32",
                         help="dtype of the dense layers; the scan stays float32")
    stylize.add_argument("--tile", type=int, default=0,
                         help="stylize in overlapping tiles of this many pixels (multiple of 8; 0 = off), "
                              "for large images or little memory; halved automatically on out-of-memory")
    stylize.add_argument("--scan", choices=["auto", "chunked", "triton", "reference", "mamba_ssm"], default="auto",
                         help="selective-scan backend")
    stylize.set_defaults(run=run_stylize)

    convert = commands.add_parser("convert", help="convert official .pth weights to one .safetensors file")
    convert.add_argument("source", help="folder holding the official .pth files")
    convert.add_argument("destination", help="output .safetensors file")
    convert.add_argument("--dtype", choices=list(DTYPES), default="float32")
    convert.set_defaults(run=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
