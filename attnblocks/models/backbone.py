"""Dilated backbones from timm for segmentation, with DANet's multi-grid option.

timm builds the network (``features_only=True, output_stride=8|16``); the only
change made here is the multi-grid dilation of the last stage that the authors'
released DANet uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import timm
from torch import nn

from .._validation import check_positive_int

OutputStride = Literal[8, 16]
OUTPUT_STRIDES: tuple[int, ...] = (8, 16)


def apply_multi_grid(backbone: nn.Module, dilations: Sequence[int], name: str = "backbone") -> None:
    """Set per-block dilations of the last stage of a bottleneck ResNet, in place.

    Block ``i`` of ``layer4`` gets dilation ``dilations[i % len(dilations)]`` in its
    3x3 convolution (cycled, as the authors' code does); padding follows, so the
    spatial size is unchanged. DANet-101 as released uses ``(4, 8, 16)`` at output
    stride 8.

    Args:
        backbone: a timm ResNet-family model (or its ``features_only`` wrapper).
        dilations: positive dilations, one per block (cycled when shorter).
        name: the backbone's name, for error messages.

    Raises:
        ValueError: if the backbone has no bottleneck ``layer4`` or a dilation is not positive.
    """
    if not dilations:
        raise ValueError("multi_grid must hold at least one dilation, got an empty sequence")
    for dilation in dilations:
        check_positive_int("multi_grid dilation", dilation)
    stage = getattr(backbone, "layer4", None)
    blocks = list(stage) if isinstance(stage, nn.Sequential) else []

    def is_bottleneck(block: nn.Module) -> bool:
        convs = [getattr(block, f"conv{i}", None) for i in (1, 2, 3)]
        if not all(isinstance(conv, nn.Conv2d) for conv in convs):
            return False
        return [conv.kernel_size for conv in convs] == [(1, 1), (3, 3), (1, 1)]

    if not blocks or not all(is_bottleneck(block) for block in blocks):
        raise ValueError(
            f"multi_grid applies to bottleneck ResNets (a layer4 of 1x1-3x3-1x1 blocks, such as "
            f"resnet50/101, resnet50s/101s, resnet50d); {name!r} has no such layer4"
        )
    for index, block in enumerate(blocks):
        dilation = dilations[index % len(dilations)]
        block.conv2.dilation = (dilation, dilation)
        block.conv2.padding = (dilation, dilation)  # 'same' padding for a 3x3 kernel


def create_backbone(
    name: str,
    output_stride: OutputStride = 8,
    multi_grid: Sequence[int] | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm model returning its last feature map, dilated to ``output_stride``.

    Args:
        name: any timm model name that supports ``features_only`` and ``output_stride``
            (ResNet incl. ``resnet50s``/``resnet101s``, ResNeSt, RegNet, MobileNetV3,
            EfficientNet...).
        output_stride: 8 or 16; the last stages are dilated instead of strided.
        multi_grid: per-block dilations of the last stage (see :func:`apply_multi_grid`).
        pretrained: load timm's ImageNet weights (downloads them through timm).
        weights: path of a local file with the classifier's state dict (timm's key
            names, ``.pth``/``.bin``/``.safetensors``), loaded instead of a download.
        **timm_kwargs: passed to ``timm.create_model`` (``in_chans``, ``norm_layer``...);
            ``out_indices=(k,)`` takes stage ``k``'s features instead of the last stage's.

    Returns:
        The timm ``features_only`` model; ``feature_info.channels()[-1]`` is its
        output channel count, and ``model(x)[-1]`` the ``(B, C, H/os, W/os)`` features.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
    # The last stage by default; timm_kwargs may pick an earlier one, e.g. out_indices=(2,).
    options: dict[str, Any] = dict(
        features_only=True, output_stride=output_stride, out_indices=(-1,)
    )
    options.update(timm_kwargs)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        # timm loads a local file through its pretrained machinery (classifier keys dropped).
        options.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    elif pretrained:
        options.update(pretrained=True)
    try:
        backbone = timm.create_model(name, **options)
    except (OSError, RuntimeError) as error:
        if weights is not None or not pretrained:
            raise
        raise RuntimeError(
            f"timm could not fetch ImageNet weights for {name!r} (no network or no hub "
            f"access?): {error}. Download them elsewhere and pass backbone_weights=PATH."
        ) from error
    if multi_grid is not None:
        apply_multi_grid(backbone, multi_grid, name)
    return backbone
