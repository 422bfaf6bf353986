"""Start a real ComfyUI with this pack on a loopback port, for the opt-in end-to-end and browser
tests and the soak benchmark.

The server runs on the CPU with temporary folders: this pack linked into ``custom_nodes``,
a ``mambast`` model folder and the input, output, temp and user folders, all registered
through an ``extra_model_paths.yaml``. Nothing outside the temporary folder is written.
"""

from __future__ import annotations

import contextlib
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
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER = "ComfyUI-MambaST"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running ComfyUI: JSON requests, prompts queued and awaited, its process and log."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, base: Path):
        self.url, self.process, self.log, self.base = url, process, log, base

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload: dict) -> dict:
        """POST JSON; an HTTP error is returned as {"status": code, "error": body} (not raised)."""
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                return json.loads(body) if body.strip() else {}
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            try:
                return {"status": error.code, "error": json.loads(text)}
            except json.JSONDecodeError:
                return {"status": error.code, "error": text}

    def queue(self, graph: dict) -> dict:
        """Queue a prompt: {"prompt_id": ...}, or the validation error ComfyUI answered with."""
        return self.post("/prompt", {"prompt": graph, "client_id": str(uuid.uuid4())})

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The history entry of a finished prompt (success or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, graph: dict, timeout: float = 600) -> dict:
        """Queue ``graph`` and wait for it; raise AssertionError with ComfyUI's messages if it fails."""
        queued = self.queue(graph)
        if "prompt_id" not in queued:
            raise AssertionError(f"/prompt refused the graph: {json.dumps(queued)[-4000:]}")
        entry = self.wait(queued["prompt_id"], timeout)
        if entry["status"]["status_str"] != "success":
            raise AssertionError(failure_text(entry["status"]["messages"]))
        return entry

    def resident_mib(self) -> float:
        """The server process's resident memory (Linux)."""
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def alive(self) -> bool:
        return self.process.poll() is None


def prepare(base: Path, checkpoints: dict[str, dict] | None = None) -> Path:
    """Lay out a ComfyUI base folder: the pack in custom_nodes, ``checkpoints`` (file name ->
    tensors, saved as safetensors; a name ending in "/" is saved as the official three files)
    in models/mambast, empty input/output/temp/user folders. Returns the yaml to pass."""
    from safetensors.torch import save_file

    from mambast.network.random_weights import write_official_folder

    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_FOLDER
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    models = base / "models" / "mambast"
    models.mkdir(parents=True, exist_ok=True)
    for name, tensors in (checkpoints or {}).items():
        if name.endswith("/"):
            write_official_folder(tensors, models / name.rstrip("/"))
        else:
            save_file(tensors, str(models / name))
    for folder in ("input", "output", "temp", "user"):
        (base / folder).mkdir(exist_ok=True)
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"mambast_test:\n    base_path: {base}\n    custom_nodes: custom_nodes\n"
                    f"    mambast: models/mambast\n")
    return yaml


@contextlib.contextmanager
def running_comfyui(base: Path, comfyui_dir: str | os.PathLike, python: str | None = None,
                    startup_timeout: float = 180, extra_args: tuple[str, ...] = (),
                    environment: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ComfyUI on the CPU over the folders :func:`prepare` laid out in ``base``; stop it after.

    ``extra_args`` go to ComfyUI's command line (e.g. ``--front-end-root``), ``environment`` is
    added to the server's environment."""
    port = free_port()
    log = base / "comfyui.log"
    command = [python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
               "--input-directory", str(base / "input"), "--output-directory", str(base / "output"),
               "--temp-directory", str(base / "temp"), "--user-directory", str(base / "user"),
               "--disable-auto-launch", *extra_args]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=comfyui_dir, stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(environment or {})})
    server = Server(f"http://127.0.0.1:{port}", process, log, base)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError("ComfyUI exited:\n" + log.read_text()[-4000:])
            try:
                server.get("/object_info/SaveImage")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("ComfyUI did not start:\n" + log.read_text()[-4000:]) from None
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def failure_text(messages: list) -> str:
    """What went wrong in a failed prompt: each execution error's node, exception and traceback
    first (the inputs ComfyUI also reports can run to megabytes of tensor text), else the messages."""
    errors = [data for kind, data in messages if kind == "execution_error"]
    if not errors:
        return json.dumps(messages, indent=1)[-4000:]
    return "\n\n".join(f"node {e.get('node_id')} ({e.get('node_type')}): {e.get('exception_type')}: "
                       f"{e.get('exception_message')}\n{''.join(e.get('traceback') or [])[-3000:]}" for e in errors)
