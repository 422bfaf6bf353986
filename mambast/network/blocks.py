"""The layers of Mamba-ST: patch embedding, VSS blocks (self and cross / MSTD), CNN decoder.

Parameter names follow the official checkpoints (``self_attention``, ``x_proj_weight``, ...) so
that their state dicts load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import fused
from ..kernels.scan import resolve_backend, runnable_backend, selective_scan
from ..kernels.scan.chunked import selective_scan_chunked_directions
from ..kernels.scan.contract import records_gradients
from ..kernels.scan.numba_scan import selective_scan_numba_orders
from ..utils.progress import cancel_point, tick
from .config import MambaSTConfig

# Parameters the selective scan reads; they stay float32 whatever the dense layers' dtype.
SCAN_PARAMETERS = ("A_logs", "Ds", "dt_projs_bias")
# The reference's scan orders: row-major, column-major, then both reversed.
_DIRECTION_REVERSED = (False, False, True, True)


def _reusable() -> bool:
    """Whether temporaries may be overwritten in place: no autograd graph is being recorded.

    At inference each reused temporary is one large allocation less; fresh memory is costly on
    CPUs (the operating system zeroes every new page), about 4 ms per 16 MB here.
    """
    return not torch.is_grad_enabled()


def _spare_memory(spent: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """``spent``'s memory as a contiguous tensor of ``shape``, for a result to be written into
    memory the process already holds, when nothing records gradients and ``spent`` (a temporary
    the caller no longer reads) is a contiguous CPU tensor of ``dtype`` and large enough; else None.
    """
    count = math.prod(shape)
    if (not _reusable() or spent.device.type != "cpu" or spent.dtype != dtype or not spent.is_contiguous()
            or spent.numel() < count):
        return None
    return spent.reshape(-1)[:count].view(shape)


class Workspace:
    """Memory that the VSS blocks of one stack write their ``in_proj`` results into, block after
    block, at inference on CPUs.

    A fresh result of 32 MiB or more comes straight from the operating system, which zeroes
    every page on first touch: about 30 ms per 64 MiB here, six such results per block at
    1024 px. A block's ``in_proj`` results are spent when it returns (its output is a fresh
    tensor), so the next block can write into the same memory. Smaller results come from the
    allocator's reused memory, where the 1x1 convolution of :func:`grid_linear` is faster: no
    workspace then. Dropped with the stack's forward call.
    """

    MIN_BYTES = 32 * 2**20

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    @classmethod
    def worth_reusing(cls, shape: tuple[int, ...], element_size: int) -> bool:
        """Whether a fresh result of ``shape`` would come from the operating system's zeroed pages."""
        return math.prod(shape) * element_size >= cls.MIN_BYTES

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """A contiguous (``shape``) tensor of ``like``'s dtype for the result called ``name``, or None."""
        if not _reusable() or like.device.type != "cpu" or not self.worth_reusing(shape, like.element_size()):
            return None
        count = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < count or buffer.dtype != like.dtype:
            buffer = self._buffers[name] = like.new_empty(count)
        return buffer[:count].view(shape)


