"""Seconds per training step and peak memory of our training against the reference's forward + backward.

One training step is the reference's training forward (the stylization pass Ics, the identity
passes Icc and Iss, the VGG-19 content / style / identity losses weighted 7, 10, 70, 1), its
backward, and an Adam step over all of Mamba-ST's parameters, as our trainer runs them:
:func:`mambast.training.compute_losses` under the ``--precision``'s autocast, ``backward()``,
``optimizer.step()``, with DropPath 0.1 in the decoder blocks as the reference trains. Every
variant has the same random 3 + 3 layer weights of the released architecture
(``random_official_tensors(seed=0)``), the same random-weight VGG-19 in the layout of the
reference's ``vgg_normalised.pth`` (He-normal, built here: nothing is downloaded), the same
seeded batch of photo-like contents and styles, and per step the same style permutations and
DropPath masks, so their losses agree (printed last). Each variant runs in a fresh process (so
its peak memory is its own): ``--warmup`` untimed steps (1; the first creates Adam's state),
then ``--repeats`` timed steps; the median, the range and the ratios against the reference
variants are printed. A CPU variant whose resident memory passes ``--max-memory-gib`` is stopped
and reported as such.

Variants:
- ``ours``: the training step as shipped: the default scan backend (on the CPU the ``chunked``
  scan, which under autograd keeps only the state at each chunk boundary and recomputes the
  chunks in backward), each image's encodings computed once and shared by the three passes,
  the CNN decoder as :meth:`MambaST.decode` runs it (NNPACK's Winograd convolutions on CPUs
  that have them, else channels-last).
- ``ours (no recompute)``: ``ours`` with the chunked scan letting autograd record its chunk
  loop (``selective_scan_chunked(..., recompute=False)``): what the recomputing backward saves.
- ``reference``: what the reference's training step computes, built from our modules: the
  ``reference`` (sequential) scan, which builds ``exp(delta * A)`` for the whole sequence and
  lets autograd record every state (the reference's CUDA kernel cannot run on a CPU; the
  project's training fixtures replaced it by such a scan, mamba_ssm's ``selective_scan_ref``);
  the three passes each encoding their content and style anew (six encoder runs, as the
  reference's forward calls its whole ``Mamba`` three times; ours runs four); the CNN decoder as
  a plain ``nn.Sequential`` on contiguous NCHW images. The four scan directions are stacked,
  flipped and merged as copies in every variant here: under autograd our SS2D takes that path
  too. Not reproduced: the reference's unused positional branch (``new_ps``, a pooled 1x1
  convolution) and its sequence-first token layout. The rest (linears, norms, depthwise convs,
  VGG, losses, Adam) is the same code as ours, so the ratios are if anything understated. This
  scan's autograd backward is quadratic in the tokens L: every ``transition[t]`` and
  ``drive[t]`` the loop reads hands backward a gradient as large as the whole sequence (zeros
  but one slice), as ``deltaA[:, :, i]`` in the loop of ``selective_scan_ref`` does too. On a GPU
  the reference runs mamba_ssm's fused kernel instead, linear and recomputing in its backward:
  this variant says nothing about that.
- ``reference (linear backward)``: ``reference`` with that loop reading its slices through
  ``unbind`` (the same values; backward stacks the L slice gradients once): a sequential scan
  under full autograd without the quadratic backward, the fairer baseline of the two.
- ``ours (triton scan)``, CUDA only and not in the default list: ``ours`` with the scan under
  autograd on our Triton kernel and its backward (:mod:`mambast.kernels.scan.triton_backward`) instead of
  the chunked one.

Peak memory on the CPU is the resident high-water mark of the process above what was resident
once the model, the VGG, the optimiser and the batch were loaded (the total in brackets); on CUDA
``torch.cuda.max_memory_allocated`` likewise. It includes the gradients and Adam's state (made in
the warm-up step), alike in every variant.

    python bench/train.py [--size 256] [--batch-size 2] [--repeats 3] [--threads 2] [--variants ours,reference]
    python bench/train.py --size 128 --batch-size 1 --reference-repeats 1   # where the references fit
    python bench/train.py --device cuda --batch-size 8 --precision bf16 --variants "ours,ours (triton scan)"
    python bench/train.py --data-images 24 --variants ours    # data time per iteration beside the step's

With ``--data-images N`` the data loading is measured too, in the same run: N photo-like JPEGs of
``--data-size`` (a WikiArt painting is typically 2000-3000 px) are written to a temporary folder
and the trainer's two image streams read batches of ``--batch-size`` 256 px crops of 512 px
resized images from them: in the training process (``--workers 0``), with the default worker
processes, and as the previous version read them (converted to float32 before resizing) as the
baseline. Printed: seconds per iteration (both streams) beside the step's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import median, peak_mib, reset_peak, resident_mib, run_isolated  # noqa: E402

VARIANTS = ("ours", "ours (no recompute)", "reference (linear backward)", "reference")
REFERENCES = ("reference (linear backward)", "reference")
CUDA_VARIANTS = ("ours (triton scan)",)
PRECISION_NAMES = ("fp32", "bf16", "fp16")


def training_batch(batch: int, height: int, width: int, seed: int):
    """``batch`` photo-like images (smooth structure plus fine noise, as bench/stylize.py's), seeded."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(batch, 3, max(2, height // 32), max(2, width // 32), generator=generator),
                           size=(height, width), mode="bilinear", align_corners=False)
    return (coarse + 0.1 * torch.rand(batch, 3, height, width, generator=generator)).clamp(0, 1)


