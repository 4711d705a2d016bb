"""mmcv's attention blocks (https://github.com/open-mmlab/mmcv) as tables for :class:`KeyMap`.

mmcv 2.x's ``CrissCrossAttention`` (``mmcv.ops``), ``NonLocal2d`` and ``ContextBlock``
(``mmcv.cnn``) compute what :class:`attnblocks.CrissCrossAttention`,
:class:`attnblocks.NonLocal2d` and :class:`attnblocks.ContextBlock` compute; their
state dicts differ in three ways only:

- mmcv's ``Scale`` keeps ``gamma`` as a 0-d ``gamma.scale``; ours is ``gamma`` of shape ``[1]``;
- mmcv wraps each of ``NonLocal2d``'s 1x1 convolutions in a ``ConvModule``
  (``g.conv.weight``), and with ``sub_sample`` puts ``g`` and ``phi`` in an
  ``nn.Sequential`` with the max-pool (``g.0.conv.weight``); ours are plain convolutions
  (``g.weight``), and ``conv_out`` with a norm is ``conv_out.conv`` + ``conv_out.norm``
  where mmcv names the norm by its kind (``conv_out.bn``, ``conv_out.gn``);
- ``ContextBlock``'s keys are the same.

:func:`load_mmcv_state_dict` picks the table that matches the module (its type; for
``NonLocal2d`` also ``sub_sample`` and whether ``conv_out`` has a norm, so weights of a
block configured otherwise are refused, not loaded into the wrong computation) and
loads strictly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..layers import ContextBlock, CrissCrossAttention, NonLocal2d
from ._keymap import KeyMap, Rename, scalar_to_vector

# mmcv's CrissCrossAttention -> ours: the convolutions keep their names, Scale's 0-d value
# becomes gamma of shape [1] (the official CCNet's layout).
MMCV_CRISS_CROSS_RULES: tuple[Rename, ...] = (
    Rename("query_conv.", "query_conv."),
    Rename("key_conv.", "key_conv."),
    Rename("value_conv.", "value_conv."),
    Rename("gamma.scale", "gamma", scalar_to_vector),
)

# mmcv's NonLocal2d -> ours, in parts. theta and concat_project are ConvModules in any setting.
MMCV_NON_LOCAL_RULES: tuple[Rename, ...] = (
    Rename("theta.conv.", "theta."),
    Rename("concat_project.conv.", "concat_project."),
)
# g and phi: a ConvModule, or nn.Sequential(ConvModule, MaxPool2d) (key: sub_sample).
MMCV_NON_LOCAL_VALUE_KEY_RULES: dict[bool, tuple[Rename, ...]] = {
    False: (Rename("g.conv.", "g."), Rename("phi.conv.", "phi.")),
    True: (Rename("g.0.conv.", "g."), Rename("phi.0.conv.", "phi.")),
}
# conv_out: a ConvModule with a bias, or with a norm named by its kind (key: has a norm).
MMCV_NON_LOCAL_CONV_OUT_RULES: dict[bool, tuple[Rename, ...]] = {
    False: (Rename("conv_out.conv.", "conv_out."),),
    True: (
        Rename("conv_out.conv.", "conv_out.conv."),
        Rename("conv_out.bn.", "conv_out.norm."),  # BN and SyncBN
        Rename("conv_out.gn.", "conv_out.norm."),  # GroupNorm
    ),
}

# mmcv's ContextBlock -> ours: the same keys.
MMCV_CONTEXT_BLOCK_RULES: tuple[Rename, ...] = (
    Rename("conv_mask.", "conv_mask."),
    Rename("channel_add_conv.", "channel_add_conv."),
    Rename("channel_mul_conv.", "channel_mul_conv."),
)

MMCV_CRISS_CROSS = KeyMap(
    source="mmcv's CrissCrossAttention",
    renames=MMCV_CRISS_CROSS_RULES,
    hint="check channels and reduction",
)
MMCV_CONTEXT_BLOCK = KeyMap(
    source="mmcv's ContextBlock",
    renames=MMCV_CONTEXT_BLOCK_RULES,
    hint="check channels, ratio, pooling and fusion",
)
#: mmcv's NonLocal2d tables by ``(sub_sample, conv_out has a norm)``.
MMCV_NON_LOCAL: dict[tuple[bool, bool], KeyMap] = {
    (sub_sample, norm): KeyMap(
        source=(
            f"mmcv's NonLocal2d with sub_sample={sub_sample} and "
            f"{'a norm' if norm else 'no norm'} after conv_out"
        ),
        renames=(
            *MMCV_NON_LOCAL_RULES,
            *MMCV_NON_LOCAL_VALUE_KEY_RULES[sub_sample],
            *MMCV_NON_LOCAL_CONV_OUT_RULES[norm],
        ),
        hint="check channels, reduction, mode, sub_sample and norm_layer",
    )
    for sub_sample in (False, True)
    for norm in (False, True)
}

#: The block types :func:`load_mmcv_state_dict` loads.
MMCV_BLOCKS: tuple[type[nn.Module], ...] = (CrissCrossAttention, NonLocal2d, ContextBlock)


def mmcv_key_map(module: nn.Module) -> KeyMap:
    """The table that maps mmcv's keys of ``module``'s kind onto ``module``'s.

    Args:
        module: a :class:`~attnblocks.CrissCrossAttention`, :class:`~attnblocks.NonLocal2d`
            or :class:`~attnblocks.ContextBlock` (or a subclass).

    Raises:
        ValueError: for any other module.
    """
    if isinstance(module, CrissCrossAttention):
        return MMCV_CRISS_CROSS
    if isinstance(module, NonLocal2d):
        return MMCV_NON_LOCAL[module.sub_sample, not isinstance(module.conv_out, nn.Conv2d)]
    if isinstance(module, ContextBlock):
        return MMCV_CONTEXT_BLOCK
    names = ", ".join(block.__name__ for block in MMCV_BLOCKS)
    raise ValueError(
        f"load_mmcv_state_dict loads mmcv's weights into {names}; got a {type(module).__name__}"
    )


def load_mmcv_state_dict(module: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load the weights of an mmcv block into the matching block of this package, strictly.

    The module must be built with the mmcv block's configuration (channels, reduction,
    mode, ``sub_sample``, a ``norm_layer`` when mmcv's ``conv_out`` has a norm...): its
    keys are renamed by the table of :func:`mmcv_key_map` (``gamma.scale`` -> ``gamma``
    of shape ``[1]``, ``g.conv.weight`` -> ``g.weight``...) and loaded with
    :func:`~attnblocks.compat.load_state_dict_strictly`.

    Args:
        module: a :class:`~attnblocks.CrissCrossAttention`, :class:`~attnblocks.NonLocal2d`
            or :class:`~attnblocks.ContextBlock`.
        state_dict: the mmcv block's state dict, or a mapping holding it under
            ``"state_dict"``; ``module.`` prefixes (``DataParallel``) are stripped.

    Raises:
        ValueError: for another kind of module, and listing every key that is not part
            of the mmcv block, missing, unexpected or of another shape.
    """
    mmcv_key_map(module).load_into(module, state_dict)
