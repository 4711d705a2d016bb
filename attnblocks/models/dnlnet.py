"""DNLNet: a dilated FCN with a disentangled non-local block in its head (mmseg's DNLHead).

Yin et al., "Disentangled Non-Local Neural Networks", ECCV 2020,
https://arxiv.org/abs/2006.06668
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..compat import MMSEG_DNLNET, mmseg_decode_head_settings, mmseg_non_local_options
from ..functional._backends import PositionBackend
from ..layers import DisentangledNonLocal2d
from ..layers.conv_norm_act import LayerFactory
from ..layers.disentangled_non_local import DisentangledMode
from ..pretrained import MMSegCheckpoint, PretrainedConfigLike
from .backbone import OutputStride
from .base import SegmentationModel
from .fcn_attention_head import FCNAttentionHead


class DNLNet(SegmentationModel, paper_url="https://arxiv.org/abs/2006.06668"):
    """DNLNet segmentation model: timm backbone, a disentangled non-local FCN head, upsampling.

    The head is :class:`FCNAttentionHead` with :class:`~attnblocks.DisentangledNonLocal2d`
    (a BatchNorm after its ``conv_out``, as mmseg's ``DNLHead``) between its two 3x3
    convs. With the default backend the block never builds the ``N x N`` pairwise
    matrix, so whole 1024 x 2048 images fit in memory
    (benchmarks/results/nonlocal-models-*.md).

    Shapes: ``(B, in_chans, H, W)`` -> ``(B, num_classes, H, W)`` logits, any ``H, W``.

    From :class:`SegmentationModel`: ``predict``, ``predict_image``, ``from_mmseg``
    (mmsegmentation's released DNLNet checkpoints), ``save_pretrained`` and
    ``from_pretrained``. mmseg's auxiliary FCN head (training only) is not part of it.

    Args:
        backbone: timm model name; any model that supports ``features_only`` and
            ``output_stride`` (``resnet50c``/``resnet101c``: mmseg's ResNetV1c).
        num_classes: number of classes.
        output_stride: 8 (mmseg's releases) or 16 (4x fewer attention positions).
        reduction: the block's ``theta``/``phi``/``g`` have ``512 // reduction`` channels.
        temperature: divides the block's pairwise energies (0.05 in DNLNet).
        use_scale: also divide them by ``sqrt(512 // reduction)``.
        mode: the block's pairwise function (see :class:`~attnblocks.DisentangledNonLocal2d`).
        multi_grid: per-block dilations of the last ResNet stage; None keeps timm's.
        pretrained_backbone: load timm's ImageNet weights for the backbone (download).
        backbone_weights: local file with the backbone classifier's ImageNet weights
            (timm key names), used instead of a download.
        align_corners: of the final bilinear upsampling.
        attention_backend: the block's position-attention backend (see
            :func:`attnblocks.functional.position_attention`).
        chunk_size: query positions per chunk of the ``"chunked"`` backend.
        head_dropout: channel dropout before the classifier (0.1 in mmseg).
        norm_layer: normalisation of the head convolutions and of the block's ``conv_out``.
        backbone_kwargs: more keyword arguments for ``timm.create_model``.
        pretrained_config: normalisation, class names and palette that travel with the
            weights (see :class:`~attnblocks.pretrained.PretrainedConfig`); None:
            ImageNet statistics and generic class names.
    """

    mmseg_key_map = MMSEG_DNLNET
    mmseg_model = "dnlnet"
    mmseg_head_types = ("DNLHead",)
    mmseg_head_keys = ("decode_head.dnl_block.",)

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 19,
        output_stride: OutputStride = 8,
        reduction: int = 2,
        temperature: float = 0.05,
        use_scale: bool = True,
        mode: DisentangledMode = "embedded_gaussian",
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
        block = partial(
            DisentangledNonLocal2d, reduction=reduction, temperature=temperature,
            use_scale=use_scale, mode=mode, backend=attention_backend, chunk_size=chunk_size,
            norm_layer=norm_layer,
        )  # fmt: skip
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
        """The scaffold's options plus the block's ``reduction`` (weights or config),
        ``mode``, ``use_scale`` and ``temperature`` (config).

        Args:
            state_dict: the checkpoint's weights, mmseg key names, ``module.`` stripped.
            meta: the checkpoint's ``meta`` (``{}`` without one).
            entry: the release the checkpoint was recognised as, or None.
        """
        options = super().mmseg_model_options(state_dict, meta, entry)
        settings = mmseg_decode_head_settings(meta)
        return {
            **options,
            **mmseg_non_local_options(state_dict, "decode_head.dnl_block.", settings),
        }
