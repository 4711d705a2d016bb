"""Convolution, normalisation, activation: the unit DANet's head is built from."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

LayerFactory = Callable[..., nn.Module]


class ConvNormAct(nn.Sequential):
    """``conv -> norm -> act`` with a bias-free 'same'-padded convolution.

    Children are named ``conv``, ``norm`` and ``act``, so state-dict keys read
    ``<name>.conv.weight``, ``<name>.norm.running_mean``...

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size; padding keeps the spatial size.
        norm_layer: called as ``norm_layer(out_channels, device=..., dtype=...)``.
        act_layer: called with no arguments (use ``functools.partial`` for options).
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False, **dd
        )
        super().__init__(
            OrderedDict(conv=conv, norm=norm_layer(out_channels, **dd), act=act_layer())
        )
