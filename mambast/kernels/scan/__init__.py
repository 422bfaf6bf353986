"""Selective-scan backends behind one function with mamba_ssm's ``selective_scan_fn`` contract.

Backends:
- ``reference``: the plain sequential loop, the oracle in tests.
- ``chunked``: the state carried token by token inside chunks whose discretisation is built at
  once; the default on CPU and MPS, and on CUDA when mamba_ssm is not installed. SS2D runs it
  through :func:`selective_scan_chunked_directions`, which scans the four directions token-major
  without building their copies (reversed directions are scanned backwards). Under autograd it
  keeps only the state at each chunk boundary and recomputes the chunks in backward
  (:mod:`mambast.kernels.scan.chunked_backward`), so training keeps O(B*D*N*L/chunk), not O(B*D*N*L).
- ``triton``: our own Triton kernel (:mod:`mambast.kernels.scan.triton_scan`): the whole scan in one
  launch, the four SS2D directions by index arithmetic. Used automatically on CUDA (and ROCm)
  when Triton imports and mamba_ssm does not. Under autograd (training) its backward kernel
  (:mod:`mambast.kernels.scan.triton_backward`) runs on a GPU once a small scan on that GPU has shown
  it gives the chunked scan's gradients (:func:`triton_trains_on`); otherwise ``chunked`` does.
- ``mamba_ssm``: the CUDA kernel of the mamba_ssm package, used automatically when it imports
  and the tensors are on CUDA.
- ``numba``: our CPU kernel compiled by Numba (:mod:`mambast.kernels.scan.numba_scan`), the state of
  each block of channels kept in L1 cache. Used automatically on the CPU when Numba imports
  (``pip install numba``; optional); inference only: under autograd ``chunked`` runs.

The choice comes from the ``scan`` argument of :func:`mambast.load`, else the ``MAMBAST_SCAN``
environment variable, else the automatic rule above.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Callable

import torch

from .chunked import DEFAULT_CHUNK as _CHUNKED_TOKENS
from .chunked import selective_scan_chunked, selective_scan_chunked_directions
from .contract import check_scan_shapes, records_gradients
from .mamba_ssm_backend import mamba_ssm_available, selective_scan_mamba_ssm
from .numba_scan import DEFAULT_CHUNK as _NUMBA_TOKENS
from .numba_scan import numba_available, selective_scan_numba
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
    "numba": selective_scan_numba,
}
ENV_VARIABLE = "MAMBAST_SCAN"
# What the loader node and the command line offer, in the order shown; "auto" is the rule below.
CHOICES = ("auto", "chunked", "numba", "triton", "reference", "mamba_ssm")
assert set(CHOICES) == {"auto", *BACKENDS}


# Tokens between two progress ticks of a VSS block's scan, for the backends that tick while they
# scan (the others scan in one call).
_TOKENS_PER_TICK = {"chunked": _CHUNKED_TOKENS, "numba": _NUMBA_TOKENS}


def scan_ticks(backend: str, tokens: int) -> int:
    """Progress ticks one VSS block's scan of ``tokens`` tokens makes with ``backend``."""
    per_tick = _TOKENS_PER_TICK.get(backend)
    return -(-tokens // per_tick) if per_tick else 0


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
    if name == "numba" and not numba_available():
        raise ValueError("The numba scan backend was requested but Numba does not import here; install it "
                         "(pip install numba, in the environment that runs ComfyUI) or choose 'chunked'.")
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
    if device.type == "cpu" and numba_available():
        return "numba"
    return "chunked"


def runnable_backend(name: str, device: torch.device, needs_grad: bool) -> str:
    """``name`` if it can run here, else ``chunked``: the GPU kernels need CUDA tensors (Triton's
    interpreter, ``TRITON_INTERPRET=1``, runs ours on any device for inference), our Triton kernel
    trains only on a GPU where its backward pass has passed :func:`triton_trains_on`, and the
    Numba kernel runs on CPU tensors for inference only."""
    if name == "mamba_ssm" and device.type != "cuda":
        return "chunked"
    if name == "numba" and (needs_grad or device.type != "cpu"):
        return "chunked"
    if name == "triton":
        if needs_grad:
            return "triton" if device.type == "cuda" and triton_trains_on(device) else "chunked"
        if device.type != "cuda" and not triton_interpreted():
            return "chunked"
    return name


def backend_for(choice: str | None, device: torch.device, needs_grad: bool = False) -> str:
    """The backend that runs for a user's ``choice`` (a name, or "auto"/None for the automatic
    rule and ``MAMBAST_SCAN``) on ``device``; a ValueError names a choice that cannot be used."""
    return runnable_backend(resolve_backend(choice, device), device, needs_grad)


@functools.lru_cache(maxsize=None)
def triton_trains_on(device: torch.device) -> bool:
    """Whether our Triton scan's backward pass gives the chunked scan's gradients on ``device``.

    Checked once per device and process, on a small scan, before any training step uses the
    kernel (:func:`mambast.kernels.scan.triton_backward.disagreement_with_chunked`): a Triton version
    that compiles the kernel differently, or not at all, costs speed (the chunked scan trains
    instead, with a warning that says why), never wrong gradients.
    """
    try:
        from .triton_backward import disagreement_with_chunked

        problem = disagreement_with_chunked(device)
    except Exception as error:  # a compiler or launch failure: the kernel cannot train here
        problem = f"it failed: {type(error).__name__}: {error}"
    if problem is not None:
        warnings.warn(f"The Triton scan's backward pass is not used on {device}: {problem}. Training runs the "
                      "chunked scan instead (slower on a GPU, same gradients).", RuntimeWarning, stacklevel=2)
    return problem is None


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


__all__ = ["BACKENDS", "CHOICES", "ENV_VARIABLE", "backend_for", "check_scan_shapes", "mamba_ssm_available",
           "numba_available", "resolve_backend", "runnable_backend", "scan_ticks", "selective_scan", "selective_scan_chunked",
           "selective_scan_chunked_directions", "selective_scan_reference", "triton_available", "triton_trains_on",
           "validate_backend_name"]
