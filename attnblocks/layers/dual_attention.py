"""DualAttention: the attention part of DANet's head, PAM and CAM side by side.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._validation import check_feature_map, default_inter_channels
from ..functional._backends import PositionBackend
from ..functional.channel import ChannelMode
from .cam import CAM
from .conv_norm_act import ConvNormAct, LayerFactory
from .pam import PAM


class DualAttentionOutput(NamedTuple):
    """Features of :class:`DualAttention`, each ``(B, inter_channels, H, W)``."""

    fused: Tensor  #: sum of the two branches
    pam: Tensor  #: position-attention branch
    cam: Tensor  #: channel-attention branch


class DualAttention(nn.Module):
    """Both DANet attention branches with the head convolutions around them.

    ::

        x -> pam_in (3x3 conv-norm-act) -> PAM -> pam_out (3x3 conv-norm-act) -> pam
        x -> cam_in (3x3 conv-norm-act) -> CAM -> cam_out (3x3 conv-norm-act) -> cam
        fused = pam + cam

    This is the authors' ``DANetHead`` without its dropout and classifiers
    (``conv5a/sa/conv51`` and ``conv5c/sc/conv52``), so a segmentation head can put a
    classifier on each output (:class:`attnblocks.models.DANetHead` does).

    Shapes: ``(B, in_channels, H, W)`` -> three ``(B, inter_channels, H, W)`` maps.

    Args:
        in_channels: channels of the input feature map.
        inter_channels: channels inside both branches (default ``in_channels // 4``).
        reduction: PAM's query/key channels are ``inter_channels // reduction``.
        backend: PAM's attention backend (see :class:`attnblocks.PAM`). CAM's small
            ``C x C`` attention always runs with ``"bmm"``.
        chunk_size: PAM's query chunk for memory-efficient backends.
        cam_mode: ``"original"`` (authors' code) or ``"paper"``; see :class:`attnblocks.CAM`.
        gamma_init: initial ``gamma`` of both attention blocks.
        norm_layer: normalisation after each convolution, called as
            ``norm_layer(channels, device=..., dtype=...)``.
        act_layer: activation after each normalisation, called with no arguments.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
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
        self.inter_channels = inter_channels = default_inter_channels(in_channels, inter_channels)
        self.in_channels = in_channels
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.pam_in = ConvNormAct(in_channels, inter_channels, 3, **layers)
        self.cam_in = ConvNormAct(in_channels, inter_channels, 3, **layers)
        self.pam = PAM(
            inter_channels, reduction, backend=backend, chunk_size=chunk_size,
            gamma_init=gamma_init, **dd,
        )  # fmt: skip
        self.cam = CAM(inter_channels, gamma_init=gamma_init, mode=cam_mode, **dd)
        self.pam_out = ConvNormAct(inter_channels, inter_channels, 3, **layers)
        self.cam_out = ConvNormAct(inter_channels, inter_channels, 3, **layers)

    def forward(self, x: Tensor) -> DualAttentionOutput:
        """Run both branches on ``x`` of shape ``(B, in_channels, H, W)``."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        pam = self.pam_out(self.pam(self.pam_in(x)))
        cam = self.cam_out(self.cam(self.cam_in(x)))
        return DualAttentionOutput(fused=pam + cam, pam=pam, cam=cam)
