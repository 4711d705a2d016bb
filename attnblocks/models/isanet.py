"""ISANet: a dilated FCN with interlaced sparse self-attention in its head.

Huang et al., "Interlaced Sparse Self-Attention for Semantic Segmentation", 2019,
https://arxiv.org/abs/1907.12273
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_feature_map, check_positive_int
from ..compat import MMSEG_ISANET, mmseg_decode_head_settings
from ..functional._backends import PositionBackend
from ..layers import ConvNormAct, InterlacedSparseSelfAttention
from ..layers.conv_norm_act import LayerFactory
from ..pretrained import MMSegCheckpoint, PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .danet_head import _classifier


class ISANetHead(nn.Module):
    """ISANet's head: a 3x3 conv, interlaced sparse self-attention, fused with its input.

    ::

        x -> attention_in (3x3 conv-norm-act) -> attention (long-range, then short-range
          relation) -> [that, attention_in's output] (concatenated) -> fuse (1x1
          conv-norm-act) -> classifier (dropout, 1x1 conv) -> logits

    The layout of mmsegmentation's ``ISAHead`` (``in_conv``, ``global_relation``,
    ``local_relation``, ``out_conv``, ``conv_seg``).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    Args:
        in_channels: channels of the backbone features.
        num_classes: number of classes.
        channels: channels of the attention and the fusion (512 in mmseg).
        key_channels: query/key width of both relations (mmseg's ``isa_channels``, 256).
        down_factor: ``(loc_h, loc_w)``, the local group size (``(8, 8)``).
        dropout: channel dropout before the classifier (0.1).
        backend: position-attention backend of both relations.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        norm_layer: normalisation of the head convolutions.
        act_layer: activation of the head convolutions.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        key_channels: int = 256,
        down_factor: Sequence[int] = (8, 8),
        dropout: float = 0.1,
        backend: PositionBackend = "auto",
        chunk_size: int | None = None,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.in_channels = check_positive_int("in_channels", in_channels)
        check_positive_int("channels", channels)
        self.attention_in = ConvNormAct(in_channels, channels, 3, **layers)
        self.attention = InterlacedSparseSelfAttention(
            channels, key_channels, down_factor, backend=backend, chunk_size=chunk_size,
            **layers,
        )  # fmt: skip
        self.fuse = ConvNormAct(2 * channels, channels, 1, **layers)
        self.classifier = _classifier(channels, num_classes, dropout, **dd)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for features ``x`` of shape ``(B, in_channels, H, W)``."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        x = self.attention_in(x)
        x = self.fuse(torch.cat([self.attention(x), x], dim=1))  # attention first, as mmseg's
        return self.classifier(x)


class ISANet(SegmentationModel, paper_url="https://arxiv.org/abs/1907.12273"):
    """ISANet segmentation model: timm backbone, :class:`ISANetHead`, bilinear upsampling.

    The backbone's last feature map goes through the interlaced sparse self-attention
    head; its logits are upsampled to the input size. mmseg's auxiliary FCN head (a
    training loss only) is not part of the model.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's 16 released ISANet checkpoints), ``save_pretrained`` and
    ``from_pretrained``.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50c``/``resnet101c`` are mmseg's ResNetV1c).
        num_classes: number of classes.
        output_stride: 8 (mmseg's releases) or 16.
        channels: channels of the head's attention (512 in mmseg).
        key_channels: query/key width of the relations (mmseg's ``isa_channels``, 256).
        down_factor: ``(loc_h, loc_w)``, the local group size (``(8, 8)``).
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling.
        attention_backend: position-attention backend of both relations.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        head_dropout: channel dropout before the classifier (0.1).
        norm_layer: normalisation of the head convolutions.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`).
    """

    mmseg_key_map = MMSEG_ISANET
    mmseg_model = "isanet"
    mmseg_head_types = ("ISAHead",)
    mmseg_head_keys = ("decode_head.global_relation.",)

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        channels: int = 512,
        key_channels: int = 256,
        down_factor: Sequence[int] = (8, 8),
        multi_grid: Sequence[int] | None = None,
        pretrained_backbone: bool = False,
        backbone_weights: str | Path | None = None,
        align_corners: bool = False,
        attention_backend: PositionBackend = "auto",
        chunk_size: int | None = None,
        head_dropout: float = 0.1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pretrained_config: PretrainedConfigLike | None = None,
    ) -> None:
        super().__init__(
            backbone, num_classes, output_stride, multi_grid, pretrained_backbone,
            backbone_weights, align_corners, backbone_kwargs, pretrained_config,
        )  # fmt: skip
        self.head = ISANetHead(
            self.encoder_channels, num_classes, channels=channels, key_channels=key_channels,
            down_factor=down_factor, dropout=head_dropout, backend=attention_backend,
            chunk_size=chunk_size, norm_layer=norm_layer,
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
        """The scaffold's options plus the head's widths read from the weights, and
        ``down_factor`` from the meta config when it has one.

        Args:
            state_dict: the checkpoint's weights, mmseg key names.
            meta: the checkpoint's ``meta``.
            entry: the release the checkpoint was recognised as, or None.
        """
        options = super().mmseg_model_options(state_dict, meta, entry)
        key = state_dict.get("decode_head.global_relation.key_project.0.conv.weight")
        head_in = state_dict.get("decode_head.in_conv.conv.weight")
        if key is not None and head_in is not None:  # else loading names what is missing
            options.update(key_channels=int(key.shape[0]), channels=int(head_in.shape[0]))
        settings = mmseg_decode_head_settings(meta, "ISAHead")
        if "down_factor" in settings:
            options["down_factor"] = tuple(settings["down_factor"])
        return options
