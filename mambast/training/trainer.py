"""The training loop: Adam over all of Mamba-ST's parameters on the reference's losses, on one process or many.

The recipe is the one the reference's published script (scripts/train.sh) runs with its
train.py: every parameter of the network (Mamba body, CNN decoder, patch embedding) in one
Adam with default betas, a constant learning rate of 1e-4 (the script's ``--lr 1e-4``; its
argparse default is 5e-4), the style shuffle on (``--rnd_style``), batches of 8 random 256-pixel
crops of 512 x 512 resized images, 160,000 iterations, the official three checkpoint files every
10,000. Four things are ours:

- Every random draw of an iteration (the style permutations of the losses, DropPath's masks,
  the data's order and crops) is a pure function of (--seed, rank, iteration): a resumed run
  repeats what an uninterrupted one does (the tests compare the weights to 1e-6).
- On several processes (torchrun) each rank draws its own data and permutations and the
  gradients are averaged over the ranks by DistributedDataParallel during backward, so the
  ranks stay identical.
- Mixed precision (autocast) for the dense layers; the selective scan casts to float32 itself.
- ``--accumulate N`` sums the gradients of N micro-batches before one Adam step, so that a batch
  of 8 fits where its activations would not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..network.checkpoint import read_checkpoint
from ..network.config import MambaSTConfig
from ..network.loading import build
from ..network.model import MambaST
from . import distributed
from .data import ImageStream
from .distributed import Ranks
from .losses import LossWeights, TrainingObjective
from .reporting import TrainingReport
from .seeds import derive_seed, generator
from .state import load_state, random_states, restore_random_states, save_state, state_path
from .vgg import load_vgg
from .weights import extra_tensors_of, initialise_like_reference, save_official, save_safetensors

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Images per preview grid (the first ones of the batch).
PREVIEW_IMAGES = 4
# Options that decide what a run computes: resuming with another value is allowed but said.
_RUN_DEFINING = ("seed", "batch_size", "crop", "load_size", "precision", "accumulate")


def default_workers() -> int:
    """Processes reading ahead per image stream: half the CPU's cores, 1 to 8 (the reference runs 16
    threads per stream). Decoding and resizing a large painting takes tens of milliseconds, a
    batch of 8 of them longer than a GPU's step."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclass
class TrainingOptions:
    """What ``python -m mambast train`` takes; the defaults are the reference's recipe.

    ``batch_size`` is per process: under torchrun each of N ranks takes that many images.
    ``log_every``: iterations per line of train_log.jsonl (each line holds their means).
    ``preview_every`` 0 writes no previews.
    """

    content_dir: Path
    style_dir: Path
    vgg: Path
    out: Path = Path("training")
    init: Path | None = None
    layers: int = 3
    max_iter: int = 160_000
    batch_size: int = 8
    lr: float = 1e-4
    crop: int = 256
    load_size: int = 512
    weights: LossWeights = field(default_factory=LossWeights)
    save_every: int = 10_000
    preview_every: int = 1_000
    log_every: int = 10
    precision: str = "fp32"
    device: str | None = None
    workers: int | None = None  # per image stream; None: default_workers()
    seed: int = 777
    resume: bool = False
    accumulate: int = 1
    reset_data_streams: bool = False

    def check(self) -> None:
        """Raise a ValueError, naming the option, for a value training cannot use."""
        at_least_one = {"--layers": self.layers, "--max-iter": self.max_iter, "--batch-size": self.batch_size,
                        "--save-every": self.save_every, "--log-every": self.log_every,
                        "--accumulate": self.accumulate}
        for option, value in at_least_one.items():
            if value < 1:
                raise ValueError(f"{option} must be at least 1; got {value}.")
        if self.preview_every < 0 or (self.workers is not None and self.workers < 0):
            raise ValueError("--preview-every and --workers must be 0 or more.")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive; got {self.lr}.")
        if self.crop % 8 or self.crop < 32:
            # Multiples of the patch size; the style loss needs relu5_1 (1/16 of the side) to be
            # at least 2 x 2 for a standard deviation.
            raise ValueError(f"--crop must be a multiple of 8 and at least 32 (the reference trains at 256); "
                             f"got {self.crop}.")
        if self.load_size < self.crop:
            raise ValueError(f"--load-size ({self.load_size}) must be at least --crop ({self.crop}).")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")
        if any(value < 0 for value in dataclasses.astuple(self.weights)):
            raise ValueError(f"loss weights must not be negative; got {self.weights}.")

    def run_defining(self) -> dict:
        """The options that decide what the run computes, as plain values (saved in the state)."""
        return {name: getattr(self, name) for name in _RUN_DEFINING} | {"weights": list(dataclasses.astuple(self.weights))}


