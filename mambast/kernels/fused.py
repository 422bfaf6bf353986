"""Element-wise steps fused into one compiled pass each, on CPUs with Numba (inference only).

At 512 px the operations between the dense layers, the scans and the convolutions (norms,
gating, copies) took about a sixth of a stylization on a 2-core CPU, and each is a pass over
memory that the next one repeats. Where Numba is installed, whatever the scan backend, these
run as one pass each (times per call at 512 px on that CPU, PyTorch's operations -> fused):

- every VSS block's depthwise convolution with its SiLU, on the channels-last token grid
  (8.7-9.2 ms -> 6.5-6.9 ms);
- the gated norm, ``out_norm(y) * silu(gate)``, written into the spent gate (12.6-13.0 ms through
  PyTorch with a copy of the gate that the model's path does not make -> 5.6-5.7 ms);
- the block's output norm with its skip scale and the stack's residual,
  ``norm(mixed + tokens * skip_scale) + tokens``;
- the CNN decoder's band inputs: the rows of the upsampled, reflection-padded image gathered in
  one pass, in place of a row gather followed by the widening and padding copies.

Each function returns None where it does not apply (no Numba, another device or dtype, autograd
recording the inputs); the caller then runs the PyTorch operations. The convolution and the
norms differ from PyTorch's by float rounding (the SiLU uses the scan kernel's 2**x); the
gather is an exact copy.
"""

from __future__ import annotations

import torch
from torch import nn

from .scan.contract import records_gradients
from .scan.numba_scan import launch, numba_available


def _compiled(name: str):
    from . import fused_kernels

    return getattr(fused_kernels, name)


def _cpu_float(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def norm_times_silu_(y: torch.Tensor, gate: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor | None:
    """``norm(y) * silu(gate)`` for (..., C) tensors, written into ``gate`` (which the caller no
    longer needs) and returned; None where the fused pass does not apply."""
    channels = y.shape[-1]
    if (records_gradients(y, gate, norm.weight, norm.bias) or not _norm_applies(norm, channels)
            or y.shape != gate.shape or not _cpu_float(y, gate)):
        return None
    rows = gate.detach().view(-1, channels).numpy()
    launch(_compiled("norm_times_silu"), y.detach().view(-1, channels).numpy(), rows, norm.weight.detach().numpy(),
           norm.bias.detach().numpy(), float(norm.eps), rows)
    return gate


def skip_norm(mixed: torch.Tensor, tokens: torch.Tensor, skip: torch.Tensor, norm: nn.LayerNorm,
              residual: bool) -> torch.Tensor | None:
    """``norm(mixed + tokens * skip)``, plus ``tokens`` when ``residual``, for (..., C) tensors:
    a fresh tensor (a block's output must not live in the memory its stack lends block after
    block); None where the fused pass does not apply."""
    channels = mixed.shape[-1]
    if (records_gradients(mixed, tokens, skip, norm.weight, norm.bias) or not _norm_applies(norm, channels)
            or mixed.shape != tokens.shape or skip.shape != (channels,) or not _cpu_float(mixed, tokens, skip)):
        return None
    out = torch.empty_like(mixed)
    launch(_compiled("skip_norm"), mixed.detach().view(-1, channels).numpy(),
           tokens.detach().view(-1, channels).numpy(), skip.detach().numpy(), norm.weight.detach().numpy(),
           norm.bias.detach().numpy(), float(norm.eps), bool(residual), out.view(-1, channels).numpy())
    return out


def _norm_applies(norm: nn.LayerNorm, channels: int) -> bool:
    """Numba is here and ``norm`` is an affine float32 layer norm over the last ``channels``."""
    return (numba_available() and tuple(norm.normalized_shape) == (channels,) and norm.weight is not None
            and norm.bias is not None and _cpu_float(norm.weight, norm.bias) and channels > 0)


def gather_band(image: torch.Tensor, rows: torch.Tensor, scale: int) -> torch.Tensor | None:
    """Rows ``rows`` (input-row indices) of ``reflection_pad(upsample(image, scale), 1)``, (B, C,
    len(rows), w * scale + 2) contiguous, in one pass; None where the fused pass does not apply
    (``image`` must be contiguous: one compiled layout keeps a first run's compilation short)."""
    if records_gradients(image) or not numba_available() or not _cpu_float(image) or image.shape[-1] * scale < 2:
        return None
    batch, channels, height, width = image.shape
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= height):
        raise ValueError(f"gather_band: row indices must lie in 0..{height - 1}")  # the kernel does not check
    band = image.new_empty((batch, channels, rows.numel(), width * scale + 2))
    if band.numel():
        launch(_compiled("gather_band"), image.detach().numpy(), rows.to(torch.int64).contiguous().numpy(),
               int(scale), band.numpy())
    return band


def depthwise_silu(tokens: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor | None:
    """``silu(conv(tokens))`` for a (B, h, w, C) channels-last token grid and a depthwise "same"
    convolution with a bias (SS2D's ``conv2d``): (B, h, w, C) contiguous, a fresh tensor; None
    where the fused pass does not apply."""
    channels = tokens.shape[-1]
    size = conv.kernel_size[0]
    if (records_gradients(tokens, conv.weight, conv.bias) or not numba_available() or tokens.dim() != 4
            or conv.bias is None or conv.groups != channels or conv.in_channels != channels
            or conv.out_channels != channels or conv.kernel_size != (size, size) or size % 2 == 0
            or conv.padding != (size // 2, size // 2) or conv.stride != (1, 1) or conv.dilation != (1, 1)
            or conv.padding_mode != "zeros" or not _cpu_float(tokens, conv.weight, conv.bias)):
        return None
    taps = conv.weight.detach().reshape(channels, size, size).permute(1, 2, 0).contiguous()  # (k, k, C)
    out = torch.empty_like(tokens)
    if out.numel():
        launch(_compiled("depthwise_silu"), tokens.detach().numpy(), taps.numpy(), conv.bias.detach().numpy(),
               out.numpy())
    return out
