"""``python -m mambast``: stylize image files, convert official weights, train, evaluate."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import DTYPES, PICKLE_SUFFIXES, CheckpointError, convert_to_safetensors, missing_weights_message
from .imaging import IMAGE_SUFFIXES, ImageFileError, read_image, resize_shorter_side, write_image
from .precision import automatic_dtype
from .scan import CHOICES as SCAN_CHOICES
from .shuffle import new_seed

if TYPE_CHECKING:
    from .training.distributed import Ranks

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

    def __init__(self, total: int, show_bar: bool = True, prefix: str = ""):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        # Under torchrun only rank 0 draws the bar; every rank's messages carry its rank.
        self.show_bar, self.prefix = show_bar, prefix
        self.written = self.kept = self.failed_pairs = 0
        self.unreadable: dict[Path, str] = {}  # input -> why it was skipped, said once
        self.written_by: dict[Path, str] = {}  # output -> the pair that wrote it in this run
        self.model_seconds = 0.0  # in the model's calls (encodings, fusion, decoding), reading and writing excluded
        self._bar_open = False

    @contextmanager
    def timing(self, device: torch.device):
        """Add the time of the block to :attr:`model_seconds`, the device's queued work included."""
        _synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _synchronize(device)
            self.model_seconds += time.perf_counter() - start

    def say(self, message: str) -> None:
        """A line on stderr below the progress bar."""
        if self._bar_open:
            sys.stderr.write("\n")
            self._bar_open = False
        sys.stderr.write(self.prefix + message + "\n")
        sys.stderr.flush()

    def advance(self, label: str) -> None:
        """One more pair dealt with (written, kept or failed): redraw the progress bar."""
        self.done += 1
        if not self.show_bar:
            return
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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
    from .training.distributed import rank_device

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
    from .training.distributed import torchrun_ranks

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


def output_name(content: Path, style: Path) -> str:
    """The file name of the stylization of ``content`` with ``style``."""
    return f"{content.stem}_stylized_{style.stem}.png"


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
    from .tiling import stylize_with_fallback

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


def run_convert(args: argparse.Namespace) -> int:
    try:
        count = convert_to_safetensors(args.source, args.destination, args.dtype)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Wrote {count} tensors ({args.dtype}) to {args.destination}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .training import distributed
    from .training.data import TrainingDataError
    from .training.losses import LossWeights
    from .training.state import TrainingStateError
    from .training.trainer import Trainer, TrainingOptions
    from .training.vgg import VGGWeightsNotFound

    options = TrainingOptions(
        content_dir=Path(args.content_dir), style_dir=Path(args.style_dir), vgg=Path(args.vgg), out=Path(args.out),
        init=Path(args.init) if args.init else None, layers=args.layers, max_iter=args.max_iter,
        batch_size=args.batch_size, lr=args.lr, crop=args.crop, load_size=args.load_size,
        weights=LossWeights(args.content_weight, args.style_weight, args.identity1_weight, args.identity2_weight),
        save_every=args.save_every, preview_every=args.preview_every, log_every=args.log_every,
        precision=args.precision, device=args.device, workers=args.workers, seed=args.seed, resume=args.resume)
    try:
        try:
            # Setting up reads every input (options, VGG, checkpoint, folders, state): its ValueErrors
            # are about them. Once running, only the data can fail that way.
            trainer = Trainer(options)
        except (VGGWeightsNotFound, ValueError) as error:
            raise SystemExit(f"error: {error}") from None
        try:
            reached = trainer.run()
        except TrainingDataError as error:
            raise SystemExit(f"error: {error}") from None
        except KeyboardInterrupt:
            print("Interrupted; the last saved state is in " f"{options.out}.", file=sys.stderr)
            return 130
    finally:
        distributed.stop()
    return 0 if reached >= options.max_iter else 130


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

    convert = commands.add_parser("convert", help="convert official .pth weights to one .safetensors file")
    convert.add_argument("source", help="folder holding the official .pth files")
    convert.add_argument("destination", help="output .safetensors file")
    convert.add_argument("--dtype", choices=list(DTYPES), default="float32")
    convert.set_defaults(run=run_convert)
    add_train_parser(commands)
    from .evaluation.command import add_evaluate_parser

    add_evaluate_parser(commands)
    return parser


