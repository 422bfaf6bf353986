"""What a person sees in ComfyUI's frontend, in a real browser: opt-in, like the end-to-end test.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python \\
        [MAMBAST_CHROMIUM=/usr/bin/chromium] [MAMBAST_FRONTEND_NEWEST=/path/to/static] \\
        pytest tests/test_comfyui_browser.py

Needs Playwright for Python (``pip install playwright``; no browser download: it drives the
system's Chromium, ``MAMBAST_CHROMIUM`` or ``chromium`` on the PATH). Starts ComfyUI on the CPU
with this pack, a good random-weight checkpoint (``official/``) and a corrupt one, opens the app
in headless Chromium at 1600 x 1000, loads every example workflow (each must open with its text
drawn), checks the loader's status against the values workflows set, searches for the nodes, runs
the all-in-one template as shipped and counts the progress messages it sends; a second server
without weights has its Loader fetch them from a stand-in of the authors' folder (the network is
never used). Everything runs against the frontend ComfyUI pins and, when
``MAMBAST_FRONTEND_NEWEST`` names the ``static`` folder of a newer ``comfyui-frontend-package``
(served with ``--front-end-root``), against that one too, with its Vue-rendered nodes ("Nodes
2.0") as well. ``MAMBAST_SCREENSHOTS=1`` also writes the README's screenshots
(web/docs/images/) and the templates' thumbnails (example_workflows/*.jpg).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import ROOT
from mambast.network.random_weights import SMALL_CONFIG, random_official_tensors, write_official_folder
from tools.comfyui_server import prepare, running_comfyui

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
NEWEST = os.environ.get("MAMBAST_FRONTEND_NEWEST")
CHROMIUM = os.environ.get("MAMBAST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run"),
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium (set MAMBAST_CHROMIUM)")]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
SCREENSHOTS = os.environ.get("MAMBAST_SCREENSHOTS") == "1"
VIEWPORT = {"width": 1600, "height": 1000}
# One 512 px run of the all-in-one template sends at most this many progress messages.
MOST_PROGRESS_MESSAGES = 300
FRONTENDS = ["pinned", pytest.param("newest", marks=pytest.mark.skipif(
    not NEWEST, reason="set MAMBAST_FRONTEND_NEWEST to a comfyui-frontend-package static folder"))]


def start(base: Path, frontend: str, environment: dict | None = None):
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    # No first-run template dialog; no minimap over the graph in the screenshots.
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
    example = Path(COMFYUI_DIR) / "input" / "example.png"
    if not example.exists():
        pytest.skip(f"{example} is missing: the templates use ComfyUI's own example.png")
    shutil.copy(example, base / "input" / "example.png")
    extra = ("--front-end-root", NEWEST) if frontend == "newest" else ()
    return running_comfyui(base, COMFYUI_DIR, os.environ.get("COMFYUI_PYTHON"), extra_args=extra,
                           environment=environment)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"browser-{request.param}")
    # The released architecture (random weights): the status and the run look as they will.
    prepare(base, {"official/": random_official_tensors(seed=5)})
    (base / "models" / "mambast" / "corrupt.safetensors").write_bytes(b"\x10" + bytes(7) + b"{not a header}")
    with start(base, request.param) as instance:
        instance.frontend = request.param
        yield instance


def open_page(playwright, url: str):
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    page = chromium.new_page(viewport=VIEWPORT)
    page.mambast_console = []
    page.mambast_requests = []
    page.on("console", lambda message: page.mambast_console.append((message.type, message.text,
                                                                    str(message.location))))
    page.on("pageerror", lambda error: page.mambast_console.append(("pageerror", str(error), error.stack or "")))
    page.on("request", lambda request: page.mambast_requests.append(request.url)
            if "/mambast/status" in request.url else None)
    page.goto(url)
    page.wait_for_function("window.app && window.app.graph && document.querySelector('#graph-canvas')",
                           timeout=90_000)
    time.sleep(2)
    return chromium, page


@pytest.fixture(scope="session")
def playwright():
    """One Playwright for the whole run (its synchronous API allows one at a time)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run the browser test")
    with sync_api.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(server, playwright):
    chromium, page = open_page(playwright, server.url)
    page.frontend = server.frontend
    yield page
    chromium.close()


