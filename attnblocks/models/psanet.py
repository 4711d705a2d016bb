"""PSANet: a dilated FCN with point-wise spatial attention in its head (mmseg's PSAHead).

Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene Parsing", ECCV 2018,
https://hszhao.github.io/papers/eccv18_psanet.pdf
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_feature_map
from ..compat import MMSEG_PSANET, mmseg_decode_head_settings, mmseg_psa_options
from ..layers import ConvNormAct, PointwiseSpatialAttention
from ..layers.conv_norm_act import LayerFactory
from ..layers.pointwise_spatial_attention import PSAModuleType
from ..pretrained import MMSegCheckpoint, PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .danet_head import _classifier


class PSANetHead(nn.Module):
    """PSANet's head: point-wise spatial attention, fused with its input, classified.

    ::

        x -> attention (PointwiseSpatialAttention, back to in_channels) -> [x, that]
          (concatenated) -> bottleneck (3x3 conv-norm-act to inter_channels)
          -> classifier (dropout, 1x1 conv) -> logits

    The layout of mmsegmentation's ``PSAHead`` (its ``reduce``, ``attention``,
    ``reduce_p``, ``attention_p`` and ``proj`` are the block's ``reduce``, ``mask``,
    ``reduce_p``, ``mask_p`` and ``proj``; then ``bottleneck``, ``conv_seg``).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, num_classes, H, W)`` logits.

    Args:
        in_channels: channels of the backbone features.
        num_classes: number of classes.
        mask_size: ``(h_m, w_m)`` of each pixel's attention mask (see
            :class:`~attnblocks.PointwiseSpatialAttention`).
        inter_channels: the block's reduced width and the bottleneck's output (default
            ``in_channels // 4``: 512 on a ResNet-50/101, as mmseg).
        psa_type: ``"collect"``, ``"distribute"`` or ``"bi-direction"``.
        shrink_factor: how much the map shrinks before the attention.
        compact: whole-map masks predicted directly (see the block).
        normalization_factor: divides the aggregated features (None: ``h_m * w_m``).
        psa_softmax: softmax over positions of the placed masks.
        align_corners: the block's final resize when ``shrink_factor`` is 1 (mmseg: the
            decode head's ``align_corners``).
        dropout: channel dropout before the classifier (0.1 in mmseg).
        norm_layer: normalisation of the conv-norm-act units.
        act_layer: activation of the conv-norm-act units.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mask_size: int | tuple[int, int],
        inter_channels: int | None = None,
        psa_type: PSAModuleType = "bi-direction",
        shrink_factor: int = 2,
        compact: bool = False,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
        align_corners: bool = False,
        dropout: float = 0.1,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.in_channels = in_channels
        self.attention = PointwiseSpatialAttention(
            in_channels, mask_size, inter_channels, psa_type=psa_type,
            shrink_factor=shrink_factor, compact=compact,
            normalization_factor=normalization_factor, psa_softmax=psa_softmax,
            align_corners=align_corners, **layers,
        )  # fmt: skip
        inter = self.attention.inter_channels
        self.bottleneck = ConvNormAct(2 * in_channels, inter, 3, **layers)
        self.classifier = _classifier(inter, num_classes, dropout, **dd)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for features ``x`` of shape ``(B, in_channels, H, W)``."""
        check_feature_map(x, self.in_channels, type(self).__name__)
        features = self.bottleneck(torch.cat([x, self.attention(x)], dim=1))  # input first
        return self.classifier(features)


class PSANet(SegmentationModel, paper_url="https://hszhao.github.io/papers/eccv18_psanet.pdf"):
    """PSANet segmentation model: timm backbone, :class:`PSANetHead`, bilinear upsampling.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's released PSANet checkpoints, their mask size read from the
    weights: 97 x 97 for Cityscapes and VOC, 66 x 66 for ADE20K), ``save_pretrained``
    and ``from_pretrained``. mmseg's auxiliary FCN head (training only) is not part of it.
    Memory grows with the square of the attention grid (``(H * W / 256)^2`` weights per
    direction at output stride 8 and ``shrink_factor=2``): the block builds every pixel's
    whole-map weights, as PSANet does.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50c``/``resnet101c``: mmseg's ResNetV1c).
        num_classes: number of classes.
        output_stride: 8 (mmseg's releases) or 16.
        mask_size: ``(h_m, w_m)`` of each pixel's attention mask (mmseg: ``(97, 97)`` for
            Cityscapes and VOC, ``(66, 66)`` for ADE20K).
        psa_type: ``"collect"``, ``"distribute"`` or ``"bi-direction"``.
        shrink_factor: how much the map shrinks before the attention.
        compact: whole-map masks predicted directly (see
            :class:`~attnblocks.PointwiseSpatialAttention`).
        normalization_factor: divides the aggregated features (None: ``h_m * w_m``).
        psa_softmax: softmax over positions of the placed masks.
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling (and of the block's resize when
            ``shrink_factor`` is 1, as mmseg's decode head).
        head_dropout: channel dropout before the classifier (0.1 in mmseg).
        norm_layer: normalisation of the head's conv-norm-act units.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`); None:
            ImageNet statistics and generic class names.
    """

    mmseg_key_map = MMSEG_PSANET
    mmseg_model = "psanet"
    mmseg_head_types = ("PSAHead",)
    mmseg_head_keys = ("decode_head.reduce.", "decode_head.attention.")

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        mask_size: int | Sequence[int] = (97, 97),
        psa_type: PSAModuleType = "bi-direction",
        shrink_factor: int = 2,
        compact: bool = False,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
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
        if isinstance(mask_size, list):  # a saved config.json gives lists back
            mask_size = tuple(mask_size)
        self.head = PSANetHead(
            self.encoder_channels, num_classes, mask_size, psa_type=psa_type,
            shrink_factor=shrink_factor, compact=compact,
            normalization_factor=normalization_factor, psa_softmax=psa_softmax,
            align_corners=align_corners, dropout=head_dropout, norm_layer=norm_layer,
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
        """The scaffold's options plus the head's ``mask_size`` (config, else weights),
        ``psa_type`` (config, else bi-direction where the weights have both branches) and
        ``compact``, ``shrink_factor``, ``normalization_factor``, ``psa_softmax`` (config).

        Args:
            state_dict: the checkpoint's weights, mmseg key names, ``module.`` stripped.
            meta: the checkpoint's ``meta`` (``{}`` without one).
            entry: the release the checkpoint was recognised as, or None.

        Raises:
            ValueError: for a non-square mask or a one-direction head without a config
                that says which (build the model and use ``MMSEG_PSANET.load_into``).
        """
        options = super().mmseg_model_options(state_dict, meta, entry)
        return {**options, **mmseg_psa_options(state_dict, mmseg_decode_head_settings(meta))}
