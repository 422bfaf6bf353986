"""The only module of the pack that imports ComfyUI: model folders, devices, memory, progress.

Everything ComfyUI-specific the nodes need goes through these few functions, so the node
logic can be tested with small fakes of ``folder_paths`` and ``comfy.*``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..mambast import PICKLE_SUFFIXES, WEIGHTS_SUFFIXES, WEIGHTS_URL, missing_weights_message

FOLDER = "mambast"
LOGGER = logging.getLogger("ComfyUI-MambaST")
EXTENSIONS = set(WEIGHTS_SUFFIXES)


def register_model_folder() -> None:
    """Register ComfyUI/models/mambast, keeping folders that extra_model_paths.yaml added."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


def input_directory() -> str:
    """ComfyUI's input folder, where LoadImage and LoadVideo look."""
    return folder_paths.get_input_directory()


def model_folders() -> list[str]:
    """Every folder searched for weights, in ComfyUI's order."""
    try:
        return list(folder_paths.get_folder_paths(FOLDER))
    except KeyError:
        return []


def list_checkpoints() -> list[str]:
    """Weights the loader can offer: single files, and sub-folders holding the official files."""
    try:
        files = folder_paths.get_filename_list(FOLDER)
    except KeyError:
        return []
    choices: set[str] = set()
    for name in files:
        folder, _, base = name.replace("\\", "/").rpartition("/")
        if os.path.splitext(base)[1].lower() in PICKLE_SUFFIXES and folder:
            choices.add(folder + "/")  # a folder of official .pth files
        else:
            choices.add(name.replace("\\", "/"))
    return sorted(choices)


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies under ``folder`` once both are made absolute and normalised."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def resolve_checkpoint(name: str) -> str:
    """The path of a loader choice. Only names the model folders offer are accepted.

    The name comes from a request (the graph, the status route), so it is checked against what
    :func:`list_checkpoints` lists and then resolved inside a model folder; anything else, an
    absolute path, ``..``, a file of another type, raises a ValueError that names only what the
    folders hold.
    """
    offered = list_checkpoints()
    if isinstance(name, str) and name in offered:
        if name.endswith("/"):
            for base in model_folders():
                candidate = os.path.join(base, name.rstrip("/"))
                if _inside(candidate, base) and os.path.isdir(candidate):
                    return candidate
        else:
            path = folder_paths.get_full_path(FOLDER, name)
            if path and any(_inside(path, base) for base in model_folders()):
                return path
    raise UnknownCheckpoint(name, offered)


class UnknownCheckpoint(ValueError):
    """A loader choice the model folders do not offer; says which, and what they hold."""

    def __init__(self, name: object, offered: list[str]):
        self.name = name if isinstance(name, str) and len(name) <= 200 else f"{str(name)[:200]}..."
        self.offered = offered
        super().__init__(self.message())

    def message(self) -> str:
        if not self.offered:
            return missing_weights_message(model_folders())
        return (f"checkpoint: {self.name!r} is not in the {FOLDER} model folder. It holds: {', '.join(self.offered)}. "
                "Pick one of these in the MambaST Loader (press r in ComfyUI to refresh the list after adding "
                f"files). Weights go in {', '.join(model_folders()) or 'models/' + FOLDER}; get the official ones "
                f"from {WEIGHTS_URL}.")

    def short(self) -> str:
        """The essential part, for the loader's status line."""
        if not self.offered:
            return "no Mamba-ST weights installed yet"
        shown = ", ".join(self.offered[:4]) + (", ..." if len(self.offered) > 4 else "")
        return f"{self.name!r} is not in models/{FOLDER}, which has {shown}"


def load_device() -> torch.device:
    return model_management.get_torch_device()


def offload_device() -> torch.device:
    return model_management.unet_offload_device()


def intermediate_device() -> torch.device:
    return model_management.intermediate_device()


class _Managed(torch.nn.Module):
    """The network as ComfyUI's ModelPatcher handles it: it assigns ``device`` on the module,
    which MambaST exposes as a read-only property of its parameters."""

    def __init__(self, network: torch.nn.Module, device: torch.device):
        super().__init__()
        self.network = network
        self.device = device


def wrap_model(model: torch.nn.Module) -> Any:
    """Put the model under ComfyUI's memory manager."""
    return comfy.model_patcher.ModelPatcher(_Managed(model, offload_device()), load_device=load_device(),
                                            offload_device=offload_device())


def load_for_inference(patcher: Any, memory_required: int) -> None:
    """Move the model to its device, freeing ``memory_required`` bytes for the activations.

    Plain torch modules cannot be loaded partially by ComfyUI, hence the full load.
    """
    model_management.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    model_management.throw_exception_if_processing_interrupted()


def progress_bar(total: int) -> Any:
    return comfy.utils.ProgressBar(total)


def warn_on_node(text: str) -> None:
    """A warning in the log and, while a node runs, as text on that node in the frontend."""
    notifier(logging.WARNING)(text)


def notifier(level: int = logging.INFO) -> Callable[[str], None]:
    """A function that puts a text in the log and on the node running now, callable from any
    thread (the node is found here, in the thread that runs it)."""
    node_id = None
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        node_id = context.node_id if context is not None else None
    except Exception:  # an older ComfyUI, or no server (scripts): the log has it
        pass

    def tell(text: str) -> None:
        LOGGER.log(level, "MambaST: %s", text)
        try:
            from server import PromptServer

            if node_id is not None and PromptServer.instance is not None:
                PromptServer.instance.send_progress_text(text, node_id)
        except Exception:
            pass

    return tell


def free_cache() -> None:
    """Hand cached accelerator memory back, the way ComfyUI does between runs."""
    model_management.soft_empty_cache()


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (for the CPU: the system's available memory)."""
    return int(model_management.get_free_memory(device))


def repeat_to_batch_size(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """ComfyUI's rule for a batch shorter than another: its items are cycled."""
    return comfy.utils.repeat_to_batch_size(tensor, batch)
