"""mmsegmentation's non-local family (NLHead, GCHead, DNLHead, PSAHead) as tables.

Three of the heads are mmseg's ``FCNHead`` (two 3x3 ``ConvModule`` s, the input
concatenated before a third, a classifier) with an attention block between the two
convolutions: ``convs.0`` -> block -> ``convs.1`` -> ``conv_cat`` -> ``conv_seg``, which
:class:`~attnblocks.models.FCNAttentionHead` names ``attention_in`` -> ``attention`` ->
``attention_out`` -> ``fuse`` -> ``classifier`` (CCNet's layout). The blocks:

- NLHead's ``nl_block``: mmcv's ``NonLocal2d`` with a BatchNorm after ``conv_out``, i.e.
  :class:`~attnblocks.NonLocal2d` with ``norm_layer`` (mmcv's table);
- GCHead's ``gc_block``: mmcv's ``ContextBlock``, the same keys;
- DNLHead's ``dnl_block``: the non-local keys plus ``conv_mask``
  (:class:`~attnblocks.DisentangledNonLocal2d`).

PSAHead is its own head: the attention (``reduce``, ``attention``, ``reduce_p``,
``attention_p``, ``proj``) is :class:`~attnblocks.PointwiseSpatialAttention` (whose
``mask``/``mask_p`` are mmseg's ``attention``/``attention_p``), then ``bottleneck`` and
``conv_seg``.

The heads' settings that the weights do not show (the non-local mode and scaling, the
DNL temperature, PSA's direction, shrinking and normalisation) come from the config
text in the checkpoint's ``meta`` when there is one (:func:`mmseg_decode_head_settings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ._keymap import Rename, prefixed
from .mmcv import MMCV_CONTEXT_BLOCK_RULES, MMCV_NON_LOCAL
from .mmseg import conv_module_rules, mmseg_segmentor_key_map


def fcn_attention_head_rules(block: str, block_rules: tuple[Rename, ...]) -> tuple[Rename, ...]:
    """Rules of an mmseg ``FCNHead`` with an attention block (NLHead, GCHead, DNLHead).

    Args:
        block: the block's prefix in the head (``"nl_block."``).
        block_rules: the block's own rules, keys relative to it.
    """
    return (
        *conv_module_rules("convs.0.", "attention_in."),
        *prefixed(block_rules, block, "attention."),
        *conv_module_rules("convs.1.", "attention_out."),
        *conv_module_rules("conv_cat.", "fuse."),
        Rename("conv_seg.", "classifier.conv."),
    )


# mmcv's NonLocal2d without sub-sampling, its conv_out with a norm (mmseg passes norm_cfg).
_NON_LOCAL_RULES = MMCV_NON_LOCAL[False, True].renames

MMSEG_NLHEAD_RULES = fcn_attention_head_rules("nl_block.", _NON_LOCAL_RULES)
MMSEG_GCHEAD_RULES = fcn_attention_head_rules("gc_block.", MMCV_CONTEXT_BLOCK_RULES)
MMSEG_DNLHEAD_RULES = fcn_attention_head_rules(
    "dnl_block.", (*_NON_LOCAL_RULES, Rename("conv_mask.", "conv_mask."))
)
# PSAHead -> PSANetHead: the attention's parts under attention., then bottleneck, classifier.
MMSEG_PSAHEAD_RULES: tuple[Rename, ...] = (
    *conv_module_rules("reduce.", "attention.reduce."),
    *conv_module_rules("attention.0.", "attention.mask.0."),
    Rename("attention.1.", "attention.mask.1."),  # the bias-free conv to the mask's cells
    *conv_module_rules("reduce_p.", "attention.reduce_p."),
    *conv_module_rules("attention_p.0.", "attention.mask_p.0."),
    Rename("attention_p.1.", "attention.mask_p.1."),
    *conv_module_rules("proj.", "attention.proj."),
    *conv_module_rules("bottleneck.", "bottleneck."),
    Rename("conv_seg.", "classifier.conv."),
)

MMSEG_NLNET = mmseg_segmentor_key_map("NLNet", MMSEG_NLHEAD_RULES)
MMSEG_GCNET = mmseg_segmentor_key_map("GCNet", MMSEG_GCHEAD_RULES)
MMSEG_DNLNET = mmseg_segmentor_key_map("DNLNet", MMSEG_DNLHEAD_RULES)
MMSEG_PSANET = mmseg_segmentor_key_map("PSANet", MMSEG_PSAHEAD_RULES)


def _config_pair(value: Any) -> tuple[int, int] | None:
    """A config's ``(h, w)`` (a list, tuple or int), or None when it is not one."""
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)
    ):
        return int(pair[0]), int(pair[1])
    return None


