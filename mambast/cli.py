"""``python -m mambast``: stylize image files and convert official weights."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from .checkpoint import DTYPES, PICKLE_SUFFIXES, CheckpointError, convert_to_safetensors, missing_weights_message
from .imaging import IMAGE_SUFFIXES, ImageFileError, read_image, resize_shorter_side, write_image
from .scan import CHOICES as SCAN_CHOICES
from .shuffle import new_seed

CHECKPOINT_ENV = "MAMBAST_CHECKPOINT"
DEFAULT_FOLDER = Path("models") / "mambast"


def collect_images(paths: list[str], role: str) -> list[Path]:
    """Image files named directly or found (non-recursively) in the named folders.

    In a folder only files with an image suffix count, hidden ones (".name", e.g. macOS's
    "._photo.jpg") excepted; the rest are ignored. A file named directly is taken whatever
    its suffix: reading it says whether it is an image.
    """
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
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


class StylizeRun:
    """What a ``stylize`` run did so far, its progress bar and its messages on stderr."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.written = self.kept = self.failed_pairs = 0
        self.unreadable: dict[Path, str] = {}  # input -> why it was skipped, said once
        self.written_by: dict[Path, str] = {}  # output -> the pair that wrote it in this run
        self._bar_open = False

    def say(self, message: str) -> None:
        """A line on stderr below the progress bar."""
        if self._bar_open:
            sys.stderr.write("\n")
            self._bar_open = False
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def advance(self, label: str) -> None:
        """One more pair dealt with (written, kept or failed): redraw the progress bar."""
        self.done += 1
        width = 24
        filled = width * self.done // self.total
        elapsed = time.perf_counter() - self.started
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:6.1f}s "
                         f"{label[:40]:<40}")
        self._bar_open = self.done < self.total
        if not self._bar_open:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def skip_input(self, role: str, path: Path, error: Exception) -> None:
        reason = str(error) if isinstance(error, ImageFileError) else f"{path}: {_describe(error)}"
        self.unreadable[path] = reason
        self.say(f"skipped {role}: {reason}")

    def fail_pair(self, pair: str, error: Exception | str) -> None:
        self.failed_pairs += 1
        self.say(f"failed {pair}: {error if isinstance(error, str) else _describe(error)}")

    def keep_existing(self, target: Path) -> None:
        self.kept += 1
        self.say(f"{target} exists, skipped (use --overwrite to replace it).")

    @property
    def failed(self) -> bool:
        return bool(self.unreadable or self.failed_pairs)

    def summary(self) -> str:
        parts = [f"{self.written} of {self.total} outputs written"]
        if self.unreadable:
            parts.append(_count(len(self.unreadable), "input") + " skipped")
        if self.failed_pairs:
            parts.append(_count(self.failed_pairs, "pair") + " failed")
        if self.kept:
            parts.append(_count(self.kept, "existing output") + " kept (use --overwrite to replace)")
        return "; ".join(parts) + "."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _describe(error: Exception) -> str:
    """An exception in a line; an unexpected kind (a bug, most likely) also gets its traceback."""
    from .tiling import is_out_of_memory

    if is_out_of_memory(error):
        return f"out of memory ({error}); try --tile 512, a smaller --size or --dtype float16."
    if isinstance(error, (ValueError, OSError)):
        return str(error)
    return f"{type(error).__name__}: {error}\n" + "".join(traceback.format_exception(type(error), error,
                                                                                   error.__traceback__)).rstrip()


def read_content(path: Path, size: int) -> torch.Tensor:
    """The content image, its shorter side resized to ``size`` (0 keeps it), (1, 3, H, W).

    An elongated image would grow past the pixel limit that reading enforces (a 10000 x 1
    strip at 512 would be 2.6 G pixels), so it is refused, with what to do, before resizing.
    """
    from PIL import Image

    image = read_image(path)
    height, width = image.shape[-2:]
    limit = Image.MAX_IMAGE_PIXELS
    if size > 0 and limit is not None:
        pixels = round(height * width * (size / min(height, width)) ** 2)
        if pixels > limit:
            raise ImageFileError(f"{path} is {width}x{height} pixels; resized to a shorter side of {size} (--size) "
                                 f"it would have about {pixels:,} pixels, more than the limit of {limit:,} "
                                 "(PIL.Image.MAX_IMAGE_PIXELS). Crop it to a less elongated shape, or pass a "
                                 "smaller --size (0 keeps its size).")
    return resize_shorter_side(image, size)


