"""Selective-scan backends behind one function with mamba_ssm's ``selective_scan_fn`` contract.

Backends:
- ``reference``: the plain sequential loop, the oracle in tests.
- ``chunked``: the state carried token by token inside chunks whose discretisation is built at
  once; the default on CPU and MPS, and on CUDA when mamba_ssm is not installed. SS2D runs it
  through :func:`selective_scan_chunked_directions`, which scans the four directions token-major
  without building their copies (reversed directions are scanned backwards).
- ``triton``: our own Triton kernel (:mod:`mambast.scan.triton_scan`): the whole scan in one
  launch, the four SS2D directions by index arithmetic. Used automatically on CUDA (and ROCm)
  when Triton imports and mamba_ssm does not. Inference only: under autograd ``chunked`` runs.
- ``mamba_ssm``: the CUDA kernel of the mamba_ssm package, used automatically when it imports
  and the tensors are on CUDA.

The choice comes from the ``scan`` argument of :func:`mambast.load`, else the ``MAMBAST_SCAN``
environment variable, else the automatic rule above.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from .chunked import selective_scan_chunked, selective_scan_chunked_directions
from .contract import check_scan_shapes, records_gradients
from .mamba_ssm_backend import mamba_ssm_available, selective_scan_mamba_ssm
from .reference import selective_scan_reference
from .triton_available import triton_available, triton_compiles_for, triton_interpreted



def _selective_scan_triton(*args, **kwargs) -> torch.Tensor:
    from .triton_scan import selective_scan_triton  # imports Triton: only when this backend runs

    return selective_scan_triton(*args, **kwargs)


BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": selective_scan_reference,
    "chunked": selective_scan_chunked,
    "triton": _selective_scan_triton,
    "mamba_ssm": selective_scan_mamba_ssm,
}
ENV_VARIABLE = "MAMBAST_SCAN"
# What the loader node and the command line offer, in the order shown; "auto" is the rule below.
CHOICES = ("auto", "chunked", "triton", "reference", "mamba_ssm")
assert set(CHOICES) == {"auto", *BACKENDS}


def validate_backend_name(name: str | None) -> str | None:
    """Return ``name`` normalised (``None``/"auto" mean automatic) or raise a ValueError."""
    if name is None or name == "" or name == "auto":
        return None
    if name not in BACKENDS:
        raise ValueError(f"Unknown selective-scan backend {name!r}: choose one of "
                         f"{', '.join(['auto', *BACKENDS])}.")
    if name == "mamba_ssm" and not mamba_ssm_available():
        raise ValueError("The mamba_ssm scan backend was requested but the mamba_ssm package does not "
                         "import here; install mamba-ssm (CUDA only) or choose 'chunked'.")
    if name == "triton" and not triton_available():
        raise ValueError("The triton scan backend was requested but Triton does not import here; install "
                         "triton (it ships with PyTorch's CUDA and ROCm builds) or choose 'chunked'.")
    return name


def resolve_backend(name: str | None, device: torch.device) -> str:
    """The backend that will run on ``device`` for the requested ``name`` (None = automatic)."""
    name = validate_backend_name(name) or validate_backend_name(os.environ.get(ENV_VARIABLE))
    if name is not None:
        return name
    if device.type == "cuda" and mamba_ssm_available():
        return "mamba_ssm"
    if device.type == "cuda" and triton_available() and triton_compiles_for(device):
        return "triton"
    return "chunked"


def runnable_backend(name: str, device: torch.device, needs_grad: bool) -> str:
    """``name`` if it can run here, else ``chunked``: the GPU kernels need CUDA tensors (Triton's
    interpreter, ``TRITON_INTERPRET=1``, runs ours on any device) and ours has no backward pass."""
    if name == "mamba_ssm" and device.type != "cuda":
        return "chunked"
    if name == "triton" and (needs_grad or (device.type != "cuda" and not triton_interpreted())):
        return "chunked"
    return name


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Selective scan ``y = scan(u; delta, A, B, C) + D * u``, float32 out.

    u, delta: (B, D, L); A: (D, N), negative for a decaying state; B, C: (B, G, N, L), channel d
    uses group d // (D / G); D, delta_bias: (D,). ``delta_softplus`` applies softplus to
    ``delta + delta_bias``. Returns (B, D, L) float32.
    """
    needs_grad = records_gradients(u, delta, A, B, C, D, delta_bias)
    name = runnable_backend(resolve_backend(backend, u.device), u.device, needs_grad)
    return BACKENDS[name](u, delta, A, B, C, D, delta_bias, delta_softplus)


__all__ = ["BACKENDS", "CHOICES", "ENV_VARIABLE", "check_scan_shapes", "mamba_ssm_available",
           "resolve_backend", "runnable_backend", "selective_scan", "selective_scan_chunked",
           "selective_scan_chunked_directions", "selective_scan_reference", "triton_available",
           "validate_backend_name"]
