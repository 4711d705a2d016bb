"""ANNNet: a dilated FCN with ANN's asymmetric non-local head (AFNB on two levels, APNB).

Zhu et al., "Asymmetric Non-local Neural Networks for Semantic Segmentation", ICCV 2019,
https://arxiv.org/abs/1908.07678
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..compat import MMSEG_ANNNET, check_mmseg_shared_key_query, mmseg_decode_head_settings
from ..functional._backends import PositionBackend
from ..layers import AsymmetricFusionNonLocal, AsymmetricPyramidNonLocal, ConvNormAct
from ..layers.conv_norm_act import LayerFactory
from ..pretrained import MMSegCheckpoint, PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .danet_head import _classifier


class ANNNetHead(nn.Module):
    """ANN's head: AFNB fuses two backbone levels, a 3x3 conv, APNB, a classifier.

    ::

        [low, high] -> fusion (AFNB: high queries, pyramid-pooled low keys/values)
          -> dropout -> bottleneck (3x3 conv-norm-act to `channels`)
          -> context (APNB) -> classifier (dropout, 1x1 conv) -> logits

    The layout of mmsegmentation's ``ANNHead`` (``fusion``, ``bottleneck``, ``context``,
    ``conv_seg``, which is ``classifier.conv`` here), with its two dropouts (after the
    fusion and before the classifier).

    Shapes: ``[low (B, low_channels, H_l, W_l), high (B, high_channels, H, W)]`` ->
    ``(B, num_classes, H, W)`` logits.

    Args:
        in_channels: channels of the two levels read, ``(low, high)`` (ResNet's layer3
            and layer4: ``(1024, 2048)``).
        num_classes: number of classes.
        channels: channels after the bottleneck and through APNB (512 in mmseg).
        key_channels: query/key/value width in both blocks (256 in mmseg).
        query_scales: attention stages per block (each 1; see
            :class:`~attnblocks.AsymmetricFusionNonLocal`).
        key_pool_scales: grid sizes of the key/value pyramid.
        dropout: channel dropout after the fusion and before the classifier (0.1).
        backend: position-attention backend of both blocks.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        norm_layer: normalisation of the head convolutions.
        act_layer: activation of the head convolutions.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        key_channels: int = 256,
        query_scales: Sequence[int] = (1,),
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
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
        in_channels = tuple(in_channels)
        if len(in_channels) != 2:
            raise ValueError(
                f"ANNNetHead reads two levels (low, high); got in_channels {in_channels}"
            )
        low, high = in_channels
        check_positive_int("channels", channels)
        self.in_channels = in_channels
        attention = dict(query_scales=query_scales, key_pool_scales=key_pool_scales,
                         norm_layer=norm_layer, act_layer=act_layer, backend=backend,
                         chunk_size=chunk_size, **dd)  # fmt: skip
        self.fusion = AsymmetricFusionNonLocal(low, high, key_channels, high, **attention)
        self.dropout = nn.Dropout2d(dropout)
        self.bottleneck = ConvNormAct(high, channels, 3, norm_layer=norm_layer,
                                      act_layer=act_layer, **dd)  # fmt: skip
        self.context = AsymmetricPyramidNonLocal(channels, key_channels, channels, **attention)
        self.classifier = _classifier(channels, num_classes, dropout, **dd)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Class logits from ``[low, high]`` feature maps (at the high map's size)."""
        if len(features) != 2:
            raise ValueError(f"ANNNetHead takes [low, high] feature maps, got {len(features)}")
        low, high = features
        x = self.bottleneck(self.dropout(self.fusion(low, high)))
        return self.classifier(self.context(x))


class ANNNet(SegmentationModel, paper_url="https://arxiv.org/abs/1908.07678"):
    """ANNNet segmentation model: timm backbone (two levels), :class:`ANNNetHead`, upsampling.

    The head reads two backbone levels, as mmseg's ``in_index=[2, 3]``: by default timm
    levels 3 and 4 (a ResNet's ``layer3`` and ``layer4``, both at stride ``output_stride``
    in a dilated ResNet); its logits are upsampled to the input size. mmseg's auxiliary
    FCN head on ``layer3`` (a training loss only) is not part of the model.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's 16 released ANN checkpoints), ``save_pretrained`` and
    ``from_pretrained``.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50c``/``resnet101c`` are mmseg's ResNetV1c).
        num_classes: number of classes.
        output_stride: 8 (mmseg's releases) or 16.
        channels: channels after the head's bottleneck (512 in mmseg).
        key_channels: query/key/value width of AFNB and APNB (256 in mmseg).
        query_scales: attention stages per block (each 1).
        key_pool_scales: grid sizes of the key/value pyramid (``(1, 3, 6, 8)``).
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling.
        attention_backend: position-attention backend of both blocks.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        head_dropout: channel dropout in the head (0.1).
        norm_layer: normalisation of the head convolutions.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`).
        feature_levels: the two timm levels the head reads, ``(low, high)``; None: (3, 4).
    """

    feature_levels = (3, 4)
    mmseg_key_map = MMSEG_ANNNET
    mmseg_model = "annnet"
    mmseg_head_types = ("ANNHead",)
    mmseg_head_keys = ("decode_head.fusion.stages.",)

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        channels: int = 512,
        key_channels: int = 256,
        query_scales: Sequence[int] = (1,),
        key_pool_scales: Sequence[int] = (1, 3, 6, 8),
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
        feature_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            backbone, num_classes, output_stride, multi_grid, pretrained_backbone,
            backbone_weights, align_corners, backbone_kwargs, pretrained_config,
            feature_levels,
        )  # fmt: skip
        if len(self.feature_channels) != 2:
            raise ValueError(
                f"ANNNet reads two backbone levels (low, high); got feature_levels "
                f"{feature_levels} with channels {self.feature_channels}"
            )
        self.head = ANNNetHead(
            self.feature_channels, num_classes, channels=channels, key_channels=key_channels,
            query_scales=query_scales, key_pool_scales=key_pool_scales, dropout=head_dropout,
            backend=attention_backend, chunk_size=chunk_size, norm_layer=norm_layer,
        )  # fmt: skip

    def forward(self, images: Tensor) -> Tensor:
        """Class logits at the size of ``images`` ``(B, in_chans, H, W)``."""
        return super().forward(images)

    @classmethod
    def load_mmseg(
        cls,
        state_dict: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        entry: MMSegCheckpoint | None,
        **kwargs: Any,
    ) -> ANNNet:
        """The scaffold's loading, after checking both of mmseg's copies of APNB's shared
        key/query projection (only the ``query_project`` one is loaded, as in mmseg).

        Args:
            state_dict: the weights, mmseg key names, ``module.`` stripped.
            meta: the checkpoint's ``meta`` (``{}`` without one).
            entry: the release the checkpoint was recognised as, or None.
            **kwargs: constructor arguments that override the inferred ones.
        """
        prefix = "decode_head.context.stages."
        for stage in sorted({k[len(prefix) :].split(".")[0] for k in state_dict
                             if k.startswith(prefix)}):  # fmt: skip
            check_mmseg_shared_key_query(state_dict, f"{prefix}{stage}.")
        return super().load_mmseg(state_dict, meta, entry, **kwargs)

    @classmethod
    def mmseg_model_options(
        cls,
        state_dict: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        entry: MMSegCheckpoint | None,
    ) -> dict[str, Any]:
        """The scaffold's options plus the head's widths and stages read from the weights,
        and ``key_pool_scales`` from the meta config when it has one.

        Args:
            state_dict: the checkpoint's weights, mmseg key names.
            meta: the checkpoint's ``meta``.
            entry: the release the checkpoint was recognised as, or None.
        """
        options = super().mmseg_model_options(state_dict, meta, entry)
        key = state_dict.get("decode_head.fusion.stages.0.key_project.conv.weight")
        bottleneck = state_dict.get("decode_head.bottleneck.conv.weight")
        if key is not None and bottleneck is not None:  # else loading names what is missing
            stages = {
                k.split(".")[3] for k in state_dict if k.startswith("decode_head.fusion.stages.")
            }
            options.update(key_channels=int(key.shape[0]), channels=int(bottleneck.shape[0]),
                           query_scales=(1,) * len(stages))  # fmt: skip
        settings = mmseg_decode_head_settings(meta, "ANNHead")
        if "key_pool_scales" in settings:
            options["key_pool_scales"] = tuple(settings["key_pool_scales"])
        return options
