"""Installing the released weights in one step (``mambast.release``, ``python -m mambast download``).

The network is never used: the Drive client is replaced where it is called, by stand-ins that
serve random weights in the official layout, fail half-way, serve the wrong files or answer with
Drive's quota error. Every failure must leave the target folder as it was.
"""

from __future__ import annotations

import importlib
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import mambast
from mambast.commands import main as run_command
from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors, write_official_folder
from mambast.release import (DownloadStopped, DriveError, FolderClient, InstallError, RemoteFile, download_weights,
                             drive, identify, install_from)
from mambast.release.install import comfyui_weights_folder
from mambast.training.vgg import VGGEncoder

RELEASED = {"decoder_iter_160000.pth", "embedding_iter_160000.pth", "mamba_iter_160000.pth"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included) with its bytes: what "as it was" means."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def authors_folder(tmp_path_factory) -> Path:
    """Stands in for the authors' Drive folder: the released file names, random weights of the
    released shapes, the VGG file and a note, as the real folder may hold other files."""
    folder = tmp_path_factory.mktemp("drive")
    write_official_folder(random_official_tensors(seed=5), folder)
    torch.save({k: torch.randn(v.shape) for k, v in VGGEncoder().state_dict().items()}, folder / "vgg_normalised.pth")
    (folder / "README.txt").write_text("not weights")
    return folder


class FailingHalfWay(FolderClient):
    """Serves the first file, then the connection drops in the middle of the second."""

    def fetch(self, file, destination, progress=None):
        if getattr(self, "served", 0) >= 1:
            destination.write_bytes(Path(file.id).read_bytes()[:1000])
            raise DriveError("the connection was reset")
        self.served = getattr(self, "served", 0) + 1
        super().fetch(file, destination, progress)


class QuotaExceeded(FolderClient):
    def fetch(self, file, destination, progress=None):
        raise DriveError(f"could not download {file.name}: Too many users have viewed or downloaded this file "
                         "recently. Please try accessing the file again later.")


def test_downloaded_weights_are_installed_under_their_names_and_load(authors_folder, tmp_path):
    target = tmp_path / "models" / "mambast" / "official"
    seen = []
    report = download_weights(target, client=FolderClient(authors_folder), progress=seen.append)
    assert set(report.installed) == RELEASED and not report.kept
    assert {p.name for p in target.iterdir()} == RELEASED  # nothing else, nothing hidden left beside it
    assert [p.name for p in target.parent.iterdir()] == ["official"]
    assert mambast.load(target, device="cpu").config.d_model == 512
    finished = [p for p in seen if p.total is not None and p.done == p.total]
    assert {p.name for p in finished} == RELEASED and {p.count for p in seen} == {3}


def test_the_vgg_file_is_installed_only_when_asked(authors_folder, tmp_path):
    report = download_weights(tmp_path / "w", client=FolderClient(authors_folder), vgg=True)
    assert "vgg_normalised.pth" in report.installed
    assert identify(tmp_path / "w" / "vgg_normalised.pth") == "vgg"


def test_files_already_installed_are_kept_unless_overwrite(authors_folder, tmp_path):
    target = tmp_path / "official"
    download_weights(target, client=FolderClient(authors_folder))
    marker = (target / "decoder_iter_160000.pth").stat().st_mtime_ns

    class Refusing(FolderClient):
        def list_files(self, folder_url):
            raise AssertionError("nothing to download: the folder must not be asked")

    again = download_weights(target, client=Refusing(authors_folder))
    assert sorted(again.kept) == sorted(RELEASED) and not again.installed
    (target / "embedding_iter_160000.pth").unlink()
    partly = download_weights(target, client=FolderClient(authors_folder))
    assert partly.installed == ["embedding_iter_160000.pth"]
    assert (target / "decoder_iter_160000.pth").stat().st_mtime_ns == marker
    replaced = download_weights(target, client=FolderClient(authors_folder), overwrite=True)
    assert set(replaced.installed) == RELEASED


