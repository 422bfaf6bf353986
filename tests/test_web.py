"""The frontend pieces: help pages, example workflows, and the status line's JS helpers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

# Every node the schema defines (read from its source: importing it needs ComfyUI).
NODE_IDS = re.findall(r"^class (\w+)\(io\.ComfyNode\):", (ROOT / "nodes" / "schema.py").read_text(), re.M)
CORE_NODES = {"LoadImage", "SaveImage", "UpscaleModelLoader", "ImageUpscaleWithModel", "LoadVideo",
              "GetVideoComponents", "CreateVideo", "SaveVideo", "PreviewImage", "ImageCompositeMasked", "SolidMask",
              "MaskComposite", "Note", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEEncode", "KSampler",
              "VAEDecode", "ImageScaleBy"}
# Loaders of models a user may not have yet, and the model folder each declares its file in.
MODEL_LOADERS = {"UpscaleModelLoader": "upscale_models", "CheckpointLoaderSimple": "checkpoints"}
# Inputs every ComfyUI install has (its example.png) or the pack copies into the input folder.
SHIPPED_INPUTS = {"example.png"} | {p.name for p in (ROOT / "example_inputs").glob("mambast_example_*")}
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


def test_the_node_list_is_read_from_the_schema():
    assert len(NODE_IDS) == 10 and {"MambaSTLoader", "MambaSTStylize", "MambaSTMatchColour"} <= set(NODE_IDS)


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_node_has_a_help_page(node_id):
    page = ROOT / "web" / "docs" / f"{node_id}.md"
    assert page.exists() and page.read_text().startswith("# ")


def test_example_workflows_exist_and_are_named_in_words():
    assert {p.stem for p in WORKFLOWS} >= {"Stylize a picture (all in one)", "Stylize step by step (staged nodes)",
                                           "Stylize a video with one style", "Stylize then upscale 4x",
                                           "Stylize then refine with SD 1.5",
                                           "Stylize, upscale and refine with SDXL (hires fix)"}
    for path in WORKFLOWS:  # ComfyUI shows a pack's template by its file name
        assert " " in path.stem and "_" not in path.stem, path.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflows_load_only_files_every_install_has_and_declare_other_models(path):
    graph = json.loads(path.read_text())
    for node in graph["nodes"]:
        if node["type"] in ("LoadImage", "LoadVideo"):
            assert node["widgets_values"][0] in SHIPPED_INPUTS, (node["type"], node["widgets_values"])
        if node["type"] in MODEL_LOADERS:
            declared = node["properties"]["models"]
            assert [m["name"] for m in declared] == [node["widgets_values"][0]]
            assert all(m["url"].startswith("https://huggingface.co/") and m["directory"] == MODEL_LOADERS[node["type"]]
                       for m in declared)
    assert "ds" not in graph.get("extra", {})  # the frontend fits a graph without a saved view to the screen


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_is_consistent_and_uses_known_nodes(path):
    graph = json.loads(path.read_text())
    nodes = {node["id"]: node for node in graph["nodes"]}
    assert {node["type"] for node in nodes.values()} <= set(NODE_IDS) | CORE_NODES
    for link_id, source, source_slot, target, target_slot, kind in graph["links"]:
        assert link_id in nodes[source]["outputs"][source_slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[source]["outputs"][source_slot]["type"] == kind == nodes[target]["inputs"][target_slot]["type"]
    assert (path.with_suffix(".jpg")).exists(), f"thumbnail {path.with_suffix('.jpg').name} is missing"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_status_line_helpers():
    script = """
    const m = await import(process.argv[1]);
    const assert = (await import('node:assert')).strict;
    assert.equal(m.statusQuery('official/', 'chunked', 'bfloat16'),
                 '/mambast/status?checkpoint=official%2F&scan=chunked&dtype=bfloat16');
    assert.equal(m.statusQuery(undefined, undefined, undefined), '/mambast/status?scan=auto&dtype=auto');
    assert.equal(m.statusQuery('a b.safetensors', 'auto', 'auto'),
                 '/mambast/status?checkpoint=a+b.safetensors&scan=auto&dtype=auto');
    assert.deepEqual([true, false, null, undefined].map(m.statusClass), ['ok', 'bad', 'checking', 'checking']);
    assert.notEqual(m.statusKey('a.safetensors', 'auto'), m.statusKey('b.safetensors', 'auto'));
    assert.notEqual(m.statusKey('a', 'auto'), m.statusKey('a', 'chunked'));
    assert.notEqual(m.statusKey('a', 'auto', 'auto'), m.statusKey('a', 'auto', 'float16'));
    assert.equal(m.statusKey('a', 'auto', 'auto'), m.statusKey('a', 'auto', 'auto'));
    assert.equal(m.downloadText({name: 'decoder_iter_160000.pth', index: 0, count: 3, done: 2 ** 20, total: 3 * 2 ** 20}),
                 'Downloading decoder_iter_160000.pth (1 of 3): 1.0 of 3.0 MB');
    assert.equal(m.downloadText({name: null, message: 'Asking the authors' + "'" + ' folder'}), "Asking the authors' folder");
    assert.equal(m.downloadText({name: 'a.pth', index: 1, count: 3, done: 5 * 2 ** 19, total: null}),
                 'Downloading a.pth (2 of 3): 2.5 MB');
    console.log('ok');
    """
    module = (ROOT / "web" / "js" / "status_logic.js").as_uri()
    done = subprocess.run(["node", "--input-type=module", "-e", script, module], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
