"""Channel attention, the core of DANet's CAM.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983

Every channel map becomes a weighted sum of all channel maps, with weights from
the ``C x C`` similarity ``E = X X^T`` of the flattened maps. Two modes:

- ``"original"`` (default): ``softmax(rowmax(E) - E)``, what the authors' code
  computes. It equals ``softmax(-E)``: the least similar channels weigh most. The
  authors report that it helped convergence.
- ``"paper"``: ``softmax(E)``, as equation (3) of the paper writes it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._validation import check_choice, check_float_tensor
from ._backends import CHANNEL_BACKENDS, ChannelBackend, check_backend
from ._precision import attention_dtype, autocast_disabled

ChannelMode = Literal["original", "paper"]
#: Modes of :func:`channel_attention`.
CHANNEL_MODES: tuple[str, ...] = ("original", "paper")


def _check_channel_input(x: Tensor, mode: str) -> None:
    check_float_tensor("x", x, ("batch", "channels", "positions"))
    check_choice("channel attention mode", mode, CHANNEL_MODES)


def channel_attention_weights(x: Tensor, mode: ChannelMode = "original") -> Tensor:
    """The ``C x C`` channel attention matrix, normalised over the attended channels.

    Args:
        x: ``(B, C, N)`` channel maps flattened over positions.
        mode: ``"original"`` for the authors' ``softmax(rowmax(E) - E)``, ``"paper"``
            for ``softmax(E)``.

    Returns:
        ``(B, C, C)`` weights whose rows sum to 1, in float32 for float16/bfloat16
        inputs (``E`` sums over all N positions and overflows float16), in the input
        dtype otherwise.
    """
    _check_channel_input(x, mode)
    with autocast_disabled(x.device):
        x = x.to(attention_dtype(x.dtype))
        energy = torch.bmm(x, x.transpose(1, 2))  # (B, C, C): similarity of channel maps
        if mode == "original":
            # The authors' rowmax(E) - E: softmax ignores a per-row shift, so this is softmax(-E).
            energy = energy.amax(dim=-1, keepdim=True) - energy
        return energy.softmax(dim=-1)  # over the attended channels: rows sum to 1


def channel_attention(
    x: Tensor, *, mode: ChannelMode = "original", backend: ChannelBackend = "auto"
) -> Tensor:
    """Channel attention ``weights @ x`` with the ``C x C`` weights of ``mode``.

    Args:
        x: ``(B, C, N)`` channel maps flattened over positions.
        mode: ``"original"`` (the authors' code, default) or ``"paper"``; see the
            module docstring.
        backend: one of :data:`CHANNEL_BACKENDS`. The ``C x C`` matrix is small, so
            ``"bmm"`` is the only concrete backend and ``"auto"`` selects it.

    Returns:
        ``(B, C, N)`` attended channel maps in the input's dtype, computed in at
        least float32 (also under ``torch.autocast``).
    """
    check_backend(backend, CHANNEL_BACKENDS)
    weights = channel_attention_weights(x, mode)  # (B, C, C)
    with autocast_disabled(x.device):
        attended = torch.bmm(weights, x.to(weights.dtype))  # (B, C, N)
    return attended.to(x.dtype)
