"""Position attention, the core of DANet's PAM.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983

Every query position receives a weighted sum of the values at all key positions,
with weights ``softmax(query @ key^T)`` over the key positions. As in the authors'
code there is NO ``1/sqrt(d)`` scaling of the energies.

Tensors are token-major: ``(batch, positions, features)``; PAM flattens its
``(B, C, H, W)`` maps to ``(B, H*W, C)`` before calling in here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_float_tensor
from ._backends import POSITION_BACKENDS, PositionBackend, check_backend, check_chunk_size
from ._precision import attention_dtype, autocast_disabled

_TOKEN_AXES = ("batch", "positions", "features")


def _check_query_key(query: Tensor, key: Tensor) -> None:
    check_float_tensor("query", query, _TOKEN_AXES)
    check_float_tensor("key", key, _TOKEN_AXES)
    if query.shape[0] != key.shape[0] or query.shape[2] != key.shape[2]:
        raise ValueError(
            "query and key must share batch size and feature size, got query "
            f"{tuple(query.shape)} and key {tuple(key.shape)}"
        )


def position_attention_weights(query: Tensor, key: Tensor) -> Tensor:
    """The attention matrix ``softmax(query @ key^T)``, normalised over key positions.

    This is the full ``N_q x N_k`` matrix (what the authors' code builds); use it
    for small maps and for inspection, not at full image resolution.

    Args:
        query: ``(B, N_q, D)`` query features.
        key: ``(B, N_k, D)`` key features.

    Returns:
        ``(B, N_q, N_k)`` weights whose rows sum to 1, in float32 for float16/bfloat16
        inputs (the unscaled energies overflow float16), in the input dtype otherwise.
    """
    _check_query_key(query, key)
    dtype = attention_dtype(torch.promote_types(query.dtype, key.dtype))
    with autocast_disabled(query.device):
        energy = torch.bmm(query.to(dtype), key.to(dtype).transpose(1, 2))  # (B, N_q, N_k)
        return energy.softmax(dim=-1)  # over key positions: each query's row sums to 1


def _position_attention_bmm(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    weights = position_attention_weights(query, key)  # (B, N_q, N_k)
    # The value path runs in the value's dtype: probabilities in [0, 1] are safe in half precision.
    return torch.bmm(weights.to(value.dtype), value)  # (B, N_q, D_v)


def position_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    backend: PositionBackend = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """``softmax(query @ key^T) @ value``, without scaling, by the chosen backend.

    Args:
        query: ``(B, N_q, D)`` query features.
        key: ``(B, N_k, D)`` key features.
        value: ``(B, N_k, D_v)`` value features; ``D_v`` may differ from ``D``.
        backend: one of :data:`POSITION_BACKENDS`. ``"bmm"`` builds the full
            ``N_q x N_k`` matrix exactly as the authors' code does; ``"auto"`` picks
            a backend for the inputs (currently always ``"bmm"``).
        chunk_size: query positions processed at once by memory-efficient backends;
            None lets the backend choose. Ignored by ``"bmm"``.

    Returns:
        ``(B, N_q, D_v)`` attended values in the value's dtype. Energies and softmax
        run in at least float32, also under ``torch.autocast``.
    """
    check_backend(backend, POSITION_BACKENDS)
    check_chunk_size(chunk_size)
    _check_query_key(query, key)
    check_float_tensor("value", value, _TOKEN_AXES)
    if value.shape[:2] != key.shape[:2]:
        raise ValueError(
            "value must have the batch size and number of positions of key, got key "
            f"{tuple(key.shape)} and value {tuple(value.shape)}"
        )
    return _position_attention_bmm(query, key, value)
