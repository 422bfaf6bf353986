"""Small stand-ins for the ComfyUI modules the pack uses, so node logic runs in plain pytest."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_mambast_under_test"


class Interrupted(Exception):
    """Stands in for comfy.model_management.InterruptProcessingException."""


class FakeComfy:
    """State the fakes share: the models dir, calls made, the interrupt flag, progress updates."""

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self.interrupt = False
        self.loads: list[tuple[object, int]] = []
        self.progress: list[tuple[int, int]] = []
        self.on_interrupt_check = None  # called at each Cancel check, e.g. to raise the flag mid-run
        self.cache_frees: list[int] = []

    def modules(self) -> dict[str, types.ModuleType]:
        fake = self
        folder_paths = types.ModuleType("folder_paths")
        folder_paths.models_dir = str(self.models_dir)
        folder_paths.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
        folder_paths.folder_names_and_paths = {}

        def get_folder_paths(name):
            return list(folder_paths.folder_names_and_paths[name][0])

        def get_filename_list(name):
            paths, extensions = folder_paths.folder_names_and_paths[name]
            found = []
            for base in paths:
                for directory, _, files in os.walk(base):
                    for file in files:
                        if not extensions or os.path.splitext(file)[1] in extensions:
                            found.append(os.path.relpath(os.path.join(directory, file), base).replace(os.sep, "/"))
            return sorted(set(found))

        def get_full_path(name, filename):
            for base in folder_paths.folder_names_and_paths.get(name, ([], set()))[0]:
                path = os.path.join(base, filename)
                if os.path.isfile(path):
                    return path
            return None

        folder_paths.get_folder_paths = get_folder_paths
        folder_paths.get_filename_list = get_filename_list
        folder_paths.get_full_path = get_full_path

        comfy = types.ModuleType("comfy")
        management = types.ModuleType("comfy.model_management")
        management.InterruptProcessingException = Interrupted
        management.OOM_EXCEPTION = torch.cuda.OutOfMemoryError
        management.get_torch_device = lambda: torch.device("cpu")
        management.unet_offload_device = lambda: torch.device("cpu")
        management.intermediate_device = lambda: torch.device("cpu")
        management.should_use_fp16 = lambda device=None, **_: False
        management.should_use_bf16 = lambda device=None, **_: False

        def load_models_gpu(models, memory_required=0, force_full_load=False, **_):
            fake.loads.append((models[0], memory_required))

        def throw_exception_if_processing_interrupted():
            if fake.on_interrupt_check is not None:
                fake.on_interrupt_check()
            if fake.interrupt:
                fake.interrupt = False
                raise Interrupted()

        management.load_models_gpu = load_models_gpu
        management.free_memory_bytes = 64 * 2**30
        management.get_free_memory = lambda device=None, torch_free_too=False: management.free_memory_bytes
        management.soft_empty_cache = lambda force=False: fake.cache_frees.append(1)
        management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted

        patcher_module = types.ModuleType("comfy.model_patcher")

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0):
                self.model, self.load_device, self.offload_device = model, load_device, offload_device

        patcher_module.ModelPatcher = ModelPatcher

        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.current = total, 0

            def update_absolute(self, value, total=None, preview=None):
                if total is not None:
                    self.total = total
                self.current = min(value, self.total)
                fake.progress.append((self.current, self.total))

            def update(self, value):
                self.update_absolute(self.current + value)

        utils.ProgressBar = ProgressBar

        def repeat_to_batch_size(tensor, batch_size, dim=0):  # ComfyUI's rule: cut, or cycle
            if tensor.shape[dim] > batch_size:
                return tensor.narrow(dim, 0, batch_size)
            if tensor.shape[dim] < batch_size:
                repeats = [1] * tensor.dim()
                repeats[dim] = -(-batch_size // tensor.shape[dim])
                return tensor.repeat(repeats).narrow(dim, 0, batch_size)
            return tensor

        utils.repeat_to_batch_size = repeat_to_batch_size
        comfy.model_management, comfy.model_patcher, comfy.utils = management, patcher_module, utils
        return {"folder_paths": folder_paths, "comfy": comfy, "comfy.model_management": management,
                "comfy.model_patcher": patcher_module, "comfy.utils": utils}


def import_pack() -> types.ModuleType:
    """Import the repository as ComfyUI does: a package from its folder, relative imports inside."""
    for name in [n for n in sys.modules if n == PACK_NAME or n.startswith(PACK_NAME + ".")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module
