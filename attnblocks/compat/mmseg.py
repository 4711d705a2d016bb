"""mmsegmentation's segmentors (https://github.com/open-mmlab/mmsegmentation) as tables.

mmseg's released checkpoints are ``{"meta": ..., "state_dict": ...}`` files of an
``EncoderDecoder``: ``backbone.*`` (ResNetV1c: the deep 3x3 stem ``stem.{0..7}``,
then torchvision's ``layer1..4`` names), ``decode_head.*`` (the model's head) and
``auxiliary_head.*`` (an FCN head that only adds a training loss; dropped here).
ResNetV1c is timm's ``resnet50c``/``resnet101c``: stem widths 32-32-64, and mmseg's
``contract_dilation`` (the first block of a dilated stage uses half the dilation) is
what timm builds for ``output_stride=8``. mmcv's ``Scale`` keeps a 0-d ``scale``
where this package's blocks keep ``gamma`` of shape ``[1]``, and mmcv's ``ConvModule``
names its parts ``conv`` and ``bn`` where :class:`~attnblocks.layers.ConvNormAct`
has ``conv`` and ``norm``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ._checkpoint import read_checkpoint
from ._keymap import KeyMap, Rename, prefixed, scalar_to_vector, unwrap_state_dict
from .mmcv import MMCV_CRISS_CROSS_RULES

# mmseg's ResNetV1c -> timm's resnet50c/resnet101c, keys relative to the backbone. The stem is
# one nn.Sequential in both: conv-bn-relu twice, then conv-bn-relu, whose bn is timm's bn1.
MMSEG_RESNET_V1C_RULES: tuple[Rename, ...] = (
    Rename("stem.0.", "conv1.0."),
    Rename("stem.1.", "conv1.1."),
    Rename("stem.3.", "conv1.3."),
    Rename("stem.4.", "conv1.4."),
    Rename("stem.6.", "conv1.6."),
    Rename("stem.7.", "bn1."),
    Rename("layer", "layer"),  # layer1..4: torchvision's names on both sides
)

# mmseg's DAHead -> our DANetHead, keys relative to the head. ConvModule = conv + bn (+ relu).
MMSEG_DAHEAD_RULES: tuple[Rename, ...] = (
    Rename("pam_in_conv.conv.", "attention.pam_in.conv."),
    Rename("pam_in_conv.bn.", "attention.pam_in.norm."),
    Rename("pam.query_project.", "attention.pam.query_conv."),
    Rename("pam.key_project.", "attention.pam.key_conv."),
    Rename("pam.value_project.", "attention.pam.value_conv."),
    Rename("pam.gamma.scale", "attention.pam.gamma", scalar_to_vector),
    Rename("pam_out_conv.conv.", "attention.pam_out.conv."),
    Rename("pam_out_conv.bn.", "attention.pam_out.norm."),
    Rename("pam_conv_seg.", "pam_classifier.conv."),
    Rename("cam_in_conv.conv.", "attention.cam_in.conv."),
    Rename("cam_in_conv.bn.", "attention.cam_in.norm."),
    Rename("cam.gamma.scale", "attention.cam.gamma", scalar_to_vector),
    Rename("cam_out_conv.conv.", "attention.cam_out.conv."),
    Rename("cam_out_conv.bn.", "attention.cam_out.norm."),
    Rename("cam_conv_seg.", "cam_classifier.conv."),
    Rename("conv_seg.", "fused_classifier.conv."),  # classifies pam + cam features (pam_cam_out)
)


def conv_module_rules(source: str, target: str) -> tuple[Rename, ...]:
    """Rules for an mmcv ``ConvModule`` (conv + BN + activation) at ``source``, our
    ``ConvNormAct`` at ``target`` (both prefixes end in ``.``)."""
    return (Rename(f"{source}conv.", f"{target}conv."), Rename(f"{source}bn.", f"{target}norm."))


# mmseg's CCHead (an FCNHead with two convs and concat_input) -> our CCNetHead, keys relative to
# the head: convs.0 -> cca (recurrence times) -> convs.1 -> conv_cat(x and that) -> conv_seg.
MMSEG_CCHEAD_RULES: tuple[Rename, ...] = (
    *conv_module_rules("convs.0.", "attention_in."),
    *prefixed(MMCV_CRISS_CROSS_RULES, "cca.", "attention."),
    *conv_module_rules("convs.1.", "attention_out."),
    *conv_module_rules("conv_cat.", "fuse."),
    Rename("conv_seg.", "classifier.conv."),
)


def mmseg_segmentor_key_map(model: str, head_rules: tuple[Rename, ...]) -> KeyMap:
    """The :class:`KeyMap` of an mmseg ``EncoderDecoder`` on ResNetV1c with the given head.

    Args:
        model: the model's name, for messages (``"DANet"``).
        head_rules: the decode head's rules, keys relative to ``decode_head.`` on
            their side and to ``head.`` on ours.
    """
    return KeyMap(
        source=f"mmsegmentation's {model} (ResNetV1c backbone)",
        renames=(
            *prefixed(MMSEG_RESNET_V1C_RULES, "backbone.", "backbone."),
            *prefixed(head_rules, "decode_head.", "head."),
        ),
        drop=("auxiliary_head.",),  # FCN head on layer3 that only adds a training loss
        hint=f"mmseg's {model}: ResNetV1c-50/101 at output stride 8, no multi-grid",
    )


MMSEG_DANET = mmseg_segmentor_key_map("DANet", MMSEG_DAHEAD_RULES)
MMSEG_CCNET = mmseg_segmentor_key_map("CCNet", MMSEG_CCHEAD_RULES)

# Bottleneck blocks per stage -> timm name. mmseg's DANet/CCNet are released on these two.
MMSEG_RESNET_V1C_DEPTHS: dict[tuple[int, ...], str] = {
    (3, 4, 6, 3): "resnet50c",
    (3, 4, 23, 3): "resnet101c",
}
_BLOCK = re.compile(r"backbone\.layer([1-4])\.(\d+)\.")


def read_mmseg_checkpoint(
    path_or_checkpoint: str | Path | Mapping[str, Any], caller: str = "from_mmseg"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict (``module.`` prefixes stripped) and ``meta`` of an mmseg checkpoint.

    Args:
        path_or_checkpoint: a ``.pth`` file (read with ``weights_only=True``), or its
            contents: ``{"meta": ..., "state_dict": ...}`` or a bare state dict.
        caller: the function the user called, for error messages.

    Returns:
        ``(state_dict, meta)``; ``meta`` is ``{}`` when the checkpoint has none.

    Raises:
        ValueError: if two keys name the same weight once ``module.`` is stripped
            (``module.x`` and ``x``): which one is meant cannot be told.
    """
    checkpoint = read_checkpoint(path_or_checkpoint, caller)
    meta = checkpoint.get("meta") if "state_dict" in checkpoint else None
    stripped: dict[str, Tensor] = {}
    original: dict[str, str] = {}  # stripped name -> the key it came from
    for key, value in unwrap_state_dict(checkpoint).items():
        name = key.removeprefix("module.")
        if name in original:
            raise ValueError(
                f"{caller}: the checkpoint holds both {original[name]!r} and {key!r}, the same "
                f"weight {name!r} once the 'module.' prefix (DataParallel's) is stripped; "
                "expected each weight once: keep one of them"
            )
        stripped[name], original[name] = value, key
    return stripped, dict(meta) if isinstance(meta, Mapping) else {}


