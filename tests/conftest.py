"""Shared fixtures: random-weight checkpoints in the official layout and the parity fixtures."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # The Triton scan kernel runs in Triton's interpreter on CPU tensors (tests/test_triton_scan.py);
    # it must be set before the kernel module is imported. Nothing runs Triton unless asked.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mambast  # noqa: E402
from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors, write_official_folder  # noqa: E402

PARITY = ROOT.parent / "shared" / "fixtures" / "parity_small"

torch.set_num_threads(min(2, torch.get_num_threads()))
# "auto" precision is float32 in the tests whatever the CPU (tests/test_precision.py unsets this to
# test the choice itself): a machine with native bfloat16 would otherwise measure and may switch.
os.environ["MAMBAST_AUTO_DTYPE"] = "float32"


@pytest.fixture(scope="session")
def small_tensors() -> dict[str, torch.Tensor]:
    """A small random checkpoint (d_model 64, 2 + 2 layers): fast, same layout as the release."""
    return random_official_tensors(SMALL_CONFIG, seed=1)


@pytest.fixture(scope="session")
def small_model(small_tensors):
    return mambast.build(mambast.Checkpoint(small_tensors), device="cpu")


@pytest.fixture(scope="session")
def full_folder(tmp_path_factory) -> Path:
    """A random 3 + 3 layer checkpoint of the released size, as the three official .pth files."""
    folder = tmp_path_factory.mktemp("official")
    return write_official_folder(random_official_tensors(seed=2), folder)


@pytest.fixture(scope="session")
def full_model(full_folder):
    return mambast.load(full_folder, device="cpu")


def parity_cases() -> list[dict]:
    index = PARITY / "cases" / "index.json"
    if not index.exists():
        return []
    return json.loads(index.read_text())["cases"]


def needs_parity():
    return pytest.mark.skipif(not (PARITY / "weights.safetensors").exists(),
                              reason="reference fixtures ../shared/fixtures/parity_small not present")


@pytest.fixture()
def comfy(tmp_path, monkeypatch, small_tensors):
    """Fake ComfyUI modules with a models/mambast folder holding a small .safetensors and an
    official three-file folder; the pack is imported fresh on top of them."""
    from safetensors.torch import save_file

    from comfy_fakes import FakeComfy, import_pack

    models = tmp_path / "models"
    folder = models / "mambast"
    folder.mkdir(parents=True)
    save_file(small_tensors, str(folder / "small.safetensors"))
    write_official_folder(small_tensors, folder / "official")
    (folder / "notes.txt").write_text("not a model")
    fake = FakeComfy(models)
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    fake.pack = import_pack()
    import importlib
    fake.host = importlib.import_module(fake.pack.__name__ + ".nodes.comfy")
    fake.stages = importlib.import_module(fake.pack.__name__ + ".nodes.stages")
    # Every tick reaches the fake bar, so that tests can hold the bar to the work that ran; the
    # nodes send a few a second (tests/test_nodes.py checks that).
    monkeypatch.setattr(fake.stages, "PROGRESS_INTERVAL", 0.0)
    fake.host.register_model_folder()
    return fake
