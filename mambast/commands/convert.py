"""``python -m mambast convert``: the official .pth files as one .safetensors file."""

from __future__ import annotations

import argparse

from ..network.checkpoint import DTYPES, CheckpointError, convert_to_safetensors


def add_parser(commands) -> None:
    convert = commands.add_parser("convert", help="convert official .pth weights to one .safetensors file")
    convert.add_argument("source", help="folder holding the official .pth files")
    convert.add_argument("destination", help="output .safetensors file")
    convert.add_argument("--dtype", choices=list(DTYPES), default="float32")
    convert.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    try:
        count = convert_to_safetensors(args.source, args.destination, args.dtype)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Wrote {count} tensors ({args.dtype}) to {args.destination}")
    return 0
