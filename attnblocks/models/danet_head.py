"""DANet's segmentation head: :class:`~attnblocks.DualAttention` plus three classifiers.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..functional._backends import PositionBackend
from ..functional.channel import ChannelMode
from ..layers.conv_norm_act import LayerFactory
from ..layers.dual_attention import DualAttention


class DANetOutput(NamedTuple):
    """Logits of DANet, in the authors' order ``(sasc, sa, sc)``."""

    out: Tensor  #: from the fused features: the prediction
    pam: Tensor  #: from the position-attention branch (auxiliary)
    cam: Tensor  #: from the channel-attention branch (auxiliary)


def _classifier(
    in_channels: int,
    num_classes: int,
    dropout: float,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> nn.Sequential:
    """Channel dropout then a 1x1 convolution to class logits."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1, device=device, dtype=dtype)
    return nn.Sequential(OrderedDict(drop=nn.Dropout2d(dropout), conv=conv))


class DANetHead(nn.Module):
    """DualAttention with a dropout + 1x1 classifier on the fused and on each branch.

    Shapes: ``(B, in_channels, H, W)`` -> :class:`DANetOutput` of three
    ``(B, num_classes, H, W)`` logit maps at the feature resolution.

    Args:
        in_channels: channels of the backbone features.
        num_classes: number of classes.
        inter_channels: channels inside the attention branches (default ``in_channels // 4``).
        dropout: channel dropout before each classifier (0.1 in the authors' code).
        reduction: PAM's query/key channels are ``inter_channels // reduction``.
        backend: PAM's attention backend.
        chunk_size: PAM's query chunk for memory-efficient backends.
        cam_mode: ``"original"`` or ``"paper"`` (see :class:`attnblocks.CAM`).
        gamma_init: initial ``gamma`` of both attention blocks.
        norm_layer: normalisation layer of the head convolutions.
        act_layer: activation of the head convolutions.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        inter_channels: int | None = None,
        dropout: float = 0.1,
        reduction: int = 8,
        backend: PositionBackend = "auto",
        chunk_size: int | None = None,
        cam_mode: ChannelMode = "original",
        gamma_init: float = 0.0,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.attention = DualAttention(
            in_channels, inter_channels, reduction, backend=backend, chunk_size=chunk_size,
            cam_mode=cam_mode, gamma_init=gamma_init, norm_layer=norm_layer,
            act_layer=act_layer, **dd,
        )  # fmt: skip
        inter = self.attention.inter_channels
        self.fused_classifier = _classifier(inter, num_classes, dropout, **dd)
        self.pam_classifier = _classifier(inter, num_classes, dropout, **dd)
        self.cam_classifier = _classifier(inter, num_classes, dropout, **dd)

    def forward(self, x: Tensor) -> DANetOutput:
        """Class logits of each branch for features ``x`` of shape ``(B, in_channels, H, W)``."""
        features = self.attention(x)
        return DANetOutput(
            out=self.fused_classifier(features.fused),
            pam=self.pam_classifier(features.pam),
            cam=self.cam_classifier(features.cam),
        )
