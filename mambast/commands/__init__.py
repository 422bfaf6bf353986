"""``python -m mambast``: one module per command (stylize, convert, download, train, evaluate)."""

from __future__ import annotations

import argparse

from . import convert, download, evaluate, stylize, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mambast", description="Mamba-ST style transfer.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (stylize, convert, download, train, evaluate):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
