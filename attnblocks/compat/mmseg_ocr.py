"""mmsegmentation's OCRNet (https://github.com/open-mmlab/mmsegmentation) as tables.

OCRNet is a ``CascadeEncoderDecoder``: ``decode_head.0`` is an FCN head whose coarse
prediction ``decode_head.1`` (``OCRHead``) consumes, so both are part of the model here
(``head.coarse_*`` and the rest of :class:`~attnblocks.models.OCRNetHead`). Its
backbone is a ResNetV1c-101 (``backbone.stem.*``, as :data:`MMSEG_DANET`'s) or an
HRNetV2, whose mmseg keys are timm's HRNet keys already (``conv1``, ``bn1``, ``conv2``,
``bn2``, ``layer1``, ``transition1..3``, ``stage2..4``): that table renames nothing, it
only names what belongs there. mmcv's ``ConvModule`` parts ``conv``/``bn`` are
:class:`~attnblocks.layers.ConvNormAct`'s ``conv``/``norm``.
"""

from __future__ import annotations

from ._keymap import KeyMap, Rename, prefixed
from .mmseg import MMSEG_RESNET_V1C_RULES, conv_module_rules

# mmseg's HRNet -> timm's HRNet (hrnet_w18_small_v2, hrnet_w18, hrnet_w48...): the same names.
MMSEG_HRNET_RULES: tuple[Rename, ...] = tuple(
    Rename(f"{part}.", f"{part}.")
    for part in ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2",
                 "transition3", "stage2", "stage3", "stage4")
)  # fmt: skip

# mmseg's ObjectAttentionBlock (a SelfAttentionBlock with two-conv key/query projections, one-conv
# value/out projections, all conv-norm-act, and a bottleneck) -> our ObjectContextBlock.
MMSEG_OBJECT_ATTENTION_RULES: tuple[Rename, ...] = (
    *(
        rule
        for name in ("query_project", "key_project")
        for index in (0, 1)
        for rule in conv_module_rules(f"{name}.{index}.", f"attention.{name}.{index}.")
    ),
    *conv_module_rules("value_project.", "attention.value_project."),
    *conv_module_rules("out_project.", "attention.out_project."),
    *conv_module_rules("bottleneck.", "bottleneck."),
)

# The cascade's two heads -> our OCRNetHead, keys relative to decode_head. / head.
MMSEG_OCR_CASCADE_RULES: tuple[Rename, ...] = (
    *conv_module_rules("0.convs.0.", "coarse_conv."),  # FCNHead, one conv, no concat_input
    Rename("0.conv_seg.", "coarse_classifier.conv."),
    *conv_module_rules("1.bottleneck.", "bottleneck."),
    *prefixed(MMSEG_OBJECT_ATTENTION_RULES, "1.object_context_block.", "object_context."),
    Rename("1.conv_seg.", "classifier.conv."),
)

MMSEG_OCRNET = KeyMap(
    source="mmsegmentation's OCRNet (ResNetV1c or HRNetV2 backbone)",
    renames=(
        *prefixed(MMSEG_RESNET_V1C_RULES, "backbone.", "backbone."),
        *prefixed(MMSEG_HRNET_RULES, "backbone.", "backbone."),
        *prefixed(MMSEG_OCR_CASCADE_RULES, "decode_head.", "head."),
    ),
    drop=("auxiliary_head.",),  # no OCRNet release has one; a training-only head if present
    hint="mmseg's OCRNet: ResNetV1c-101 at output stride 8 or HRNetV2 (timm's hrnet_w18_small_v2, "
    "hrnet_w18, hrnet_w48), FCN then OCR head",
)
