"""End to end in a real ComfyUI: opt-in, set COMFYUI_DIR to a ComfyUI checkout.

    COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] pytest tests/test_comfyui_e2e.py

Starts ComfyUI on the CPU on a loopback port, with this pack in a temporary custom_nodes folder
and a random-weight checkpoint in a temporary ``mambast`` model folder (both registered through
an extra_model_paths.yaml), then runs the staged and the all-in-one graphs over the HTTP API.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import ROOT
from mambast.imaging import write_image
from mambast.random_weights import SMALL_CONFIG, random_official_tensors, write_official_folder

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")
NODE_IDS = ["MambaSTLoader", "MambaSTEncodeContent", "MambaSTEncodeStyle", "MambaSTFuse", "MambaSTDecode",
            "MambaSTStylize", "MambaSTStyleBlend", "MambaSTMaskComposite", "MambaSTKeepContentColour",
            "MambaSTMatchColour"]
PACK_FOLDER = "ComfyUI-MambaST"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{path} answered {error.code}: {error.read().decode()}") from None

    def run(self, graph: dict, timeout: float = 600) -> dict:
        prompt_id = self.post("/prompt", {"prompt": graph, "client_id": str(uuid.uuid4())})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] != "success":
                    raise AssertionError(json.dumps(entry["status"]["messages"], indent=1)[-4000:])
                return entry
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(ROOT, target_is_directory=True)
    tensors = random_official_tensors(SMALL_CONFIG, seed=5)
    models = base / "models" / "mambast"
    models.mkdir(parents=True)
    save_file(tensors, str(models / "small.safetensors"))
    write_official_folder(tensors, models / "official")
    for folder in ("input", "output", "temp", "user"):
        (base / folder).mkdir()
    generator = torch.Generator().manual_seed(0)
    write_image(torch.rand(3, 72, 104, generator=generator), base / "input" / "content.png")
    write_image(torch.rand(3, 64, 64, generator=generator), base / "input" / "style.png")
    write_image(torch.rand(3, 40, 40, generator=generator), base / "input" / "style_b.png")
    # ComfyUI's LoadImage gives MASK = 1 - alpha: transparent where the stylization should show.
    rgba = np.asarray(Image.open(base / "input" / "content.png").convert("RGBA")).copy()
    rgba[..., 3] = 255
    rgba[16:56, 24:80, 3] = 0
    Image.fromarray(rgba).save(base / "input" / "content_masked.png")
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"mambast_test:\n    base_path: {base}\n    custom_nodes: custom_nodes\n"
                    f"    mambast: models/mambast\n")
    port = free_port()
    log = base / "comfyui.log"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", str(yaml), "--input-directory", str(base / "input"),
               "--output-directory", str(base / "output"), "--temp-directory", str(base / "temp"),
               "--user-directory", str(base / "user"), "--disable-auto-launch"]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=handle, stderr=subprocess.STDOUT)
    instance = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("ComfyUI exited:\n" + log.read_text()[-4000:])
        try:
            instance.get("/object_info/SaveImage")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.5)
    else:
        process.kill()
        raise AssertionError("ComfyUI did not start:\n" + log.read_text()[-4000:])
    instance.base = base
    yield instance
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def test_pack_imports_and_registers_all_its_nodes(server):
    log = server.log.read_text()
    assert "IMPORT FAILED" not in log or PACK_FOLDER not in log.split("IMPORT FAILED")[0].splitlines()[-1], log
    info = server.get("/object_info")
    assert all(node_id in info for node_id in NODE_IDS)
    assert info["MambaSTLoader"]["category"] == "MambaST"
    assert set(info["MambaSTLoader"]["input"]["required"]["checkpoint"][1]["options"]) == {"official/",
                                                                                          "small.safetensors"}


def test_status_route_help_pages_and_frontend_extension_are_served(server):
    status = server.get("/mambast/status?checkpoint=official/&scan=auto")
    assert status["ok"] and status["device"] == "cpu" and status["scan"] == "chunked", status
    assert f"/extensions/{PACK_FOLDER}/js/mambast_status.js" in server.get("/extensions")
    assert b"MambaST Stylize" in server.get(f"/extensions/{PACK_FOLDER}/docs/MambaSTStylize.md")
    assert PACK_FOLDER in server.get("/workflow_templates")


def staged_graph(checkpoint: str, seed: int) -> dict:
    return {
        "1": {"class_type": "MambaSTLoader", "inputs": {"checkpoint": checkpoint, "dtype": "auto", "scan": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "content.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
        "4": {"class_type": "MambaSTEncodeContent", "inputs": {"model": ["1", 0], "image": ["2", 0]}},
        "5": {"class_type": "MambaSTEncodeStyle", "inputs": {"model": ["1", 0], "image": ["3", 0], "style_scale": 1.0}},
        "6": {"class_type": "MambaSTFuse", "inputs": {"model": ["1", 0], "content": ["4", 0], "style": ["5", 0],
                                                      "seed": seed, "shuffle": True, "strength": 1.0,
                                                      "temporal_smoothing": 0.0}},
        "7": {"class_type": "MambaSTDecode", "inputs": {"model": ["1", 0], "features": ["6", 0]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "staged"}},
    }


def all_in_one_graph(checkpoint: str, seed: int) -> dict:
    return {
        "1": {"class_type": "MambaSTLoader", "inputs": {"checkpoint": checkpoint, "dtype": "auto", "scan": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "content.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
        "4": {"class_type": "MambaSTStylize", "inputs": {"model": ["1", 0], "content": ["2", 0], "style": ["3", 0],
                                                         "seed": seed, "shuffle": True, "processing_size": 0,
                                                         "strength": 1.0, "style_scale": 1.0, "colour": "style",
                                                         "temporal_smoothing": 0.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "allinone"}},
    }


def saved_image(server: Server, entry: dict, node: str) -> np.ndarray:
    info = entry["outputs"][node]["images"][0]
    return np.asarray(Image.open(server.base / "output" / info["subfolder"] / info["filename"]))


def test_staged_and_all_in_one_graphs_run_and_save_the_same_image(server):
    staged = server.run(staged_graph("official/", seed=11))
    direct = server.run(all_in_one_graph("small.safetensors", seed=11))
    staged_pixels, direct_pixels = saved_image(server, staged, "8"), saved_image(server, direct, "5")
    assert staged_pixels.shape == (72, 104, 3)
    assert np.array_equal(staged_pixels, direct_pixels)


def controls_graphs(seed: int) -> tuple[dict, dict]:
    """The same controls (mask, strength, two-style blend) as one node and as staged nodes."""
    common = {
        "1": {"class_type": "MambaSTLoader", "inputs": {"checkpoint": "small.safetensors", "dtype": "auto",
                                                        "scan": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "content_masked.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "style.png"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "style_b.png"}},
    }
    all_in_one = dict(common, **{
        "5": {"class_type": "MambaSTStylize", "inputs": {
            "model": ["1", 0], "content": ["2", 0], "style": ["3", 0], "seed": seed, "shuffle": True,
            "processing_size": 0, "strength": 0.6, "style_scale": 1.0, "colour": "style", "temporal_smoothing": 0.0,
            "mask": ["2", 1], "feather": 4, "invert_mask": False, "style_2": ["4", 0], "style_2_weight": 0.4,
            "tile_size": 0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "controls_one"}},
    })
    staged = dict(common, **{
        "5": {"class_type": "MambaSTEncodeContent", "inputs": {"model": ["1", 0], "image": ["2", 0]}},
        "6": {"class_type": "MambaSTEncodeStyle", "inputs": {"model": ["1", 0], "image": ["3", 0], "style_scale": 1.0}},
        "7": {"class_type": "MambaSTEncodeStyle", "inputs": {"model": ["1", 0], "image": ["4", 0], "style_scale": 1.0}},
        "8": {"class_type": "MambaSTStyleBlend", "inputs": {"style_a": ["6", 0], "style_b": ["7", 0], "weight": 0.4,
                                                            "seed": seed}},
        "9": {"class_type": "MambaSTFuse", "inputs": {"model": ["1", 0], "content": ["5", 0], "style": ["8", 0],
                                                      "seed": seed, "shuffle": True, "strength": 0.6,
                                                      "temporal_smoothing": 0.0}},
        "10": {"class_type": "MambaSTDecode", "inputs": {"model": ["1", 0], "features": ["9", 0]}},
        "11": {"class_type": "MambaSTMaskComposite", "inputs": {"content": ["2", 0], "stylized": ["10", 0],
                                                                "mask": ["2", 1], "feather": 4, "invert_mask": False}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "controls_staged"}},
    })
    return all_in_one, staged


def test_mask_strength_and_blend_run_in_real_graphs_staged_equal_to_all_in_one(server):
    all_in_one, staged = controls_graphs(seed=3)
    one = saved_image(server, server.run(all_in_one), "6")
    parts = saved_image(server, server.run(staged), "12")
    assert np.array_equal(one, parts)
    content = np.asarray(Image.open(server.base / "input" / "content_masked.png").convert("RGB"))
    outside = np.ones(content.shape[:2], dtype=bool)
    outside[16:56, 24:80] = False
    assert np.array_equal(one[outside], content[outside])
    assert not np.array_equal(one[20:52, 28:76], content[20:52, 28:76])


def test_a_missing_checkpoint_fails_the_node_with_a_helpful_message_and_the_server_survives(server):
    with pytest.raises(AssertionError) as error:
        server.run(all_in_one_graph("gone.safetensors", seed=1))
    assert "drive.google.com" in str(error.value)
    assert server.get("/object_info/MambaSTStylize")
