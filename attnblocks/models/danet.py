"""DANet: a dilated FCN with position and channel attention in its head.

Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019,
https://arxiv.org/abs/1809.02983
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..compat import MMSEG_DANET, load_original_state_dict, read_checkpoint
from ..functional._backends import PositionBackend
from ..functional.channel import ChannelMode
from ..layers.conv_norm_act import LayerFactory
from ..pretrained import PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .danet_head import DANetHead, DANetOutput


class DANet(SegmentationModel, paper_url="https://arxiv.org/abs/1809.02983"):
    """DANet segmentation model: timm backbone, :class:`DANetHead`, bilinear upsampling.

    The backbone's last feature map (stride ``output_stride``) goes through both
    attention branches; the fused features and each branch get a classifier, and the
    three logit maps are upsampled to the input size.

    Shapes: ``(B, in_chans, H, W)`` -> :class:`DANetOutput` of three
    ``(B, num_classes, H, W)`` logit maps, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's released DANet checkpoints), ``save_pretrained`` and
    ``from_pretrained``; :meth:`from_original` loads the authors' checkpoints.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50``, ``resnet101``, ``resnet101s`` with the deep
            stem, ``resnest50d``, ``regnety_016``, ``mobilenetv3_large_100``,
            ``efficientnet_b0``...).
        num_classes: number of classes.
        output_stride: 8 (the paper) or 16 (4x fewer attention positions).
        multi_grid: per-block dilations of the last ResNet stage, e.g. ``(4, 8, 16)``
            as the authors' released DANet-101; None keeps timm's dilation.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling (the authors' code: True).
        attention_backend: PAM's backend (see :class:`attnblocks.PAM`).
        chunk_size: PAM's query chunk for the ``"chunked"`` backend.
        cam_mode: ``"original"`` (authors' code) or ``"paper"``.
        head_dropout: channel dropout before the classifiers (0.1 in the authors' code).
        norm_layer: normalisation of the head convolutions.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`); None:
            ImageNet statistics and generic class names.
    """

    mmseg_key_map = MMSEG_DANET
    mmseg_model = "danet"
    mmseg_head_types = ("DAHead",)
    mmseg_head_keys = ("decode_head.pam.", "decode_head.cam.")

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        multi_grid: Sequence[int] | None = None,
        pretrained_backbone: bool = False,
        backbone_weights: str | Path | None = None,
        align_corners: bool = False,
        attention_backend: PositionBackend = "auto",
        chunk_size: int | None = None,
        cam_mode: ChannelMode = "original",
        head_dropout: float = 0.1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pretrained_config: PretrainedConfigLike | None = None,
    ) -> None:
        super().__init__(
            backbone, num_classes, output_stride, multi_grid, pretrained_backbone,
            backbone_weights, align_corners, backbone_kwargs, pretrained_config,
        )  # fmt: skip
        self.head = DANetHead(
            self.encoder_channels, num_classes, dropout=head_dropout,
            backend=attention_backend, chunk_size=chunk_size, cam_mode=cam_mode,
            norm_layer=norm_layer,
        )  # fmt: skip

    def forward(self, images: Tensor) -> DANetOutput:
        """Class logits ``(out, pam, cam)`` at the size of ``images`` ``(B, in_chans, H, W)``."""
        return super().forward(images)

    @classmethod
    def from_original(
        cls,
        path_or_state_dict: str | Path | Mapping[str, Any],
        backbone: str = "resnet101",
        num_classes: int = 19,
        multi_grid: Sequence[int] | None = (4, 8, 16),
        **kwargs: Any,
    ) -> DANet:
        """Build the DANet of an authors' checkpoint (junfu1115/DANet) and load it.

        Their model: dilated ResNet at output stride 8 (``resnet50``/``resnet101`` for the
        plain 7x7 stem of the released model, ``resnet50s``/``resnet101s`` for their deep
        stem), multi-grid ``(4, 8, 16)`` in the last stage, bilinear upsampling with
        ``align_corners=True``.

        Args:
            path_or_state_dict: their checkpoint file (read with ``torch.load(...,
                weights_only=True)``), or its loaded contents (a state dict or
                ``{"state_dict": ...}``).
            backbone: timm name of the matching backbone.
            num_classes: classes of the checkpoint (19 for Cityscapes).
            multi_grid: last-stage dilations of the checkpoint; None for none.
            **kwargs: further :class:`DANet` arguments (``attention_backend``...).

        Raises:
            ValueError: listing missing and unexpected keys, or mismatched shapes.
        """
        kwargs.setdefault("align_corners", True)
        kwargs.setdefault("output_stride", 8)
        model = cls(backbone, num_classes, multi_grid=multi_grid, **kwargs)
        load_original_state_dict(model, read_checkpoint(path_or_state_dict, "DANet.from_original"))
        return model