def random_vgg():
    """The reference's VGG-19 layout with He-normal random weights, zero biases, frozen."""
    import torch

    from mambast.training import VGGEncoder

    generator = torch.Generator().manual_seed(11)
    encoder = VGGEncoder()
    with torch.no_grad():
        for parameter in encoder.parameters():
            if parameter.dim() > 1:
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * (2 / fan_in) ** 0.5)
            else:
                parameter.zero_()
    return encoder.eval().requires_grad_(False)


def _reference_like(model) -> None:
    """Make ``model`` and the losses compute what the reference's training step computes (see the docstring)."""
    import mambast.network.model
    from mambast.training import losses

    mambast.network.model._CHANNELS_LAST_DEVICES = ()

    def decode(features, size=None):  # the reference's decoder: nn.Sequential on NCHW
        image = model.decoder(features.to(dtype=model.dtype).contiguous()).float().contiguous()
        return image if size is None else image[..., : size[0], : size[1]]

    model.decode = decode
    if not hasattr(losses, "_Passes"):
        raise SystemExit("mambast.training.losses has no _Passes any more: update bench/train.py's reference variant.")

    class Unshared(losses._Passes):
        """Each pass encodes its content and style anew, as the reference's three ``Mamba`` calls do."""

        def content(self, name, image):
            return self.model.encode_content(image)

        def style(self, name, image, size):
            return self.model.encode_style(image, size)

    losses._Passes = Unshared