def _add_residual(out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``out + residual``, into ``out`` (a block's fresh output) when nothing records gradients."""
    return out.add_(residual) if _reusable() else out + residual


# Large grids go through the dense layers in bands of rows of about this many multiply-accumulates,
# with a Cancel check between bands: a whole layer at 2048 px is seconds on a small CPU.
BAND_MACS = 16 * 2**30


def grid_linear(tokens: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(tokens, weight)`` (no bias) on a (B, h, w, C) token grid: (B, h, w, out).

    On CPUs a grid within one band runs as a 1x1 convolution of the channels-last grid: oneDNN's
    convolution is 15-35% faster here than the BLAS matrix product behind ``F.linear`` for these
    shapes (bench/stylize.py). Larger grids, and results written into ``out`` (a contiguous
    float (B, h, w, out) buffer whose memory is already the process's: a fresh 64 MiB result
    costs about 30 ms of page faults here), go through matrix products written straight into
    the output's rows, in bands, with a Cancel check between bands. Elsewhere ``F.linear``.
    """
    if tokens.device.type != "cpu" or tokens.dim() != 4 or not torch.backends.mkldnn.is_available():
        return F.linear(tokens, weight) if out is None else out.copy_(F.linear(tokens, weight))
    batch, height, width, channels = tokens.shape
    rows = max(1, BAND_MACS // max(1, width * weight.numel()))
    if out is None and height <= rows and batch * height * width * weight.numel() <= BAND_MACS:
        grid = tokens.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(grid, weight.reshape(*weight.shape, 1, 1)).permute(0, 2, 3, 1)
    if out is None:
        out = tokens.new_empty((batch, height, width, weight.shape[0]))
    transposed = weight.t()
    for item in range(batch):
        for top in range(0, height, rows):
            cancel_point()
            band = tokens[item, top:top + rows].reshape(-1, channels)
            torch.mm(band, transposed, out=out[item, top:top + rows].view(-1, weight.shape[0]))
    return out


class PatchEmbedding(nn.Module):
    """Non-overlapping patches to tokens: (B, 3, H, W) -> (B, d_model, H/p, W/p)."""

    def __init__(self, config: MambaSTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.d_model, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image.to(self.proj.weight.dtype))


def scan_sequences(grid: torch.Tensor) -> torch.Tensor:
    """The four scan orders of a (B, C, h, w) grid, stacked as (B, 4, C, L).

    Order as in the reference: row-major, column-major, row-major reversed, column-major reversed.
    """
    batch, channels, height, width = grid.shape
    rows = grid.reshape(batch, channels, height * width)
    columns = grid.transpose(2, 3).reshape(batch, channels, height * width)
    forward = torch.stack([rows, columns], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def merge_sequences(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Undo :func:`scan_sequences` on (B, 4, C, L) and sum the four directions: (B, C, L)."""
    batch, _, channels, length = y.shape
    reversed_back = y[:, 2:4].flip(-1)

    def columns_to_rows(sequence: torch.Tensor) -> torch.Tensor:
        return sequence.reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)

    # Summed in the reference's order; float addition is not associative.
    return y[:, 0] + reversed_back[:, 0] + columns_to_rows(y[:, 1]) + columns_to_rows(reversed_back[:, 1])


def scan_orders(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K=4, h*w) int64: the row-major index of the token each scan direction visits at each
    step: row-major, column-major, then both reversed (the reference's four orders)."""
    row_major = torch.arange(height * width, device=device)
    column_major = row_major.view(height, width).t().reshape(-1)
    return torch.stack([row_major, column_major, row_major.flip(0), column_major.flip(0)])


def _in_scan_order(projection: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """(B, L, K*c) row-major projections, direction k's in columns k*c..(k+1)*c-1 ->
    (B, K, L, c), each direction's tokens in its scan order."""
    batch, length, _ = projection.shape
    directions = orders.shape[0]
    per_direction = projection.view(batch, length, directions, -1)
    return torch.stack([per_direction[:, orders[k], k] for k in range(directions)], dim=1)


class SS2D(nn.Module):
    """The 2-D selective scan module of a VSS block.

    Self blocks scan their own tokens. Cross blocks (the Mamba-ST Decoder, MSTD) take delta, B
    and the scan input from the style and C from the content; the depthwise conv is shared by
    both streams.
    """

    def __init__(self, config: MambaSTConfig, cross: bool):
        super().__init__()
        self.cross = cross
        self.d_inner = config.d_inner
        self.d_state = config.d_state
        self.dt_rank = config.dt_rank
        directions = config.directions
        self.in_proj = nn.Linear(config.d_model, 2 * config.d_inner, bias=False)
        self.conv2d = nn.Conv2d(config.d_inner, config.d_inner, kernel_size=config.conv_kernel,
                                padding=(config.conv_kernel - 1) // 2, groups=config.d_inner, bias=True)
        if cross:
            self.in_style_proj = nn.Linear(config.d_model, config.d_inner, bias=False)
            self.style_proj_weight = nn.Parameter(
                torch.empty(directions, config.dt_rank + config.d_state, config.d_inner))
            self.x_proj_weight = nn.Parameter(torch.empty(directions, config.d_state, config.d_inner))
        else:
            self.x_proj_weight = nn.Parameter(
                torch.empty(directions, config.dt_rank + 2 * config.d_state, config.d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(directions, config.d_inner, config.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(directions, config.d_inner))
        self.A_logs = nn.Parameter(torch.empty(directions * config.d_inner, config.d_state))
        self.Ds = nn.Parameter(torch.empty(directions * config.d_inner))
        self.out_norm = nn.LayerNorm(config.d_inner)
        self.out_proj = nn.Linear(config.d_inner, config.d_model, bias=False)
        self.scan_backend: str | None = None

    def _local_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w, d_inner) -> SiLU(depthwise conv) as (B, d_inner, h, w)."""
        return F.silu(self.conv2d(tokens.permute(0, 3, 1, 2).contiguous()))

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None,
                workspace: Workspace | None = None) -> torch.Tensor:
        """x: (B, h, w, d_model) normalised tokens; style: (B, h, w, d_model) for cross blocks.

        ``workspace``: where the ``in_proj`` results may go (the caller's, reused block after block)."""
        def inner(tokens: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
            out = workspace.take(name, (*tokens.shape[:-1], weight.shape[0]), tokens) if workspace else None
            return grid_linear(tokens, weight, out=out)

        # in_proj as two products, so that x and the gate are each contiguous: the depthwise conv
        # then needs no copy of x, and the gating multiply reads the gate densely.
        x_weight, gate_weight = self.in_proj.weight.chunk(2, dim=0)
        x, gate = inner(x, x_weight, "x"), inner(x, gate_weight, "gate")
        style_inner = inner(style, self.in_style_proj.weight, "style") if self.cross else None
        backend = self._token_major_backend(x, style_inner)
        if backend is not None:
            y = self._scan_token_major(x, style_inner, backend)
        else:
            y = self._scan_stacked(x, style_inner)
        if _reusable():  # the in_proj output and the norm's output are temporaries: reuse them
            normed = fused.norm_times_silu_(y, gate, self.out_norm)
            if normed is None:
                normed = self.out_norm(y.to(gate.dtype)).mul_(F.silu(gate, inplace=True))
            # The scan output is spent once normalised: a large projection goes into its memory
            # (fresh pages cost more than the matrix product's lag behind oneDNN's 1x1 convolution).
            shape = (*normed.shape[:-1], self.out_proj.out_features)
            large = Workspace.worth_reusing(shape, normed.element_size())
            spent = _spare_memory(y, shape, normed.dtype) if large else None
            return grid_linear(normed, self.out_proj.weight, out=spent)
        return grid_linear(self.out_norm(y.to(gate.dtype)) * F.silu(gate), self.out_proj.weight)

    def _token_major_backend(self, x: torch.Tensor, style_inner: torch.Tensor | None) -> str | None:
        """The backend of the direction-fused scan ("chunked", "numba" or "triton"), or None when the
        scan runs on stacked directions instead (the reference and mamba_ssm backends, and autograd)."""
        needs_grad = records_gradients(x, style_inner, *self.parameters())
        backend = runnable_backend(resolve_backend(self.scan_backend, x.device), x.device, needs_grad)
        if needs_grad or backend not in ("chunked", "numba", "triton"):
            return None
        return backend

    def _scan_stacked(self, x: torch.Tensor, style_inner: torch.Tensor | None) -> torch.Tensor:
        """The four directions stacked as (B, K*d_inner, L) for any scan backend; (B, h, w, d_inner) out."""
        batch, height, width, _ = x.shape
        length = height * width
        content_seq = scan_sequences(self._local_features(x))  # (B, K, d_inner, L)
        content_proj = torch.einsum("bkdl,kcd->bkcl", content_seq, self.x_proj_weight)
        if self.cross:
            scan_input = scan_sequences(self._local_features(style_inner))
            style_proj = torch.einsum("bkdl,kcd->bkcl", scan_input, self.style_proj_weight)
            dt_low, B = torch.split(style_proj, [self.dt_rank, self.d_state], dim=2)
            C = content_proj
        else:
            scan_input = content_seq
            dt_low, B, C = torch.split(content_proj, [self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrl,kdr->bkdl", dt_low, self.dt_projs_weight)
        y = selective_scan(
            scan_input.reshape(batch, -1, length), delta.reshape(batch, -1, length),
            -torch.exp(self.A_logs.float()), B.float(), C.float(), self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
            backend=self.scan_backend,
        ).view(batch, -1, self.d_inner, length)
        return merge_sequences(y, height, width).transpose(1, 2).reshape(batch, height, width, self.d_inner)

    def _row_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w, d_inner) -> SiLU(depthwise conv) in row-major order, (B, L, d_inner).

        The convolution runs channels-last, so its output already is the row-major sequence
        (one Numba pass where it applies: :func:`mambast.kernels.fused.depthwise_silu`).
        """
        batch, height, width, channels = tokens.shape
        local = fused.depthwise_silu(tokens, self.conv2d)
        if local is not None:
            return local.view(batch, height * width, channels)
        grid = tokens.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        local = F.silu(self.conv2d(grid), inplace=_reusable()).permute(0, 2, 3, 1)
        return local.reshape(batch, height * width, channels)

    def _token_sequences(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w, d_inner) -> SiLU(depthwise conv) in row-major and column-major order, each (B, L, d_inner)."""
        batch, height, width, channels = tokens.shape
        rows = self._row_sequence(tokens)
        columns = rows.view(batch, height, width, channels).transpose(1, 2).reshape(batch, height * width, channels)
        return rows, columns

    def _project(self, rows: torch.Tensor, columns: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
        """Per-direction projections (K, c, d_inner) of the sequences: K tensors (B, L, c), token order.

        Rows serve directions 0 and 2 and columns 1 and 3: a reversed direction reads the same
        tokens backwards, and a projection of flipped tokens is the flipped projection, so each
        sequence is projected once, by its two directions' weights side by side.
        """
        width = weight.shape[1]
        by_rows = torch.matmul(rows, weight[0::2].flatten(0, 1).t())
        by_columns = torch.matmul(columns, weight[1::2].flatten(0, 1).t())
        return [by_rows[..., :width], by_columns[..., :width], by_rows[..., width:], by_columns[..., width:]]

    def _scan_token_major(self, x: torch.Tensor, style_inner: torch.Tensor | None, backend: str) -> torch.Tensor:
        """The four directions without stacking or flipping copies (chunked, Numba or Triton scan, inference).

        Same arithmetic as :meth:`_scan_stacked` up to float rounding; (B, h, w, d_inner) out.
        """
        batch, height, width, _ = x.shape
        if backend == "numba":
            return self._scan_orders(x, style_inner)
        content_rows, content_columns = self._token_sequences(x)
        cancel_point()
        content_proj = self._project(content_rows, content_columns, self.x_proj_weight)
        cancel_point()
        if self.cross:
            style_rows, style_columns = self._token_sequences(style_inner)
            cancel_point()
            style_proj = self._project(style_rows, style_columns, self.style_proj_weight)
            cancel_point()
            dt_low = [p[..., : self.dt_rank] for p in style_proj]
            B = [p[..., self.dt_rank:] for p in style_proj]
            C = content_proj
            rows, columns = style_rows, style_columns
        else:
            dt_low = [p[..., : self.dt_rank] for p in content_proj]
            B = [p[..., self.dt_rank: self.dt_rank + self.d_state] for p in content_proj]
            C = [p[..., self.dt_rank + self.d_state:] for p in content_proj]
            rows, columns = content_rows, content_columns
        # delta in scan order: the reversed directions' low-rank inputs are flipped, not delta.
        low_scan = torch.stack([low.flip(1) if reverse else low for low, reverse in zip(dt_low, _DIRECTION_REVERSED)],
                               dim=1)  # (B, K, L, dt_rank)
        common = dict(A=-torch.exp(self.A_logs.float()), B=B, C=C, D=self.Ds.float(),
                      delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
                      reverse=_DIRECTION_REVERSED, combine=(0, 1, 0, 1))
        if backend == "triton":
            from ..kernels.scan.triton_scan import selective_scan_triton_directions

            delta = torch.matmul(low_scan, self.dt_projs_weight.transpose(1, 2))  # (B, K, L, d_inner)
            rows_sum, columns_sum = selective_scan_triton_directions([rows, columns, rows, columns], delta, **common)
        else:  # delta projected chunk by chunk inside the scan: never built whole
            rows_sum, columns_sum = selective_scan_chunked_directions(
                [rows, columns, rows, columns], low_scan, delta_projection=self.dt_projs_weight, **common)
        # Each sequence's two directions are summed in the scan (exactly as merge_sequences adds
        # them); the column-major sum is brought back to row-major order here. merge_sequences adds
        # the two column-major directions one at a time instead: a rounding-level difference.
        return rows_sum.view(batch, height, width, self.d_inner).add_(
            columns_sum.view(batch, width, height, self.d_inner).transpose(1, 2))

    def _scan_orders(self, x: torch.Tensor, style_inner: torch.Tensor | None) -> torch.Tensor:
        """The four directions read from the row-major sequences in their scan orders (Numba scan).

        No column-major copy: a projection of reordered tokens is the reordered projection, so
        every direction's projection comes from the rows in one product and only those narrow
        (dt_rank + 2 d_state wide) results are put in scan order; the kernel reads the tokens
        and adds each direction's output at its row-major place. (B, h, w, d_inner) out.
        """
        batch, height, width, _ = x.shape
        orders = scan_orders(height, width, x.device)  # (K, L)
        content = self._row_sequence(x)
        cancel_point()
        content_proj = _in_scan_order(torch.matmul(content, self.x_proj_weight.flatten(0, 1).t()), orders)
        cancel_point()
        if self.cross:
            sequence = self._row_sequence(style_inner)
            cancel_point()
            style_proj = _in_scan_order(torch.matmul(sequence, self.style_proj_weight.flatten(0, 1).t()), orders)
            cancel_point()
            dt_low, B = style_proj.split([self.dt_rank, self.d_state], dim=-1)
            C = content_proj
        else:
            sequence = content
            dt_low, B, C = content_proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # x is spent (its convolution is ``content``): the scan writes its sum into x's memory
        y = selective_scan_numba_orders(
            sequence, orders, dt_low, A=-torch.exp(self.A_logs.float()), B=B, C=C, D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
            delta_projection=self.dt_projs_weight,
            out=_spare_memory(x, (batch, height * width, self.d_inner), torch.float32))
        return y.view(batch, height, width, self.d_inner)


# The reference trains its cross (MSTD) blocks with DropPath(0.1) on the SS2D branch and its
# self blocks with none.
CROSS_DROP_PATH = 0.1


def drop_path(branch: torch.Tensor, probability: float) -> torch.Tensor:
    """Stochastic depth (timm's ``DropPath``): drop ``branch`` (B, ...) for whole samples.

    Each sample's branch is kept with probability ``1 - probability`` and then scaled by its
    inverse, so the expectation is unchanged. The draw is a Bernoulli on the branch's device
    from the global generator, as in timm.
    """
    if probability <= 0.0:
        return branch
    keep = 1.0 - probability
    mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return branch * mask


class VSSBlock(nn.Module):
    """``norm(x * skip_scale + drop_path(SS2D(ln_1(x), style)))`` on (B, L, d_model) tokens of an h x w grid.

    In cross blocks the style tokens skip ``ln_1`` (as in the reference) and are reordered by
    ``permutation`` first, when one is given. ``drop_path`` (a probability: 0.1 in cross blocks,
    0 in self blocks, as the reference trains them) acts only in training mode; in eval mode the
    branch passes untouched.
    """

    def __init__(self, config: MambaSTConfig, cross: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.self_attention = SS2D(config, cross)
        self.skip_scale = nn.Parameter(torch.ones(config.d_model))
        self.norm = nn.LayerNorm(config.d_model)
        self.drop_path = CROSS_DROP_PATH if cross else 0.0

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int], style: torch.Tensor | None = None,
                permutation: torch.Tensor | None = None, workspace: Workspace | None = None,
                residual: bool = False) -> torch.Tensor:
        """``residual``: return ``block(tokens) + tokens`` (the stacks' skip connection), added in
        the same pass as the norm where that is fused."""
        batch, length, channels = tokens.shape
        height, width = grid
        if style is not None:
            if permutation is not None:
                style = style[:, permutation]
            style = style.reshape(batch, height, width, channels)
        mixed = self.self_attention(self.ln_1(tokens).reshape(batch, height, width, channels), style, workspace)
        mixed = mixed.reshape(batch, length, channels)
        if self.training:
            mixed = drop_path(mixed, self.drop_path)
        cancel_point()
        if _reusable():
            out = fused.skip_norm(mixed, tokens, self.skip_scale, self.norm, residual)
            if out is not None:
                return out
            out = self.norm(mixed.addcmul_(tokens, self.skip_scale))
        else:
            out = self.norm(tokens * self.skip_scale + mixed)
        return _add_residual(out, tokens) if residual else out


class Encoder(nn.Module):
    """A stack of self VSS blocks with a residual around each: ``x = block(x) + x``."""

    def __init__(self, config: MambaSTConfig, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(VSSBlock(config) for _ in range(layers))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        workspace = Workspace()
        for layer in self.layers:
            tick()
            tokens = layer(tokens, grid, workspace=workspace, residual=True)
        return tokens


class MSTDecoder(nn.Module):
    """The Mamba-ST Decoder: cross VSS blocks fusing content and style, then a LayerNorm.

    Every layer reads the same (unshuffled) style encoding, reordered by its own permutation.
    """

    def __init__(self, config: MambaSTConfig, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(VSSBlock(config, cross=True) for _ in range(layers))
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, content: torch.Tensor, style: torch.Tensor, grid: tuple[int, int],
                permutations: list[torch.Tensor | None]) -> torch.Tensor:
        tokens = content
        workspace = Workspace()
        for layer, permutation in zip(self.layers, permutations):
            tick()
            tokens = layer(tokens, grid, style, permutation, workspace, residual=True)
        return self.norm(tokens)


class MambaBody(nn.Module):
    """The token part of Mamba-ST: content and style encoders and the MSTD (official ``mamba``)."""

    def __init__(self, config: MambaSTConfig):
        super().__init__()
        self.encoder_c = Encoder(config, config.encoder_layers)
        self.encoder_s = Encoder(config, config.encoder_layers)
        self.decoder = MSTDecoder(config, config.decoder_layers)


# Layer plan of the official CNN decoder (an nn.Sequential; its indices are the checkpoint keys):
# a 2x nearest upsampling follows convolutions 0, 4 and 6, a ReLU follows all but the last.
_UPSAMPLE_AFTER = (0, 4, 6)


def build_cnn_decoder(config: MambaSTConfig) -> nn.Sequential:
    """The CNN decoder (B, d_model, h, w) -> (B, 3, 8h, 8w), unclamped."""
    layers: list[nn.Module] = []
    channels = config.decoder_channels
    convolutions = len(channels) - 1
    for index in range(convolutions):
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels[index], channels[index + 1], 3)]
        if index < convolutions - 1:
            layers.append(nn.ReLU(inplace=True))
        if index in _UPSAMPLE_AFTER:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    return nn.Sequential(*layers)