def mmseg_backbone_name(state_dict: Mapping[str, Tensor]) -> str:
    """timm's name of an mmseg checkpoint's ResNetV1c backbone: ``resnet50c`` or ``resnet101c``.

    The depth is read from the weights: the number of blocks in each stage.

    Args:
        state_dict: the checkpoint's state dict (mmseg key names).

    Raises:
        ValueError: for a backbone that is not a ResNetV1c-50 or -101 (no deep stem,
            basic blocks, other depths).
    """
    counts = [0, 0, 0, 0]
    for key in state_dict:
        match = _BLOCK.match(key)
        if match:
            stage, block = int(match[1]) - 1, int(match[2])
            counts[stage] = max(counts[stage], block + 1)
    blocks = tuple(counts)
    deep_stem = "backbone.stem.0.weight" in state_dict
    bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
    name = MMSEG_RESNET_V1C_DEPTHS.get(blocks) if deep_stem and bottleneck else None
    if name is None:
        found = (
            f"{'a deep stem' if deep_stem else 'no deep stem (backbone.stem.*)'}, "
            f"{'bottleneck' if bottleneck else 'no bottleneck'} blocks per stage {blocks}"
        )
        raise ValueError(
            "expected an mmseg checkpoint on ResNetV1c-50 or ResNetV1c-101 (timm's resnet50c, "
            "resnet101c: deep stem, bottleneck blocks per stage (3, 4, 6, 3) or (3, 4, 23, 3)); "
            f"this checkpoint's backbone has {found}"
        )
    return name


def mmseg_num_classes(
    state_dict: Mapping[str, Tensor], classifier: str = "decode_head.conv_seg.weight"
) -> int:
    """The number of classes of an mmseg segmentor: the rows of its classifier.

    Args:
        state_dict: the checkpoint's state dict (mmseg key names).
        classifier: the classifier's weight key (a cascade's last head has its own,
            ``decode_head.1.conv_seg.weight`` in OCRNet).

    Raises:
        ValueError: if the state dict has no such key.
    """
    weight = state_dict.get(classifier)
    if weight is None:
        heads = sorted({key.split(".")[0] for key in state_dict})
        raise ValueError(
            f"expected an mmseg segmentor checkpoint with a {classifier} classifier; its "
            f"keys start with {heads}"
        )
    return int(weight.shape[0])


def convert_mmseg_danet_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Rename the keys of an mmseg DANet checkpoint to :class:`attnblocks.models.DANet`'s.

    ``backbone.stem.{0,1,3,4,6,7}`` become timm's ``backbone.conv1.*``/``backbone.bn1.*``,
    ``decode_head.*`` becomes ``head.*`` (``pam.query_project`` -> ``attention.pam.query_conv``
    and so on; the 0-d ``*.gamma.scale`` become ``gamma`` of shape ``[1]``), and the
    ``auxiliary_head.*`` FCN head is dropped.

    Args:
        checkpoint: ``{"meta": ..., "state_dict": ...}`` or a bare state dict.

    Returns:
        A new state dict with this package's key names.

    Raises:
        ValueError: listing keys that are not part of mmseg's DANet.
    """
    return MMSEG_DANET.convert(unwrap_state_dict(checkpoint))