@pytest.mark.parametrize("client", ["half-way", "quota", "wrong files", "changed folder", "no network"])
def test_a_failed_download_leaves_the_target_as_it_was_and_says_how_to_do_it_by_hand(authors_folder, tmp_path,
                                                                                     monkeypatch, client):
    parent = tmp_path / "models" / "mambast"
    parent.mkdir(parents=True)
    (parent / "mine.safetensors").write_bytes(b"a user's file")
    before = snapshot(tmp_path)
    if client == "half-way":
        stand_in = FailingHalfWay(authors_folder)
    elif client == "quota":
        stand_in = QuotaExceeded(authors_folder)
    elif client == "wrong files":  # the released names, but a smaller model's tensors
        wrong = write_official_folder(random_official_tensors(SMALL_CONFIG, seed=1), tmp_path / "elsewhere")
        stand_in = FolderClient(wrong)
        before = snapshot(tmp_path)
    elif client == "changed folder":
        renamed = tmp_path / "renamed"
        renamed.mkdir()
        shutil.copyfile(authors_folder / "decoder_iter_160000.pth", renamed / "decoder_final.pth")
        stand_in = FolderClient(renamed)
        before = snapshot(tmp_path)
    else:
        gdown = pytest.importorskip("gdown")
        import requests

        def offline(*_, **__):
            raise requests.ConnectionError("Failed to resolve 'drive.google.com'")

        monkeypatch.setattr(gdown, "download_folder", offline)
        stand_in = drive.GdownClient()
    with pytest.raises(InstallError) as failed:
        download_weights(parent / "official", client=stand_in)
    message = str(failed.value)
    assert "https://drive.google.com/drive/folders/1pVhJFwk2f3arP7zUDFAe5_PJrPSG1gc2" in message
    assert all(name in message for name in ("decoder_iter_160000.pth", "embedding_iter_160000.pth",
                                            "mamba_iter_160000.pth", str(parent / "official")))
    assert {"half-way": "connection was reset", "quota": "Too many users", "wrong files": "not of the released",
            "changed folder": "no longer lists", "no network": "no connection to drive.google.com"}[client] in message
    assert snapshot(tmp_path) == before


def test_cancel_stops_the_download_and_leaves_nothing(authors_folder, tmp_path):
    def cancel_in_the_second_file(progress):
        if progress.index == 1:
            raise DownloadStopped()

    with pytest.raises(DownloadStopped):
        download_weights(tmp_path / "models" / "official", client=FolderClient(authors_folder),
                         progress=cancel_in_the_second_file)
    assert snapshot(tmp_path) == {} and not (tmp_path / "models").exists()


def test_gdown_is_called_with_a_timeout_and_our_progress(monkeypatch, tmp_path):
    gdown = pytest.importorskip("gdown")
    entry = importlib.import_module("gdown.download").GoogleDriveFileToDownload
    calls = {}

    def listed(**kwargs):
        calls["list"] = kwargs
        return [entry("id1", "MambaST/decoder_iter_160000.pth", "x")]

    def fetched(**kwargs):
        calls["fetch"] = kwargs
        Path(kwargs["output"]).write_bytes(b"12345")
        kwargs["progress"](5, 5)

    monkeypatch.setattr(gdown, "download_folder", listed)
    monkeypatch.setattr(gdown, "download", fetched)
    client = drive.GdownClient()
    assert client.list_files("url") == [RemoteFile("id1", "decoder_iter_160000.pth")]
    seen = []
    client.fetch(RemoteFile("id1", "decoder_iter_160000.pth"), tmp_path / "d.pth", lambda *a: seen.append(a))
    assert seen == [(5, 5)] and calls["fetch"]["id"] == "id1" and calls["fetch"]["quiet"]
    assert calls["list"]["timeout"] and calls["fetch"]["timeout"]


@pytest.fixture()
def downloaded_zip(authors_folder, tmp_path) -> Path:
    """What Drive hands over for a selection of files: a zip with a folder inside, other names."""
    path = tmp_path / "drive-download-20261207.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(authors_folder / "decoder_iter_160000.pth", "MambaST/decoder_iter_160000.pth")
        archive.write(authors_folder / "embedding_iter_160000.pth", "MambaST/embedding_iter_160000.pth")
        archive.write(authors_folder / "mamba_iter_160000.pth", "MambaST/transformer_iter_160000.pth")
        archive.writestr("MambaST/notes.pth", b"not a torch file")
        archive.writestr("../../escape.pth", b"a name that points outside")
    return path