def step_seeds(run_seed: int, rank: int, iteration: int, micro_batch: int = 0) -> tuple[int, int]:
    """(seed of the losses' style permutations, seed of DropPath's masks) of one rank at one
    iteration: the permutations are the iteration's, shared by its micro-batches as by the images
    of one batch; DropPath's masks are drawn anew for each micro-batch."""
    drop_path = (derive_seed(run_seed, "drop path", rank, iteration) if micro_batch == 0
                 else derive_seed(run_seed, "drop path", rank, iteration, micro_batch))
    return derive_seed(run_seed, "permutations", rank, iteration), drop_path


def losses_and_gradients(objective: torch.nn.Module, content: torch.Tensor, style: torch.Tensor, run_seed: int,
                         rank: int, iteration: int, weights: LossWeights, precision: str = "fp32",
                         scaler: torch.amp.GradScaler | None = None, micro_batch: int = 0,
                         loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One rank's forward and backward pass of one iteration: the losses (detached); gradients add to ``.grad``.

    ``objective``: a :class:`~mambast.training.losses.TrainingObjective`, or the
    DistributedDataParallel wrapping it (whose backward then averages the gradients over the
    ranks). content, style: (B, 3, crop, crop) in 0..1. ``iteration`` counts from 0. The style
    permutations and DropPath's masks are drawn from :func:`step_seeds`; PyTorch's global
    generators are left as they were. ``scaler`` scales the loss (float16). With gradient
    accumulation, ``micro_batch`` numbers the micro-batch and ``loss_scale`` (1 / their count)
    makes the summed gradients those of their mean loss, as one batch of all their images gives.
    """
    permutation_seed, drop_path_seed = step_seeds(run_seed, rank, iteration, micro_batch)
    device = content.device
    autocast = torch.autocast(device.type, dtype=PRECISIONS[precision] or torch.float32,
                              enabled=PRECISIONS[precision] is not None)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(drop_path_seed)  # DropPath draws from the global generator
        with autocast:
            losses = objective(content, style, seed=permutation_seed, weights=weights)
        total = losses["total"] * loss_scale if loss_scale != 1.0 else losses["total"]
        (scaler.scale(total) if scaler is not None else total).backward()
    return {name: value.detach() for name, value in losses.items()}


def new_model(options: TrainingOptions) -> tuple[MambaST, dict[str, torch.Tensor]]:
    """The model training starts from, float32 on the CPU, and the official tensors it lacks.

    --init: any checkpoint :func:`mambast.read_checkpoint` reads (its unused official tensors
    are kept for the official files). Otherwise a new network with --layers encoder and decoder
    blocks, initialised as the reference initialises one, from --seed.
    """
    if options.init is not None:
        checkpoint = read_checkpoint(options.init)
        return build(checkpoint, device="cpu", dtype=torch.float32), extra_tensors_of(checkpoint)
    model = MambaST(MambaSTConfig(encoder_layers=options.layers, decoder_layers=options.layers))
    return model, initialise_like_reference(model, generator(options.seed, "initial weights"))


class Trainer:
    """One process's part of a training run: its model copy, data streams, optimiser and reports.

    ``Trainer(options).run()`` trains to ``options.max_iter``. Rank 0 alone writes checkpoints
    (``out/iter_<N>/``: the official three .pth files and one .safetensors), the training state
    (``out/training_state.pt``), the log and the previews.
    """

    def __init__(self, options: TrainingOptions, ranks: Ranks | None = None):
        options.check()
        self.options = options
        self.ranks = ranks or distributed.torchrun_ranks()
        self.device = distributed.rank_device(options.device, self.ranks)
        self.out = Path(options.out).expanduser()
        state = self._state_to_resume()
        self.vgg = load_vgg(options.vgg).to(self.device)
        distributed.start(self.ranks, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: the fastest convolutions, found once
        self.workers = default_workers() if options.workers is None else options.workers
        streams = dict(batch_size=options.batch_size, load_size=options.load_size, crop=options.crop,
                       seed=options.seed, rank=self.ranks.rank, workers=self.workers,
                       pin_memory=self.device.type == "cuda")
        self.content = ImageStream(options.content_dir, "--content-dir", **streams)
        self.style = ImageStream(options.style_dir, "--style-dir", **streams)
        if state is None:
            model, self.extra = new_model(options)
        else:
            model = MambaST(MambaSTConfig.from_state_dict(state["model"]))
            model.load_state_dict(state["model"])
            self.extra = state["extra"]
        # All of MambaST's parameters train, as the reference's optimiser takes its mamba, decode and
        # embedding modules. DropPath acts in train mode.
        self.model = model.to(self.device).requires_grad_(True).train()
        # DistributedDataParallel makes every rank start from rank 0's weights and averages the
        # gradients over the ranks during backward; the VGG is frozen, so it has no gradients to share.
        self.objective = distributed.data_parallel(TrainingObjective(self.model, self.vgg), self.device, self.ranks)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=options.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=options.precision == "fp16")
        self.iteration = 0
        self.skipped_files: dict[str, set[str]] = {"content": set(), "style": set()}
        seconds = 0.0
        if state is not None:
            seconds = self._restore(state)
        self.report = TrainingReport(self.out, options.weights, options.max_iter, self.iteration, options.log_every,
                                     seconds, enabled=self.ranks.is_main)
        self._stop_requested = False

    # -- resuming ---------------------------------------------------------------------------
    def _state_to_resume(self) -> dict | None:
        if not self.options.resume:
            if state_path(self.out).exists():
                raise ValueError(f"{self.out} holds a training run already ({state_path(self.out).name}); pass "
                                 "--resume to continue it, or give another --out to start a new one.")
            return None
        return load_state(self.out)

    def _restore(self, state: dict) -> float:
        """Set everything to the saved state; returns the training seconds it had taken."""
        saved_ranks = len(state["ranks"])
        restart_streams = self.options.reset_data_streams
        if saved_ranks != self.ranks.world_size and not restart_streams:
            raise ValueError(f"{state_path(self.out)} was saved by {saved_ranks} process(es); resume it with as many "
                             f"(torchrun --nproc_per_node {saved_ranks}), not {self.ranks.world_size}, or add "
                             "--reset-data-streams to go on with these weights and Adam's state on "
                             f"{self.ranks.world_size}, the data streams started anew.")
        iterations = distributed.gather(state["iteration"], self.ranks)
        if len(set(iterations)) > 1:
            raise ValueError(f"the ranks read training states of different iterations ({iterations}) from "
                             f"{self.out}: every rank must see the same --out folder.")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.options.lr  # a resumed run may change the learning rate
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        if restart_streams:
            # Each rank's streams start from their first sample: the run goes on with the saved weights and
            # optimiser on another sequence of images than an uninterrupted run would have seen.
            if self.ranks.is_main:
                print(f"note: --reset-data-streams: {saved_ranks} process(es) saved this state, "
                      f"{self.ranks.world_size} go on; the data streams start anew.", file=sys.stderr, flush=True)
        else:
            mine = state["ranks"][self.ranks.rank]
            self.content.load_state_dict(mine["content"])
            self.style.load_state_dict(mine["style"])
            restore_random_states(mine["random"], self.device)
        for kind in self.skipped_files:
            self.skipped_files[kind] = {name for rank in state["ranks"] for name in rank[kind]["unreadable"]}
        changed = [f"{name} {state['options'].get(name)} -> {value}"
                   for name, value in self.options.run_defining().items() if state["options"].get(name) != value]
        if changed and self.ranks.is_main:
            print(f"note: resuming with other settings than the run was started with ({', '.join(changed)}); it "
                  "goes on as another run would.", file=sys.stderr, flush=True)
        return float(state["seconds"])

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Train from the current iteration to ``max_iter``; returns the iteration reached.

        Ctrl-C or SIGTERM (a cluster's preemption) stops after the current iteration, with the
        state and a checkpoint saved; a second Ctrl-C stops at once.
        """
        options = self.options
        if self.iteration >= options.max_iter:
            self.report.say(f"{self.out}: already at iteration {self.iteration}, --max-iter is {options.max_iter}; "
                            "nothing to do.")
            return self.iteration
        self.report.say(f"Training {sum(p.numel() for p in self.model.parameters()):,} parameters on "
                        f"{self.ranks.world_size} x {self.device} ({options.precision}), batch "
                        f"{options.batch_size} per process, from iteration {self.iteration} to {options.max_iter}; "
                        f"writing to {self.out}")
        try:
            with self._stop_signals():
                while self.iteration < options.max_iter:
                    stop = self._iteration()
                    if stop or self.iteration % options.save_every == 0 or self.iteration == options.max_iter:
                        self.save()
                    if stop:
                        self.report.say(f"Stopped at iteration {self.iteration}; the state is saved: add --resume "
                                        "to the same command to go on.")
                        break
        finally:
            self.report.close()
            self.content.close()
            self.style.close()
        return self.iteration

    def _iteration(self) -> bool:
        """One optimiser step over all ranks, on ``accumulate`` micro-batches; returns whether the
        run was asked to stop."""
        count = self.options.accumulate
        losses: dict[str, torch.Tensor] = {}
        for micro_batch in range(count):
            content = self.content.next_batch().to(self.device, non_blocking=True)
            style = self.style.next_batch().to(self.device, non_blocking=True)
            # DistributedDataParallel averages the gradients over the ranks on the last micro-batch only.
            last = micro_batch == count - 1
            syncing = contextlib.nullcontext() if last or not hasattr(self.objective, "no_sync") \
                else self.objective.no_sync()
            with syncing:
                micro = losses_and_gradients(self.objective, content, style, self.options.seed, self.ranks.rank,
                                             self.iteration, self.options.weights, self.options.precision,
                                             self.scaler if self.scaler.is_enabled() else None, micro_batch,
                                             1.0 / count)
            for name, value in micro.items():
                losses[name] = losses.get(name, 0.0) + value / count
        new_unreadable = {"content": self.content.take_new_unreadable(), "style": self.style.take_new_unreadable()}
        summary = torch.stack([losses[name].float() for name in ("content", "style", "identity1", "identity2",
                                                                   "total")]
                              + [torch.tensor(float(len(new_unreadable["content"]) + len(new_unreadable["style"])),
                                              device=self.device),
                                 torch.tensor(float(self._stop_requested), device=self.device)])
        summary = distributed.sum_over_ranks(summary, self.ranks).tolist()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        if summary[5]:
            self._note_unreadable(new_unreadable)
        means = dict(zip(("content", "style", "identity1", "identity2", "total"),
                         (value / self.ranks.world_size for value in summary[:5])))
        self.report.iteration_done(self.iteration, means, self.optimizer.param_groups[0]["lr"],
                                   {kind: len(names) for kind, names in self.skipped_files.items()})
        if self.options.preview_every and self.iteration % self.options.preview_every == 0 and self.ranks.is_main:
            self._preview(content, style)
        return bool(summary[6])

    def _note_unreadable(self, new: dict[str, list[tuple[str, str]]]) -> None:
        """Count the files any rank found unreadable (each once) and name the new ones."""
        for found in distributed.gather(new, self.ranks):
            for kind, files in found.items():
                for name, reason in files:
                    if name not in self.skipped_files[kind]:
                        self.skipped_files[kind].add(name)
                        self.report.say(f"skipped {kind} image: {reason}")

    def _preview(self, content: torch.Tensor, style: torch.Tensor) -> None:
        count = min(PREVIEW_IMAGES, content.shape[0])
        permutation_seed = step_seeds(self.options.seed, self.ranks.rank, self.iteration)[0]
        precision = PRECISIONS[self.options.precision]
        self.model.eval()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=precision or torch.float32,
                                                 enabled=precision is not None):
                stylized = self.model.stylize(content[:count], style[:count], seed=permutation_seed)
        finally:
            self.model.train()
        self.report.preview(self.iteration, content[:count], style[:count], stylized)

    # -- saving -----------------------------------------------------------------------------
    def save(self) -> None:
        """A checkpoint (official files and .safetensors) and the training state, by rank 0 (all ranks call it)."""
        mine = {"content": self.content.state_dict(), "style": self.style.state_dict(),
                "random": random_states(self.device)}
        every_rank = distributed.gather(mine, self.ranks)
        if not self.ranks.is_main:
            return
        folder = self.out / f"iter_{self.iteration}"
        save_official(self.model, folder, self.iteration, self.extra)
        save_safetensors(self.model, folder / f"mambast_iter_{self.iteration}.safetensors", self.extra)
        save_state({"iteration": self.iteration, "model": self.model.state_dict(), "extra": self.extra,
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                    "options": self.options.run_defining(), "seconds": self.report.seconds,
                    "ranks": [{**rank, "random": {name: value.cpu() for name, value in rank["random"].items()}}
                              for rank in every_rank]}, self.out)
        self.report.say(f"Saved {folder} and {state_path(self.out).name} at iteration {self.iteration}.")

    @contextlib.contextmanager
    def _stop_signals(self):
        """Ctrl-C and SIGTERM ask the loop to stop after the current iteration; a second Ctrl-C stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        main_process = os.getpid()

        def request_stop(number, frame):
            if os.getpid() != main_process:  # a process forked with this handler (data workers ignore it)
                return
            if self._stop_requested and number == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.report.say("Stopping after this iteration to save the state (Ctrl-C again to quit at once).")

        previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

