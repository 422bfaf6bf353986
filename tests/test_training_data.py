"""Training data: folders listed, bad files skipped and counted, every mode cropped as RGB, streams resumable."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambast.training.data import ImageStream, TrainingDataError, list_images, training_crop
from mambast.utils.imaging import write_image


def solid(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> Path:
    """A one-colour RGB image whose grey level ``value`` (0..255) identifies it in a crop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def identities(batch: torch.Tensor) -> list[int]:
    """The grey level of each crop of a batch of :func:`solid` images."""
    return [round(float(crop.mean()) * 255) for crop in batch]


def truncated_jpeg(path: Path) -> Path:
    """A real JPEG cut in the middle of its data."""
    full = path.with_suffix(".full.jpg")
    write_image(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)), full)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture()
def mixed_folder(tmp_path) -> Path:
    """Four good images (one in a sub-folder) and three bad ones (truncated, not an image, empty)."""
    folder = tmp_path / "content"
    for value, name in ((10, "a.png"), (60, "b.jpg"), (110, "c.PNG"), (160, "sub/d.png")):
        solid(folder / name, value)
    truncated_jpeg(folder / "cut.jpg")
    (folder / "notes.png").write_text("not an image at all")
    (folder / "empty.webp").write_bytes(b"")
    return folder


# -- listing ---------------------------------------------------------------------------------

def test_flat_files_and_one_level_of_sub_folders_are_listed_hidden_and_other_files_left_out(tmp_path):
    folder = tmp_path / "style"
    for name in ("b.png", "A.JPG", "sub/c.webp", "sub/deeper/too_deep.png", ".hidden.png", ".cache/x.png"):
        solid(folder / name, 0)
    (folder / "readme.txt").write_text("no")
    names = [path.relative_to(folder).as_posix() for path in list_images(folder, "--style-dir")]
    assert names == ["A.JPG", "b.png", "sub/c.webp"]


def test_empty_folder_says_what_to_put_in_it(tmp_path):
    (tmp_path / "content").mkdir()
    (tmp_path / "content" / "readme.txt").write_text("no images here")
    with pytest.raises(TrainingDataError) as error:
        list_images(tmp_path / "content", "--content-dir")
    message = str(error.value)
    assert "--content-dir" in message and str(tmp_path / "content") in message
    assert ".jpg" in message and "sub-folders" in message


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(TrainingDataError, match="no such folder"):
        ImageStream(tmp_path / "nowhere", "--style-dir", batch_size=1, load_size=16, crop=8)


def test_folder_without_one_readable_image_is_an_error_not_an_endless_search(tmp_path):
    folder = tmp_path / "style"
    folder.mkdir()
    (folder / "a.png").write_text("text")
    truncated_jpeg(folder / "b.jpg")
    stream = ImageStream(folder, "--style-dir", batch_size=1, load_size=16, crop=8)
    with pytest.raises(TrainingDataError) as error:
        stream.next_batch()
    assert "none of its 2 image files can be read" in str(error.value) and "--style-dir" in str(error.value)


# -- reading ---------------------------------------------------------------------------------

def test_corrupt_truncated_and_empty_files_are_skipped_and_each_counted_once(mixed_folder):
    stream = ImageStream(mixed_folder, "--content-dir", batch_size=4, load_size=16, crop=16, seed=3)
    seen = [value for _ in range(6) for value in identities(stream.next_batch())]  # 24 crops: 6 epochs
    assert set(seen) == {10, 60, 110, 160}
    assert stream.skipped == 3
    reported = stream.take_new_unreadable()
    assert sorted(name for name, _ in reported) == ["cut.jpg", "empty.webp", "notes.png"]
    assert all(name in reason for name, reason in reported)
    assert stream.take_new_unreadable() == []  # said once, though met again every epoch


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "CMYK"])
def test_grey_palette_transparent_sixteen_bit_and_cmyk_images_become_rgb_crops(tmp_path, mode):
    picture = Image.new("RGB", (20, 14), (200, 100, 50)).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    picture.save(tmp_path / f"image{suffix}")
    stream = ImageStream(tmp_path, "--style-dir", batch_size=2, load_size=16, crop=8)
    batch = stream.next_batch()
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1
    assert stream.skipped == 0
    if mode in ("L", "I;16"):
        assert torch.equal(batch[:, 0], batch[:, 1]) and torch.equal(batch[:, 1], batch[:, 2])
    else:
        assert batch[0, 0].mean() > batch[0, 2].mean() + 0.3  # orange stays orange


