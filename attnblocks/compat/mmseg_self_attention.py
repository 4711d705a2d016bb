"""mmsegmentation's self-attention heads (ANN, ISANet, EMANet) as tables for :class:`KeyMap`.

mmseg's ``SelfAttentionBlock`` keeps its projections under ``key_project``,
``query_project``, ``value_project`` and ``out_project``: one module or an
``nn.Sequential`` of them, each a plain ``Conv2d`` or an mmcv ``ConvModule``
(``conv`` + ``bn``). :class:`attnblocks.SelfAttentionBlock` has the same layout with
:class:`~attnblocks.layers.ConvNormAct`'s ``norm`` for ``bn``, so its table only renames
the norms (:func:`mmseg_self_attention_rules`). One difference: a shared key/query
projection (ANN's APNB) is one module that mmseg registers under both names, so its
checkpoints hold two copies; mmseg's loading writes ``key_project.*`` and then
``query_project.*`` into that module, so the ``query_project`` copy is the one in use:
it becomes our ``key_project``, and the other copy is checked for completeness
(:func:`check_mmseg_shared_key_query`) and dropped. The heads around it:

- ``ANNHead`` (``fusion`` = AFNB, ``bottleneck``, ``context`` = APNB, ``conv_seg``) ->
  :class:`attnblocks.models.ANNNet`'s head, same names, ``conv_seg`` as
  ``classifier.conv``;
- ``ISAHead`` (``in_conv``, ``global_relation``, ``local_relation``, ``out_conv``) ->
  ``attention_in``, ``attention.global_relation``, ``attention.local_relation``, ``fuse``;
- ``EMAHead`` (``ema_in_conv``, ``ema_mid_conv``, ``ema_module.bases``, ``ema_out_conv``,
  ``bottleneck``, ``conv_cat``) -> ``attention_in``, ``attention.in_conv``,
  ``attention.bases``, ``attention.out_conv``, ``attention_out``, ``fuse``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import Tensor

from ._keymap import KeyMap, Rename
from .mmseg import conv_module_rules, mmseg_segmentor_key_map

#: ANN checkpoints with up to this many attention stages (``query_scales`` entries) load;
#: every mmseg ANN release has one.
MMSEG_ANN_MAX_STAGES = 4


def mmseg_projection_rules(
    source: str, target: str, num_convs: int, with_norm: bool
) -> tuple[Rename, ...]:
    """Rules for one projection of mmseg's ``SelfAttentionBlock`` (``build_project``).

    Args:
        source: the projection's prefix in mmseg's keys, ending in ``.``.
        target: its prefix in this package's keys, ending in ``.``.
        num_convs: its number of convolutions (several: an ``nn.Sequential``).
        with_norm: ``ConvModule`` units (``conv``/``bn``) rather than plain convolutions.
    """
    if not with_norm:
        return (Rename(source, target),)
    if num_convs == 1:
        return conv_module_rules(source, target)
    return tuple(
        rule
        for index in range(num_convs)
        for rule in conv_module_rules(f"{source}{index}.", f"{target}{index}.")
    )


def mmseg_self_attention_rules(
    source: str,
    target: str,
    *,
    key_query_num_convs: int,
    key_query_norm: bool,
    value_out_num_convs: int,
    value_out_norm: bool,
    with_out: bool,
    share_key_query: bool = False,
) -> tuple[Rename, ...]:
    """Rules for an mmseg ``SelfAttentionBlock`` -> :class:`attnblocks.SelfAttentionBlock`.

    With ``share_key_query`` the ``query_project`` copy becomes ``key_project`` and the
    rules do not cover the ``key_project`` copy: drop it in the :class:`KeyMap` (after
    :func:`check_mmseg_shared_key_query`).

    Args:
        source: the block's prefix in mmseg's keys, ending in ``.`` (or empty).
        target: its prefix in this package's keys.
        key_query_num_convs: convolutions of the key and query projections.
        key_query_norm: whether those are ``ConvModule`` units.
        value_out_num_convs: convolutions of the value and out projections.
        value_out_norm: whether those are ``ConvModule`` units.
        with_out: whether the block has an ``out_project``.
        share_key_query: one projection for keys and queries (two copies in mmseg's keys).
    """
    key_query = (key_query_num_convs, key_query_norm)
    value_out = (value_out_num_convs, value_out_norm)
    # (mmseg's name, ours, its convolutions and norm)
    names = [("query_project", "key_project" if share_key_query else "query_project", key_query),
             ("value_project", "value_project", value_out)]  # fmt: skip
    if not share_key_query:
        names.append(("key_project", "key_project", key_query))
    if with_out:
        names.append(("out_project", "out_project", value_out))
    return tuple(
        rule
        for theirs, ours, (num_convs, with_norm) in names
        for rule in mmseg_projection_rules(
            f"{source}{theirs}.", f"{target}{ours}.", num_convs, with_norm
        )
    )


def check_mmseg_shared_key_query(state_dict: Mapping[str, Tensor], block: str) -> None:
    """Check that an mmseg block with a shared key/query projection has both copies.

    mmseg's state dicts list the shared projection as ``key_project.*`` and again as
    ``query_project.*``; only the second reaches our model, so a missing or misshapen
    tensor of the first would otherwise go unnoticed.

    Args:
        state_dict: the checkpoint's weights, mmseg key names.
        block: the block's prefix in them, ending in ``.``
            (``"decode_head.context.stages.0."``).

    Raises:
        ValueError: naming each tensor of one copy that the other lacks or shapes otherwise.
    """
    copies = {
        name: {k[len(block) + len(name) :]: v for k, v in state_dict.items()
               if k.startswith(f"{block}{name}")}
        for name in ("key_project.", "query_project.")
    }  # fmt: skip
    keys, queries = copies["key_project."], copies["query_project."]
    if not keys and not queries:
        return
    problems = [f"{block}{theirs}{leaf}" for theirs, mine, other in
                (("key_project.", keys, queries), ("query_project.", queries, keys))
                for leaf in sorted(set(other) - set(mine))]  # fmt: skip
    problems += [f"{block}key_project.{leaf}: {tuple(keys[leaf].shape)} but query_project "
                 f"{tuple(queries[leaf].shape)}" for leaf in sorted(set(keys) & set(queries))
                 if keys[leaf].shape != queries[leaf].shape]  # fmt: skip
    if problems:
        raise ValueError(
            f"mmseg's shared key/query projection at {block} is listed twice (key_project, "
            f"query_project) and both copies must match; missing or misshapen: {problems}"
        )


# The attention stages of ANN's AFNB and APNB: one conv-norm-act key/query conv, plain
# value/out convs (mmseg's ann_head.SelfAttentionBlock).
_ANN_STAGE = dict(key_query_num_convs=1, key_query_norm=True, value_out_num_convs=1,
                  value_out_norm=False, with_out=True)  # fmt: skip

# mmseg's ANNHead -> our ANNNetHead, keys relative to the head.
MMSEG_ANNHEAD_RULES: tuple[Rename, ...] = (
    *(
        rule
        for block in ("fusion", "context")
        for stage in range(MMSEG_ANN_MAX_STAGES)
        for rule in mmseg_self_attention_rules(
            f"{block}.stages.{stage}.",
            f"{block}.stages.{stage}.",
            **_ANN_STAGE,
            share_key_query=block == "context",
        )
    ),
    *conv_module_rules("fusion.bottleneck.", "fusion.bottleneck."),
    *conv_module_rules("context.bottleneck.", "context.bottleneck."),
    *conv_module_rules("bottleneck.", "bottleneck."),
    Rename("conv_seg.", "classifier.conv."),
)

# ISA's relations: two conv-norm-act key/query convs, a plain value conv, no out_project,
# then ISA's own conv-norm-act output_project (mmseg's isa_head.SelfAttentionBlock).
_ISA_RELATION = dict(key_query_num_convs=2, key_query_norm=True, value_out_num_convs=1,
                     value_out_norm=False, with_out=False)  # fmt: skip

# mmseg's ISAHead -> our ISANetHead, keys relative to the head.
MMSEG_ISAHEAD_RULES: tuple[Rename, ...] = (
    *conv_module_rules("in_conv.", "attention_in."),
    *(
        rule
        for relation in ("global_relation", "local_relation")
        for rule in (
            *mmseg_self_attention_rules(f"{relation}.", f"attention.{relation}.", **_ISA_RELATION),
            *conv_module_rules(
                f"{relation}.output_project.", f"attention.{relation}.output_project."
            ),
        )
    ),
    *conv_module_rules("out_conv.", "fuse."),
    Rename("conv_seg.", "classifier.conv."),
)

# mmseg's EMAHead -> our EMANetHead, keys relative to the head. ema_mid_conv is a ConvModule
# without norm (a biased conv); ema_out_conv one without activation.
MMSEG_EMAHEAD_RULES: tuple[Rename, ...] = (
    *conv_module_rules("ema_in_conv.", "attention_in."),
    Rename("ema_mid_conv.conv.", "attention.in_conv."),
    Rename("ema_module.bases", "attention.bases"),
    *conv_module_rules("ema_out_conv.", "attention.out_conv."),
    *conv_module_rules("bottleneck.", "attention_out."),
    *conv_module_rules("conv_cat.", "fuse."),
    Rename("conv_seg.", "classifier.conv."),
)

#: APNB's (``context``) copies of its shared projection that are checked, then dropped
MMSEG_ANN_SHARED_COPIES = tuple(
    f"decode_head.context.stages.{stage}.key_project." for stage in range(MMSEG_ANN_MAX_STAGES)
)
_ANNNET = mmseg_segmentor_key_map("ANNNet", MMSEG_ANNHEAD_RULES)
MMSEG_ANNNET: KeyMap = dataclasses.replace(_ANNNET, drop=(*_ANNNET.drop, *MMSEG_ANN_SHARED_COPIES))
MMSEG_ISANET = mmseg_segmentor_key_map("ISANet", MMSEG_ISAHEAD_RULES)
MMSEG_EMANET = mmseg_segmentor_key_map("EMANet", MMSEG_EMAHEAD_RULES)
