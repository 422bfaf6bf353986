"""``python -m mambast train``: the reference's recipe, from scratch or fine-tuning, on one process or many."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands) -> None:
    """``train``: the reference's recipe by default, on one process or many (torchrun)."""
    from ..training.losses import LossWeights
    from ..training.trainer import PRECISIONS, TrainingOptions, default_workers

    defaults, weights = TrainingOptions(Path(), Path(), Path()), LossWeights()
    train = commands.add_parser(
        "train", help="train (or fine-tune) Mamba-ST on folders of content and style images",
        description="Train Mamba-ST as the reference does, with the defaults its published script runs (scripts/"
                    "train.sh: --lr 1e-4, batch 8, 256 px crops, the style shuffle on): Adam over all its parameters "
                    "on the content, style and identity losses of VGG-19 features, random crops of resized images, "
                    "the official three "
                    "checkpoint files (and one .safetensors) in OUT/iter_<N>/ every --save-every iterations. "
                    "OUT also gets training_state.pt (for --resume), train_log.jsonl, previews/ (content | style | "
                    "stylized) and tensorboard/ when TensorBoard is installed. Ctrl-C or SIGTERM stops after the "
                    "current iteration with the state saved. On several GPUs or processes run it under torchrun: "
                    "torchrun --nproc_per_node N -m mambast train ... (data parallel, each process with its own "
                    "images and draws; process 0 writes the files).")
    train.add_argument("--content-dir", required=True,
                       help="folder of content images (photographs, e.g. MS-COCO), flat or one level of sub-folders")
    train.add_argument("--style-dir", required=True,
                       help="folder of style images (paintings, e.g. WikiArt), flat or one level of sub-folders")
    train.add_argument("--vgg", required=True,
                       help="the reference's vgg_normalised.pth (or a .safetensors with its keys), for the losses")
    train.add_argument("--init", help="start from these weights (an official folder or a .safetensors: "
                                      "fine-tuning) instead of a new network")
    train.add_argument("--layers", type=int, default=defaults.layers,
                       help="encoder and decoder blocks of a new network (ignored with --init)")
    train.add_argument("--out", default=str(defaults.out), help="folder for checkpoints, state, log and previews")
    train.add_argument("--max-iter", type=int, default=defaults.max_iter, help="iterations to train to")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size,
                       help="images per iteration and per process: under torchrun with N processes an iteration "
                            "sees N times as many")
    train.add_argument("--lr", type=float, default=defaults.lr,
                       help="Adam's constant learning rate (default 1e-4: what the reference's published script "
                            "scripts/train.sh passes; its train.py's own default is 5e-4)")
    train.add_argument("--crop", type=int, default=defaults.crop,
                       help="side of the random square crops (multiple of 8, at least 32)")
    train.add_argument("--load-size", type=int, default=defaults.load_size,
                       help="images are resized to this square before cropping")
    for name, help_text in (("content", "content loss"), ("style", "style loss"),
                            ("identity1", "identity loss on pixels"), ("identity2", "identity loss on VGG features")):
        train.add_argument(f"--{name}-weight", type=float, default=getattr(weights, name),
                           help=f"weight of the {help_text}")
    train.add_argument("--save-every", type=int, default=defaults.save_every,
                       help="iterations between checkpoints (one is also written at the end)")
    train.add_argument("--preview-every", type=int, default=defaults.preview_every,
                       help="iterations between preview images (0: none)")
    train.add_argument("--log-every", type=int, default=defaults.log_every,
                       help="iterations per line of train_log.jsonl (each line holds their means)")
    train.add_argument("--precision", choices=list(PRECISIONS), default=defaults.precision,
                       help="autocast dtype of the dense layers (fp16 with loss scaling); the scan stays float32")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: the best available; under torchrun "
                                        "each process takes the GPU of its local rank)")
    train.add_argument("--workers", type=int, default=None,
                       help="processes reading images ahead, per image stream (default: half the CPU's cores, 1 to "
                            f"8, here {default_workers()}; 0: read in the training process); the images are the "
                            "same whatever the number")
    train.add_argument("--accumulate", type=int, default=defaults.accumulate, metavar="N",
                       help="sum the gradients of N batches of --batch-size before each Adam step: the step of a "
                            "batch N times as large, in the memory of one (e.g. --batch-size 4 --accumulate 2 for "
                            "the recipe's 8 where 8 does not fit)")
    train.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed of the initial weights, the data order and crops, the style permutations and "
                            "DropPath")
    train.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out (exactly as if it had not stopped)")
    train.add_argument("--reset-data-streams", action="store_true",
                       help="with --resume: start the data streams anew, keeping the weights and Adam's state; "
                            "lets a run saved by N processes go on with another number")
    train.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..training import distributed
    from ..training.data import TrainingDataError
    from ..training.losses import LossWeights
    from ..training.trainer import Trainer, TrainingOptions
    from ..training.vgg import VGGWeightsNotFound

    options = TrainingOptions(
        content_dir=Path(args.content_dir), style_dir=Path(args.style_dir), vgg=Path(args.vgg), out=Path(args.out),
        init=Path(args.init) if args.init else None, layers=args.layers, max_iter=args.max_iter,
        batch_size=args.batch_size, lr=args.lr, crop=args.crop, load_size=args.load_size,
        weights=LossWeights(args.content_weight, args.style_weight, args.identity1_weight, args.identity2_weight),
        save_every=args.save_every, preview_every=args.preview_every, log_every=args.log_every,
        precision=args.precision, device=args.device, workers=args.workers, seed=args.seed, resume=args.resume,
        accumulate=args.accumulate, reset_data_streams=args.reset_data_streams)
    try:
        try:
            # Setting up reads every input (options, VGG, checkpoint, folders, state): its ValueErrors
            # are about them. Once running, only the data can fail that way.
            trainer = Trainer(options)
        except (VGGWeightsNotFound, ValueError) as error:
            raise SystemExit(f"error: {error}") from None
        try:
            reached = trainer.run()
        except TrainingDataError as error:
            raise SystemExit(f"error: {error}") from None
        except KeyboardInterrupt:
            print("Interrupted; the last saved state is in " f"{options.out}.", file=sys.stderr)
            return 130
    finally:
        distributed.stop()
    return 0 if reached >= options.max_iter else 130
