"""What the README shows runs: its Python example, against random weights in the official layout."""

from __future__ import annotations

import re

import torch

from conftest import ROOT
from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors, write_official_folder
from mambast.utils.imaging import write_image


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_readmes_python_example_runs(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README shows no Python example"
    write_official_folder(random_official_tensors(SMALL_CONFIG, seed=3), tmp_path / "models" / "mambast" / "official")
    generator = torch.Generator().manual_seed(0)
    write_image(torch.rand(1, 3, 40, 56, generator=generator), tmp_path / "photo.jpg")
    write_image(torch.rand(1, 3, 32, 32, generator=generator), tmp_path / "monet.jpg")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "out.png").is_file()
