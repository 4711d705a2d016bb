"""Position attention through torch's fused ``scaled_dot_product_attention`` kernels.

PAM's query/key width (``C / 8``) differs from its value width (``C``). The CUDA
memory-efficient kernel accepts that; the CPU flash kernel needs equal widths.
Zero-padding the narrower side is exact: zero features add nothing to ``q . k``,
and zero value columns come out as zero columns that are cut off again.

The MATH kernel, which builds the full ``N x N`` matrix, is never allowed: when
no fused kernel accepts the inputs the caller falls back to the chunked backend.

Mixed precision: a fused kernel takes one dtype, and float16/bfloat16 queries and
keys cost PAM several percent of its output. So queries and keys are split into a
rounded part and the rounding's remainder, ``q = q_hi + q_lo`` (both in the low
dtype), and the kernel gets ``q' = [q_hi, q_hi, q_lo]``, ``k' = [k_hi, k_lo, k_hi]``:
its float32 accumulation of ``q' . k'`` is ``q.k`` up to the tiny ``q_lo . k_lo``.
That holds PAM's output to the naive computation's error, but the fused backward rounds
``dQ``/``dK`` to the low dtype and takes its softmax correction from the rounded output,
which misses the precision contract on the query/key gradients (README). So the split
serves calls without gradients (inference); with gradients the kernel runs in float32.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ._backends import needs_grad
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


def _quiet() -> contextlib.AbstractContextManager:
    """Silence torch's warning per kernel it rejects (we report one fallback instead); not
    while compiling, where the fallback cannot happen and warning filters cannot be traced."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else _ignoring_warnings()


@contextlib.contextmanager
def _ignoring_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pad_last(tensor: Tensor, width: int) -> Tensor:
    """``tensor`` with zero features appended to reach ``width`` in its last dimension,
    contiguous (fused kernels need unit stride in the last dimension)."""
    extra = width - tensor.shape[-1]
    return F.pad(tensor, (0, extra)) if extra > 0 else tensor.contiguous()


def _split(tensor: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``tensor`` as ``hi + lo``, both in ``dtype``: ``hi`` rounded, ``lo`` what rounding lost."""
    high = tensor.to(dtype)
    return high, (tensor - high.to(tensor.dtype)).to(dtype)


def split_query_key(query: Tensor, key: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Low-precision ``q'``, ``k'`` of 3x the width whose dot products are ``q . k``
    up to ``q_lo . k_lo`` (see the module docstring).

    Args:
        query: ``(B, N_q, D)`` in float32.
        key: ``(B, N_k, D)`` in float32.
        dtype: float16 or bfloat16.

    Returns:
        ``(B, N_q, 3D)`` and ``(B, N_k, 3D)`` tensors in ``dtype``.
    """
    query_high, query_low = _split(query, dtype)
    key_high, key_low = _split(key, dtype)
    return (
        torch.cat([query_high, query_high, query_low], dim=-1),
        torch.cat([key_high, key_low, key_high], dim=-1),
    )


def _fits(split: tuple[Tensor, Tensor]) -> bool:
    """Whether split queries and keys are finite. bfloat16 has float32's range; float16
    is checked eagerly (a compiled graph cannot branch on data and assumes it fits)."""
    if split[0].dtype == torch.bfloat16 or torch.compiler.is_compiling():
        return True
    return all(bool(part.isfinite().all()) for part in split)


def sdpa_position_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor | None:
    """softmax(q k^T) v by a fused SDPA kernel, or None when no fused kernel accepts the inputs.

    Args:
        query: ``(B, N_q, D)`` in the compute dtype.
        key: ``(B, N_k, D)`` in the compute dtype.
        value: ``(B, N_k, D_v)`` in the value path's dtype: the compute dtype, or
            float16/bfloat16, in which the kernel then runs on split queries and keys.

    Returns:
        ``(B, N_q, D_v)`` in the value's dtype, or None.
    """
    if sdpa_kernel is None or query.dtype not in _FUSED_DTYPES:
        return None
    if value.dtype != query.dtype:
        # Gradients: the fused backward rounds dQ and dK to the low dtype and takes its
        # softmax correction from the rounded output, which misses the precision contract
        # (README); queries or keys beyond float16's range do not split. Float32 kernel then.
        split = None if needs_grad(query, key, value) else split_query_key(query, key, value.dtype)
        if split is not None and _fits(split):
            query, key = split
        else:
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
        with sdpa_kernel(_FUSED_KERNELS), autocast_disabled(query.device), _quiet():
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # PAM has no 1/sqrt(d)
    except RuntimeError as error:
        if not any(reason in str(error) for reason in _NO_KERNEL_MESSAGES):
            raise  # a real failure (out of memory, bad input) is not a reason to fall back
        return None
    return out[:, 0, :, :value_width]
