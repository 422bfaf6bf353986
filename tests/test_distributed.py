"""Several processes: Gloo ranks train as one process over both halves would, and ``stylize`` shares its pairs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import mambast
from mambast.commands.stylize import pairs_of_rank
from mambast.training import distributed
from mambast.training.data import ImageStream
from mambast.training.distributed import Ranks, shard
from mambast.training.losses import TrainingObjective
from mambast.training.trainer import Trainer, TrainingOptions, losses_and_gradients
from mambast.training.vgg import load_vgg
from mambast.utils.imaging import write_image

from conftest import ROOT
from test_training_loop import one_thread, tiny_options, training_files  # noqa: F401 (fixtures)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_as_rank(rank: int, world_size: int, port: int, options: TrainingOptions, folder: Path) -> None:
    """One spawned process: rank ``rank`` of a Gloo run, set up as torchrun would set it up; saves its weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(options)
        trainer.run()
        if rank == 0:
            (folder / "wrapper.txt").write_text(type(trainer.objective).__name__)
    finally:
        distributed.stop()
    torch.save(trainer.model.state_dict(), folder / f"rank{rank}.pt")


def test_two_gloo_ranks_stay_identical_and_equal_one_process_doing_both_halves(tmp_path, training_files, one_thread):
    """Two processes of one image each against one process that computes both halves itself.

    A one-process run with a batch of two is not the same computation: each rank draws its own
    style permutations (one set per batch) and DropPath masks, and reads its own data stream,
    all keyed by its rank. So the reference here reproduces each rank's half with that rank's
    stream and seeds (``losses_and_gradients(..., rank=r, ...)``), accumulates both halves'
    gradients, halves them (the ranks' all-reduce averages) and takes the Adam step: what two
    ranks do, done by one process. Same images, same draws, same arithmetic up to the order
    in which two gradients are added.
    """
    options = tiny_options(training_files, tmp_path / "run", max_iter=3, batch_size=1, save_every=3)
    torch.multiprocessing.spawn(train_as_rank, args=(2, free_port(), options, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert "DistributedDataParallel" in (tmp_path / "wrapper.txt").read_text()

    model = mambast.load(training_files.init, device="cpu").requires_grad_(True).train()
    vgg = load_vgg(training_files.vgg)
    streams = [[ImageStream(folder, option, batch_size=1, load_size=options.load_size, crop=options.crop,
                            seed=options.seed, rank=rank)
                for folder, option in ((options.content_dir, "--content-dir"), (options.style_dir, "--style-dir"))]
               for rank in (0, 1)]
    objective = TrainingObjective(model, vgg)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    for iteration in range(options.max_iter):
        for rank, (content, style) in enumerate(streams):
            losses_and_gradients(objective, content.next_batch(), style.next_batch(), options.seed, rank, iteration,
                                 options.weights)
        for parameter in model.parameters():
            parameter.grad /= 2
        optimizer.step()
        optimizer.zero_grad()

    expected = model.state_dict()
    initial = load_file(str(training_files.init))
    assert any(not torch.equal(expected[key], initial[key]) for key in expected)
    for key in expected:
        torch.testing.assert_close(ranks[0][key], expected[key], rtol=0, atol=1e-6, msg=key)
    written = mambast.load(tmp_path / "run" / "iter_3", device="cpu").state_dict()
    assert all(torch.equal(written[key], ranks[0][key]) for key in written)


def test_pairs_are_shared_round_robin_and_pairs_writing_one_file_stay_on_one_rank():
    contents = [Path("a.png"), Path("b.png"), Path("a.jpg")]  # a.png and a.jpg write the same outputs
    styles = [Path("x.png"), Path("y.png")]
    shares = [pairs_of_rank(contents, styles, Ranks(rank, 2)) for rank in (0, 1)]
    flat = [[(content.name, style.name) for content, its_styles in share for style in its_styles] for share in shares]
    assert flat[0] == [("a.png", "x.png"), ("b.png", "x.png"), ("a.jpg", "x.png")]
    assert flat[1] == [("a.png", "y.png"), ("b.png", "y.png"), ("a.jpg", "y.png")]
    assert shard(list(range(7)), Ranks(1, 3)) == [1, 4]


def test_two_process_stylize_writes_each_pair_exactly_once(tmp_path, small_tensors):
    from safetensors.torch import save_file

    save_file(small_tensors, str(tmp_path / "weights.safetensors"))
    generator = torch.Generator().manual_seed(3)
    contents, styles = ["cat", "dog", "owl"], ["klee", "monet"]
    for folder, names in (("content", contents), ("style", styles)):
        (tmp_path / folder).mkdir()
        for name in names:
            write_image(torch.rand(3, 24, 32, generator=generator), tmp_path / folder / f"{name}.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MAMBAST_CHECKPOINT", None)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mambast",
         "stylize", "content", "--style", "style", "--checkpoint", "weights.safetensors", "-o", "out", "--size", "0",
         "--seed", "1", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    expected = sorted(f"{content}_stylized_{style}.png" for content in contents for style in styles)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == expected
    written = {int(rank): int(count) for rank, count in
               re.findall(r"rank (\d): (\d+) of \d+ outputs written", result.stderr)}
    assert written == {0: 3, 1: 3}  # six pairs, alternately: none written by both ranks
    assert "exists" not in result.stderr


def test_torchrun_train_on_two_gloo_processes_writes_official_checkpoints_and_resumes(tmp_path, training_files):
    """The command as a user runs it: ``torchrun --nproc_per_node 2 -m mambast train``, a corrupt file in the data."""
    from test_training_loop import cli_arguments

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "mambast", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)

    out = tmp_path / "run"
    first = torchrun(*cli_arguments(training_files, out, max_iter=2))
    assert first.returncode == 0, first.stderr
    assert "on 2 x cpu" in first.stderr
    assert first.stderr.count("skipped content image") == 1 and "broken.png" in first.stderr  # said once, by rank 0
    trained = mambast.load(out / "iter_2", device="cpu").state_dict()
    initial = mambast.load(training_files.init, device="cpu").state_dict()
    assert any(not torch.equal(trained[key], initial[key]) for key in trained)
    assert sorted(path.name for path in (out / "previews").iterdir()) == ["iter_0000001.png", "iter_0000002.png"]

    second = torchrun(*cli_arguments(training_files, out, max_iter=3), "--resume")
    assert second.returncode == 0, second.stderr
    assert "from iteration 2 to 3" in second.stderr
    resumed = mambast.load(out / "iter_3", device="cpu").state_dict()
    assert any(not torch.equal(resumed[key], trained[key]) for key in resumed)

    alone = subprocess.run([sys.executable, "-m", "mambast", *cli_arguments(training_files, out, max_iter=4),
                            "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert alone.returncode != 0 and "torchrun --nproc_per_node 2" in alone.stderr