def test_install_from_drives_zip_recognises_the_files_by_their_tensors(downloaded_zip, tmp_path):
    target = tmp_path / "official"
    report = install_from(downloaded_zip, target)
    assert set(report.installed) == {"decoder_iter_160000.pth", "embedding_iter_160000.pth",
                                     "transformer_iter_160000.pth"}
    assert mambast.load(target, device="cpu").config.encoder_layers == 3
    assert not (tmp_path.parent / "escape.pth").exists() and not list(tmp_path.glob("*escape*"))


def test_install_from_a_folder_with_renamed_files(authors_folder, tmp_path):
    mine = tmp_path / "Downloads"
    (mine / "sub").mkdir(parents=True)
    shutil.copyfile(authors_folder / "decoder_iter_160000.pth", mine / "a.pth")
    shutil.copyfile(authors_folder / "embedding_iter_160000.pth", mine / "sub" / "b.pth")
    shutil.copyfile(authors_folder / "mamba_iter_160000.pth", mine / "c.pth")
    shutil.copyfile(authors_folder / "vgg_normalised.pth", mine / "vgg_normalised.pth")
    report = install_from(mine, tmp_path / "official", vgg=True)
    assert set(report.installed) == {"a.pth", "b.pth", "c.pth", "vgg_normalised.pth"}
    assert mambast.load(tmp_path / "official", device="cpu") is not None


def test_install_from_refuses_what_is_not_the_release_and_leaves_the_target_as_it_was(authors_folder, tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copyfile(authors_folder / "decoder_iter_160000.pth", incomplete / "decoder.pth")
    twice = tmp_path / "twice"
    shutil.copytree(authors_folder, twice)
    shutil.copyfile(authors_folder / "decoder_iter_160000.pth", twice / "decoder_copy.pth")
    not_a_zip = tmp_path / "weights.zip"
    not_a_zip.write_text("<html>Google Drive - Virus scan warning</html>")
    for source, reason in ((incomplete, "no embedding / mamba weights"), (twice, "several decoder files"),
                           (not_a_zip, "neither a folder nor a zip"), (tmp_path / "absent", "no such file")):
        before = snapshot(tmp_path)
        with pytest.raises(InstallError, match=reason):
            install_from(source, tmp_path / "target" / "official")
        assert snapshot(tmp_path) == before and not (tmp_path / "target").exists()


def test_a_target_holding_another_checkpoint_is_not_mixed_with_the_release(authors_folder, tmp_path):
    target = tmp_path / "official"
    target.mkdir()
    shutil.copyfile(authors_folder / "decoder_iter_160000.pth", target / "decoder_iter_10000.pth")
    before = snapshot(tmp_path)
    with pytest.raises(InstallError, match="decoder_iter_10000.pth"):
        download_weights(target, client=FolderClient(authors_folder))
    assert snapshot(tmp_path) == before


def test_identify_names_a_file_of_the_wrong_model(tmp_path):
    folder = write_official_folder(random_official_tensors(SMALL_CONFIG, seed=2), tmp_path / "small")
    with pytest.raises(mambast.CheckpointError, match="not of the released model"):
        identify(folder / "mamba_iter_160000.pth")


def test_the_command_installs_from_a_zip_and_fails_with_the_manual_steps(downloaded_zip, tmp_path, capsys,
                                                                         monkeypatch):
    assert run_command(["download", "--from", str(downloaded_zip), "--to", str(tmp_path / "w")]) == 0
    assert "installed" in capsys.readouterr().out
    monkeypatch.setenv(drive.STAND_IN_ENV, str(tmp_path / "absent"))
    assert run_command(["download", "--to", str(tmp_path / "v")]) == 1
    error = capsys.readouterr().err
    assert "To install them by hand" in error and not (tmp_path / "v").exists()


def test_the_default_target_is_the_comfyui_models_folder_the_pack_sits_in(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    package = comfyui / "custom_nodes" / "ComfyUI-MambaST" / "mambast" / "release" / "install.py"
    package.parent.mkdir(parents=True)
    (comfyui / "folder_paths.py").write_text("")
    assert comfyui_weights_folder(package) == comfyui / "models" / "mambast" / "official"
    assert comfyui_weights_folder(tmp_path / "elsewhere" / "mambast" / "release" / "install.py") is None
