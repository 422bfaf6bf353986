"""Reading and writing image files: every common mode read right, bad files named, outputs whole."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mambast.utils.imaging import ImageFileError, read_image, write_image


def rgb(image: torch.Tensor, y: int, x: int) -> list[float]:
    return image[0, :, y, x].tolist()


def sixteen_bit_rgb_png(samples: np.ndarray) -> bytes:
    """A 48-bit RGB PNG of (H, W, 3) uint16 samples (Pillow cannot write one)."""
    height, width, _ = samples.shape
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# -- modes ---------------------------------------------------------------------------------

def test_rgba_drops_alpha_and_keeps_the_colour_under_it(tmp_path):
    picture = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    picture.putpixel((1, 0), (200, 100, 50, 128))
    picture.save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (1, 3, 2, 3) and image.dtype == torch.float32
    assert rgb(image, 0, 0) == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert rgb(image, 0, 1) == pytest.approx([200 / 255, 100 / 255, 50 / 255])


def test_grey_with_alpha_becomes_grey_rgb(tmp_path):
    Image.new("LA", (4, 3), (100, 50)).save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.shape == (1, 3, 3, 4)
    assert rgb(image, 2, 3) == pytest.approx([100 / 255] * 3)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_image_reads_its_palette_colours(tmp_path, transparent):
    picture = Image.new("P", (3, 2), 1)
    picture.putpalette([0, 0, 0, 10, 20, 30, 250, 128, 0] + [0] * (256 * 3 - 9))
    picture.putpixel((2, 1), 2)
    if transparent:
        picture.info["transparency"] = 1
    picture.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as reopened:
        assert reopened.mode == "P" and ("transparency" in reopened.info) == transparent
    image = read_image(tmp_path / "p.png")
    assert rgb(image, 0, 0) == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert rgb(image, 1, 2) == pytest.approx([250 / 255, 128 / 255, 0])


def test_sixteen_bit_grey_png_is_scaled_by_65535_not_clipped(tmp_path):
    samples = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    Image.fromarray(samples).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as reopened:
        assert reopened.mode in ("I;16", "I")  # "I" before Pillow 10
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (1, 3, 1, 4)
    for x, sample in enumerate(samples[0]):
        assert rgb(image, 0, x) == pytest.approx([sample / 65535] * 3, abs=1e-6)


def test_thirty_two_bit_integer_image_is_read_as_sixteen_bit(tmp_path):
    Image.new("I", (3, 2), 30000).save(tmp_path / "int.tif")
    assert rgb(read_image(tmp_path / "int.tif"), 1, 2) == pytest.approx([30000 / 65535] * 3, abs=1e-6)


def test_sixteen_bit_rgb_png_keeps_its_colours(tmp_path):
    samples = np.zeros((2, 3, 3), dtype=np.uint16)
    samples[0, 0] = (65535, 0, 0)
    samples[1, 2] = (40000, 20000, 1000)
    (tmp_path / "deep_rgb.png").write_bytes(sixteen_bit_rgb_png(samples))
    image = read_image(tmp_path / "deep_rgb.png")
    assert image.shape == (1, 3, 2, 3)
    assert rgb(image, 0, 0) == pytest.approx([1, 0, 0], abs=1 / 255)
    assert rgb(image, 1, 2) == pytest.approx([40000 / 65535, 20000 / 65535, 1000 / 65535], abs=1 / 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as reopened:
        assert reopened.mode == "CMYK"
    assert rgb(read_image(tmp_path / "cmyk.jpg"), 8, 8) == pytest.approx([1, 0, 0], abs=0.03)


def test_one_bit_image_is_black_and_white(tmp_path):
    picture = Image.new("1", (4, 2), 0)
    picture.putpixel((3, 1), 1)
    picture.save(tmp_path / "bits.png")
    image = read_image(tmp_path / "bits.png")
    assert rgb(image, 0, 0) == [0, 0, 0] and rgb(image, 1, 3) == [1, 1, 1]


def test_float_image_is_taken_as_0_to_1_and_clipped(tmp_path):
    samples = np.array([[0.25, 0.75, 1.5, -0.5]], dtype=np.float32)
    Image.fromarray(samples).save(tmp_path / "float.tif")
    image = read_image(tmp_path / "float.tif")
    assert [rgb(image, 0, x)[0] for x in range(4)] == pytest.approx([0.25, 0.75, 1.0, 0.0])
    assert rgb(image, 0, 1) == pytest.approx([0.75] * 3)


@pytest.mark.parametrize("orientation, red_corner", [(6, "top right"), (8, "bottom left")])
def test_exif_rotated_jpeg_loads_upright(tmp_path, orientation, red_corner):
    # Stored wide (40 x 24) with a red top-left quarter; the tag says a viewer turns it a quarter.
    stored = Image.new("RGB", (40, 24), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = read_image(tmp_path / "phone.jpg")
    assert image.shape == (1, 3, 40, 24)  # tall
    corners = {"top left": (5, 5), "top right": (5, 18), "bottom left": (34, 5), "bottom right": (34, 18)}
    for corner, (y, x) in corners.items():
        expected = [1, 0, 0] if corner == red_corner else [0, 0, 1]
        assert rgb(image, y, x) == pytest.approx(expected, abs=0.1), corner


def test_plain_rgb_png_reads_exactly(tmp_path):
    samples = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(samples).save(tmp_path / "plain.png")
    image = read_image(tmp_path / "plain.png")
    assert torch.equal(image[0].permute(1, 2, 0), torch.from_numpy(samples).float() / 255)


# -- bad files -----------------------------------------------------------------------------

def encoded(format: str) -> bytes:
    buffer = io.BytesIO()
    samples = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(samples).save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize("kept", [0.05, 0.5, 0.9])
@pytest.mark.parametrize("format, suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_file_is_named_as_damaged(tmp_path, format, suffix, kept):
    data = encoded(format)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(ImageFileError) as error:
        read_image(path)
    assert str(path) in str(error.value) and "damaged or incomplete" in str(error.value)


@pytest.mark.parametrize("content", [b"just some notes, not pixels\n", b""])
def test_non_image_file_with_an_image_suffix_is_named(tmp_path, content):
    path = tmp_path / "notes.png"
    path.write_bytes(content)
    with pytest.raises(ImageFileError) as error:
        read_image(path)
    assert str(path) in str(error.value) and "not an image file" in str(error.value)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(ImageFileError, match="no such file"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(ImageFileError, match="is a folder"):
        read_image(tmp_path)


@pytest.mark.parametrize("side, pixels", [(12, "144 pixels"), (20, "400 pixels")])
def test_image_above_the_decompression_bomb_limit_is_refused_with_its_size(tmp_path, monkeypatch, side, pixels):
    # 12 x 12 is between the limit and twice it, where Pillow only warns; 20 x 20 is where it raises.
    Image.new("RGB", (side, side)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageFileError) as error:
        read_image(tmp_path / "bomb.png")
    message = str(error.value)
    assert str(tmp_path / "bomb.png") in message and pixels in message
    assert "100 pixels" in message and "Resize it" in message
    assert Image.MAX_IMAGE_PIXELS == 100  # the limit is kept, not lifted


def test_image_below_the_limit_reads_without_a_warning(tmp_path, monkeypatch, recwarn):
    Image.new("RGB", (10, 10)).save(tmp_path / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(tmp_path / "fine.png").shape == (1, 3, 10, 10)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# -- writing -------------------------------------------------------------------------------

def test_write_image_leaves_only_the_finished_file(tmp_path):
    image = torch.rand(1, 3, 6, 9, generator=torch.Generator().manual_seed(0))
    write_image(image, tmp_path / "out.png")
    assert os.listdir(tmp_path) == ["out.png"]
    assert (read_image(tmp_path / "out.png") - image).abs().max() <= 0.5 / 255 + 1e-6


def broken_save(kind):
    """An Image.save that writes part of a file and then fails with ``kind``."""
    def save(self, fp, format=None, **params):
        handle = open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp
        handle.write(b"\x89PNG half an image")
        handle.flush()
        raise kind
    return save


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_leaves_no_partial_file_and_the_old_output_unchanged(tmp_path, monkeypatch, failure):
    old = tmp_path / "old.png"
    write_image(torch.zeros(3, 4, 4), old)
    before = old.read_bytes()
    monkeypatch.setattr(Image.Image, "save", broken_save(failure))
    for path in (old, tmp_path / "new.png"):
        with pytest.raises(type(failure)):
            write_image(torch.ones(3, 4, 4), path)
    assert os.listdir(tmp_path) == ["old.png"]
    assert old.read_bytes() == before


def test_write_image_without_overwrite_keeps_an_existing_file(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        write_image(torch.zeros(3, 4, 4), path, overwrite=False)
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["out.png"]
    write_image(torch.zeros(3, 4, 4), path, overwrite=True)
    assert read_image(path).shape == (1, 3, 4, 4)


def test_write_image_names_an_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="unknown image suffix '.txt'"):
        write_image(torch.zeros(3, 4, 4), tmp_path / "out.txt")
    assert os.listdir(tmp_path) == []