def add_seam_smoothing_argument(parser: argparse.ArgumentParser) -> None:
    from .seams import SEAM_SMOOTHING_CHOICES

    parser.add_argument("--seam-smoothing", type=int, choices=SEAM_SMOOTHING_CHOICES, default=0, metavar="N",
                        help="blend stylizations on N token grids shifted by part of a patch against the 8 px "
                             f"patch seams ({', '.join(map(str, SEAM_SMOOTHING_CHOICES[2:]))}; about N times "
                             "the time; default 0: off, the paper's output)")


def add_train_parser(commands) -> None:
    """``train``: the reference's recipe by default, on one process or many (torchrun)."""
    from .training.trainer import PRECISIONS, TrainingOptions
    from .training.losses import LossWeights

    defaults, weights = TrainingOptions(Path(), Path(), Path()), LossWeights()
    train = commands.add_parser(
        "train", help="train (or fine-tune) Mamba-ST on folders of content and style images",
        description="Train Mamba-ST as the reference does: Adam over all its parameters on the content, style and "
                    "identity losses of VGG-19 features, random crops of resized images, the official three "
                    "checkpoint files (and one .safetensors) in OUT/iter_<N>/ every --save-every iterations. "
                    "OUT also gets training_state.pt (for --resume), train_log.jsonl, previews/ (content | style | "
                    "stylized) and tensorboard/ when TensorBoard is installed. Ctrl-C or SIGTERM stops after the "
                    "current iteration with the state saved. On several GPUs or processes run it under torchrun: "
                    "torchrun --nproc_per_node N -m mambast train ... (data parallel, each process with its own "
                    "images and draws; process 0 writes the files).")
    train.add_argument("--content-dir", required=True,
                       help="folder of content images (photographs, e.g. MS-COCO), flat or one level of sub-folders")
    train.add_argument("--style-dir", required=True,
                       help="folder of style images (paintings, e.g. WikiArt), flat or one level of sub-folders")
    train.add_argument("--vgg", required=True,
                       help="the reference's vgg_normalised.pth (or a .safetensors with its keys), for the losses")
    train.add_argument("--init", help="start from these weights (an official folder or a .safetensors: "
                                      "fine-tuning) instead of a new network")
    train.add_argument("--layers", type=int, default=defaults.layers,
                       help="encoder and decoder blocks of a new network (ignored with --init)")
    train.add_argument("--out", default=str(defaults.out), help="folder for checkpoints, state, log and previews")
    train.add_argument("--max-iter", type=int, default=defaults.max_iter, help="iterations to train to")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="images per iteration and per process: under torchrun with N processes an iteration "
                            "sees N times as many")
    train.add_argument("--lr", type=float, default=defaults.lr,
                       help="Adam's constant learning rate (the reference's default; its script passes 1e-4)")
    train.add_argument("--crop", type=int, default=defaults.crop,
                       help="side of the random square crops (multiple of 8, at least 32)")
    train.add_argument("--load-size", type=int, default=defaults.load_size,
                       help="images are resized to this square before cropping")
    for name, help_text in (("content", "content loss"), ("style", "style loss"),
                            ("identity1", "identity loss on pixels"), ("identity2", "identity loss on VGG features")):
        train.add_argument(f"--{name}-weight", type=float, default=getattr(weights, name),
                           help=f"weight of the {help_text}")
    train.add_argument("--save-every", type=int, default=defaults.save_every,
                       help="iterations between checkpoints (one is also written at the end)")
    train.add_argument("--preview-every", type=int, default=defaults.preview_every,
                       help="iterations between preview images (0: none)")
    train.add_argument("--log-every", type=int, default=defaults.log_every,
                       help="iterations per line of train_log.jsonl (each line holds their means)")
    train.add_argument("--precision", choices=list(PRECISIONS), default=defaults.precision,
                       help="autocast dtype of the dense layers (fp16 with loss scaling); the scan stays float32")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: the best available; under torchrun "
                                        "each process takes the GPU of its local rank)")
    train.add_argument("--workers", type=int, default=defaults.workers,
                       help="processes reading images ahead, per image stream (0: read in the training process); "
                            "the images are the same whatever the number")
    train.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed of the initial weights, the data order and crops, the style permutations and "
                            "DropPath")
    train.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out (exactly as if it had not stopped)")
    train.set_defaults(run=run_train)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