def mmseg_non_local_options(
    state_dict: Mapping[str, Tensor], block: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """``reduction``, ``mode`` and ``use_scale`` of an mmseg non-local (or DNL) block.

    The reduction comes from the config, else from the weights (the width of ``g``,
    ``theta`` and ``phi`` when they agree); the mode from the config, else from the keys
    where they show it (no ``theta``: gaussian; ``concat_project``: concatenation);
    ``use_scale`` and ``temperature`` (DNL) from the config only. What is not known is
    left out (the model's default applies).

    Args:
        state_dict: the checkpoint's weights (mmseg key names).
        block: the block's key prefix (``"decode_head.nl_block."``).
        settings: the decode head's config settings (:func:`mmseg_decode_head_settings`).
    """
    options: dict[str, Any] = {}
    # (inter, channels) of g, theta and phi: the reduction is read only where they agree, so
    # that one misshapen tensor is named by the strict load instead of reshaping the block.
    shapes = {
        tuple(weight.shape[:2])
        for name in ("g", "theta", "phi")
        if (weight := state_dict.get(f"{block}{name}.conv.weight")) is not None and weight.ndim == 4
    }
    if isinstance(settings.get("reduction"), int) and not isinstance(settings["reduction"], bool):
        options["reduction"] = settings["reduction"]
    elif len(shapes) == 1 and min(next(iter(shapes))) > 0:
        inter, channels = next(iter(shapes))
        if channels // (channels // inter) == inter:
            options["reduction"] = channels // inter
    if isinstance(settings.get("mode"), str):
        options["mode"] = settings["mode"]
    elif not any(key.startswith(f"{block}theta.") for key in state_dict):
        options["mode"] = "gaussian"
    elif any(key.startswith(f"{block}concat_project.") for key in state_dict):
        options["mode"] = "concatenation"
    for name in ("use_scale", "temperature"):
        if isinstance(settings.get(name), (bool, int, float)):
            options[name] = settings[name]
    return options


def mmseg_context_options(
    state_dict: Mapping[str, Tensor], block: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """``ratio``, ``pooling`` and ``fusion`` of an mmseg (mmcv) ``ContextBlock``.

    From the config when it has them, else from the weights: attention pooling where
    there is a ``conv_mask``, the fusions whose transforms exist, the ratio from the
    first transform's width.

    Args:
        state_dict: the checkpoint's weights (mmseg key names).
        block: the block's key prefix (``"decode_head.gc_block."``).
        settings: the decode head's config settings (:func:`mmseg_decode_head_settings`).
    """
    options: dict[str, Any] = {}
    if settings.get("pooling_type") in ("att", "avg"):
        options["pooling"] = settings["pooling_type"]
    else:
        options["pooling"] = "att" if f"{block}conv_mask.weight" in state_dict else "avg"
    fusions = settings.get("fusion_types")
    if isinstance(fusions, (list, tuple)) and all(isinstance(f, str) for f in fusions):
        options["fusion"] = tuple(fusions)
    else:
        found = tuple(
            f for f in ("channel_add", "channel_mul") if f"{block}{f}_conv.0.weight" in state_dict
        )
        if found:
            options["fusion"] = found
    if isinstance(settings.get("ratio"), (int, float)) and not isinstance(settings["ratio"], bool):
        options["ratio"] = settings["ratio"]
    else:
        first = next((state_dict[f"{block}{f}_conv.0.weight"] for f in options.get("fusion", ())
                      if f"{block}{f}_conv.0.weight" in state_dict), None)  # fmt: skip
        if first is not None and first.ndim == 4:
            planes, channels = int(first.shape[0]), int(first.shape[1])
            ratio = planes / channels
            # int(channels * ratio) must give the planes back: round half a plane up if not.
            options["ratio"] = (
                ratio if int(channels * ratio) == planes else (planes + 0.5) / channels
            )
    return options


def mmseg_psa_options(
    state_dict: Mapping[str, Tensor], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """``mask_size``, ``psa_type`` and the other settings of an mmseg ``PSAHead``.

    ``mask_size`` from the config, else from the weights (the mask convolution's
    ``h_m * w_m`` rows; released masks are square: 97 x 97 for Cityscapes and VOC,
    66 x 66 for ADE20K); the direction from the config, else bi-direction where the
    weights have the distribute branch (``reduce_p``); ``compact``, ``shrink_factor``,
    ``normalization_factor`` and ``psa_softmax`` from the config only.

    Args:
        state_dict: the checkpoint's weights (mmseg key names).
        settings: the decode head's config settings (:func:`mmseg_decode_head_settings`).

    Raises:
        ValueError: for weights whose mask size or direction neither the config nor the
            weights tell.
    """
    options: dict[str, Any] = {}
    how = "build PSANet(mask_size=..., psa_type=...) and load it with MMSEG_PSANET.load_into"
    mask_size = _config_pair(settings.get("mask_size"))
    if mask_size is None:
        weight = state_dict.get("decode_head.attention.1.weight")
        cells = int(weight.shape[0]) if weight is not None else 0
        side = math.isqrt(cells)
        if side * side != cells or side == 0:
            raise ValueError(
                f"PSAHead's mask convolution (decode_head.attention.1.weight) has {cells} "
                "output channels, not a square mask's h_m * w_m, and the checkpoint has no "
                f"config with mask_size: {how}"
            )
        mask_size = (side, side)
    options["mask_size"] = mask_size
    if settings.get("psa_type") in ("collect", "distribute", "bi-direction"):
        options["psa_type"] = settings["psa_type"]
    elif any(key.startswith("decode_head.reduce_p.") for key in state_dict):
        options["psa_type"] = "bi-direction"
    else:
        raise ValueError(
            "a one-direction PSAHead checkpoint (no decode_head.reduce_p) without a config "
            f"does not say whether it collects or distributes: {how}"
        )
    for name, kinds in (("compact", bool), ("shrink_factor", int), ("psa_softmax", bool),
                        ("normalization_factor", (int, float, type(None)))):  # fmt: skip
        if name in settings and isinstance(settings[name], kinds):
            options[name] = settings[name]
    return options