def run_stylize(args: argparse.Namespace) -> int:
    from . import load
    from .tiling import check_tile_size

    try:
        check_tile_size(args.tile)
    except ValueError as error:
        raise SystemExit(f"error: --tile: {error}") from None

    contents = collect_images(args.content, "content")
    styles = collect_images(args.style, "style")
    try:
        model = load(find_checkpoint(args.checkpoint), device=args.device, dtype=args.dtype, scan=args.scan)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    seed = None if args.no_shuffle else (args.seed if args.seed is not None else new_seed())
    output = Path(args.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: cannot make the output folder {output}: {error.strerror or error}.") from None
    run = StylizeRun(len(contents) * len(styles))
    print(f"Stylizing {len(contents)} content x {len(styles)} style image(s) on {model.device} "
          f"({model.dtype}, {model.scan_backend} scan), seed {seed if seed is not None else 'none (no shuffle)'}",
          file=sys.stderr)
    try:
        with torch.inference_mode():
            for content_path in contents:
                stylize_content(model, args, content_path, styles, output, seed, run)
    except KeyboardInterrupt:
        # write_image has removed its temporary file: every output on disk is whole.
        run.say(f"Interrupted. {run.summary()}")
        return 130
    run.say(run.summary())
    return 1 if run.failed else 0


def stylize_content(model, args: argparse.Namespace, content_path: Path, styles: list[Path], output: Path,
                    seed: int | None, run: StylizeRun) -> None:
    """Stylize one content image with every style, writing each output whole; errors go to ``run``.

    The content is read and encoded once, and only if some output is still to be written.
    """
    content = None
    for style_path in styles:
        pair = f"{content_path.name} x {style_path.name}"
        target = output / f"{content_path.stem}_stylized_{style_path.stem}.png"
        if output_is_free(target, pair, args.overwrite, run):
            if content is None and content_path not in run.unreadable:
                content = prepare_content(model, args, content_path, run)
            style = read_input("style", style_path, run) if content is not None else None
            if style is not None:
                stylize_pair(model, args, content, style, target, pair, seed, run)
        run.advance(pair)


def output_is_free(target: Path, pair: str, overwrite: bool, run: StylizeRun) -> bool:
    """Whether ``target`` may be written: not written earlier in this run, and new unless ``overwrite``."""
    if target in run.written_by:
        run.fail_pair(pair, f"{target} was already written in this run from {run.written_by[target]}; "
                            "give those inputs different names.")
        return False
    if target.exists() and not overwrite:
        run.keep_existing(target)
        return False
    return True


def read_input(role: str, path: Path, run: StylizeRun) -> torch.Tensor | None:
    """The image at ``path``, or None (said once) when it cannot be read."""
    if path in run.unreadable:
        return None
    try:
        return read_image(path)
    except Exception as error:
        run.skip_input(role, path, error)
        return None


def prepare_content(model, args: argparse.Namespace, path: Path, run: StylizeRun):
    """(image at --size, its encoding or None when tiling), or None (said) when it cannot be used."""
    try:
        image = read_content(path, args.size)
        return image, None if args.tile else model.encode_content(image)
    except Exception as error:
        run.skip_input("content", path, error)
        return None


def stylize_pair(model, args: argparse.Namespace, content, style: torch.Tensor, target: Path, pair: str,
                 seed: int | None, run: StylizeRun) -> None:
    """Stylize one pair and write it to ``target``; a failure is said and counted, and the run goes on."""
    from .tiling import stylize_with_fallback

    image, content_encoding = content
    try:
        if args.tile:
            stylized = stylize_with_fallback(model, image, style, tile=args.tile, seed=seed,
                                             shuffle=not args.no_shuffle, on_retry=_say_retry(run))
        else:
            style_encoding = model.encode_style(style, content_encoding.padded_size)
            features = model.fuse(content_encoding, style_encoding, seed=seed, shuffle=not args.no_shuffle)
            stylized = model.decode(features, content_encoding.image_size)
        write_image(stylized, target, overwrite=args.overwrite)
    except FileExistsError:  # made by someone else while this pair ran
        run.keep_existing(target)
    except Exception as error:
        run.fail_pair(pair, error)
    else:
        run.written += 1
        run.written_by[target] = pair


def _say_retry(run: StylizeRun):
    return lambda tile: run.say(f"Out of memory; retrying with {tile}x{tile} pixel tiles.")


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

    stylize = commands.add_parser(
        "stylize", help="stylize every content image with every style image",
        description="Stylize every content image with every style image, writing <content>_stylized_<style>.png "
                    f"into the output folder. In a folder, the files ending in {', '.join(IMAGE_SUFFIXES)} are "
                    "taken (not subfolders, not hidden files); other files are ignored. A file that cannot be "
                    "read, or a pair that fails, is named on stderr and skipped, and the rest still run. Each "
                    "output is written whole or not at all; an existing one is kept unless --overwrite. Exit "
                    "status: 0 when every pair was written or kept, 1 when an input was skipped or a pair "
                    "failed, 130 on Ctrl-C.")
    stylize.add_argument("content", nargs="+", help="content image files or folders")
    stylize.add_argument("--style", nargs="+", required=True, help="style image files or folders")
    stylize.add_argument("--checkpoint", help=f"weights folder or .safetensors (default: ${CHECKPOINT_ENV}, "
                                              f"then ./{DEFAULT_FOLDER})")
    stylize.add_argument("-o", "--output", required=True, help="output folder")
    stylize.add_argument("--overwrite", action="store_true",
                         help="replace outputs that already exist (default: keep them and skip those pairs)")
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
    stylize.add_argument("--scan", choices=list(SCAN_CHOICES), default="auto",
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
