"""GCNet: a dilated FCN with a global context block in its head (mmsegmentation's GCHead).

Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCV Workshops 2019, https://arxiv.org/abs/1904.11492
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..compat import MMSEG_GCNET, mmseg_context_options, mmseg_decode_head_settings
from ..layers import ContextBlock
from ..layers.context import ContextPooling
from ..layers.conv_norm_act import LayerFactory
from ..pretrained import MMSegCheckpoint, PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .fcn_attention_head import FCNAttentionHead


class GCNet(SegmentationModel, paper_url="https://arxiv.org/abs/1904.11492"):
    """GCNet segmentation model: timm backbone, a global context FCN head, bilinear upsampling.

    The head is :class:`FCNAttentionHead` with :class:`~attnblocks.ContextBlock` between
    its two 3x3 convs, as mmseg's ``GCHead``.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's released GCNet checkpoints), ``save_pretrained`` and
    ``from_pretrained``. mmseg's auxiliary FCN head (training only) is not part of it.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50c``/``resnet101c``: mmseg's ResNetV1c).
        num_classes: number of classes.
        output_stride: 8 (mmseg's releases) or 16.
        ratio: the block's bottleneck width as a fraction of the head's 512 channels.
        pooling: the block's context pooling, ``"att"`` or ``"avg"``.
        fusion: the block's fusions, any of ``"channel_add"``, ``"channel_mul"``.
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling.
        head_dropout: channel dropout before the classifier (0.1 in mmseg).
        norm_layer: normalisation of the head convolutions.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`); None:
            ImageNet statistics and generic class names.
    """

    mmseg_key_map = MMSEG_GCNET
    mmseg_model = "gcnet"
    mmseg_head_types = ("GCHead",)
    mmseg_head_keys = ("decode_head.gc_block.",)

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        ratio: float = 1 / 4,
        pooling: ContextPooling = "att",
        fusion: Sequence[str] = ("channel_add",),
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
        block = partial(ContextBlock, ratio=ratio, pooling=pooling, fusion=tuple(fusion))
        self.head = FCNAttentionHead(
            self.encoder_channels, num_classes, block, dropout=head_dropout, norm_layer=norm_layer
        )

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
        """The scaffold's options plus the block's ``ratio``, ``pooling`` and ``fusion``
        (config, else weights).

        Args:
            state_dict: the checkpoint's weights, mmseg key names, ``module.`` stripped.
            meta: the checkpoint's ``meta`` (``{}`` without one).
            entry: the release the checkpoint was recognised as, or None.
        """
        options = super().mmseg_model_options(state_dict, meta, entry)
        settings = mmseg_decode_head_settings(meta)
        return {**options, **mmseg_context_options(state_dict, "decode_head.gc_block.", settings)}