def test_small_images_are_resized_up_to_the_load_size_before_cropping(tmp_path):
    path = tmp_path / "tiny.png"
    write_image(torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(1)), path)
    crop = training_crop(path, load_size=32, crop=16, top=9, left=3)
    assert crop.shape == (3, 16, 16)
    # As torchvision's Resize((32, 32)) on the PIL image: Pillow's bilinear filter on 8-bit samples.
    with Image.open(path) as picture:
        resized = np.asarray(picture.convert("RGB").resize((32, 32), Image.BILINEAR))
    expected = torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(crop, expected[:, 9:25, 3:19])


# -- order -----------------------------------------------------------------------------------

def test_every_epoch_takes_every_readable_file_once_in_a_new_order(mixed_folder):
    stream = ImageStream(mixed_folder, "--content-dir", batch_size=4, load_size=16, crop=16, seed=3)
    epochs = [identities(stream.next_batch()) for _ in range(4)]
    assert all(sorted(epoch) == [10, 60, 110, 160] for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1


def test_content_and_style_streams_and_each_rank_draw_their_own_orders(tmp_path):
    for value in range(0, 240, 20):
        solid(tmp_path / f"{value}.png", value)

    def order(option: str, rank: int, seed: int = 0) -> list[int]:
        stream = ImageStream(tmp_path, option, batch_size=12, load_size=16, crop=16, seed=seed, rank=rank)
        return identities(stream.next_batch())

    assert order("--content-dir", 0) == order("--content-dir", 0)
    assert len({tuple(order("--content-dir", 0)), tuple(order("--style-dir", 0)), tuple(order("--content-dir", 1)),
                tuple(order("--content-dir", 0, seed=1))}) == 4


def test_crops_move_over_the_resized_image(tmp_path):
    write_image(torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(2)), tmp_path / "a.png")
    stream = ImageStream(tmp_path, "--style-dir", batch_size=6, load_size=32, crop=8)
    batch = stream.next_batch()
    assert len({crop.sum().item() for crop in batch}) > 1


# -- resuming --------------------------------------------------------------------------------

def test_stream_restored_from_its_state_gives_the_batches_that_followed_it(mixed_folder):
    options = dict(batch_size=3, load_size=24, crop=8, seed=5)
    stream = ImageStream(mixed_folder, "--content-dir", **options)
    for _ in range(3):
        stream.next_batch()
    stream.take_new_unreadable()
    state = stream.state_dict()
    following = [stream.next_batch() for _ in range(4)]

    restored = ImageStream(mixed_folder, "--content-dir", **options)
    restored.load_state_dict(state)
    assert restored.skipped == stream.skipped == 3
    assert all(torch.equal(restored.next_batch(), batch) for batch in following)
    assert restored.take_new_unreadable() == []  # known before the state was saved: not said again


def test_restoring_over_a_changed_folder_warns_and_goes_on(mixed_folder):
    stream = ImageStream(mixed_folder, "--content-dir", batch_size=2, load_size=16, crop=8)
    stream.next_batch()
    state = stream.state_dict()
    solid(mixed_folder / "new.png", 220)
    grown = ImageStream(mixed_folder, "--content-dir", batch_size=2, load_size=16, crop=8)
    with pytest.warns(UserWarning, match="held 7 image files .* holds 8 now"):
        grown.load_state_dict(state)
    assert grown.next_batch().shape == (2, 3, 8, 8)


def test_worker_processes_give_the_same_batches_as_reading_in_process(mixed_folder):
    options = dict(batch_size=3, load_size=24, crop=8, seed=2)
    alone = ImageStream(mixed_folder, "--content-dir", **options)
    expected = [alone.next_batch() for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a process with threads (Python 3.12+)
        helped = ImageStream(mixed_folder, "--content-dir", workers=2, **options)
        try:
            assert all(torch.equal(helped.next_batch(), batch) for batch in expected)
            assert helped.skipped == alone.skipped
        finally:
            helped.close()