def load(page, graph: dict, name: str | None = None) -> None:
    """Open a workflow as the app does (a new tab when named), then let it draw and settle."""
    page.evaluate("([graph, name]) => window.app.loadGraphData(graph, true, true, name)", [graph, name])
    page.wait_for_timeout(600)
    page.wait_for_function("""() => window.app.graph._nodes.filter(n => n.comfyClass === 'MambaSTLoader')
                                     .every(n => n.mambastStatus && n.mambastStatus.ok !== null)""", timeout=30_000)
    page.wait_for_timeout(300)


def loader_status(page) -> list[dict]:
    return page.evaluate("""() => window.app.graph._nodes.filter(n => n.comfyClass === 'MambaSTLoader')
        .map(n => ({value: n.widgets[0].value, ok: n.mambastStatus.ok, summary: n.mambastStatus.summary,
                    download: !!n.mambastStatus.download, text: n.mambastView.root.innerText}))""")


def open_dialogs(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")


def close_dialogs(page) -> None:
    for _ in range(3):
        if not open_dialogs(page):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def workflow(name: str) -> dict:
    return json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())


def with_checkpoint(graph: dict, checkpoint: str) -> dict:
    graph = json.loads(json.dumps(graph))
    for node in graph["nodes"]:
        if node["type"] == "MambaSTLoader":
            node["widgets_values"][0] = checkpoint
    return graph


def set_vue_nodes(page, enabled: bool) -> None:
    """The newest frontend's "Modern Node Design (Nodes 2.0)" setting."""
    page.evaluate("(on) => window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on)", enabled)
    page.wait_for_timeout(800)


def node_screen_rect(page, comfy_class: str) -> dict:
    """A node's rectangle on the page, title bar included: the Vue-rendered node's element when
    there is one, else the canvas node's place."""
    return page.evaluate("""(comfyClass) => {
        const canvas = window.app.canvas, node = window.app.graph._nodes.find(n => n.comfyClass === comfyClass);
        const element = document.querySelector(`[data-node-id="${node.id}"]`);
        if (element) return element.getBoundingClientRect().toJSON();
        const box = canvas.canvas.getBoundingClientRect(), scale = canvas.ds.scale, offset = canvas.ds.offset;
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        return {x: box.left + (node.pos[0] + offset[0]) * scale, y: box.top + (node.pos[1] - title + offset[1]) * scale,
                width: node.size[0] * scale, height: (node.size[1] + title) * scale};
    }""", comfy_class)


def status_rect(page) -> dict:
    return page.evaluate("""() => {
        const node = window.app.graph._nodes.find(n => n.comfyClass === 'MambaSTLoader');
        const line = node.mambastView.line.getBoundingClientRect(), root = node.mambastView.root;
        const visible = root.offsetParent !== null && getComputedStyle(root).visibility !== 'hidden';
        return {visible, x: line.left, y: line.top, right: line.right, bottom: root.getBoundingClientRect().bottom,
                fontPx: parseFloat(getComputedStyle(node.mambastView.line).fontSize) * window.app.canvas.ds.scale};
    }""")


def assert_status_inside_its_node(page) -> None:
    node, status = node_screen_rect(page, "MambaSTLoader"), status_rect(page)
    assert status["visible"], status
    assert node["x"] <= status["x"] and status["right"] <= node["x"] + node["width"] + 1, (node, status)
    assert node["y"] <= status["y"] and status["bottom"] <= node["y"] + node["height"] + 1, (node, status)


def focus_on(page, comfy_class: str, scale: float = 1.3) -> None:
    """Zoom the canvas onto a node, so a screenshot of it can be read."""
    page.evaluate("""([comfyClass, scale]) => {
        const canvas = window.app.canvas, node = window.app.graph._nodes.find(n => n.comfyClass === comfyClass);
        canvas.ds.scale = scale;
        canvas.ds.offset = [60 / scale - node.pos[0], 120 / scale - node.pos[1]];
        canvas.setDirty(true, true);
    }""", [comfy_class, scale])
    page.wait_for_timeout(500)


def screenshot(page, path: Path, clip: dict | None = None, margin: int = 12) -> None:
    if clip is not None:
        clip = {"x": max(0, clip["x"] - margin), "y": max(0, clip["y"] - margin),
                "width": clip["width"] + 2 * margin, "height": clip["height"] + 2 * margin}
    page.screenshot(path=str(path), clip=clip)


