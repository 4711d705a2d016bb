"""CCNet: a dilated FCN with recurrent criss-cross attention in its head.

Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019,
https://arxiv.org/abs/1811.11721
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..compat import MMSEG_CCNET
from ..layers import CrissCrossAttention
from ..layers.conv_norm_act import LayerFactory
from ..pretrained import PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .fcn_attention_head import FCNAttentionHead


class CCNetHead(FCNAttentionHead):
    """CCNet's head: criss-cross attention between two 3x3 convs, fused with its input.

    ::

        x -> attention_in (3x3 conv-norm-act) -> attention (one criss-cross block, applied
          `recurrence` times) -> attention_out (3x3 conv-norm-act) -> [x, that] (concatenated)
          -> fuse (3x3 conv-norm-act) -> classifier (dropout, 1x1 conv) -> logits

    The layout of mmsegmentation's ``CCHead`` (``convs.0``, ``cca``, ``convs.1``,
    ``conv_cat``, ``conv_seg``) and of the official CCNet's RCCA module: a
    :class:`~attnblocks.models.FCNAttentionHead` whose block is
    :class:`~attnblocks.CrissCrossAttention`.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, num_classes, H, W)`` logits.

    Args:
        in_channels: channels of the backbone features.
        num_classes: number of classes.
        inter_channels: channels around the attention (default ``in_channels // 4``:
            512 on a ResNet-50/101, as CCNet).
        recurrence: how many times the criss-cross block is applied (CCNet: 2).
        reduction: the block's query/key channels are ``inter_channels // reduction``.
        dropout: channel dropout before the classifier (0.1 in CCNet and mmseg).
        gamma_init: initial ``gamma`` of the criss-cross block.
        norm_layer: normalisation of the head convolutions.
        act_layer: activation of the head convolutions.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        inter_channels: int | None = None,
        recurrence: int = 2,
        reduction: int = 8,
        dropout: float = 0.1,
        gamma_init: float = 0.0,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        block = partial(
            CrissCrossAttention, reduction=reduction, gamma_init=gamma_init, recurrence=recurrence
        )
        super().__init__(
            in_channels, num_classes, block, inter_channels, dropout, norm_layer, act_layer,
            device=device, dtype=dtype,
        )  # fmt: skip


class CCNet(SegmentationModel, paper_url="https://arxiv.org/abs/1811.11721"):
    """CCNet segmentation model: timm backbone, :class:`CCNetHead`, bilinear upsampling.

    The backbone's last feature map (stride ``output_stride``) goes through the
    criss-cross head; its logits are upsampled to the input size. CCNet has one
    prediction, so :meth:`forward` returns a plain tensor (DANet, with three, returns a
    :class:`~attnblocks.models.DANetOutput`): train it with ``F.cross_entropy(model(x),
    target)``. mmseg adds an auxiliary FCN head on ``layer3`` for training only; it is
    not part of this model (add one in your training code if you want its loss).

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's released CCNet checkpoints), ``save_pretrained`` and
    ``from_pretrained``.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50``, ``resnet101c`` with mmseg's deep stem...).
        num_classes: number of classes.
        output_stride: 8 (the paper) or 16 (4x fewer attention positions).
        recurrence: how many times the criss-cross block is applied (2: CCNet's RCCA,
            enough for every pixel to reach every other).
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling.
        head_dropout: channel dropout before the classifier (0.1 in CCNet).
        norm_layer: normalisation of the head convolutions.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`); None:
            ImageNet statistics and generic class names.
    """

    mmseg_key_map = MMSEG_CCNET
    mmseg_model = "ccnet"
    mmseg_head_types = ("CCHead",)
    mmseg_head_keys = ("decode_head.cca.",)

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        recurrence: int = 2,
        multi_grid: Sequence[int] | None = None,
        pretrained_backbone: bool = False,
        backbone_weights: str | Path | None = None,
        align_corners: bool = False,
        head_dropout: float = 0.1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pretrained_config: PretrainedConfigLike | None = None,
    ) -> None:
        super().__init__(
            backbone, num_classes, output_stride, multi_grid, pretrained_backbone,
            backbone_weights, align_corners, backbone_kwargs, pretrained_config,
        )  # fmt: skip
        self.head = CCNetHead(
            self.encoder_channels, num_classes, recurrence=recurrence, dropout=head_dropout,
            norm_layer=norm_layer,
        )  # fmt: skip

    def forward(self, images: Tensor) -> Tensor:
        """Class logits at the size of ``images`` ``(B, in_chans, H, W)``."""
        return super().forward(images)
