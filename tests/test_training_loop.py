"""The training loop: it learns, a resumed run is the uninterrupted run, and ``python -m mambast train`` works.

Models are tiny (1 + 1 blocks, d_model 32) and the VGG has random weights; the tests run one
thread per process, which on a shared two-core machine is several times faster than two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import mambast
from mambast.network.config import MambaSTConfig
from mambast.network.random_weights import random_official_tensors
from mambast.training.losses import LossWeights, TrainingObjective, compute_losses
from mambast.training.state import STATE_FILE
from mambast.training import trainer as trainer_module
from mambast.training.trainer import Trainer, TrainingOptions, losses_and_gradients
from mambast.training.vgg import VGGEncoder
from mambast.utils.imaging import read_image, write_image

from conftest import ROOT

TINY_CONFIG = MambaSTConfig(d_model=32, d_state=4, d_inner=64, dt_rank=4, encoder_layers=1, decoder_layers=1,
                            decoder_channels=(32, 16, 16, 16, 16, 8, 8, 8, 8, 3))
CROP = 32  # the least the losses take: relu5_1 is then 2 x 2


@pytest.fixture()
def one_thread():
    """One intra-op thread: on a busy two-core machine two threads wait for each other most of the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_vgg_file(path: Path) -> Path:
    """A VGG-19 of the reference's layout with He-normal random weights (features keep their scale)."""
    generator = torch.Generator().manual_seed(11)
    state = {}
    for key, value in VGGEncoder().state_dict().items():
        fan_in = value[0].numel() if value.dim() > 1 else 1
        state[key] = (torch.randn(value.shape, generator=generator) * (2 / fan_in) ** 0.5 if value.dim() > 1
                      else torch.zeros(value.shape))
    save_file(state, str(path))
    return path


def tiny_checkpoint(path: Path, seed: int = 1) -> Path:
    save_file(random_official_tensors(TINY_CONFIG, seed=seed), str(path))
    return path


def image_folder(folder: Path, count: int, seed: int, broken: bool = False) -> Path:
    """``count`` random images of various sizes (one in a sub-folder), and a truncated PNG if ``broken``."""
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        place = folder / "sub" if index == count - 1 else folder
        place.mkdir(parents=True, exist_ok=True)
        write_image(torch.rand(3, 24 + 8 * index, 40, generator=generator), place / f"image{index}.png")
    if broken:
        (folder / "broken.png").write_bytes((folder / "image0.png").read_bytes()[:60])
    return folder


@pytest.fixture(scope="module")
def training_files(tmp_path_factory) -> SimpleNamespace:
    """A tiny checkpoint to start from, a random VGG file, and content (with one broken file) and style folders."""
    root = tmp_path_factory.mktemp("training_files")
    return SimpleNamespace(init=tiny_checkpoint(root / "tiny.safetensors"),
                           vgg=random_vgg_file(root / "vgg.safetensors"),
                           content=image_folder(root / "content", 3, seed=1, broken=True),
                           style=image_folder(root / "style", 2, seed=2))


def tiny_options(files: SimpleNamespace, out: Path, **changes) -> TrainingOptions:
    options = dict(content_dir=files.content, style_dir=files.style, vgg=files.vgg, init=files.init, out=out,
                   max_iter=4, batch_size=2, lr=1e-3, crop=CROP, load_size=48, save_every=2, preview_every=0,
                   log_every=1, device="cpu", seed=5, workers=0)
    return TrainingOptions(**{**options, **changes})


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# -- learning --------------------------------------------------------------------------------