def text_threshold(page) -> float:
    """The zoom below which the canvas draws nodes without their text."""
    value = page.evaluate("""() => window.app.extensionManager.setting
        .get('LiteGraph.Canvas.LowQualityRenderingZoomThreshold')""")
    return float(value) if value is not None else 0.6


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_template_opens_readable_without_missing_nodes_and_fits_the_screen(browser, path):
    graph = json.loads(path.read_text())
    load(browser, graph)
    browser.wait_for_timeout(500)  # the frontend fits a graph without a saved view after one frame
    dialogs = open_dialogs(browser)
    declared = [m["name"] for node in graph["nodes"] for m in node.get("properties", {}).get("models", [])]
    assert not any("missing" in text.lower() and "node" in text.lower() for text in dialogs), dialogs
    notices = browser.evaluate("""() => [...document.querySelectorAll('[role=status]')]
        .map(e => e.innerText).filter(t => t.includes('missing'))""")
    if declared:  # a model the user may not have yet: the pinned frontend's dialog offers its download,
        # the newest names it in a notice whose details offer it
        if dialogs:
            assert len(dialogs) == 1 and all(name in dialogs[0] for name in declared), dialogs
            assert "download" in dialogs[0].lower(), dialogs
            close_dialogs(browser)
        else:
            assert all(any(name in notice for notice in notices) for name in declared), notices
    else:
        assert dialogs == [] and notices == []
    zoom = browser.evaluate("() => window.app.canvas.ds.scale")
    assert zoom >= text_threshold(browser) + 0.05, f"{path.stem} opens at {zoom:.2f}: its text is not drawn"
    outside = browser.evaluate("""() => {
        const canvas = window.app.canvas, box = canvas.canvas.getBoundingClientRect();
        const scale = canvas.ds.scale, offset = canvas.ds.offset, title = LiteGraph.NODE_TITLE_HEIGHT;
        return window.app.graph._nodes.filter(n => {
            const x = box.left + (n.pos[0] + offset[0]) * scale, y = box.top + (n.pos[1] - title + offset[1]) * scale;
            return x < box.left || y < box.top || x + n.size[0] * scale > box.right
                || y + (n.size[1] + title) * scale > box.bottom;
        }).map(n => n.title);
    }""")
    assert outside == []
    assert all(status["ok"] for status in loader_status(browser))
    if SCREENSHOTS and browser.frontend == "pinned":
        thumbnail = browser.screenshot(clip={"x": 40, "y": 80, "width": VIEWPORT["width"] - 40,
                                             "height": VIEWPORT["height"] - 80})
        from io import BytesIO

        from PIL import Image

        Image.open(BytesIO(thumbnail)).convert("RGB").resize((720, 410)).save(path.with_suffix(".jpg"), quality=85)


STATUS_CASES = [("missing.safetensors", False, ["'missing.safetensors'", "official/"], "missing"),
                ("corrupt.safetensors", False, ["damaged or not a Mamba-ST file"], "corrupt"),
                ("official/", True, ["(auto)", "3+3 layers, d_model 512"], "good")]


def test_the_status_describes_the_value_a_saved_workflow_holds_inside_its_node(browser, tmp_path):
    folder = ROOT / "web" / "docs" / "images" if SCREENSHOTS else tmp_path
    template = workflow("Stylize a picture (all in one)")
    for checkpoint, ok, words, name in STATUS_CASES:
        load(browser, with_checkpoint(template, checkpoint))
        close_dialogs(browser)
        [status] = loader_status(browser)
        assert status["value"] == checkpoint and status["ok"] is ok, status
        assert all(word in status["text"] for word in words), status
        assert ("Details" in status["text"]) is (not ok) and not status["download"]  # official/ is installed
        focus_on(browser, "MambaSTLoader")
        assert_status_inside_its_node(browser)
        assert status_rect(browser)["fontPx"] >= 12  # readable at the zoom it is shown at here
        if browser.frontend == "pinned":
            screenshot(browser, folder / f"status_{name}.png", node_screen_rect(browser, "MambaSTLoader"))


def test_a_click_on_details_shows_the_whole_message(browser):
    load(browser, with_checkpoint(workflow("Stylize a picture (all in one)"), "corrupt.safetensors"))
    close_dialogs(browser)
    focus_on(browser, "MambaSTLoader")
    browser.locator(".mambast-toggle").first.click()
    browser.wait_for_timeout(400)
    details = browser.evaluate("() => document.querySelector('.mambast-details').innerText")
    assert "corrupt.safetensors" in details and "header" in details, details
    assert_status_inside_its_node(browser)


