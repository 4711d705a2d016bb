"""EMANet: a dilated FCN with expectation-maximization attention in its head.

Li et al., "Expectation-Maximization Attention Networks for Semantic Segmentation",
ICCV 2019, https://arxiv.org/abs/1907.13426
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_feature_map, check_positive_int
from ..compat import MMSEG_EMANET, mmseg_decode_head_settings
from ..layers import ConvNormAct, ExpectationMaximizationAttention
from ..layers.conv_norm_act import LayerFactory
from ..pretrained import MMSegCheckpoint, PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .danet_head import _classifier


class EMANetHead(nn.Module):
    """EMANet's head: a 3x3 conv, the EMA unit, a 3x3 conv, fused with the head's input.

    ::

        x -> attention_in (3x3 conv-norm-act to ema_channels) -> attention (EMA unit)
          -> attention_out (3x3 conv-norm-act to channels) -> [x, that] (concatenated)
          -> fuse (3x3 conv-norm-act) -> classifier (dropout, 1x1 conv) -> logits

    The layout of mmsegmentation's ``EMAHead`` with ``concat_input=True`` (every
    release): ``ema_in_conv``, ``ema_mid_conv`` + ``ema_module`` + ``ema_out_conv`` (the
    :class:`~attnblocks.ExpectationMaximizationAttention` unit), ``bottleneck``,
    ``conv_cat``, ``conv_seg``.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    Args:
        in_channels: channels of the backbone features.
        num_classes: number of classes.
        ema_channels: channels of the EMA unit (512 in mmseg).
        channels: channels after the unit and through the fusion (256 in mmseg).
        num_bases: bases of the EMA unit (64).
        num_stages: EM steps per forward (3).
        momentum: of the bases' update in training (0.1).
        dropout: channel dropout before the classifier (0.1).
        norm_layer: normalisation of the head convolutions.
        act_layer: activation of the head convolutions.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        ema_channels: int = 512,
        channels: int = 256,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
        dropout: float = 0.1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.in_channels = check_positive_int("in_channels", in_channels)
        check_positive_int("ema_channels", ema_channels)
        check_positive_int("channels", channels)
        self.attention_in = ConvNormAct(in_channels, ema_channels, 3, **layers)
        self.attention = ExpectationMaximizationAttention(
            ema_channels, num_bases, num_stages, momentum, norm_layer=norm_layer, **dd
        )
        self.attention_out = ConvNormAct(ema_channels, channels, 3, **layers)
        self.fuse = ConvNormAct(in_channels + channels, channels, 3, **layers)
        self.classifier = _classifier(channels, num_classes, dropout, **dd)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for features ``x`` of shape ``(B, in_channels, H, W)``; in training
        mode the EMA unit also moves its bases."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        features = self.attention_out(self.attention(self.attention_in(x)))
        features = self.fuse(torch.cat([x, features], dim=1))  # the input first, as mmseg's
        return self.classifier(features)


class EMANet(SegmentationModel, paper_url="https://arxiv.org/abs/1907.13426"):
    """EMANet segmentation model: timm backbone, :class:`EMANetHead`, bilinear upsampling.

    The backbone's last feature map goes through the EMA head; its logits are
    upsampled to the input size. In training mode every forward also moves the EMA
    bases (a buffer, averaged across the processes of a ``torch.distributed`` group as
    mmseg does). mmseg's auxiliary FCN head (a training loss only) is not part of the
    model.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's 4 released EMANet checkpoints), ``save_pretrained`` and
    ``from_pretrained``.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50c``/``resnet101c`` are mmseg's ResNetV1c).
        num_classes: number of classes.
        output_stride: 8 (mmseg's releases) or 16.
        ema_channels: channels of the EMA unit (512 in mmseg).
        channels: channels after the unit (256 in mmseg).
        num_bases: bases of the EMA unit (64).
        num_stages: EM steps per forward (3).
        momentum: of the bases' update in training (0.1).
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling.
        head_dropout: channel dropout before the classifier (0.1).
        norm_layer: normalisation of the head convolutions.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`).
    """

    mmseg_key_map = MMSEG_EMANET
    mmseg_model = "emanet"
    mmseg_head_types = ("EMAHead",)
    mmseg_head_keys = ("decode_head.ema_module.",)

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        ema_channels: int = 512,
        channels: int = 256,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
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
        self.head = EMANetHead(
            self.encoder_channels, num_classes, ema_channels=ema_channels, channels=channels,
            num_bases=num_bases, num_stages=num_stages, momentum=momentum,
            dropout=head_dropout, norm_layer=norm_layer,
        )  # fmt: skip

    def forward(self, images: Tensor) -> Tensor:
        """Class logits at the size of ``images`` ``(B, in_chans, H, W)``."""
        return super().forward(images)

    @classmethod
    def mmseg_model_options(
        cls,
        state_dict: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        entry: MMSegCheckpoint | None,
    ) -> dict[str, Any]:
        """The scaffold's options plus the unit's widths and number of bases read from the
        weights, and ``num_stages`` and ``momentum`` from the meta config when it has one.

        Args:
            state_dict: the checkpoint's weights, mmseg key names.
            meta: the checkpoint's ``meta``.
            entry: the release the checkpoint was recognised as, or None.
        """
        options = super().mmseg_model_options(state_dict, meta, entry)
        bases = state_dict.get("decode_head.ema_module.bases")
        bottleneck = state_dict.get("decode_head.bottleneck.conv.weight")
        if bases is not None and bases.ndim == 3 and bottleneck is not None:
            options.update(ema_channels=int(bases.shape[1]), num_bases=int(bases.shape[2]),
                           channels=int(bottleneck.shape[0]))  # fmt: skip
        settings = mmseg_decode_head_settings(meta, "EMAHead")
        for name in ("num_stages", "momentum"):
            if name in settings:
                options[name] = settings[name]
        return options