class ThinVGG(nn.Module):
    """A stand-in for VGG-19 with its five feature levels but few channels: the losses' plumbing, 50x cheaper."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        levels, channels = [], 3
        for width, pool in ((8, False), (16, True), (16, True), (32, True), (32, True)):
            conv = nn.Conv2d(channels, width, 3, padding=1, padding_mode="reflect")
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / (channels * 9)) ** 0.5)
                conv.bias.zero_()
            levels.append(nn.Sequential(*([nn.MaxPool2d(2)] if pool else []), conv, nn.ReLU()))
            channels = width
        self.levels = nn.ModuleList(levels)
        self.requires_grad_(False).eval()

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for level in self.levels:
            image = level(image)
            maps.append(image)
        return maps


def test_fifty_iterations_halve_the_total_loss_of_a_tiny_model(one_thread):
    """Trained in train mode (DropPath on, as in real training); judged in eval mode on a fixed draw."""
    generator = torch.Generator().manual_seed(0)
    content = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=generator), size=(CROP, CROP),
                                              mode="bilinear")
    style = torch.rand(1, 3, CROP, CROP, generator=generator)
    model = mambast.build(mambast.Checkpoint(random_official_tensors(TINY_CONFIG, seed=1)), "cpu")
    model.requires_grad_(True)
    vgg = ThinVGG()

    def judged_loss() -> float:
        model.eval()
        with torch.no_grad():
            return compute_losses(model, vgg, content, style, seed=0)["total"].item()

    before = judged_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for iteration in range(50):
        losses_and_gradients(TrainingObjective(model, vgg), content, style, run_seed=0, rank=0,
                             iteration=iteration, weights=LossWeights())
        optimizer.step()
        optimizer.zero_grad()
    assert judged_loss() <= 0.5 * before


def test_global_random_generators_are_left_as_they_were(one_thread):
    model = mambast.build(mambast.Checkpoint(random_official_tensors(TINY_CONFIG, seed=1)), "cpu")
    model.requires_grad_(True).train()
    images = torch.rand(2, 3, CROP, CROP, generator=torch.Generator().manual_seed(3))
    vgg = ThinVGG()
    before = torch.get_rng_state()
    losses_and_gradients(TrainingObjective(model, vgg), images, images.flip(0), run_seed=1, rank=0, iteration=0,
                         weights=LossWeights())
    assert torch.equal(torch.get_rng_state(), before)


# -- resuming --------------------------------------------------------------------------------

def test_resumed_run_equals_the_uninterrupted_run(tmp_path, training_files, one_thread):
    """4 iterations in one go against 2 + 2 with a resume: same weights and Adam state (DropPath is on)."""
    whole = Trainer(tiny_options(training_files, tmp_path / "whole"))
    assert whole.model.training
    whole.run()

    Trainer(tiny_options(training_files, tmp_path / "parts", max_iter=2)).run()
    resumed = Trainer(tiny_options(training_files, tmp_path / "parts", resume=True))
    assert resumed.iteration == 2
    resumed.run()

    expected, got = parameters(whole.model), parameters(resumed.model)
    initial = load_file(str(training_files.init))
    assert any(not torch.equal(expected[key], initial[key]) for key in expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    for state_whole, state_resumed in zip(whole.optimizer.state.values(), resumed.optimizer.state.values()):
        torch.testing.assert_close(state_resumed["exp_avg_sq"], state_whole["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    log = [json.loads(line) for line in (tmp_path / "parts" / "train_log.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in log] == [1, 2, 3, 4]
    assert all(line["skipped_content"] == 1 and line["skipped_style"] == 0 for line in log)


def test_training_state_reads_back_with_weights_only(tmp_path, training_files, one_thread):
    Trainer(tiny_options(training_files, tmp_path, max_iter=1)).run()
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["iteration"] == 1
    assert state["optimizer"]["state"] and state["ranks"][0]["random"]["torch"].dtype == torch.uint8
    assert state["ranks"][0]["content"]["unreadable"].keys() == {"broken.png"}
    assert not list(tmp_path.glob(".*tmp"))


def test_ctrl_c_stops_after_the_iteration_with_the_state_saved(tmp_path, training_files, one_thread, monkeypatch):
    trainer = Trainer(tiny_options(training_files, tmp_path, max_iter=10, save_every=100))
    next_batch = trainer.content.next_batch
    calls = []

    def interrupted_batch():
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return next_batch()

    monkeypatch.setattr(trainer.content, "next_batch", interrupted_batch)
    assert trainer.run() == 2
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["iteration"] == 2
    assert (tmp_path / "iter_2" / "mambast_iter_2.safetensors").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_folder_with_a_run_is_not_restarted_over_without_resume(tmp_path, training_files, one_thread):
    Trainer(tiny_options(training_files, tmp_path, max_iter=1)).run()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(tiny_options(training_files, tmp_path, max_iter=2))


def test_resume_with_another_number_of_processes_is_refused_unless_the_data_streams_restart(tmp_path, training_files,
                                                                                           one_thread):
    Trainer(tiny_options(training_files, tmp_path, max_iter=2)).run()
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    state["ranks"] = state["ranks"] * 2
    torch.save(state, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="saved by 2 process.*--reset-data-streams"):
        Trainer(tiny_options(training_files, tmp_path, max_iter=3, resume=True))
    trainer = Trainer(tiny_options(training_files, tmp_path, max_iter=3, resume=True, reset_data_streams=True))
    assert trainer.iteration == 2 and trainer.content.position == 0 and trainer.style.position == 0
    assert all(torch.equal(value, state["model"][key]) for key, value in trainer.model.state_dict().items())
    assert trainer.optimizer.state_dict()["state"][0]["step"] == state["optimizer"]["state"][0]["step"]
    assert trainer.run() == 3


def test_the_defaults_are_the_published_recipe_with_workers_reading_ahead():
    options = TrainingOptions(Path("c"), Path("s"), Path("v"))
    assert (options.lr, options.batch_size, options.crop, options.load_size, options.max_iter) == (1e-4, 8, 256, 512,
                                                                                                  160_000)
    assert options.workers is None and trainer_module.default_workers() >= 1 and options.accumulate == 1


def without_drop_path(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "drop_path") and isinstance(module.drop_path, float):
            module.drop_path = 0.0
    return model


def test_accumulated_micro_batches_give_the_gradients_of_one_batch_of_all_their_images(one_thread, monkeypatch):
    """N micro-batches of B, the permutations shared as in one batch, give the gradients of a batch of N x B.
    DropPath is off here: it draws a mask per sample in call order, which two orders of calls cannot share."""
    # NNPACK's Winograd convolutions (the CNN decoder on CPUs) round differently at another batch
    # size: off, so that the comparison sees the arithmetic (with them, one image per micro-batch
    # moved gradients by up to 1.7e-3 of a tensor's largest, without by 1.4e-4; the same batch in
    # another order by 1.6e-6).
    monkeypatch.setattr("mambast.network.model.nnpack_available", lambda: False)
    torch.manual_seed(0)
    model = without_drop_path(mambast.build(mambast.Checkpoint(random_official_tensors(TINY_CONFIG, seed=4)),
                                            device="cpu").requires_grad_(True).train())
    objective = TrainingObjective(model, ThinVGG())
    generator = torch.Generator().manual_seed(3)
    content, style = torch.rand(4, 3, CROP, CROP, generator=generator), torch.rand(4, 3, CROP, CROP, generator=generator)

    def gradients(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for index, (c, s) in enumerate(batches):
            losses_and_gradients(objective, c, s, 5, 0, 7, LossWeights(), micro_batch=index,
                                 loss_scale=1.0 / len(batches))
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    whole = gradients([(content, style)])
    halves = gradients([(content[:2], style[:2]), (content[2:], style[2:])])
    quarters = gradients([(content[i:i + 1], style[i:i + 1]) for i in range(4)])
    assert whole.keys() == halves.keys() == quarters.keys() and len(whole) > 10
    for name, expected in whole.items():
        scale = expected.abs().max().clamp_min(1e-12)
        assert (halves[name] - expected).abs().max() <= 1e-4 * scale, name
        assert (quarters[name] - expected).abs().max() <= 5e-4 * scale, name
    # Not a test that passes whatever: the same images without the 1 / N scale are N times too large.
    model.zero_grad(set_to_none=True)
    for c, s in ((content[:2], style[:2]), (content[2:], style[2:])):
        losses_and_gradients(objective, c, s, 5, 0, 7, LossWeights())
    name, unscaled = next((n, p.grad) for n, p in model.named_parameters() if p.grad is not None)
    assert unscaled.abs().max() > 1.5 * whole[name].abs().max()


def test_a_run_with_accumulation_steps_once_per_iteration_on_twice_the_images(tmp_path, training_files, one_thread):
    trainer = Trainer(tiny_options(training_files, tmp_path, max_iter=2, batch_size=1, accumulate=2))
    assert trainer.run() == 2
    assert trainer.content.position >= 4 and trainer.optimizer.state_dict()["state"][0]["step"] == 2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_train_float32_weights(tmp_path, training_files, one_thread, precision):
    trainer = Trainer(tiny_options(training_files, tmp_path, max_iter=1, precision=precision, batch_size=1))
    if precision == "fp16":
        # The default first loss scale (2^16) overflows here and skips steps until it has halved nine
        # times, as dynamic loss scaling should; start where a step goes through.
        assert trainer.scaler.is_enabled()
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 6)
    before = parameters(trainer.model)
    trainer.run()
    after = parameters(trainer.model)
    assert all(value.dtype == torch.float32 and value.isfinite().all() for value in after.values())
    assert any(not torch.equal(before[key], after[key]) for key in before)
    saved_scaler = torch.load(tmp_path / STATE_FILE, weights_only=True)["scaler"]
    assert (saved_scaler["scale"] == 2.0 ** 6) if precision == "fp16" else saved_scaler == {}


# -- the command line ------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mambast", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def cli_arguments(files: SimpleNamespace, out: Path, max_iter: int) -> list[str]:
    return ["train", "--content-dir", str(files.content), "--style-dir", str(files.style), "--vgg", str(files.vgg),
            "--init", str(files.init), "--out", str(out), "--max-iter", str(max_iter), "--batch-size", "2",
            "--crop", str(CROP), "--load-size", "48", "--save-every", "2", "--preview-every", "1", "--log-every", "1",
            "--lr", "1e-3", "--device", "cpu"]


def test_cli_trains_writes_official_checkpoints_log_and_previews_and_resumes(tmp_path, training_files):
    out = tmp_path / "run"
    first = run_cli(*cli_arguments(training_files, out, max_iter=2), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "skipped content image" in first.stderr and "broken.png" in first.stderr
    folder = out / "iter_2"
    assert sorted(path.name for path in folder.iterdir()) == ["decoder_iter_2.pth", "embedding_iter_2.pth",
                                                             "mamba_iter_2.pth", "mambast_iter_2.safetensors"]
    trained = mambast.load(folder, device="cpu").state_dict()
    initial = mambast.load(training_files.init, device="cpu").state_dict()
    assert any(not torch.equal(trained[key], initial[key]) for key in trained)
    same_file = mambast.load(folder / "mambast_iter_2.safetensors", device="cpu").state_dict()
    assert all(torch.equal(trained[key], same_file[key]) for key in trained)
    preview = read_image(out / "previews" / "iter_0000002.png")
    assert preview.shape == (1, 3, 2 * CROP, 3 * CROP)  # two rows of content | style | stylized

    second = run_cli(*cli_arguments(training_files, out, max_iter=3), "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "from iteration 2 to 3" in second.stderr
    assert "broken.png" not in second.stderr  # counted before the state was saved, not said again
    assert (out / "iter_3" / "mamba_iter_3.pth").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in log] == [1, 2, 3]
    assert log[-1]["skipped_content"] == 1
    assert log[0]["content_weighted"] == pytest.approx(7 * log[0]["content"])
    assert log[0]["total"] == pytest.approx(sum(log[0][f"{name}_weighted"] for name in
                                                ("content", "style", "identity1", "identity2")), rel=1e-5)


def test_cli_without_the_vgg_file_says_where_to_get_it(tmp_path, training_files):
    arguments = cli_arguments(training_files, tmp_path / "run", max_iter=1)
    arguments[arguments.index("--vgg") + 1] = str(tmp_path / "vgg_normalised.pth")
    result = run_cli(*arguments, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "vgg_normalised.pth" in result.stderr and "drive.google.com" in result.stderr


def test_cli_resume_without_a_saved_run_says_how_to_start(tmp_path, training_files):
    result = run_cli(*cli_arguments(training_files, tmp_path / "empty", max_iter=1), "--resume", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no training state to resume" in result.stderr and "without --resume" in result.stderr


def test_ctrl_c_with_data_workers_says_stop_once_and_saves(tmp_path, training_files):
    """The terminal sends Ctrl-C to the whole process group, data workers included: one message, one state."""
    out = tmp_path / "run"
    arguments = [*cli_arguments(training_files, out, max_iter=10_000), "--workers", "2", "--save-every", "10000",
                 "--preview-every", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mambast", *arguments], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        log = out / "train_log.jsonl"
        deadline = time.monotonic() + 300
        while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert stderr.count("Stopping after this iteration") == 1, stderr
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert torch.load(out / STATE_FILE, weights_only=True)["iteration"] >= 2
