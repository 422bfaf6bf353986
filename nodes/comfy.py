"""The only module of the pack that imports ComfyUI: model folders, devices, memory, progress.

Everything ComfyUI-specific the nodes need goes through these few functions, so the node
logic can be tested with small fakes of ``folder_paths`` and ``comfy.*``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..mambast.checkpoint import PICKLE_SUFFIXES, missing_weights_message

FOLDER = "mambast"
EXTENSIONS = {".safetensors", ".sft", *PICKLE_SUFFIXES}


def register_model_folder() -> None:
    """Register ComfyUI/models/mambast, keeping folders that extra_model_paths.yaml added."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


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
        if os.path.splitext(base)[1] in PICKLE_SUFFIXES and folder:
            choices.add(folder + "/")  # a folder of official .pth files
        else:
            choices.add(name)
    return sorted(choices)


def resolve_checkpoint(name: str) -> str:
    """The path of a loader choice; a ValueError naming the folders searched if it is gone."""
    if name.endswith("/"):
        for base in model_folders():
            candidate = os.path.join(base, name.rstrip("/"))
            if os.path.isdir(candidate):
                return candidate
    else:
        path = folder_paths.get_full_path(FOLDER, name)
        if path:
            return path
    wanted = f"'{name}' is not in the {FOLDER} model folder. " if name else ""
    raise ValueError(wanted + missing_weights_message(model_folders()))


def load_device() -> torch.device:
    return model_management.get_torch_device()


def offload_device() -> torch.device:
    return model_management.unet_offload_device()


def intermediate_device() -> torch.device:
    return model_management.intermediate_device()


def preferred_half_dtype(device: torch.device) -> torch.dtype:
    """ComfyUI's choice of dense-layer dtype for ``device`` (float32 where halves do not pay)."""
    if model_management.should_use_bf16(device):
        return torch.bfloat16
    if model_management.should_use_fp16(device):
        return torch.float16
    return torch.float32


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


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    return (model_management.OOM_EXCEPTION,)
