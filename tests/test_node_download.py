"""The Loader's download in ComfyUI (``nodes/download.py``) and the status that offers it, against
the fakes of ComfyUI's modules; the Drive client is a stand-in, the network is never used."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import pytest

from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors, write_official_folder
from mambast.release import DriveError, FolderClient


@pytest.fixture(scope="module")
def authors_folder(tmp_path_factory) -> Path:
    return write_official_folder(random_official_tensors(seed=7), tmp_path_factory.mktemp("drive"))


def modules(comfy):
    return (importlib.import_module(comfy.pack.__name__ + ".nodes.download"),
            importlib.import_module(comfy.pack.__name__ + ".nodes.status"))


def empty_models(comfy) -> Path:
    folder = Path(comfy.models_dir) / "mambast"
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    return folder


def test_the_status_offers_the_download_only_where_the_release_is_not_installed(comfy):
    _, status = modules(comfy)
    assert "download" not in status.status_report("official/", "auto")
    assert status.status_report("gone.safetensors", "auto")["download"] is False  # official/ is there
    assert status.status_report("small.safetensors", "auto", "float8")["download"] is False  # not about weights
    empty_models(comfy)
    report = status.status_report(None, "auto")
    assert report["download"] is True and report["short"] == "no Mamba-ST weights installed yet"
    assert status.status_report("small.safetensors", "auto")["download"] is True


def test_a_damaged_file_is_named_in_an_artists_words_first(comfy):
    _, status = modules(comfy)
    broken = Path(comfy.models_dir) / "mambast" / "broken.safetensors"
    broken.write_bytes((10**18).to_bytes(8, "little") + b"{}")
    report = status.status_report("broken.safetensors", "auto")
    assert report["short"] == "damaged or not a Mamba-ST file: delete it and download it again"
    assert "bytes" in report["message"] and report["summary"].endswith("not usable: " + report["short"])


def test_the_download_installs_the_release_and_tells_the_page_a_few_times_a_second(comfy, authors_folder):
    download, status = modules(comfy)
    models = empty_models(comfy)
    sent = []
    job = download.DownloadJob(send=sent.append, client=FolderClient(authors_folder))
    assert job.start()
    final = job.wait(60)
    assert final["state"] == "done" and final["checkpoint"] == "official/", final
    assert {p.name for p in (models / "official").iterdir()} == {"decoder_iter_160000.pth",
                                                                 "embedding_iter_160000.pth", "mamba_iter_160000.pth"}
    assert status.status_report("official/", "auto")["ok"]
    assert sent[0]["state"] == "running" and sent[-1]["state"] == "done"
    assert len(sent) <= 2 + 3 + 3 * 4  # start, each file's end, a few in between (the files are tiny here)


def test_a_second_download_is_refused_while_one_runs_and_cancel_leaves_nothing(comfy, authors_folder):
    download, _ = modules(comfy)
    models = empty_models(comfy)
    release = threading.Event()

    class Slow(FolderClient):
        def fetch(self, file, destination, progress=None):
            release.wait(30)
            super().fetch(file, destination, progress)

    job = download.DownloadJob(client=Slow(authors_folder))
    assert job.start()
    assert not job.start()  # one at a time
    assert job.cancel()
    release.set()
    final = job.wait(60)
    assert final["state"] == "cancelled" and "as it was" in final["message"]
    assert not (models / "official").exists() and list(models.iterdir()) == []
    assert not job.cancel()  # nothing runs any more


def test_a_failed_download_reports_the_manual_steps(comfy, authors_folder):
    download, _ = modules(comfy)
    empty_models(comfy)

    class Quota(FolderClient):
        def fetch(self, file, destination, progress=None):
            raise DriveError("could not download it: Too many users have viewed or downloaded this file recently")

    job = download.DownloadJob(client=Quota(authors_folder))
    job.start()
    final = job.wait(60)
    assert final["state"] == "failed" and "Too many users" in final["reason"]
    assert "To install them by hand" in final["message"] and "drive.google.com" in final["message"]


def test_wrong_weights_from_the_source_are_refused(comfy, tmp_path):
    download, _ = modules(comfy)
    models = empty_models(comfy)
    wrong = write_official_folder(random_official_tensors(SMALL_CONFIG, seed=3), tmp_path / "wrong")
    job = download.DownloadJob(client=FolderClient(wrong))
    job.start()
    final = job.wait(60)
    assert final["state"] == "failed" and "not of the released model" in final["message"]
    assert list(models.iterdir()) == []
