"""OCRNet: a coarse FCN prediction, then object-contextual representations.

Yuan et al., "Object-Contextual Representations for Semantic Segmentation", ECCV 2020,
https://arxiv.org/abs/1909.11065
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..compat import mmseg_num_classes
from ..compat.mmseg_ocr import MMSEG_OCRNET
from ..layers import ConvNormAct, ObjectContextBlock, SpatialGather
from ..layers.conv_norm_act import LayerFactory
from ..pretrained import MMSegCheckpoint, PretrainedConfigLike, mmseg_pretrained_config
from .backbone import OutputStride
from .base import SegmentationModel
from .danet_head import _classifier
from .hrnet import is_hrnet, mmseg_hrnet_backbone_name, resize_concat

#: timm levels OCRNet reads: ResNet's layer3 (coarse head) and layer4 (OCR head), as mmseg's
#: in_index 2 and 3; HRNet's four branches, concatenated for both heads.
RESNET_LEVELS, HRNET_LEVELS = (3, 4), (1, 2, 3, 4)


class OCRNetOutput(NamedTuple):
    """OCRNet's logits: the OCR head's prediction first, then the coarse FCN head's."""

    out: Tensor  #: the OCR head's logits: the prediction
    coarse: Tensor  #: the FCN head's logits, whose classes the OCR head gathers regions by


