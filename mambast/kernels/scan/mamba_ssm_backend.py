"""The CUDA kernel of the optional mamba_ssm package; never required."""

from __future__ import annotations

import functools

from .contract import check_scan_shapes


@functools.lru_cache(maxsize=1)
def mamba_ssm_available() -> bool:
    """True when mamba_ssm's selective scan imports (it needs a CUDA build)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # an ImportError, or a broken CUDA extension
        return False
    return True


def selective_scan_mamba_ssm(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's ``selective_scan_fn`` on float32 contiguous inputs."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    check_scan_shapes(u, delta, A, B, C)
    as_float = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    return selective_scan_fn(as_float(u), as_float(delta), as_float(A), as_float(B), as_float(C),
                             as_float(D), z=None, delta_bias=as_float(delta_bias),
                             delta_softplus=delta_softplus, return_last_state=False)