def sequential_scan_linear_backward(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """:func:`mambast.kernels.scan.reference.selective_scan_reference` with each token's slices taken by
    ``unbind``: the same arithmetic, a backward linear in the sequence length."""
    import torch

    from mambast.kernels.scan.reference import channel_major_output, token_major_terms

    u, transition, drive, C_t = token_major_terms(u, delta, A, B, C, delta_bias, delta_softplus)
    state = u.new_zeros(transition.shape[1:])
    ys = []
    for step_transition, step_drive, step_C in zip(transition.unbind(0), drive.unbind(0), C_t.unbind(0)):
        state = step_transition * state + step_drive
        ys.append(torch.matmul(state, step_C).squeeze(-1))
    return channel_major_output(torch.stack(ys), u, D)


def _scan_under_autograd(variant: str, device) -> None:
    """Swap the scan backend that runs under autograd for the variant's."""
    import functools

    import mambast.kernels.scan
    from mambast.kernels.scan.chunked import selective_scan_chunked

    if variant == "reference (linear backward)":
        mambast.kernels.scan.BACKENDS["reference"] = sequential_scan_linear_backward
    elif variant == "ours (no recompute)":
        mambast.kernels.scan.BACKENDS["chunked"] = functools.partial(selective_scan_chunked, recompute=False)
    elif variant == "ours (triton scan)":
        if device.type != "cuda" or not mambast.kernels.scan.triton_available():
            raise SystemExit("the 'ours (triton scan)' variant needs CUDA and Triton.")
        from mambast.kernels.scan.triton_backward import selective_scan_triton_trainable

        mambast.kernels.scan.BACKENDS["chunked"] = selective_scan_triton_trainable


def available_mib() -> float:
    """MemAvailable of this machine in MiB (Linux; 0 where unknown)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# Where the worker is, for the message of a stopped one.
_PROGRESS = {"step": "loading", "started": time.perf_counter()}


def stop_above(limit_mib: float) -> None:
    """Exit this process (code 3) once its resident memory passes ``limit_mib``, checked every 50 ms:
    a variant that would not fit stops and is reported rather than taking the machine's memory."""
    import os
    import threading

    def watch():
        while True:
            resident = resident_mib()
            if resident > limit_mib:
                print(f"stopped at {resident / 1024:.1f} GiB resident (the limit, --max-memory-gib) in the "
                      f"{_PROGRESS['step']}, after {time.perf_counter() - _PROGRESS['started']:.0f} s",
                      file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def measure(variant: str, size: tuple[int, int], batch: int, repeats: int, warmup: int, threads: int,
            device_name: str, precision: str) -> dict:
    import torch

    import mambast
    from mambast.network.random_weights import random_official_tensors
    from mambast.training import LossWeights, compute_losses
    from mambast.training.trainer import PRECISIONS

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as the trainer: fixed crop size
    # "ours" takes the automatic choice; the variants that swap the chunked scan name it.
    scan = None if variant == "ours" else "reference" if variant in REFERENCES else "chunked"
    model = mambast.build(mambast.Checkpoint(random_official_tensors(seed=0)), device=device, scan=scan)
    model.requires_grad_(True).train()
    if variant in REFERENCES:
        _reference_like(model)
    _scan_under_autograd(variant, device)
    vgg = random_vgg().to(device)
    content = training_batch(batch, *size, seed=0).to(device)
    style = training_batch(batch, *size, seed=1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    weights = LossWeights()

    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def step(iteration: int) -> float:
        torch.manual_seed(iteration)  # DropPath's masks
        with autocast:
            losses = compute_losses(model, vgg, content, style, seed=iteration, weights=weights)
        scaler.scale(losses["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(losses["total"].detach())

    def synchronize():
        if cuda:
            torch.cuda.synchronize(device)

    synchronize()
    if cuda:
        baseline = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        baseline = resident_mib()
        reset_peak()
    totals = []
    for iteration in range(warmup):  # Adam's state, cuDNN's choices, first-call allocations
        _PROGRESS["step"] = f"warm-up step {iteration + 1}"
        totals.append(step(iteration))
    seconds = []
    for iteration in range(warmup, warmup + repeats):
        _PROGRESS["step"] = f"timed step {iteration - warmup + 1}"
        synchronize()
        started = time.perf_counter()
        totals.append(step(iteration))
        synchronize()
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_mib()
    return {"variant": variant, "seconds": seconds, "peak_mib": peak - baseline, "peak_total_mib": peak,
            "losses": totals}


def run_variant(variant: str, *args: str) -> dict:
    """:func:`run_isolated`, a failing worker (killed for memory, say) reported instead of raised."""
    try:
        return run_isolated(Path(__file__), "--worker", variant, *args)
    except subprocess.CalledProcessError as error:
        if error.returncode in (-9, 137):
            reason = "killed (SIGKILL: out of memory?)"
        elif error.returncode == 3:
            reason = error.stderr.strip().splitlines()[-1]
        else:
            lines = (error.stderr or "").strip().splitlines()
            reason = f"exit {error.returncode}: {lines[-1] if lines else 'no message'}"
        return {"variant": variant, "error": reason}


def photo_like_jpegs(folder: Path, count: int, width: int, height: int) -> None:
    """Smooth gradients, edges and noise, saved at JPEG quality 90: decoded like photographs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    for index in range(count):
        phase = index * 0.7
        channels = [(np.sin(x / (60 + 7 * index) + phase) + 1) * 100, (np.cos(y / 50 - phase) + 1) * 100,
                    (x + y) * 255 / (width + height)]
        picture = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 1))
        Image.fromarray(picture.clip(0, 255).astype(np.uint8)).save(folder / f"image{index:03d}.jpg", quality=90)


def data_seconds_per_iteration(folder: Path, batch: int, workers: int, iterations: int, float_first: bool = False
                               ) -> list[float]:
    """Seconds for the two streams' batches of each iteration, after one batch of warm-up (workers start)."""
    from mambast.training import data
    from mambast.utils.imaging import read_image, resize

    if float_first:  # the previous version: the image made float32, then resized
        data.read_image_resized = lambda path, size: resize(read_image(path), size)
    streams = [data.ImageStream(folder, option, batch_size=batch, load_size=512, crop=256, seed=seed, workers=workers)
               for seed, option in ((1, "--content-dir"), (2, "--style-dir"))]
    for stream in streams:
        stream.next_batch()
    seconds = []
    for _ in range(iterations):
        started = time.perf_counter()
        for stream in streams:
            stream.next_batch()
        seconds.append(time.perf_counter() - started)
    for stream in streams:
        stream.close()
    return seconds


def data_figures(args) -> dict[str, list[float]]:
    import tempfile

    from mambast.training.trainer import default_workers

    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        photo_like_jpegs(Path(folder), args.data_images, *args.data_size)
        iterations = max(2, 2 * args.data_images // args.batch_size)
        for name, workers, float_first in (("previous: float32, then resized (0 workers)", 0, True),
                                           ("resized in 8 bits (0 workers)", 0, False),
                                           (f"resized in 8 bits ({default_workers()} workers per stream)",
                                            default_workers(), False)):
            figures[name] = run_isolated(Path(__file__), "--data-worker", folder, str(args.batch_size), str(workers),
                                         str(iterations), str(int(float_first)), "--threads", str(args.threads))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="H [W] of the content and style crops")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first creates Adam's state)")
    parser.add_argument("--reference-repeats", type=int,
                        help="timed steps of the (slow) reference variants; default --repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_NAMES,
                        help="autocast of the dense layers, as `python -m mambast train --precision`")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {VARIANTS + CUDA_VARIANTS}")
    parser.add_argument("--max-memory-gib", type=float,
                        help="stop a CPU variant whose resident memory passes this (default: 80%% of the memory "
                             "available at the start; 0: no limit)")
    parser.add_argument("--data-images", type=int, default=0,
                        help="also measure the data loading on this many generated JPEGs (0: not)")
    parser.add_argument("--data-size", type=int, nargs=2, default=[2500, 2000], metavar=("W", "H"),
                        help="size of the generated JPEGs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = (args.size[0], args.size[-1])
    if args.data_worker:
        import torch

        folder, batch, workers, iterations, float_first = args.data_worker
        torch.set_num_threads(args.threads)
        print(json.dumps({"seconds": data_seconds_per_iteration(Path(folder), int(batch), int(workers),
                                                                 int(iterations), bool(int(float_first)))}))
        return
    if args.worker:
        if args.max_memory_gib:
            stop_above(args.max_memory_gib * 1024)
        print(json.dumps(measure(args.worker, size, args.batch_size, args.repeats, args.warmup, args.threads,
                                 args.device, args.precision)))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS + CUDA_VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS + CUDA_VARIANTS}")
    common = ("--size", str(size[0]), str(size[1]), "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
              "--threads",
              str(args.threads), "--device", args.device, "--precision", args.precision)
    limit = args.max_memory_gib if args.max_memory_gib is not None else 0.8 * available_mib() / 1024
    if limit and not args.device.startswith("cuda"):
        common += ("--max-memory-gib", f"{limit:.2f}")
    memory = "max_memory_allocated" if args.device.startswith("cuda") else "resident memory"
    print(f"training step (forward + backward + Adam) {size[1]}x{size[0]}, batch {args.batch_size}, random 3+3-layer "
          f"weights and VGG-19, {args.precision}, {args.device}, {args.threads} threads; median (min-max) of the timed "
          f"steps after {args.warmup} warm-up step(s); peak = {memory} above the loaded model, VGG, optimiser and "
          f"batch (total in brackets)", flush=True)
    print(f"  {'variant':<28} {'s/step':>8} {'(min-max)':>17} {'peak MiB':>10} {'(total)':>8} {'steps':>5}", flush=True)
    results = {}
    for variant in variants:  # each row as soon as its variant is done: the slow ones take long
        repeats = args.reference_repeats if variant in REFERENCES and args.reference_repeats else args.repeats
        result = results[variant] = run_variant(variant, *common, "--repeats", str(repeats))
        if "error" in result:
            print(f"  {variant:<28} {result['error']}", flush=True)
            continue
        seconds = result["seconds"]
        spread = f"({min(seconds):.2f}-{max(seconds):.2f})"
        total = f"({result['peak_total_mib']:.0f})"
        print(f"  {variant:<28} {median(seconds):8.2f} {spread:>17} {result['peak_mib']:+10.0f} {total:>8} "
              f"{len(seconds):>5}", flush=True)
    for base, reference in results.items():
        if base not in REFERENCES or "error" in reference:
            continue
        for name, result in results.items():
            if name not in REFERENCES and "error" not in result:
                print(f"  {name} vs {base}: {median(reference['seconds']) / median(result['seconds']):.1f}x "
                      f"faster, {result['peak_mib'] / reference['peak_mib']:.2f} of its peak memory "
                      f"({result['peak_total_mib'] / reference['peak_total_mib']:.2f} of its total)")
    finished = [r for r in results.values() if "error" not in r]
    if finished:
        print("  total loss per step (warm-up first): "
              + "; ".join(f"{r['variant']}: {', '.join(f'{x:.4g}' for x in r['losses'])}" for r in finished))
    if args.data_images:
        step = median(results["ours"]["seconds"]) if "seconds" in results.get("ours", {}) else None
        print(f"data: two streams of {args.batch_size} crops (256 px of 512 px resized) per iteration from "
              f"{args.data_images} JPEGs of {args.data_size[0]}x{args.data_size[1]}, {args.threads} threads; median "
              "(min-max) seconds per iteration" + (f", against the step's {step:.2f} s" if step else ""), flush=True)
        figures = data_figures(args)
        baseline = median(next(iter(figures.values()))["seconds"])
        for name, result in figures.items():
            seconds = result["seconds"]
            share = f", {median(seconds) / step:.2f} of a step" if step else ""
            print(f"  {name:<44} {median(seconds):7.3f} ({min(seconds):.3f}-{max(seconds):.3f}) "
                  f"{baseline / median(seconds):5.1f}x the previous{share}", flush=True)

if __name__ == "__main__":
    main()
