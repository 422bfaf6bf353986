"""Install the released weights in one step: fetched from the authors' folder, or from what the user
downloaded (a folder, or the zip Drive hands over for a selection of several files).

Every file is written under a temporary folder beside the target, checked (read weights-only,
recognised by its keys, every tensor of its part present with the released shape) and only then
moved into place, one rename each. Whatever fails (no network, Drive's quota, a changed folder, a
file that is not the expected weights, Cancel) leaves the target as it was, and the error carries
the manual steps. A file already in the target is kept unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from ..network.checkpoint import (PARTS, PICKLE_SUFFIXES, CheckpointError, check_one_checkpoint,
                                  classify_state_dict, load_pickle, suffix_of)
from ..network.loading import released_shapes
from ..training.vgg import VGGEncoder
from .drive import AUTHORS_FOLDER, DriveClient, DriveError, RemoteFile, default_client

# The release's file names in the authors' folder, by part; the Mamba body is also published
# under the reference's older name.
RELEASED_NAMES = {"decoder": ("decoder_iter_160000.pth",), "embedding": ("embedding_iter_160000.pth",),
                  "mamba": ("mamba_iter_160000.pth", "transformer_iter_160000.pth")}
VGG_NAME = "vgg_normalised.pth"
# The largest file a zip may hold for us to look at (the release's largest is about 70 MB).
MAX_ZIP_MEMBER_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class FileProgress:
    """Where a download is: file ``index`` of ``count`` (``name``), ``done`` of ``total`` bytes."""

    name: str
    index: int
    count: int
    done: int
    total: int | None


@dataclasses.dataclass
class InstallReport:
    """What an installation did: the files it placed in ``target`` and the ones it kept there."""

    target: Path
    installed: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.installed:
            parts.append(f"installed {', '.join(self.installed)}")
        if self.kept:
            parts.append(f"kept {', '.join(self.kept)} (already there; --overwrite replaces them)")
        return f"{self.target}: " + ("; ".join(parts) if parts else "nothing to do") + "."


class InstallError(RuntimeError):
    """The weights could not be installed; the message says why and how to do it by hand."""

    def __init__(self, reason: str, target: Path, vgg: bool = False):
        self.reason = reason
        super().__init__(f"{reason}\n{manual_steps(target, vgg)}")


def manual_steps(target: Path, vgg: bool = False) -> str:
    """How to install the weights by hand, naming the folder, the files and where they go."""
    names = [RELEASED_NAMES[part][0] for part in PARTS] + ([VGG_NAME] if vgg else [])
    return (f"To install them by hand: download {', '.join(names[:-1])} and {names[-1]} from the authors' folder "
            f"{AUTHORS_FOLDER} and put them in {target} (create the folder if needed). Drive hands a selection of "
            f"several files over as a zip: python -m mambast download --from <that zip> --to {target} installs "
            "from it.")


def wanted_parts(vgg: bool) -> list[str]:
    return [*PARTS, *(["vgg"] if vgg else [])]


def identify(path: Path) -> str:
    """Which file of the release ``path`` is ("decoder", "embedding", "mamba" or "vgg"), by its keys,
    after checking every tensor of that part is there with the released shape; read weights-only.
    Raises :class:`CheckpointError` naming the file for anything else."""
    state = load_pickle(path, source=f"the official files are in the authors' folder {AUTHORS_FOLDER}")
    kind = classify_state_dict(state)
    if kind is None:
        raise CheckpointError(f"{path}: not a file of the Mamba-ST release: its tensors are none of the decoder, "
                              "embedding, mamba or VGG files'.")
    if kind == "vgg":
        expected = {key: value.shape for key, value in VGGEncoder().state_dict().items()}
    else:
        expected = {key[len(kind) + 1:]: shape for key, shape in released_shapes().items()
                    if key.startswith(kind + ".")}
    missing = [key for key in expected if key not in state]
    wrong = [key for key in expected if key in state and state[key].shape != expected[key]]
    if missing or wrong:
        key = (missing or wrong)[0]
        found = "missing" if missing else f"{tuple(state[key].shape)}"
        raise CheckpointError(f"{path}: a {kind} file, but not of the released model: tensor {key!r} is {found} "
                              f"(expected {tuple(expected[key])}); {len(missing) + len(wrong)} tensor(s) differ.")
    return kind


def download_weights(target: str | os.PathLike, client: DriveClient | None = None, vgg: bool = False,
                     overwrite: bool = False, progress: Callable[[FileProgress], None] | None = None
                     ) -> InstallReport:
    """Fetch the released weights (and with ``vgg`` the VGG of the training losses) from the
    authors' folder into ``target``. ``progress`` is called as bytes arrive; raising from it (e.g.
    :class:`~mambast.release.drive.DownloadStopped` on Cancel) stops the download, with the
    target left as it was. Raises :class:`InstallError` with the manual steps on any failure."""
    target = Path(target).expanduser()
    client = client or default_client()
    report = InstallReport(target)
    wanted = _missing_parts(target, wanted_parts(vgg), overwrite, report)
    if not wanted:
        return report
    try:
        listed = client.list_files(AUTHORS_FOLDER)
    except DriveError as error:
        raise InstallError(f"Could not reach the authors' folder: {error}.", target, vgg) from None
    remote = _pick_remote_files(listed, wanted, target, vgg)
    with _Staging(target, vgg) as staging:
        for index, (part, file) in enumerate(remote.items()):
            destination = staging.folder / file.name

            def report_bytes(done: int, total: int | None, name: str = file.name, index: int = index) -> None:
                if progress is not None:
                    progress(FileProgress(name, index, len(remote), done, total))

            try:
                client.fetch(file, destination, report_bytes)
            except DriveError as error:
                raise InstallError(f"Could not download from the authors' folder: {error}.", target, vgg) from None
            staging.add(part, destination, file.name, f"{file.name} from the authors' folder")
        staging.place(report)
    return report


def install_from(source: str | os.PathLike, target: str | os.PathLike, vgg: bool = False,
                 overwrite: bool = False) -> InstallReport:
    """Install the weights from what the user downloaded: a folder (searched with its sub-folders)
    or a zip, whose files are recognised by their keys, not their names."""
    source, target = Path(source).expanduser(), Path(target).expanduser()
    report = InstallReport(target)
    wanted = _missing_parts(target, wanted_parts(vgg), overwrite, report)
    if not wanted:
        return report
    if not source.exists():
        raise InstallError(f"{source}: no such file or folder.", target, vgg)
    with _Staging(target, vgg) as staging:
        if source.is_dir():
            candidates = [(path, path.name, str(path)) for path in sorted(source.rglob("*"))
                          if path.is_file() and suffix_of(path) in PICKLE_SUFFIXES]
            staged = _stage_copies(candidates, staging.folder)
        elif zipfile.is_zipfile(source):
            staged = _stage_zip_members(source, staging.folder, target, vgg)
        else:
            raise InstallError(f"{source}: neither a folder nor a zip file.", target, vgg)
        found: dict[str, list[tuple[Path, str, str]]] = {}
        for path, name, origin in staged:
            try:
                kind = identify(path)
            except CheckpointError:
                continue  # not one of the release's files: ignored, as the folder may hold others
            found.setdefault(kind, []).append((path, name, origin))
        absent = [part for part in wanted if part not in found]
        if absent:
            raise InstallError(f"{source}: no {' / '.join(absent)} weights among its .pth files (each is recognised "
                               "by its tensors, whatever its name).", target, vgg)
        for part in wanted:
            if len(found[part]) > 1:
                names = ", ".join(origin for _, _, origin in found[part])
                raise InstallError(f"{source}: several {part} files ({names}); keep one set of weights there.",
                                   target, vgg)
            path, name, origin = found[part][0]
            staging.add(part, path, name, origin, check=False)
        staging.place(report)
    return report


def comfyui_weights_folder(package_file: str | os.PathLike | None = None) -> Path | None:
    """``models/mambast/official`` of the ComfyUI this package sits in (its folder inside
    ``custom_nodes``), or None when it is not inside a ComfyUI."""
    pack = Path(package_file or __file__).resolve().parents[2]
    comfyui = pack.parent.parent
    if pack.parent.name == "custom_nodes" and (comfyui / "folder_paths.py").is_file():
        return comfyui / "models" / "mambast" / "official"
    return None


def _missing_parts(target: Path, wanted: list[str], overwrite: bool, report: InstallReport) -> list[str]:
    """The parts to install: all with ``overwrite``, else those whose released file is not in the target."""
    missing = []
    for part in wanted:
        names = RELEASED_NAMES.get(part, (VGG_NAME,))
        present = [name for name in names if (target / name).is_file()]
        if present and not overwrite:
            report.kept.append(present[0])
        else:
            missing.append(part)
    return missing


def _pick_remote_files(listed: Iterable[RemoteFile], wanted: list[str], target: Path, vgg: bool
                       ) -> dict[str, RemoteFile]:
    by_name = {file.name: file for file in listed}
    picked, absent = {}, []
    for part in wanted:
        names = RELEASED_NAMES.get(part, (VGG_NAME,))
        match = next((by_name[name] for name in names if name in by_name), None)
        if match is None:
            absent.append(names[0])
        else:
            picked[part] = match
    if absent:
        raise InstallError(f"The authors' folder no longer lists {', '.join(absent)} (it lists "
                           f"{', '.join(sorted(by_name)) or 'nothing'}).", target, vgg)
    return picked


def _stage_copies(candidates: list[tuple[Path, str, str]], folder: Path) -> list[tuple[Path, str, str]]:
    """(copy, name, origin) of each candidate (path, name, origin), copied into ``folder``."""
    staged = []
    for number, (path, name, origin) in enumerate(candidates):
        copy = folder / f"candidate-{number}.pth"
        shutil.copyfile(path, copy)
        staged.append((copy, name, origin))
    return staged


def _stage_zip_members(source: Path, folder: Path, target: Path, vgg: bool) -> list[tuple[Path, str, str]]:
    """The zip's weights files copied out under names of ours (a member's own path is never used
    as a path here), each at most ``MAX_ZIP_MEMBER_BYTES``."""
    staged = []
    try:
        with zipfile.ZipFile(source) as archive:
            for number, member in enumerate(archive.infolist()):
                if member.is_dir() or suffix_of(Path(member.filename)) not in PICKLE_SUFFIXES:
                    continue
                if member.file_size > MAX_ZIP_MEMBER_BYTES:
                    raise InstallError(f"{source}: {member.filename} would be {member.file_size:,} bytes, more than "
                                       "any file of the release.", target, vgg)
                copy = folder / f"candidate-{number}.pth"
                with archive.open(member) as reading, open(copy, "wb") as writing:
                    _copy_at_most(reading, writing, MAX_ZIP_MEMBER_BYTES)
                name = Path(member.filename.replace("\\", "/")).name
                staged.append((copy, name, f"{member.filename} in {source.name}"))
    except (zipfile.BadZipFile, OSError, RuntimeError) as error:
        if isinstance(error, InstallError):
            raise
        raise InstallError(f"{source}: the zip cannot be read ({error}); download it again.", target, vgg) from None
    return staged


def _copy_at_most(reading, writing, limit: int) -> None:
    copied = 0
    while chunk := reading.read(1 << 20):
        copied += len(chunk)
        if copied > limit:
            raise OSError(f"a member is larger than {limit:,} bytes")
        writing.write(chunk)


class _Staging:
    """A hidden folder beside the target that receives the files; :meth:`place` moves the checked
    files into the target. Leaving the block any other way removes it and every folder it made."""

    def __init__(self, target: Path, vgg: bool):
        self.target, self.vgg = target, vgg
        self.created: list[Path] = []
        self.files: dict[str, tuple[Path, str]] = {}  # part -> (staged file, name to install it under)

    def __enter__(self) -> "_Staging":
        missing = [folder for folder in [self.target.parent, *self.target.parent.parents] if not folder.exists()]
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.incoming-", dir=self.target.parent))
        except OSError as error:
            self._remove_created(missing)
            raise InstallError(f"Cannot write beside {self.target}: {error.strerror or error}.", self.target,
                               self.vgg) from None
        self.created = missing
        return self

    def add(self, part: str, path: Path, name: str, origin: str, check: bool = True) -> None:
        """Stage ``path`` as the ``part`` file, to be installed as ``name``; unless checked already,
        it must be that part of the released model (``origin`` names it in errors)."""
        if check:
            try:
                kind = identify(path)
            except CheckpointError as error:
                raise InstallError(f"{origin} is not the expected weights: {error}", self.target, self.vgg) from None
            if kind != part:
                raise InstallError(f"{origin} holds the {kind} weights, not the {part} ones.", self.target, self.vgg)
        self.files[part] = (path, name)

    def place(self, report: InstallReport) -> None:
        """Move the staged files into the target, under their release names."""
        names = dict(self.files)
        self._check_one_set(names)
        existed = self.target.exists()
        self.target.mkdir(parents=True, exist_ok=True)
        if not existed:
            self.created.append(self.target)
        for part, (path, name) in names.items():
            os.replace(path, self.target / name)
            report.installed.append(name)
        self.created = []  # placed: nothing of it is removed any more

    def _check_one_set(self, names: dict[str, tuple[Path, str]]) -> None:
        """Refuse to leave the target with two files of one part or of two checkpoints."""
        if not self.target.is_dir():
            return
        found: dict[str, list[Path]] = {part: [self.target / name] for part, (_, name) in names.items()
                                        if part in PARTS}
        for path in sorted(self.target.iterdir()):
            if not path.is_file() or suffix_of(path) not in PICKLE_SUFFIXES:
                continue
            if any(path.name == name for _, name in names.values()):
                continue  # replaced (overwrite) by the staged file of that name
            try:
                kind = identify(path)
            except CheckpointError:
                continue
            if kind in names and kind in PARTS:
                raise InstallError(f"{self.target} already holds {path.name}, a {kind} file under another name; "
                                   "remove it, or install into another folder (--to).", self.target, self.vgg)
            found.setdefault(kind, []).append(path)
        try:
            check_one_checkpoint(self.target, {part: paths for part, paths in found.items() if part in PARTS})
        except CheckpointError as error:
            raise InstallError(str(error), self.target, self.vgg) from None

    def __exit__(self, kind, error, traceback) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if error is not None:
            self._remove_created(self.created)

    @staticmethod
    def _remove_created(folders: list[Path]) -> None:
        for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
            try:
                folder.rmdir()  # only if empty: never what was there before
            except OSError:
                pass


__all__ = ["FileProgress", "InstallError", "InstallReport", "comfyui_weights_folder",
           "download_weights", "identify", "install_from", "manual_steps"]
