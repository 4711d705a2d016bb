"""Position attention through torch's fused ``scaled_dot_product_attention`` kernels.

PAM's query/key width (``C / 8``) differs from its value width (``C``). The CUDA
memory-efficient kernel accepts that; the CPU flash kernel needs equal widths.
Zero-padding the narrower side is exact: zero features add nothing to ``q . k``,
and zero value columns come out as zero columns that are cut off again.

The MATH kernel, which builds the full ``N x N`` matrix, is never allowed: when
no fused kernel accepts the inputs the caller falls back to the chunked backend.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ._precision import autocast_disabled

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _FUSED_KERNELS = [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    ]
except ImportError:  # older torch: no way to forbid MATH, so this backend is unavailable
    sdpa_kernel = None

# What torch raises when no allowed kernel accepts the inputs or none is allowed on the device.
_NO_KERNEL_MESSAGES = ("No available kernel", "No viable backend")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pad_last(tensor: Tensor, width: int) -> Tensor:
    """``tensor`` with zero features appended to reach ``width`` in its last dimension,
    contiguous (fused kernels need unit stride in the last dimension)."""
    extra = width - tensor.shape[-1]
    return F.pad(tensor, (0, extra)) if extra > 0 else tensor.contiguous()


def sdpa_position_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor | None:
    """softmax(q k^T) v by a fused SDPA kernel, or None when no fused kernel accepts the inputs.

    Args:
        query: ``(B, N_q, D)`` in the compute dtype.
        key: ``(B, N_k, D)`` in the compute dtype.
        value: ``(B, N_k, D_v)``, cast to the compute dtype here.

    Returns:
        ``(B, N_q, D_v)`` in the compute dtype, or None.
    """
    if sdpa_kernel is None or query.dtype not in _FUSED_DTYPES:
        return None
    value = value.to(query.dtype)
    value_width = value.shape[-1]
    if query.device.type == "cuda":
        # Memory-efficient kernel: any q/k and v widths, each a multiple of 8 for aligned loads.
        qk_width = -(-query.shape[-1] // 8) * 8
        v_width = -(-value_width // 8) * 8
    else:
        # CPU flash kernel: q, k and v all of one width.
        qk_width = v_width = max(query.shape[-1], value_width)
    q = _pad_last(query, qk_width)[:, None]  # (B, 1, N_q, width): one head
    k = _pad_last(key, qk_width)[:, None]
    v = _pad_last(value, v_width)[:, None]
    try:
        with (
            sdpa_kernel(_FUSED_KERNELS),
            autocast_disabled(query.device),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # torch warns per kernel it rejects; we report instead
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # PAM has no 1/sqrt(d)
    except RuntimeError as error:
        if not any(reason in str(error) for reason in _NO_KERNEL_MESSAGES):
            raise  # a real failure (out of memory, bad input) is not a reason to fall back
        return None
    return out[:, 0, :, :value_width]
