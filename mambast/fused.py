"""Element-wise steps fused into one compiled pass each, on CPUs with Numba (inference only).

At 512 px the operations between the dense layers, the scans and the convolutions (norms,
gating, copies) are about a sixth of a stylization on a small CPU, and each is a pass over
memory that the next one repeats. Where Numba is installed, two of them run as one pass:

- the gated norm of every VSS block, ``out_norm(y) * silu(gate)``: one read of the scan output and
  the gate, one write, in place of a norm, a SiLU and a product (each block at 512 px: 9-13 ms
  through PyTorch, 5.6 ms here);
- the CNN decoder's band inputs: the rows of the upsampled, reflection-padded image gathered in
  one pass, in place of a row gather followed by the widening and padding copies.

Each function returns None where it does not apply (no Numba, another device or dtype, autograd
recording the inputs); the caller then runs the PyTorch operations. The norm differs from PyTorch's by
float rounding (its SiLU uses the scan kernel's 2**x); the gather is an exact copy.
"""

from __future__ import annotations

import torch
from torch import nn

from .scan.contract import records_gradients
from .scan.numba_scan import launch, numba_available


def _compiled(name: str):
    from . import fused_kernels

    return getattr(fused_kernels, name)


def _cpu_float(*tensors: torch.Tensor, contiguous: bool = True) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and (t.is_contiguous() or not contiguous)
               for t in tensors)


def norm_times_silu_(y: torch.Tensor, gate: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor | None:
    """``norm(y) * silu(gate)`` for (..., C) tensors, written into ``gate`` (which the caller no
    longer needs) and returned; None where the fused pass does not apply."""
    channels = y.shape[-1]
    weight, bias = norm.weight, norm.bias
    if (records_gradients(y, gate, weight, bias) or not numba_available() or y.shape != gate.shape or y.numel() == 0
            or tuple(norm.normalized_shape) != (channels,) or weight is None or bias is None
            or not _cpu_float(y, gate, weight, bias)):
        return None
    rows = gate.detach().view(-1, channels).numpy()
    launch(_compiled("norm_times_silu"), y.detach().view(-1, channels).numpy(), rows, weight.detach().numpy(),
           bias.detach().numpy(), float(norm.eps), rows)
    return gate


def gather_band(image: torch.Tensor, rows: torch.Tensor, scale: int) -> torch.Tensor | None:
    """Rows ``rows`` (input-row indices) of ``reflection_pad(upsample(image, scale), 1)``, (B, C,
    len(rows), w * scale + 2) contiguous, in one pass; None where the fused pass does not apply.
    ``image`` may have any strides (the decoder's first input is a channels-last view)."""
    if records_gradients(image) or not numba_available() or not _cpu_float(image, contiguous=False) or image.shape[-1] * scale < 2:
        return None
    batch, channels, height, width = image.shape
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= height):
        raise ValueError(f"gather_band: row indices must lie in 0..{height - 1}")  # the kernel does not check
    band = image.new_empty((batch, channels, rows.numel(), width * scale + 2))
    if band.numel():
        launch(_compiled("gather_band"), image.detach().numpy(), rows.to(torch.int64).contiguous().numpy(), int(scale),
               band.numpy())
    return band
