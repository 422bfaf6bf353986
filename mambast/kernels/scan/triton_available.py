"""Whether our Triton scan kernel can run: Triton imports, and a GPU or Triton's interpreter."""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton and its language module import (PyTorch's CUDA and ROCm wheels ship it)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a Triton that does not match this platform
        return False
    return True


def triton_interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels run on the CPU through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") == "1" and triton_available()


def triton_compiles_for(device) -> bool:
    """True for ROCm GPUs and NVIDIA GPUs of compute capability 7.5 or newer (Triton's floor)."""
    import torch

    if torch.version.hip is not None:
        return True
    try:
        return torch.cuda.get_device_capability(device) >= (7, 5)
    except Exception:  # no CUDA runtime
        return False
