"""End to end in a real ComfyUI: opt-in, set COMFYUI_DIR to a ComfyUI checkout.

    COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] pytest tests/test_comfyui_e2e.py

Starts ComfyUI on the CPU on a loopback port, with this pack in a temporary custom_nodes folder
and a random-weight checkpoint in a temporary ``mambast`` model folder (both registered through
an extra_model_paths.yaml; see tools/comfyui_server.py), then runs the staged and the
all-in-one graphs over the HTTP API, and a series of bad prompts the server must survive.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors
from mambast.utils.imaging import write_image
from tools.comfyui_server import PACK_FOLDER, Server, prepare, running_comfyui

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
# Nodes of the frontend alone: not in /object_info, never sent to the server.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Widgets holding names of files the user supplies: any value is valid in a template.
USER_FILES = {("LoadImage", "image"), ("LoadVideo", "file"), ("CheckpointLoaderSimple", "ckpt_name"),
              ("UpscaleModelLoader", "model_name"), ("MambaSTLoader", "checkpoint")}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
NODE_IDS = ["MambaSTLoader", "MambaSTEncodeContent", "MambaSTEncodeStyle", "MambaSTFuse", "MambaSTDecode",
            "MambaSTStylize", "MambaSTStyleBlend", "MambaSTMaskComposite", "MambaSTKeepContentColour",
            "MambaSTMatchColour"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    tensors = random_official_tensors(SMALL_CONFIG, seed=5)
    prepare(base, {"small.safetensors": tensors, "official/": tensors})
    generator = torch.Generator().manual_seed(0)
    write_image(torch.rand(3, 72, 104, generator=generator), base / "input" / "content.png")
    write_image(torch.rand(3, 64, 64, generator=generator), base / "input" / "style.png")
    write_image(torch.rand(3, 40, 40, generator=generator), base / "input" / "style_b.png")
    write_image(torch.rand(3, 4, 4, generator=generator), base / "input" / "tiny.png")
    example = Path(COMFYUI_DIR) / "input" / "example.png"  # the templates' content, in every install
    if example.exists():
        shutil.copy(example, base / "input" / "example.png")
    else:
        write_image(torch.rand(3, 512, 512, generator=generator), base / "input" / "example.png")
    # ComfyUI's LoadImage gives MASK = 1 - alpha: transparent where the stylization should show.
    rgba = np.asarray(Image.open(base / "input" / "content.png").convert("RGBA")).copy()
    rgba[..., 3] = 255
    rgba[16:56, 24:80, 3] = 0
    Image.fromarray(rgba).save(base / "input" / "content_masked.png")
    (base / "outside").mkdir()
    write_image(torch.rand(3, 8, 8, generator=generator), base / "outside" / "decoder_iter_1.png")
    with running_comfyui(base, COMFYUI_DIR, os.environ.get("COMFYUI_PYTHON")) as instance:
        yield instance


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
    assert status["ok"] and status["device"] == "cpu" and status["scan"] in ("chunked", "numba"), status
    assert f"/extensions/{PACK_FOLDER}/js/mambast_status.js" in server.get("/extensions")
    assert b"MambaST Stylize" in server.get(f"/extensions/{PACK_FOLDER}/docs/MambaSTStylize.md")
    templates = server.get("/workflow_templates")[PACK_FOLDER]
    assert "Stylize a picture (all in one)" in templates and len(templates) == len(WORKFLOWS)
    # The templates' pictures and clip are in the input folder, copied at start.
    assert {p.name for p in (ROOT / "example_inputs").iterdir()} <= {p.name for p in (server.base / "input").iterdir()}


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


def failure_text(server: Server, graph: dict) -> str:
    """Queue a graph that must fail (refused at validation, or an error while running): its messages."""
    queued = server.queue(graph)
    if "prompt_id" not in queued:
        return json.dumps(queued)
    entry = server.wait(queued["prompt_id"])
    assert entry["status"]["status_str"] == "error", entry["status"]
    return json.dumps(entry["status"]["messages"])


def with_inputs(graph: dict, node: str, **inputs) -> dict:
    graph = json.loads(json.dumps(graph))
    graph[node]["inputs"].update(inputs)
    return graph


def test_bad_prompts_end_in_clear_errors_and_the_server_keeps_serving(server):
    good = all_in_one_graph("small.safetensors", seed=1)
    missing = failure_text(server, all_in_one_graph("gone.safetensors", seed=1))
    assert "gone.safetensors" in missing and "small.safetensors" in missing  # which name, and what is there
    for name in (str(server.base / "outside") + "/", "../../outside/", "/etc/passwd"):
        text = failure_text(server, all_in_one_graph(name, seed=1))
        assert "decoder_iter_1" not in text and "passwd:" not in text, text
        assert "not in the mambast model folder" in text or "value_not_in_list" in text, text
    batches = dict(good, **{"6": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}},
                            "7": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 3}}})
    batches = with_inputs(batches, "4", content=["6", 0], style=["7", 0])
    assert "Cannot pair 2 content image(s) with 3 style image(s)" in failure_text(server, batches)
    with_mask = dict(good, **{"6": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 16, "height": 16}}})
    # A mask of another size is resized to the content (a documented handling, not an error).
    resized = server.run(with_inputs(with_mask, "4", mask=["6", 0], feather=0, invert_mask=False,
                                     style_2_weight=0.5, tile_size=0))
    assert saved_image(server, resized, "5").shape == (72, 104, 3)
    tiny = server.run(with_inputs(with_inputs(good, "2", image="tiny.png"), "4", processing_size=512))
    assert saved_image(server, tiny, "5").shape == (4, 4, 3)  # worked at the 8 px the model needs
    assert server.alive()
    saved_image(server, server.run(good), "5")


def test_a_run_after_freeing_the_models_succeeds(server):
    first = saved_image(server, server.run(all_in_one_graph("small.safetensors", seed=4)), "5")
    server.post("/free", {"unload_models": True, "free_memory": True})
    second = saved_image(server, server.run(all_in_one_graph("small.safetensors", seed=4)), "5")
    assert np.array_equal(first, second)


# -- the example workflows against the server's own node definitions ---------------------------
def input_spec(spec: dict, name: str) -> tuple[object, dict]:
    for section in ("required", "optional"):
        if name in spec["input"].get(section, {}):
            entry = spec["input"][section][name]
            return entry[0], (entry[1] if len(entry) > 1 else {})
    raise KeyError(name)


def widget_inputs(spec: dict) -> list[tuple[str, object, dict]]:
    """The inputs the frontend shows as widgets, in its order (required, then optional)."""
    order = spec.get("input_order") or {section: list(inputs) for section, inputs in spec["input"].items()}
    widgets = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            kind, options = input_spec(spec, name)
            if (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) \
                    and not options.get("forceInput"):
                widgets.append((name, kind, options))
    return widgets


def widget_values(node: dict, spec: dict) -> dict[str, object]:
    """A saved node's widget values by input name; the values the frontend adds after some widgets
    (a seed's "control after generate", an upload button's) are checked and dropped."""
    values, named = list(node.get("widgets_values", [])), {}
    for name, kind, options in widget_inputs(spec):
        linked = any(i["name"] == name and i.get("link") is not None for i in node.get("inputs", []))
        if not values:
            break
        value = values.pop(0)
        if not linked:
            named[name] = value
        if options.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed")):
            assert values and values.pop(0) in CONTROL_VALUES, (node["type"], name)
        if options.get("image_upload") or options.get("video_upload"):
            assert values, (node["type"], name)
            values.pop(0)
    assert values == [], f"{node['type']}: {len(values)} widget value(s) more than its inputs: {values}"
    return named


def check_value(node_type: str, name: str, kind, options: dict, value) -> None:
    where = f"{node_type}.{name} = {value!r}"
    choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
    if choices is not None:
        assert (node_type, name) in USER_FILES or value in choices, f"{where}: not one of {choices}"
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert options.get("min", float("-inf")) <= value <= options.get("max", float("inf")), where
        if kind == "INT":
            assert float(value).is_integer(), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where


def as_prompt(graph: dict, info: dict) -> dict:
    """The API prompt of a saved workflow, as the frontend builds it when Run is pressed."""
    prompt = {}
    links = {link[0]: link for link in graph["links"]}
    for node in graph["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        inputs = dict(widget_values(node, info[node["type"]]))
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                _, source, slot, _, _, _ = links[entry["link"]]
                inputs[entry["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def declared_models(graph: dict) -> list[str]:
    return [m["name"] for node in graph["nodes"] for m in node.get("properties", {}).get("models", [])]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_matches_the_servers_nodes(server, path):
    """Every node exists, every link joins an output to an input of its type, every widget value
    is valid for its input (file names the user supplies excepted)."""
    graph, info = json.loads(path.read_text()), server.get("/object_info")
    nodes = {node["id"]: node for node in graph["nodes"]}
    for node in nodes.values():
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in info, f"{node['type']} is not a node of this ComfyUI"
        spec = info[node["type"]]
        named = widget_values(node, spec)
        for name, kind, options in widget_inputs(spec):
            if name in named:
                check_value(node["type"], name, kind, options, named[name])
    for _, source, source_slot, target, target_slot, kind in graph["links"]:
        output_type = info[nodes[source]["type"]]["output"][source_slot]
        input_name = nodes[target]["inputs"][target_slot]["name"]
        input_type, _ = input_spec(info[nodes[target]["type"]], input_name)
        assert output_type == kind == input_type, (path.stem, nodes[source]["type"], nodes[target]["type"], input_name)


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if not declared_models(json.loads(p.read_text()))],
                         ids=lambda p: p.stem)
def test_example_workflows_needing_no_other_model_run_to_completion(server, path):
    graph = json.loads(path.read_text())
    entry = server.run(as_prompt(graph, server.get("/object_info")), timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = [output for output in entry["outputs"].values() if output.get("images") or output.get("videos")
             or output.get("animated")]
    assert saved, entry["outputs"]


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """A ComfyUI without weights, whose downloads come from a stand-in of the authors' folder (the
    network is never used)."""
    base = tmp_path_factory.mktemp("comfy-bare")
    prepare(base, {})
    example = Path(COMFYUI_DIR) / "input" / "example.png"
    if example.exists():
        shutil.copy(example, base / "input" / "example.png")
    else:
        write_image(torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(1)), base / "input" / "example.png")
    stand_in = base / "authors-folder"
    with running_comfyui(base, COMFYUI_DIR, os.environ.get("COMFYUI_PYTHON"),
                         environment={"MAMBAST_DRIVE_STAND_IN": str(stand_in)}) as instance:
        instance.stand_in = stand_in
        yield instance


def wait_for_download(server: Server, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server.get("/mambast/download")
        if state["state"] != "running":
            return state
        time.sleep(0.3)
    raise AssertionError("the download did not finish")


def test_the_loaders_download_installs_the_weights_and_a_template_runs(bare_server):
    from mambast.network.random_weights import write_official_folder

    status = bare_server.get("/mambast/status?scan=auto")
    assert not status["ok"] and status["download"] and status["short"] == "no Mamba-ST weights installed yet"
    assert bare_server.get("/mambast/download")["state"] == "idle"
    # Wrong files in the source: refused, nothing installed, the manual steps said.
    write_official_folder(random_official_tensors(SMALL_CONFIG, seed=1), bare_server.stand_in)
    assert bare_server.post("/mambast/download", {})["state"] == "running"
    failed = wait_for_download(bare_server)
    assert failed["state"] == "failed" and "To install them by hand" in failed["message"], failed
    assert not (bare_server.base / "models" / "mambast" / "official").exists()
    # The release: installed into models/mambast/official, then the all-in-one template runs on it.
    shutil.rmtree(bare_server.stand_in)
    write_official_folder(random_official_tensors(seed=3), bare_server.stand_in)
    bare_server.post("/mambast/download", {"url": "https://example.com/other", "path": "/etc"})  # ignored
    done = wait_for_download(bare_server)
    assert done["state"] == "done" and done["checkpoint"] == "official/", done
    assert done["target"] == str(bare_server.base / "models" / "mambast" / "official")
    assert "official/" in bare_server.get("/object_info/MambaSTLoader")["MambaSTLoader"]["input"]["required"][
        "checkpoint"][1]["options"]
    assert bare_server.get("/mambast/status?checkpoint=official/&scan=auto")["ok"]
    graph = json.loads((ROOT / "example_workflows" / "Stylize a picture (all in one).json").read_text())
    entry = bare_server.run(as_prompt(graph, bare_server.get("/object_info")), timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
