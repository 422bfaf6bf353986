"""``python -m mambast download``: the released weights installed in one step, from the authors'
Google Drive folder or from what the user downloaded (``--from`` a folder or Drive's zip)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..release import (AUTHORS_FOLDER, RELEASED_NAMES, VGG_NAME, FileProgress, InstallError, comfyui_weights_folder,
                       download_weights, install_from)
from .inputs import DEFAULT_FOLDER

FALLBACK_TARGET = DEFAULT_FOLDER / "official"


def add_parser(commands) -> None:
    names = ", ".join(names[0] for names in RELEASED_NAMES.values())
    download = commands.add_parser(
        "download", help="install the released weights (from the authors' folder, or from files you downloaded)",
        description=f"Install the released weights ({names}) into one folder: fetched from the authors' Google "
                    f"Drive folder {AUTHORS_FOLDER}, or with --from taken from a folder or the zip Drive hands over "
                    "when several files are selected (files are recognised by their tensors, not their names). "
                    "Each file is checked (read weights-only, every tensor with the released shape) before it is "
                    "moved into place; on any failure nothing is left behind and the manual steps are printed. "
                    "Exit status: 0 when the weights are installed (or already were), 1 otherwise, 130 on Ctrl-C.")
    download.add_argument("--to", help="the folder to install into (default: models/mambast/official of the ComfyUI "
                                       f"this pack sits in, else ./{FALLBACK_TARGET})")
    download.add_argument("--from", dest="source", metavar="PATH",
                          help="install from this folder or zip instead of downloading")
    download.add_argument("--vgg", action="store_true",
                          help=f"also install {VGG_NAME}, the VGG-19 that training's losses need")
    download.add_argument("--overwrite", action="store_true", help="replace files already in the folder")
    download.set_defaults(run=run_download)


def default_target() -> tuple[Path, str]:
    """The folder to install into when --to is not given, and why that one."""
    folder = comfyui_weights_folder()
    if folder is not None:
        return folder, "the models folder of the ComfyUI this pack is installed in"
    return FALLBACK_TARGET, "where python -m mambast stylize looks; not inside a ComfyUI, give --to for another place"


def run_download(args: argparse.Namespace) -> int:
    if args.to:
        target = Path(args.to)
    else:
        target, why = default_target()
        print(f"Installing into {target} ({why}).", file=sys.stderr)
    bar = ProgressLine()
    try:
        if args.source:
            report = install_from(args.source, target, vgg=args.vgg, overwrite=args.overwrite)
        else:
            report = download_weights(target, vgg=args.vgg, overwrite=args.overwrite, progress=bar.show)
    except InstallError as error:
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"Interrupted; {target} is as it was.", file=sys.stderr)
        return 130
    bar.close()
    print(report.summary())
    return 0


class ProgressLine:
    """One line on stderr redrawn as a download goes: the file, its bytes and a bar."""

    WIDTH = 24

    def __init__(self):
        self.open = False
        self.last = 0.0

    def show(self, progress: FileProgress) -> None:
        now = time.monotonic()
        finished = progress.total is not None and progress.done >= progress.total
        if now - self.last < 0.1 and not finished:
            return
        self.last = now
        if progress.total:
            filled = self.WIDTH * progress.done // progress.total
            bar = (f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                   f"{progress.done / 2**20:.1f}/{progress.total / 2**20:.1f} MiB")
        else:
            bar = f"{progress.done / 2**20:.1f} MiB"
        sys.stderr.write(f"\r{progress.index + 1}/{progress.count} {progress.name[:32]:<32} {bar}")
        sys.stderr.flush()
        self.open = True

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open = False
