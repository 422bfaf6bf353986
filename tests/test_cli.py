"""``python -m mambast``: stylize every pair, convert, and explain missing weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mambast.network.random_weights import write_official_folder
from mambast.utils.imaging import read_image, write_image

from conftest import ROOT
from test_image_files import broken_save


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


# -- bad inputs, existing outputs, failures: named, skipped, the rest written ------------------

@pytest.fixture()
def weights(tmp_path, small_tensors):
    path = tmp_path / "w.safetensors"
    save_file(small_tensors, str(path))
    return path


def stylize_in_process(folder, weights, monkeypatch, *args):
    """``python -m mambast stylize`` in this process (so tests can patch it), run in ``folder``."""
    from mambast.commands import main

    monkeypatch.chdir(folder)
    monkeypatch.delenv("MAMBAST_CHECKPOINT", raising=False)
    return main(["stylize", "--checkpoint", str(weights), "--size", "0", "--seed", "3", "--device", "cpu", *args])


def test_unreadable_images_in_folders_are_named_and_skipped_and_the_rest_written(image_folders, small_tensors):
    weights = image_folders / "w.safetensors"
    save_file(small_tensors, str(weights))
    (image_folders / "content" / "broken.png").write_text("not an image, only its name says so")
    (image_folders / "content" / "notes.txt").write_text("ignored: no image suffix")
    (image_folders / "content" / "._cat.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata, ignored: hidden")
    whole = (image_folders / "style" / "monet.jpg").read_bytes()
    (image_folders / "style" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    result = run_cli("stylize", "content", "--style", "style", "--checkpoint", str(weights), "-o", "out",
                     "--size", "0", "--seed", "3", "--device", "cpu", cwd=image_folders)
    assert result.returncode == 1, result.stderr
    assert sorted(p.name for p in (image_folders / "out").iterdir()) == [
        "cat_stylized_klee.png", "cat_stylized_monet.png", "dog_stylized_klee.png", "dog_stylized_monet.png"]
    assert result.stderr.count("skipped content: content/broken.png is not an image file") == 1
    assert result.stderr.count("skipped style: style/cut.jpg is damaged or incomplete") == 1
    assert "notes.txt" not in result.stderr and "._cat" not in result.stderr and "Traceback" not in result.stderr
    assert "4 of 9 outputs written; 2 inputs skipped." in result.stderr


def test_named_file_that_is_not_an_image_fails_and_is_named(image_folders, weights, monkeypatch, capsys):
    (image_folders / "notes.txt").write_text("not an image")
    code = stylize_in_process(image_folders, weights, monkeypatch, "notes.txt", "content/cat.png",
                              "--style", "style/klee.jpg", "-o", "out")
    stderr = capsys.readouterr().err
    assert code == 1
    assert "skipped content: notes.txt is not an image file" in stderr
    assert os.listdir(image_folders / "out") == ["cat_stylized_klee.png"]
    assert "1 of 2 outputs written; 1 input skipped." in stderr


def test_a_pair_the_model_refuses_is_named_and_the_run_goes_on(image_folders, weights, monkeypatch, capsys):
    from mambast.network.model import MambaST

    def refusing_20_pixels_wide(encode, reason):
        def refuse_or_encode(self, image, *rest, **options):
            if image.shape[-1] == 20:
                raise ValueError(reason)
            return encode(self, image, *rest, **options)
        return refuse_or_encode

    monkeypatch.setattr(MambaST, "encode_content", refusing_20_pixels_wide(MambaST.encode_content,
                                                                           "content refused: too odd"))
    monkeypatch.setattr(MambaST, "encode_style", refusing_20_pixels_wide(MambaST.encode_style,
                                                                         "style refused: too plain"))
    write_image(torch.rand(3, 20, 20), image_folders / "style" / "plain.png")
    write_image(torch.rand(3, 20, 20), image_folders / "content" / "odd.png")
    code = stylize_in_process(image_folders, weights, monkeypatch, "content", "--style", "style/plain.png",
                              "style/klee.jpg", "-o", "out")
    stderr = capsys.readouterr().err
    assert code == 1
    assert "failed cat.png x plain.png: style refused: too plain" in stderr
    assert "failed dog.png x plain.png: style refused: too plain" in stderr
    assert stderr.count("skipped content: content/odd.png: content refused: too odd") == 1
    assert sorted(os.listdir(image_folders / "out")) == ["cat_stylized_klee.png", "dog_stylized_klee.png"]
    assert "2 of 6 outputs written; 1 input skipped; 2 pairs failed." in stderr


def test_an_elongated_content_is_refused_before_resizing_it_past_the_pixel_limit(image_folders, weights,
                                                                                  monkeypatch, capsys):
    from PIL import Image

    write_image(torch.rand(3, 2, 100), image_folders / "content" / "strip.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10000)
    code = stylize_in_process(image_folders, weights, monkeypatch, "content/strip.png", "content/cat.png",
                              "--style", "style/klee.jpg", "-o", "out", "--size", "64")
    stderr = capsys.readouterr().err
    assert code == 1
    assert "skipped content: content/strip.png is 100x2 pixels; resized to a shorter side of 64" in stderr
    assert "pass a smaller --size" in stderr
    assert os.listdir(image_folders / "out") == ["cat_stylized_klee.png"]


def test_existing_output_is_kept_unless_overwrite(image_folders, weights, monkeypatch, capsys):
    out = image_folders / "out"
    out.mkdir()
    (out / "cat_stylized_klee.png").write_bytes(b"precious")
    code = stylize_in_process(image_folders, weights, monkeypatch, "content/cat.png", "content/dog.png",
                              "--style", "style/klee.jpg", "-o", "out")
    stderr = capsys.readouterr().err
    assert code == 0
    assert (out / "cat_stylized_klee.png").read_bytes() == b"precious"
    assert "out/cat_stylized_klee.png exists, skipped (use --overwrite to replace it)." in stderr
    assert "1 of 2 outputs written; 1 existing output kept" in stderr
    assert sorted(os.listdir(out)) == ["cat_stylized_klee.png", "dog_stylized_klee.png"]

    code = stylize_in_process(image_folders, weights, monkeypatch, "content/cat.png", "--style", "style/klee.jpg",
                              "-o", "out", "--overwrite")
    assert code == 0
    assert read_image(out / "cat_stylized_klee.png").shape == (1, 3, 40, 56)
    assert "1 of 1 outputs written." in capsys.readouterr().err


def test_two_inputs_with_one_output_name_do_not_overwrite_each_other(image_folders, weights, monkeypatch, capsys):
    write_image(torch.rand(3, 24, 24), image_folders / "style" / "klee.png")
    code = stylize_in_process(image_folders, weights, monkeypatch, "content/cat.png", "--style", "style/klee.jpg",
                              "style/klee.png", "-o", "out", "--overwrite")
    stderr = capsys.readouterr().err
    assert code == 1
    assert "failed cat.png x klee.png: " in stderr
    assert "was already written in this run from cat.png x klee.jpg" in stderr
    assert os.listdir(image_folders / "out") == ["cat_stylized_klee.png"]


def test_failed_save_leaves_no_partial_output_and_the_old_one_unchanged(image_folders, weights, monkeypatch,
                                                                         capsys):
    from PIL import Image

    out = image_folders / "out"
    out.mkdir()
    write_image(torch.zeros(3, 40, 56), out / "cat_stylized_klee.png")
    before = (out / "cat_stylized_klee.png").read_bytes()
    monkeypatch.setattr(Image.Image, "save", broken_save(OSError(28, "No space left on device")))
    code = stylize_in_process(image_folders, weights, monkeypatch, "content/cat.png", "content/dog.png",
                              "--style", "style/klee.jpg", "-o", "out", "--overwrite")
    stderr = capsys.readouterr().err
    assert code == 1
    assert "failed cat.png x klee.jpg: [Errno 28] No space left on device" in stderr
    assert "failed dog.png x klee.jpg" in stderr and "0 of 2 outputs written; 2 pairs failed." in stderr
    assert os.listdir(out) == ["cat_stylized_klee.png"]
    assert (out / "cat_stylized_klee.png").read_bytes() == before


def test_ctrl_c_while_saving_stops_at_once_and_leaves_no_partial_file(image_folders, weights, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", broken_save(KeyboardInterrupt()))
    try:
        code = stylize_in_process(image_folders, weights, monkeypatch, "content", "--style", "style", "-o", "out")
    except KeyboardInterrupt:
        code = "KeyboardInterrupt escaped"
    assert code == 130
    assert os.listdir(image_folders / "out") == []
    assert "Interrupted. 0 of 4 outputs written." in capsys.readouterr().err
