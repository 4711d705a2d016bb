"""The query/key/value 1x1 convolutions of the attention blocks, and computing them in a
chosen dtype (the precision rule's query/key side)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional._precision import autocast_disabled


def query_key_value_convs(
    channels: int, key_channels: int, **factory: object
) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
    """The 1x1 query and key convolutions to ``key_channels`` and the value one to ``channels``.

    Args:
        channels: the block's input (and value) channels.
        key_channels: the query/key width.
        **factory: ``device`` and ``dtype`` of the parameters.
    """
    return (
        nn.Conv2d(channels, key_channels, kernel_size=1, **factory),
        nn.Conv2d(channels, key_channels, kernel_size=1, **factory),
        nn.Conv2d(channels, channels, kernel_size=1, **factory),
    )


def project_in(conv: nn.Conv2d, x: Tensor, dtype: torch.dtype) -> Tensor:
    """Apply the 1x1 ``conv`` in ``dtype``, whatever autocast and the conv's own dtype say.

    The attention blocks compute queries and keys in at least float32 with it.

    Args:
        conv: a 1x1 convolution.
        x: ``(B, C, H, W)`` input.
        dtype: the dtype of the computation and the result.
    """
    with autocast_disabled(x.device):
        if conv.weight.dtype == dtype:
            return conv(x.to(dtype))  # the module itself, so its hooks run
        # Half-precision weights (model.half()): use them in float32 for the energies.
        bias = None if conv.bias is None else conv.bias.to(dtype)
        return F.conv2d(x.to(dtype), conv.weight.to(dtype), bias)