class OCRNetHead(nn.Module):
    """OCRNet's cascade of two heads: a coarse FCN prediction, then the OCR head.

    ::

        features -> x_coarse, x (concat_levels: both the levels resized to the first's size
                    and concatenated; else the first level and the second)
        x_coarse -> coarse_conv (conv-norm-act) -> coarse_classifier -> coarse logits
        x -> bottleneck (3x3 conv-norm-act to `channels`) -> f
        regions = gather(f, coarse logits)                  (B, channels, K, 1)
        object_context(f, regions) -> classifier (dropout, 1x1 conv) -> logits

    The layout of mmseg's ``decode_head.0`` (``FCNHead`` with one conv) and
    ``decode_head.1`` (``OCRHead``); the coarse logits that the OCR head reads are
    mmseg's ``prev_output``, not detached (the cascade trains end to end; mmseg weighs
    the coarse loss 0.4).

    Shapes: a list of ``(B, in_channels[i], H_i, W_i)`` maps -> an
    :class:`OCRNetOutput` of ``(B, num_classes, H_0, W_0)`` logits (``concat_levels``), or
    of ``(B, num_classes, H_1, W_1)`` logits (the two levels must then share a size, as
    layer3 and layer4 of a dilated ResNet do).

    Args:
        in_channels: channels of each feature map the head receives, in order.
        num_classes: number of classes.
        channels: width of the OCR head (its ``bottleneck`` output; mmseg: 512).
        ocr_channels: width of the pixel-region attention (mmseg: 256).
        coarse_channels: width of the coarse head's conv (mmseg: 256 on ResNet, the
            concatenated width on HRNet); None: that choice.
        coarse_kernel_size: kernel of the coarse head's conv (mmseg: 3 on ResNet, 1 on
            HRNet); None: that choice.
        concat_levels: feed both heads the levels resized to the first's size and
            concatenated (mmseg's ``resize_concat``, HRNetV2); False: exactly two
            levels, the coarse head reading the first and the OCR head the second.
        dropout: channel dropout before both classifiers (mmseg: 0.1 on ResNet, none on
            HRNet).
        gather_scale: factor on the coarse logits before :class:`SpatialGather`'s softmax.
        align_corners: of the resizing in ``concat_levels``.
        norm_layer: normalisation of the conv-norm-act units.
        act_layer: activation of the conv-norm-act units.
        backend: position-attention backend of the pixel-region attention.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        ocr_channels: int = 256,
        coarse_channels: int | None = None,
        coarse_kernel_size: int | None = None,
        concat_levels: bool = False,
        dropout: float = 0.1,
        gather_scale: float = 1.0,
        align_corners: bool = False,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        backend: str = "auto",
        chunk_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        in_channels = [check_positive_int("in_channels", c) for c in in_channels]
        if not concat_levels and len(in_channels) != 2:
            raise ValueError(
                "OCRNetHead without concat_levels reads two feature maps (the coarse head's, "
                f"then the OCR head's), got in_channels {in_channels}"
            )
        if not in_channels:
            raise ValueError("OCRNetHead needs at least one feature map, got in_channels []")
        check_positive_int("num_classes", num_classes)
        dd = {"device": device, "dtype": dtype}
        layers = {"norm_layer": norm_layer, "act_layer": act_layer, **dd}
        self.in_channels = list(in_channels)
        self.concat_levels = bool(concat_levels)
        self.align_corners = bool(align_corners)
        coarse_in, ocr_in = (
            (sum(in_channels), sum(in_channels)) if concat_levels else tuple(in_channels)
        )
        if coarse_channels is None:
            coarse_channels = coarse_in if concat_levels else 256
        if coarse_kernel_size is None:
            coarse_kernel_size = 1 if concat_levels else 3
        self.coarse_conv = ConvNormAct(coarse_in, coarse_channels, coarse_kernel_size, **layers)
        self.coarse_classifier = _classifier(coarse_channels, num_classes, dropout, **dd)
        self.bottleneck = ConvNormAct(ocr_in, channels, 3, **layers)
        self.gather = SpatialGather(gather_scale)
        self.object_context = ObjectContextBlock(
            channels, ocr_channels, backend=backend, chunk_size=chunk_size, **layers
        )
        self.classifier = _classifier(channels, num_classes, dropout, **dd)

    def _inputs(self, features: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """The coarse head's and the OCR head's input maps."""
        maps = [features] if isinstance(features, Tensor) else list(features)
        if len(maps) != len(self.in_channels) or any(
            m.ndim != 4 or m.shape[1] != c for m, c in zip(maps, self.in_channels)
        ):
            raise ValueError(
                f"OCRNetHead was built for {len(self.in_channels)} maps of channels "
                f"{self.in_channels}, got shapes {[tuple(m.shape) for m in maps]}"
            )
        if self.concat_levels:
            x = resize_concat(maps, self.align_corners)
            return x, x
        return maps[0], maps[1]

    def forward(self, features: Sequence[Tensor] | Tensor) -> OCRNetOutput:
        """Both heads' logits for the backbone's feature maps, shallowest first."""
        x_coarse, x = self._inputs(features)
        coarse = self.coarse_classifier(self.coarse_conv(x_coarse))
        pixels = self.bottleneck(x)
        if coarse.shape[-2:] != pixels.shape[-2:]:
            raise ValueError(
                "OCRNetHead's two levels must share a size (a dilated backbone's layer3 and "
                f"layer4), got {tuple(x_coarse.shape)} and {tuple(x.shape)}"
            )
        regions = self.gather(pixels, coarse)  # (B, channels, K, 1)
        return OCRNetOutput(out=self.classifier(self.object_context(pixels, regions)),
                            coarse=coarse)  # fmt: skip


class OCRNet(SegmentationModel, paper_url="https://arxiv.org/abs/1909.11065"):
    """OCRNet: timm backbone, :class:`OCRNetHead` (FCN then OCR head), bilinear upsampling.

    On a dilated ResNet (output stride 8) the coarse FCN head reads ``layer3`` and the
    OCR head ``layer4``; on an HRNet (``hrnet_w18_small_v2``, ``hrnet_w18``,
    ``hrnet_w48``: no output stride, built with mmseg's bilinear branch fusion) both
    read the four branches resized to the stride-4 one and concatenated (HRNetV2). The
    defaults of the head follow mmseg's configs for that backbone. :meth:`forward`
    returns an :class:`OCRNetOutput` ``(out, coarse)`` upsampled to the input size;
    mmseg trains it with cross-entropy on both, weighted 1 and 0.4.

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's 24 released OCRNet checkpoints: ResNetV1c-101 and HRNetV2
    W18-Small, W18, W48), ``save_pretrained`` and ``from_pretrained``.

    Args:
        backbone: timm model name: an HRNet, or a model that supports ``output_stride``
            and has levels 3 and 4 (``resnet101c`` is mmseg's ResNetV1c-101).
        num_classes: number of classes.
        output_stride: 8 or 16 for a dilated backbone; None: 8 there, and the only
            choice for an HRNet (whose first branch keeps stride 4).
        channels: width of the OCR head (512).
        ocr_channels: width of the pixel-region attention (256).
        coarse_channels: width of the coarse head's conv; None: mmseg's (256 on a ResNet,
            the concatenated branch width on an HRNet: 270 for W18, 720 for W48).
        coarse_kernel_size: kernel of the coarse head's conv; None: mmseg's (3 / 1).
        head_dropout: channel dropout before both classifiers; None: mmseg's (0.1 on a
            ResNet, none on an HRNet).
        gather_scale: factor on the coarse logits before the region softmax (1).
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final upsampling and of the HRNet levels' resizing.
        attention_backend: position-attention backend of the pixel-region attention.
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        norm_layer: normalisation of the head convolutions.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`); None:
            ImageNet statistics and generic class names.
    """

    mmseg_key_map = MMSEG_OCRNET
    mmseg_model = "ocrnet"
    mmseg_head_types = ("OCRHead",)
    mmseg_head_keys = ("decode_head.1.object_context_block.",)
    mmseg_classifier_key = "decode_head.1.conv_seg.weight"
    #: the levels read on a dilated ResNet (layer3, layer4); an HRNet's instance reads all four
    feature_levels = RESNET_LEVELS

    def __init__(
        self,
        backbone: str = "hrnet_w18",
        num_classes: int = 19,
        output_stride: OutputStride | None = None,
        channels: int = 512,
        ocr_channels: int = 256,
        coarse_channels: int | None = None,
        coarse_kernel_size: int | None = None,
        head_dropout: float | None = None,
        gather_scale: float = 1.0,
        multi_grid: Sequence[int] | None = None,
        pretrained_backbone: bool = False,
        backbone_weights: str | Path | None = None,
        align_corners: bool = False,
        attention_backend: str = "auto",
        chunk_size: int | None = None,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pretrained_config: PretrainedConfigLike | None = None,
    ) -> None:
        hrnet = is_hrnet(backbone)
        if not hrnet and output_stride is None:
            output_stride = 8
        super().__init__(
            backbone, num_classes, output_stride, multi_grid, pretrained_backbone,
            backbone_weights, align_corners, backbone_kwargs, pretrained_config,
            feature_levels=HRNET_LEVELS if hrnet else RESNET_LEVELS,
        )  # fmt: skip
        if head_dropout is None:
            head_dropout = 0.0 if hrnet else 0.1
        self.head = OCRNetHead(
            self.feature_channels, num_classes, channels, ocr_channels, coarse_channels,
            coarse_kernel_size, concat_levels=hrnet, dropout=head_dropout,
            gather_scale=gather_scale, align_corners=align_corners, norm_layer=norm_layer,
            backend=attention_backend, chunk_size=chunk_size,
        )  # fmt: skip

    def forward(self, images: Tensor) -> OCRNetOutput:
        """Class logits ``(out, coarse)`` at the size of ``images`` ``(B, in_chans, H, W)``."""
        return super().forward(images)

    @classmethod
    def mmseg_model_options(
        cls,
        state_dict: Mapping[str, Tensor],
        meta: Mapping[str, Any],
        entry: MMSegCheckpoint | None,
    ) -> dict[str, Any]:
        """The constructor arguments of an mmseg OCRNet checkpoint: backbone, classes, widths.

        A ResNetV1c checkpoint is read by the scaffold; an HRNet one gets timm's HRNet
        of the same stage configuration (:func:`~attnblocks.models.hrnet.mmseg_hrnet_backbone_name`)
        and no output stride. Both read the heads' widths from the weights.

        Args:
            state_dict: the checkpoint's weights, mmseg key names, ``module.`` stripped.
            meta: the checkpoint's ``meta`` (``{}`` without one).
            entry: the release the checkpoint was recognised as, or None.
        """
        if "backbone.stage2.0.branches.0.0.conv1.weight" in state_dict:
            num_classes = mmseg_num_classes(state_dict, cls.mmseg_classifier_key)
            options = dict(
                backbone=mmseg_hrnet_backbone_name(state_dict), num_classes=num_classes,
                output_stride=None, align_corners=entry.align_corners if entry else False,
                pretrained_config=mmseg_pretrained_config(num_classes, meta, entry),
            )  # fmt: skip
        else:
            options = super().mmseg_model_options(state_dict, meta, entry)
        widths = {
            "channels": ("decode_head.1.bottleneck.conv.weight", 0),
            "ocr_channels": ("decode_head.1.object_context_block.value_project.conv.weight", 0),
            "coarse_channels": ("decode_head.0.convs.0.conv.weight", 0),
            "coarse_kernel_size": ("decode_head.0.convs.0.conv.weight", 2),
        }
        for option, (key, dim) in widths.items():
            if key in state_dict and state_dict[key].ndim == 4:
                options[option] = int(state_dict[key].shape[dim])
        return options