def test_nodes_2_0_show_the_status_for_good_missing_and_broken_weights(browser, tmp_path):
    if browser.frontend != "newest":
        pytest.skip("the pinned frontend has no Vue-rendered nodes")
    folder = ROOT / "web" / "docs" / "images" if SCREENSHOTS else tmp_path
    template = workflow("Stylize a picture (all in one)")
    set_vue_nodes(browser, True)
    try:
        for checkpoint, ok, words, name in STATUS_CASES:
            load(browser, with_checkpoint(template, checkpoint))
            close_dialogs(browser)
            browser.wait_for_selector("[data-node-id] .mambast-status", timeout=10_000)
            [status] = loader_status(browser)
            assert status["ok"] is ok and all(word in status["text"] for word in words), status
            focus_on(browser, "MambaSTLoader")
            assert_status_inside_its_node(browser)
            screenshot(browser, folder / f"status_{name}_nodes2.png", node_screen_rect(browser, "MambaSTLoader"))
    finally:
        set_vue_nodes(browser, False)


def test_the_status_follows_tab_switches_list_refreshes_and_value_changes(browser):
    template = workflow("Stylize a picture (all in one)")
    load(browser, with_checkpoint(template, "missing.safetensors"), "MambaST missing")
    load(browser, with_checkpoint(template, "official/"), "MambaST good")
    assert loader_status(browser)[0]["ok"] is True
    browser.locator(".workflow-label:visible", has_text="MambaST missing").first.click()
    browser.wait_for_timeout(800)
    [status] = loader_status(browser)
    assert status["value"] == "missing.safetensors" and status["ok"] is False, status
    before = len(browser.mambast_requests)
    browser.mouse.click(800, 120)  # focus the canvas, then press r: the model lists are refreshed
    browser.keyboard.press("r")
    browser.wait_for_timeout(1500)
    assert any("missing.safetensors" in url for url in browser.mambast_requests[before:])
    # A value set without a widget callback (as extensions and undo do) is noticed.
    browser.evaluate("""() => {
        const node = window.app.graph._nodes.find(n => n.comfyClass === 'MambaSTLoader');
        node.widgets[0].value = 'corrupt.safetensors';
        node.setDirtyCanvas(true, true);
    }""")
    browser.wait_for_function("""() => window.app.graph._nodes.find(n => n.comfyClass === 'MambaSTLoader')
                                       .mambastStatus.summary.includes('damaged')""", timeout=10_000)
    # The dtype widget too: the status says which dtype the loader will use.
    browser.evaluate("""() => {
        const node = window.app.graph._nodes.find(n => n.comfyClass === 'MambaSTLoader');
        node.widgets.find(w => w.name === 'checkpoint').value = 'official/';
        node.widgets.find(w => w.name === 'dtype').value = 'bfloat16';
        node.setDirtyCanvas(true, true);
    }""")
    browser.wait_for_function("""() => {
        const status = window.app.graph._nodes.find(n => n.comfyClass === 'MambaSTLoader').mambastStatus;
        return status.ok === true && status.summary.includes('| bfloat16 |');
    }""", timeout=10_000)
    close_dialogs(browser)


