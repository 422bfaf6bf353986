"""``python -m mambast``: stylize every pair, convert, and explain missing weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mambast.imaging import read_image, write_image
from mambast.random_weights import write_official_folder

from conftest import ROOT


def run_cli(*args, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "MAMBAST_CHECKPOINT"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "mambast", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture()
def image_folders(tmp_path):
    generator = torch.Generator().manual_seed(0)
    (tmp_path / "content").mkdir()
    (tmp_path / "style").mkdir()
    for name, size in (("cat", (40, 56)), ("dog", (33, 33))):
        write_image(torch.rand(3, *size, generator=generator), tmp_path / "content" / f"{name}.png")
    for name in ("monet", "klee"):
        write_image(torch.rand(3, 24, 24, generator=generator), tmp_path / "style" / f"{name}.jpg")
    return tmp_path


def test_stylize_writes_every_content_style_pair(image_folders, small_tensors):
    weights = image_folders / "w.safetensors"
    save_file(small_tensors, str(weights))
    result = run_cli("stylize", "content", "--style", "style/monet.jpg", "style/klee.jpg", "--checkpoint",
                     str(weights), "-o", "out", "--size", "0", "--seed", "3", "--device", "cpu", cwd=image_folders)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (image_folders / "out").iterdir())
    assert written == ["cat_stylized_klee.png", "cat_stylized_monet.png", "dog_stylized_klee.png",
                       "dog_stylized_monet.png"]
    assert read_image(image_folders / "out" / "cat_stylized_klee.png").shape == (1, 3, 40, 56)
    assert "4/4" in result.stderr


def test_stylize_finds_weights_in_models_mambast_and_resizes_the_shorter_side(image_folders, small_tensors):
    write_official_folder(small_tensors, image_folders / "models" / "mambast" / "official")
    result = run_cli("stylize", "content/cat.png", "--style", "style", "-o", "out", "--size", "20",
                     "--device", "cpu", cwd=image_folders)
    assert result.returncode == 0, result.stderr
    assert read_image(image_folders / "out" / "cat_stylized_monet.png").shape == (1, 3, 20, 28)


def test_stylize_without_weights_explains_where_to_get_them(image_folders):
    result = run_cli("stylize", "content", "--style", "style", "-o", "out", cwd=image_folders)
    assert result.returncode != 0
    assert "drive.google.com/drive/folders/1pVhJFwk2f3arP7zUDFAe5_PJrPSG1gc2" in result.stderr
    assert "decoder_iter_160000.pth" in result.stderr and "models/mambast" in result.stderr
    assert not (image_folders / "out").exists()


def test_convert_writes_a_loadable_safetensors(tmp_path, small_tensors):
    folder = write_official_folder(small_tensors, tmp_path / "official")
    result = run_cli("convert", str(folder), "out.safetensors", "--dtype", "float16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Wrote {len(small_tensors)} tensors" in result.stdout
    import mambast
    assert mambast.load(tmp_path / "out.safetensors", device="cpu").config.d_model == 64
