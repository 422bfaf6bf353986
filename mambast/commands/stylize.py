"""``python -m mambast stylize``: every content image with every style image, into a folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..controls.shuffle import new_seed
from ..controls.tiling import check_tile_size, stylize_with_fallback
from ..kernels.scan import CHOICES as SCAN_CHOICES
from ..network.checkpoint import DTYPES, CheckpointError
from ..network.loading import load
from ..run.precision import automatic_dtype
from ..utils.imaging import IMAGE_SUFFIXES, ImageFileError, read_image, resize_shorter_side, write_image
from .console import StylizeRun
from .inputs import (CHECKPOINT_ENV, DEFAULT_FOLDER, add_seam_smoothing_argument, collect_images, find_checkpoint,
                     output_name)

if TYPE_CHECKING:
    from ..training.distributed import Ranks


def add_parser(commands) -> None:
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
    stylize.add_argument("--dtype", choices=["auto", *DTYPES], default="float32",
                         help="dtype of the dense layers; the scan stays float32. auto: bfloat16 on a CPU with "
                              "native bfloat16 where it measures faster, float32 elsewhere")
    stylize.add_argument("--tile", type=int, default=0,
                         help="stylize in overlapping tiles of this many pixels (multiple of 8; 0 = off), "
                              "for large images or little memory; halved automatically on out-of-memory")
    stylize.add_argument("--scan", choices=list(SCAN_CHOICES), default="auto",
                         help="selective-scan backend")
    add_seam_smoothing_argument(stylize)
    stylize.set_defaults(run=run_stylize)



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
    from ..training.distributed import rank_device

    try:
        check_tile_size(args.tile)
    except ValueError as error:
        raise SystemExit(f"error: --tile: {error}") from None

    contents = collect_images(args.content, "content")
    styles = collect_images(args.style, "style")
    ranks = torchrun_ranks_or_exit()
    pairs = pairs_of_rank(contents, styles, ranks)
    try:
        device = rank_device(args.device, ranks)
        dtype = automatic_dtype(device) if args.dtype == "auto" else args.dtype
        model = load(find_checkpoint(args.checkpoint), device=device, dtype=dtype, scan=args.scan)
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    seed = None if args.no_shuffle else (args.seed if args.seed is not None else new_seed())
    output = Path(args.output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: cannot make the output folder {output}: {error.strerror or error}.") from None
    count = sum(len(its_styles) for _, its_styles in pairs)
    run = StylizeRun(count, show_bar=ranks.is_main,
                     prefix=f"rank {ranks.rank}: " if ranks.distributed else "")
    share = f", {count} pair(s) on this rank of {ranks.world_size}" if ranks.distributed else ""
    run.say(f"Stylizing {len(contents)} content x {len(styles)} style image(s){share} on {model.device} "
            f"({model.dtype}, {model.scan_backend} scan), seed {seed if seed is not None else 'none (no shuffle)'}")
    try:
        with torch.inference_mode():
            for content_path, its_styles in pairs:
                stylize_content(model, args, content_path, its_styles, output, seed, run)
    except KeyboardInterrupt:
        # write_image has removed its temporary file: every output on disk is whole.
        run.say(f"Interrupted. {run.summary()}")
        return 130
    run.say(run.summary())
    return 1 if run.failed else 0


def torchrun_ranks_or_exit() -> "Ranks":
    """This process's place under torchrun (rank 0 of 1 alone); a bad environment exits with its error."""
    from ..training.distributed import torchrun_ranks

    try:
        return torchrun_ranks()
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def pairs_of_rank(contents: list[Path], styles: list[Path], ranks: "Ranks") -> list[tuple[Path, list[Path]]]:
    """The content x style pairs this rank stylizes, grouped by content (each content is encoded once).
    Pair number i (content-major) goes to rank i mod N, where N processes run under torchrun;
    pairs that would write the same output file (photo.png and photo.jpg) go to the rank of the
    first of them, so that no two ranks ever write one file: that rank names the clash.
    """
    first_pair_of: dict[str, int] = {}
    mine: dict[Path, list[Path]] = {}
    for number, (content, style) in enumerate((c, s) for c in contents for s in styles):
        owner = first_pair_of.setdefault(output_name(content, style), number) % ranks.world_size
        if owner == ranks.rank:
            mine.setdefault(content, []).append(style)
    return list(mine.items())


def stylize_content(model, args: argparse.Namespace, content_path: Path, styles: list[Path], output: Path,
                    seed: int | None, run: StylizeRun) -> None:
    """Stylize one content image with every style, writing each output whole; errors go to ``run``.

    The content is read and encoded once, and only if some output is still to be written.
    """
    content = None
    for style_path in styles:
        pair = f"{content_path.name} x {style_path.name}"
        target = output / output_name(content_path, style_path)
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
        if args.tile or args.seam_smoothing > 1:  # stylized whole by stylize_with_fallback
            return image, None
        with run.timing(model.device):
            return image, model.encode_content(image)
    except Exception as error:
        run.skip_input("content", path, error)
        return None


def stylize_pair(model, args: argparse.Namespace, content, style: torch.Tensor, target: Path, pair: str,
                 seed: int | None, run: StylizeRun) -> None:
    """Stylize one pair and write it to ``target``; a failure is said and counted, and the run goes on."""
    image, content_encoding = content
    try:
        with run.timing(model.device):
            if content_encoding is None:
                stylized = stylize_with_fallback(model, image, style, tile=args.tile, seed=seed,
                                                 shuffle=not args.no_shuffle, on_retry=_say_retry(run),
                                                 seam_smoothing=args.seam_smoothing)
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