def open_search_box(browser, attempts: int = 3) -> None:
    """Double-click the empty canvas until the node search box is open: right after the graph
    changes, the canvas may still be busy and let a double-click pass (seen once in 15 runs)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        browser.mouse.dblclick(800, 500)
        try:
            browser.wait_for_selector(".p-autocomplete-option, [role=option]", timeout=5_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            browser.keyboard.press("Escape")


@pytest.mark.parametrize("query", ["style transfer", "stylize", "mamba"])
def test_search_finds_the_nodes_by_the_words_artists_use(browser, query):
    browser.evaluate("() => window.app.graph.clear()")
    open_search_box(browser)
    browser.keyboard.type(query)
    options = """() => [...document.querySelectorAll('.p-autocomplete-option, [role=option]')]
        .map(e => e.innerText.replace(/\\s+/g, ' ').trim()).filter(Boolean)"""
    browser.wait_for_function(f"() => ({options})().some(r => r.startsWith('MambaST'))", timeout=10_000)
    results = browser.evaluate(options)
    browser.keyboard.press("Escape")
    browser.wait_for_selector(".p-autocomplete-option, [role=option]", state="detached", timeout=10_000)
    assert any(r.startswith("MambaST Stylize (Style Transfer)") for r in results), results
    if query != "mamba":
        # "mamba" starts every node's id: both frontends rank those by the length of the shortest
        # matching name, node ids included, which saved workflows fix (docs/development.md).
        assert results[0].startswith("MambaST Stylize (Style Transfer)"), results


def test_the_all_in_one_template_runs_to_completion_as_shipped_with_a_few_progress_messages(browser, server):
    load(browser, workflow("Stylize a picture (all in one)"), "MambaST run")
    close_dialogs(browser)
    browser.evaluate("""() => {
        window.mambastProgress = 0;
        window.app.api.addEventListener('progress', () => { window.mambastProgress += 1; });
    }""")
    finished = set(server.get("/history"))
    browser.get_by_role("button", name="Run", exact=True).first.click()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new = {key: entry for key, entry in server.get("/history").items() if key not in finished}
        if new and all(entry["status"].get("completed") is not None for entry in new.values()):
            break
        time.sleep(1)
    [entry] = new.values()
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"]
    [saved] = [node for node in entry["outputs"].values() if "images" in node]
    image = server.base / "output" / saved["images"][0]["subfolder"] / saved["images"][0]["filename"]
    assert image.exists()
    browser.wait_for_function("""() => window.app.graph._nodes.some(n => n.type === 'SaveImage' && n.imgs?.length)""",
                              timeout=30_000)
    browser.wait_for_timeout(500)
    assert open_dialogs(browser) == []
    messages = browser.evaluate("() => window.mambastProgress")
    assert 0 < messages <= MOST_PROGRESS_MESSAGES, messages
    if SCREENSHOTS and browser.frontend == "pinned":
        screenshot(browser, ROOT / "web" / "docs" / "images" / "template_run.png",
                   {"x": 40, "y": 80, "width": VIEWPORT["width"] - 40, "height": VIEWPORT["height"] - 80}, margin=0)


def test_the_pack_causes_no_errors_in_the_browser_console(browser):
    ours = [entry for entry in browser.mambast_console
            if entry[0] in ("error", "pageerror") and "mambast" in " ".join(entry).lower()]
    assert ours == []


# -- the Loader's download ----------------------------------------------------------------------

@pytest.fixture(scope="module", params=FRONTENDS)
def bare_server(request, tmp_path_factory):
    """A ComfyUI without weights whose downloads come from a stand-in of the authors' folder."""
    base = tmp_path_factory.mktemp(f"bare-{request.param}")
    prepare(base, {})
    stand_in = base / "authors-folder"
    with start(base, request.param, {"MAMBAST_DRIVE_STAND_IN": str(stand_in)}) as instance:
        instance.frontend, instance.stand_in = request.param, stand_in
        yield instance


def test_the_loader_fetches_the_weights_where_none_are_installed(bare_server, playwright):
    stand_in = bare_server.stand_in
    write_official_folder(random_official_tensors(SMALL_CONFIG, seed=1), stand_in)  # not the release: refused
    chromium, page = open_page(playwright, bare_server.url)
    try:
        load(page, workflow("Stylize a picture (all in one)"))
        close_dialogs(page)
        [status] = loader_status(page)
        assert status["ok"] is False and status["download"], status
        assert "no Mamba-ST weights installed yet" in status["text"] and "Download weights" in status["text"]
        focus_on(page, "MambaSTLoader")
        assert_status_inside_its_node(page)
        if SCREENSHOTS and bare_server.frontend == "pinned":
            screenshot(page, ROOT / "web" / "docs" / "images" / "status_download.png",
                       node_screen_rect(page, "MambaSTLoader"))
        page.locator(".mambast-download").click()
        page.wait_for_function("""() => document.querySelector('.mambast-details') &&
            document.querySelector('.mambast-details').innerText.includes('To install them by hand')""",
                               timeout=60_000)
        assert not (bare_server.base / "models" / "mambast" / "official").exists()
        # The right files now: installed, the list refreshed and official/ chosen, the status good.
        shutil.rmtree(stand_in)
        write_official_folder(random_official_tensors(seed=5), stand_in)
        page.locator(".mambast-download").click()
        page.wait_for_function("""() => {
            const node = window.app.graph._nodes.find(n => n.comfyClass === 'MambaSTLoader');
            return node.mambastStatus.ok === true && node.widgets[0].value === 'official/';
        }""", timeout=120_000)
        installed = {p.name for p in (bare_server.base / "models" / "mambast" / "official").iterdir()}
        assert installed == {"decoder_iter_160000.pth", "embedding_iter_160000.pth", "mamba_iter_160000.pth"}
        [status] = loader_status(page)
        assert "Download weights" not in status["text"]
        assert not [entry for entry in page.mambast_console
                    if entry[0] in ("error", "pageerror") and "mambast" in " ".join(entry).lower()]
    finally:
        chromium.close()
